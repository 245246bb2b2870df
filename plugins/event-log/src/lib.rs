//! An audit trail: one JSON line in the broker's log (at `info`, tagged with the
//! plugin's name) per event the broker reports, optionally only of some kinds.
//!
//! ```json
//! {"at_ms":1764600000000,"event":"disconnected","client_id":"dev1","reason_code":142,"reason":"session taken over by a new connection"}
//! ```

use serde::Deserialize;
use serde_json::{json, Value};
use std::cell::RefCell;
use weir_plugin_sdk::{log, parse_config, BrokerEvent, Init, Observe, TimedEvent};

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct Config {
    /// The kinds to log (`connected`, `disconnected`, `subscribed`, `unsubscribed`,
    /// `message_dropped`, `session_expired`, `will_published`); empty: all.
    #[serde(default)]
    events: Vec<String>,
}

const KINDS: [&str; 7] = [
    "connected",
    "disconnected",
    "subscribed",
    "unsubscribed",
    "message_dropped",
    "session_expired",
    "will_published",
];

thread_local! {
    static KEEP: RefCell<Vec<String>> = const { RefCell::new(Vec::new()) };
}

/// The event's kind and fields.
fn describe(e: &BrokerEvent) -> (&'static str, Value) {
    match e {
        BrokerEvent::Connected(c) => (
            "connected",
            json!({"client_id": c.client_id, "username": c.username, "peer": c.peer, "listener": c.listener}),
        ),
        BrokerEvent::Disconnected(d) => (
            "disconnected",
            json!({"client_id": d.client_id, "reason_code": d.reason_code, "reason": d.reason}),
        ),
        BrokerEvent::Subscribed(s) => (
            "subscribed",
            json!({"client_id": s.client_id, "filter": s.filter, "qos": s.qos}),
        ),
        BrokerEvent::Unsubscribed(u) => (
            "unsubscribed",
            json!({"client_id": u.client_id, "filter": u.filter}),
        ),
        BrokerEvent::MessageDropped(d) => (
            "message_dropped",
            json!({"client_id": d.client_id, "topic": d.topic, "cause": d.cause, "count": d.count}),
        ),
        BrokerEvent::SessionExpired(id) => ("session_expired", json!({"client_id": id})),
        BrokerEvent::WillPublished(w) => (
            "will_published",
            json!({"client_id": w.client_id, "topic": w.topic}),
        ),
    }
}

struct EventLog;

impl Init for EventLog {
    fn init(config: String) -> Result<(), String> {
        let config: Config = parse_config(&config)?;
        if let Some(bad) = config.events.iter().find(|k| !KINDS.contains(&k.as_str())) {
            return Err(format!("events: unknown kind {bad:?}; kinds are {KINDS:?}"));
        }
        KEEP.with(|k| *k.borrow_mut() = config.events);
        Ok(())
    }
}

impl Observe for EventLog {
    fn observe(events: Vec<TimedEvent>) {
        KEEP.with(|keep| {
            let keep = keep.borrow();
            for t in &events {
                let (kind, mut fields) = describe(&t.event);
                if !keep.is_empty() && !keep.iter().any(|k| k == kind) {
                    continue;
                }
                fields["at_ms"] = json!(t.at_ms);
                fields["event"] = json!(kind);
                log::info(&fields.to_string());
            }
        })
    }
}

weir_plugin_sdk::export_plugin!(EventLog: init, observe);
