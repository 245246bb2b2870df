//! Topic access rules, like Mosquitto's ACL file: the first rule whose pattern covers
//! the topic decides. `%u` stands for the client's username and `%c` for its client id;
//! a rule that needs one the client does not have (or has with `/`, `+` or `#` in it)
//! does not apply.

use serde::Deserialize;
use std::sync::OnceLock;
use weir_plugin_sdk::{
    filter_within, parse_config, reuse_answer, substitute, topic_matches, Access, Action,
    Authorize, Client, Decision, Init, ReasonCode,
};

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Config {
    rules: Vec<Rule>,
    /// What applies when no rule matches: "deny" (default), "allow" or "defer".
    #[serde(default)]
    default: Default,
    /// How long the broker may reuse a decision for the same client and topic without
    /// asking again (milliseconds; 0 asks every time). Decisions depend only on the
    /// rules, the client and the topic, and a reload forgets them.
    #[serde(default = "minute")]
    reuse_ms: u64,
}

fn minute() -> u64 {
    60_000
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Rule {
    /// "read" (subscribe, receive), "write" (publish) or "readwrite".
    access: Kind,
    topic: String,
    #[serde(default = "yes")]
    allow: bool,
}

fn yes() -> bool {
    true
}

#[derive(Deserialize, Clone, Copy, PartialEq)]
#[serde(rename_all = "lowercase")]
enum Kind {
    Read,
    Write,
    Readwrite,
}

#[derive(Deserialize, Default, Clone, Copy)]
#[serde(rename_all = "lowercase")]
enum Default {
    #[default]
    Deny,
    Allow,
    Defer,
}

static CONFIG: OnceLock<Config> = OnceLock::new();

struct Acl;

impl Init for Acl {
    fn init(config: String) -> Result<(), String> {
        let c: Config = parse_config(&config)?;
        for r in &c.rules {
            if r.topic.is_empty() {
                return Err("a rule has an empty topic".into());
            }
        }
        let _ = CONFIG.set(c);
        Ok(())
    }
}

impl Authorize for Acl {
    fn authorize(client: &Client, access: Access) -> Decision {
        let Some(config) = CONFIG.get() else {
            return Decision::Deny(ReasonCode::NotAuthorized.into());
        };
        if config.reuse_ms > 0 {
            reuse_answer(std::time::Duration::from_millis(config.reuse_ms));
        }
        for rule in &config.rules {
            let applies = match access.action {
                Action::Publish => rule.access != Kind::Read,
                Action::Subscribe => rule.access != Kind::Write,
            };
            if !applies {
                continue;
            }
            let Some(pattern) = substitute(&rule.topic, client) else {
                continue;
            };
            let covered = match access.action {
                Action::Publish => topic_matches(&pattern, &access.topic),
                Action::Subscribe => filter_within(&access.topic, &pattern),
            };
            if covered {
                return if rule.allow {
                    Decision::Allow
                } else {
                    Decision::Deny(ReasonCode::NotAuthorized.into())
                };
            }
        }
        match config.default {
            Default::Deny => Decision::Deny(ReasonCode::NotAuthorized.into()),
            Default::Allow => Decision::Allow,
            Default::Defer => Decision::Defer,
        }
    }
}

weir_plugin_sdk::export_plugin!(Acl: init, authorize);
