//! Tags every message with the user property `version` = `a`, or `b` when built with
//! `--features b`: two versions of one plugin, for the hot-reload tests.

use weir_plugin_sdk::{Client, Message, MessageHeader, Transform, TransformOutcome};

const VERSION: &str = if cfg!(feature = "b") { "b" } else { "a" };

struct Tagger;

impl Transform for Tagger {
    fn transform(_client: &Client, message: &Message, _: MessageHeader) -> TransformOutcome {
        message.add_user_property("version", VERSION);
        TransformOutcome::Apply
    }
}

weir_plugin_sdk::export_plugin!(Tagger: transform);
