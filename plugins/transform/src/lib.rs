//! Rewrites and checks published messages:
//! - `rewrite`: the first rule whose `from` prefix starts the topic replaces that prefix
//!   with `to` (`legacy/` -> `sensors/`);
//! - `json`: messages whose topic matches `filter` must carry a JSON object with every
//!   field in `required`, or they are dropped with 0x99 *Payload format invalid*;
//! - `tag`: adds user properties to every message whose topic matches `filter`.
//!
//! Rules apply in that order, to the topic as rewritten.

use serde::Deserialize;
use serde_json::Value;
use std::sync::OnceLock;
use weir_plugin_sdk::{
    log, parse_config, reuse_answer, topic_matches, Client, Init, Message, MessageHeader,
    ReasonCode, Transform, TransformOutcome,
};

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Config {
    #[serde(default)]
    rewrite: Vec<Rewrite>,
    #[serde(default)]
    json: Vec<JsonCheck>,
    #[serde(default)]
    tag: Vec<Tag>,
    /// How long the broker may skip this plugin for a client and topic that it left
    /// unchanged (milliseconds; 0 calls it for every message). Only topics that no
    /// `json` check covers qualify, since those answers depend on the payload.
    #[serde(default = "minute")]
    reuse_ms: u64,
}

fn minute() -> u64 {
    60_000
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Rewrite {
    from: String,
    to: String,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct JsonCheck {
    filter: String,
    #[serde(default)]
    required: Vec<String>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Tag {
    filter: String,
    name: String,
    value: String,
}

static CONFIG: OnceLock<Config> = OnceLock::new();

struct Transformer;

impl Init for Transformer {
    fn init(config: String) -> Result<(), String> {
        let c: Config = parse_config(&config)?;
        for r in &c.rewrite {
            if r.from.is_empty() || r.to.is_empty() || r.to.contains(['+', '#']) {
                return Err(format!(
                    "rewrite {} -> {}: both must be non-empty and `to` without wildcards",
                    r.from, r.to
                ));
            }
        }
        let _ = CONFIG.set(c);
        Ok(())
    }
}

impl Transform for Transformer {
    fn transform(_client: &Client, message: &Message, header: MessageHeader) -> TransformOutcome {
        let Some(c) = CONFIG.get() else {
            return TransformOutcome::Keep;
        };
        let mut topic = header.topic;
        let mut changed = false;
        let mut checked = false;
        if let Some(r) = c.rewrite.iter().find(|r| topic.starts_with(&r.from)) {
            topic = format!("{}{}", r.to, &topic[r.from.len()..]);
            message.set_topic(&topic);
            changed = true;
        }
        for check in c.json.iter().filter(|j| topic_matches(&j.filter, &topic)) {
            checked = true;
            // The payload crosses only for the messages a check covers.
            let valid = match serde_json::from_slice::<Value>(&message.payload()) {
                Ok(Value::Object(fields)) => check.required.iter().all(|f| fields.contains_key(f)),
                _ => false,
            };
            if !valid {
                log::debug(&format!(
                    "dropping a message on {topic}: not a JSON object with {:?}",
                    check.required
                ));
                return TransformOutcome::Drop(ReasonCode::PayloadFormatInvalid.into());
            }
        }
        for t in c.tag.iter().filter(|t| topic_matches(&t.filter, &topic)) {
            message.add_user_property(&t.name, &t.value);
            changed = true;
        }
        // Rewrites and tags depend on the topic alone (and keep the payload); a json
        // check reads the payload, so its answers are given afresh for every message.
        if !checked && c.reuse_ms > 0 {
            reuse_answer(std::time::Duration::from_millis(c.reuse_ms));
        }
        if changed {
            TransformOutcome::Apply
        } else {
            TransformOutcome::Keep
        }
    }
}

weir_plugin_sdk::export_plugin!(Transformer: init, transform);
