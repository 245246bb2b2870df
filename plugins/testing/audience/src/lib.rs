//! Per-subscriber delivery, for the tests of the `deliver` hook: a message with the
//! user property `audience` goes only to subscribers of that username (the others'
//! copies are dropped); one with `redact` reaches subscribers other than `admin` with
//! its payload masked. Everything else is kept. A `keep` is reused for a minute: it depends
//! only on the subscriber and the message's header.

use std::time::Duration;
use weir_plugin_sdk::{reuse_answer, Client, Deliver, DeliverResult, Message};

struct Audience;

fn property<'a>(m: &'a Message, name: &str) -> Option<&'a str> {
    let p = m.user_properties.iter().find(|p| p.name == name);
    p.map(|p| p.value.as_str())
}

impl Deliver for Audience {
    fn deliver(client: Client, mut message: Message) -> DeliverResult {
        let user = client.username.as_deref();
        if let Some(audience) = property(&message, "audience") {
            if Some(audience) != user {
                return DeliverResult::Drop;
            }
        }
        if property(&message, "redact").is_some() && user != Some("admin") {
            message.payload = b"***".to_vec();
            return DeliverResult::Replace(message);
        }
        reuse_answer(Duration::from_secs(60));
        DeliverResult::Keep
    }
}

weir_plugin_sdk::export_plugin!(Audience: deliver);
