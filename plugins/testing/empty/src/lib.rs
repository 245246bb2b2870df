//! Hooks that read nothing and answer at once (`authorize`: allow, `rate-limit`: allow,
//! `transform`: keep): the floor of a hook call, what the broker and the component
//! model cost before a plugin does anything. For the benchmarks and the tests of it.

use weir_plugin_sdk::{
    Access, Authorize, Client, Decision, Event, Message, MessageHeader, RateLimit, RateResult,
    Transform, TransformOutcome,
};

struct Empty;

impl Authorize for Empty {
    fn authorize(_: &Client, _: Access) -> Decision {
        Decision::Allow
    }
}

impl RateLimit for Empty {
    fn rate_limit(_: &Client, _: Event) -> RateResult {
        RateResult::Allow
    }
}

impl Transform for Empty {
    fn transform(_: &Client, _: &Message, _: MessageHeader) -> TransformOutcome {
        TransformOutcome::Keep
    }
}

weir_plugin_sdk::export_plugin!(Empty: authorize, rate_limit, transform);
