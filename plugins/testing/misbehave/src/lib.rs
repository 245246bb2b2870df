//! A plugin that fails on purpose, for the broker's tests. Configured `mode`:
//! `loop` (never returns), `trap` (panics), `print` (writes to stdout and stderr, then
//! allows), `grab` (allocates until the memory cap stops it), `huge` (replaces the message's payload with 8 MiB), `bad-topic` (sets the
//! topic to a filter, `bad/+`, and applies it), `qos0` (sends the message on at QoS 0), `edit-read` (edits the
//! message and reads its edits and its header back into user properties, for the SDK's batch form), `bad-code` (denies with reason
//! code 0x00), `init-fail` (rejects its configuration). It misbehaves only for topics
//! under `bad/`; for every other topic it allows and keeps, so the tests can show that
//! other clients are served while it fails.

use serde::Deserialize;
use std::sync::OnceLock;
use weir_plugin_sdk::{
    parse_config, Access, Authorize, Client, Decision, Init, Message, MessageHeader, ReasonCode,
    Transform, TransformOutcome,
};

#[derive(Deserialize)]
struct Config {
    mode: String,
}

static MODE: OnceLock<String> = OnceLock::new();

fn misbehave(topic: &str) -> Option<&'static str> {
    let mode = MODE.get()?;
    if !topic.starts_with("bad/") {
        return None;
    }
    match mode.as_str() {
        "loop" => {
            let mut n: u64 = 0;
            loop {
                n = std::hint::black_box(n.wrapping_add(1));
            }
        }
        "trap" => panic!("misbehaving on purpose"),
        "print" => {
            println!("printing to stdout about {topic}");
            eprintln!("and to stderr");
            None
        }
        "grab" => {
            // Reserved, not written: growing the memory is what the cap stops, and
            // filling each megabyte would let a busy machine hit the deadline first.
            let mut hoard: Vec<Vec<u8>> = Vec::new();
            loop {
                hoard.push(Vec::with_capacity(1 << 20));
                std::hint::black_box(&hoard);
            }
        }
        other => Some(match other {
            "huge" => "huge",
            "bad-topic" => "bad-topic",
            "qos0" => "qos0",
            "edit-read" => "edit-read",
            "bad-code" => "bad-code",
            _ => "none",
        }),
    }
}

struct Misbehave;

impl Init for Misbehave {
    fn init(config: String) -> Result<(), String> {
        let c: Config = parse_config(&config)?;
        if c.mode == "init-fail" {
            return Err("this plugin refuses to start (init-fail mode)".into());
        }
        let _ = MODE.set(c.mode);
        Ok(())
    }
}

impl Authorize for Misbehave {
    fn authorize(_client: &Client, access: Access) -> Decision {
        match misbehave(&access.topic) {
            // Not a failure code: the broker must refuse the answer.
            Some("bad-code") => Decision::Deny(ReasonCode::Success.into()),
            _ => Decision::Allow,
        }
    }
}

impl Transform for Misbehave {
    fn transform(_client: &Client, message: &Message, header: MessageHeader) -> TransformOutcome {
        match misbehave(&header.topic) {
            Some("huge") => {
                message.set_payload(&vec![b'x'; 8 << 20]);
                TransformOutcome::Apply
            }
            Some("bad-topic") => {
                message.set_topic("bad/+");
                TransformOutcome::Apply
            }
            Some("qos0") => {
                message.set_qos(0);
                TransformOutcome::Apply
            }
            Some("edit-read") => edit_read(message, &header),
            _ => TransformOutcome::Keep,
        }
    }
}

/// Edits, then what the getters say after them: the same in a single call (each a call
/// into the broker) and in a batch (edits kept in the plugin until the answer).
fn edit_read(message: &Message, header: &MessageHeader) -> TransformOutcome {
    let topic = &header.topic;
    message.set_topic(&format!("edited/{}", &topic["bad/".len()..]));
    message.add_user_property("a", "1");
    message.add_user_property("b", "2");
    message.remove_user_property("b");
    message.set_content_type(Some("text/x"));
    message.add_user_property("topic-seen", &message.topic());
    let a = message.user_property("a").unwrap_or_default();
    message.add_user_property("a-seen", &a);
    let count = message.user_properties().len().to_string();
    message.add_user_property("count", &count);
    let content_type = message.content_type().unwrap_or_default();
    message.add_user_property("content-type-seen", &content_type);
    // The header as the plugin was handed it (a run's headers come as columns).
    let h = header;
    let seen = format!(
        "qos {} retain {} len {} expiry {:?} utf8 {}",
        h.qos, h.retain, h.payload_len, h.message_expiry, h.payload_utf8
    );
    message.add_user_property("header-seen", &seen);
    TransformOutcome::Apply
}

weir_plugin_sdk::export_plugin!(Misbehave: init, authorize, transform);
