//! Tags every message with the user property `version` = `a`, or `b` when built with
//! `--features b`: two versions of one plugin, for the hot-reload tests.

use weir_plugin_sdk::{Client, Message, Pair, Transform, TransformResult};

const VERSION: &str = if cfg!(feature = "b") { "b" } else { "a" };

struct Tagger;

impl Transform for Tagger {
    fn transform(_client: Client, mut message: Message) -> TransformResult {
        message.user_properties.push(Pair {
            name: "version".into(),
            value: VERSION.into(),
        });
        TransformResult::Replace(message)
    }
}

weir_plugin_sdk::export_plugin!(Tagger: transform);
