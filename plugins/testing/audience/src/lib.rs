//! Per-subscriber delivery, for the tests of the `deliver` hook: a message with the
//! user property `audience` goes only to subscribers of that username (the others'
//! copies are dropped); one with `redact` reaches subscribers other than `admin` with
//! its payload masked. Everything else is kept. A `keep` is reused for a minute: it depends
//! only on the subscriber and the message's header.

use std::time::Duration;
use weir_plugin_sdk::{reuse_answer, Client, Deliver, DeliverOutcome, Message, MessageHeader};

struct Audience;

impl Deliver for Audience {
    fn deliver(client: &Client, message: &Message, _: MessageHeader) -> DeliverOutcome {
        let user = client.username();
        if let Some(audience) = message.user_property("audience") {
            if Some(audience) != user {
                return DeliverOutcome::Drop;
            }
        }
        let redacted = message.user_property("redact").is_some();
        if redacted && user.as_deref() != Some("admin") {
            message.set_payload(b"***");
            return DeliverOutcome::Apply;
        }
        reuse_answer(Duration::from_secs(60));
        DeliverOutcome::Keep
    }
}

weir_plugin_sdk::export_plugin!(Audience: deliver);
