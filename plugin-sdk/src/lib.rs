//! Write Weir plugins in Rust.
//!
//! A plugin is a type that implements the hook traits it cares about — [`Init`],
//! [`Authenticate`], [`Authenticator`], [`Authorize`], [`Transform`], [`RateLimit`],
//! [`Subscribe`], [`Deliver`], [`Observe`] — each with a default that defers to the next plugin (or keeps the
//! message), and says so with [`export_plugin!`]. Plugins built with this SDK are
//! components of `weir:plugin@0.3.0`: the hooks that run for every message get the
//! client and the message as handles ([`Client`], [`Message`]) to ask for what they
//! read, which is what makes a call cheap; ask for a field once and keep it. Build it with `cargo build --release --target wasm32-wasip2`.
//!
//! Each hook lives in its own small crate (`weir-plugin-authn`, `-authz`, `-transformer`,
//! `-limiter`, `-authenticator`, `-subscriber`, `-deliverer`, `-observer`, `-lifecycle`) because a component exports exactly the hooks whose crates
//! it links: depend on the ones you export. See the README for a complete example.

#[doc(hidden)]
pub mod bindings {
    wit_bindgen::generate!({
        path: "../wit",
        world: "imports",
        generate_all,
        additional_derives: [PartialEq],
    });
}

pub use bindings::weir::plugin::context;
pub use bindings::weir::plugin::host;
pub use bindings::weir::plugin::types;
/// The client a hook is called about (for `deliver`, the subscriber): a handle valid
/// for the one call.
pub use context::Client;
mod message;
pub use message::Message;
pub use types::{
    Access, Action, Admission, AuthChallenge, AuthRequest, AuthResponse, AuthResult, AuthStep,
    AuthSuccess, BrokerEvent, Certificate, ConnectInfo, Decision, DeliverOutcome, Denial,
    DisconnectEvent, DropEvent, Event, MessageHeader, Pair, Protocol, RateResult, Rewrite,
    SubscribeEvent, SubscribeResult, Subscription, TimedEvent, TransformOutcome, UnsubscribeEvent,
    WillEvent,
};
/// Topic names and filters, matched exactly as the broker matches them.
pub use weir_protocol::topic;
pub use weir_protocol::topic::{filter_within, matches as topic_matches};
/// Reason codes by name, for `Decision::Deny(ReasonCode::NotAuthorized.into())` and
/// the like; shared with the broker.
pub use weir_protocol::ReasonCode;

/// Called once per instance with the plugin's `config` table (as JSON).
pub trait Init {
    fn init(config: String) -> Result<(), String> {
        let _ = config;
        Ok(())
    }
}

/// May this client connect?
pub trait Authenticate {
    fn authenticate(info: ConnectInfo) -> AuthResult {
        let _ = info;
        AuthResult::Defer
    }
}

/// May this client publish to a topic, or subscribe to a filter?
pub trait Authorize {
    fn authorize(client: &Client, access: Access) -> Decision {
        let _ = (client, access);
        Decision::Defer
    }
}

/// Keep, drop or edit each message a client publishes: edits are made through
/// `message` (`message.set_topic(..)`, `message.add_user_property(..)`, ...) and count
/// if the answer is `Apply`.
pub trait Transform {
    fn transform(client: &Client, message: &Message, header: MessageHeader) -> TransformOutcome {
        let _ = (client, message, header);
        TransformOutcome::Keep
    }
}

/// Allow, reject or throttle connects, publishes and subscribes.
pub trait RateLimit {
    fn rate_limit(client: &Client, event: Event) -> RateResult {
        let _ = (client, event);
        RateResult::Allow
    }

    /// Several publishes a client sent together, by payload size, in one call: an
    /// answer each, as `rate_limit` would give them one after another (charge the
    /// buckets once for all of them with [`charge_tokens_each`] or
    /// [`take_tokens_each`]). `None`, the default, asks `rate_limit` about each. Answers
    /// given here lease nothing.
    fn rate_limit_publishes(client: &Client, sizes: &[u64]) -> Option<Vec<RateResult>> {
        let _ = (client, sizes);
        None
    }
}

/// MQTT 5 enhanced authentication: a CONNECT with an Authentication Method (or a
/// re-authentication) starts at `auth_start`; answer `Defer` to a method that is not
/// yours. Each `Continue` sends the client a challenge, and its answer comes to
/// `auth_continue` with the `state` you gave (possibly on another instance).
pub trait Authenticator {
    fn auth_start(request: AuthRequest) -> AuthStep {
        let _ = request;
        AuthStep::Defer
    }
    fn auth_continue(response: AuthResponse) -> AuthStep {
        let _ = response;
        AuthStep::Failure(Denial {
            reason_code: ReasonCode::NotAuthorized.into(),
            reason: "this plugin has no auth_continue".into(),
        })
    }
}

/// Allow, deny or rewrite each filter a client subscribes to, before it is authorized
/// (and each filter it unsubscribes from, with QoS 0).
pub trait Subscribe {
    fn subscribe(client: &Client, subscription: Subscription) -> SubscribeResult {
        let _ = (client, subscription);
        SubscribeResult::Allow
    }
}

/// Keep, drop or edit each message about to be sent to one subscriber (`client`), as
/// `Transform` does (its QoS and retain flag stay the delivery's).
pub trait Deliver {
    fn deliver(client: &Client, message: &Message, header: MessageHeader) -> DeliverOutcome {
        let _ = (client, message, header);
        DeliverOutcome::Keep
    }
}

/// Sees what happens in the broker, in batches, after the fact: no client waits for it.
pub trait Observe {
    fn observe(events: Vec<TimedEvent>) {
        let _ = events;
    }
}

/// Exports a plugin type's hooks: `export_plugin!(MyPlugin: init, authorize, transform);`
/// Hooks: `init`, `authenticate`, `authenticator` (enhanced authentication: both of its
/// functions), `authorize`, `transform`, `rate_limit`, `subscribe`, `deliver`, `observe`. The plugin crate must depend on the matching `weir-plugin-*` crate for
/// each.
#[macro_export]
macro_rules! export_plugin {
    ($t:ident: $($hook:ident),+ $(,)?) => {
        $( $crate::__export_hook!($t, $hook); )+
    };
}

#[doc(hidden)]
#[macro_export]
macro_rules! __export_hook {
    ($t:ident, init) => {
        impl ::weir_plugin_lifecycle::exports::weir::plugin::lifecycle::Guest for $t {
            fn init(config: String) -> Result<(), String> {
                <$t as $crate::Init>::init(config)
            }
        }
        ::weir_plugin_lifecycle::export!($t with_types_in ::weir_plugin_lifecycle);
    };
    ($t:ident, authenticate) => {
        impl ::weir_plugin_authn::exports::weir::plugin::authn::Guest for $t {
            fn authenticate(info: $crate::ConnectInfo) -> $crate::AuthResult {
                <$t as $crate::Authenticate>::authenticate(info)
            }
        }
        ::weir_plugin_authn::export!($t with_types_in ::weir_plugin_authn);
    };
    ($t:ident, authorize) => {
        impl ::weir_plugin_authz::exports::weir::plugin::authz::Guest for $t {
            fn authorize(client: &$crate::Client, access: $crate::Access) -> $crate::Decision {
                $crate::batch::begin();
                <$t as $crate::Authorize>::authorize(client, access)
            }
        }
        impl ::weir_plugin_authz::exports::weir::plugin::authz_many::Guest for $t {
            fn authorize_many(
                client: &$crate::Client,
                run: $crate::types::Publishes,
            ) -> Vec<($crate::Decision, $crate::types::Grants)> {
                $crate::batch::begin();
                let each = |a| $crate::batch::each(|| <$t as $crate::Authorize>::authorize(client, a));
                $crate::batch::accesses(run).map(each).collect()
            }
        }
        ::weir_plugin_authz::export!($t with_types_in ::weir_plugin_authz);
    };
    ($t:ident, transform) => {
        impl ::weir_plugin_transformer::exports::weir::plugin::transformer::Guest for $t {
            fn transform(client: &$crate::Client, message: &$crate::context::Message, header: $crate::MessageHeader) -> $crate::TransformOutcome {
                $crate::batch::begin();
                <$t as $crate::Transform>::transform(client, &$crate::Message::handle(message), header)
            }
        }
        impl ::weir_plugin_transformer::exports::weir::plugin::transformer_many::Guest for $t {
            fn transform_many(
                client: &$crate::Client,
                messages: &$crate::context::Messages,
                run: $crate::types::MessageRun,
            ) -> Vec<($crate::types::EditedOutcome, $crate::types::Grants)> {
                $crate::batch::begin();
                let each = |(i, h)| $crate::batch::each(|| {
                    let m = $crate::Message::in_run(messages, i as u32);
                    let outcome = <$t as $crate::Transform>::transform(client, &m, h);
                    m.answer(outcome)
                });
                let mut answers: Vec<_> = $crate::batch::headers(run).enumerate().map(each).collect();
                $crate::Message::repeats_as_same(&mut answers);
                answers
            }
        }
        ::weir_plugin_transformer::export!($t with_types_in ::weir_plugin_transformer);
    };
    ($t:ident, rate_limit) => {
        impl ::weir_plugin_limiter::exports::weir::plugin::limiter::Guest for $t {
            fn rate_limit(client: &$crate::Client, event: $crate::Event) -> $crate::RateResult {
                $crate::batch::begin();
                <$t as $crate::RateLimit>::rate_limit(client, event)
            }
        }
        impl ::weir_plugin_limiter::exports::weir::plugin::limiter_many::Guest for $t {
            fn rate_limit_many(
                client: &$crate::Client,
                sizes: Vec<u64>,
            ) -> Vec<($crate::RateResult, $crate::types::Grants)> {
                $crate::batch::begin();
                $crate::batch::rate_limits(
                    sizes,
                    |sizes| <$t as $crate::RateLimit>::rate_limit_publishes(client, sizes),
                    |e| <$t as $crate::RateLimit>::rate_limit(client, e),
                )
            }
        }
        ::weir_plugin_limiter::export!($t with_types_in ::weir_plugin_limiter);
    };
    ($t:ident, authenticator) => {
        impl ::weir_plugin_authenticator::exports::weir::plugin::authenticator::Guest for $t {
            fn auth_start(request: $crate::AuthRequest) -> $crate::AuthStep {
                <$t as $crate::Authenticator>::auth_start(request)
            }
            fn auth_continue(response: $crate::AuthResponse) -> $crate::AuthStep {
                <$t as $crate::Authenticator>::auth_continue(response)
            }
        }
        ::weir_plugin_authenticator::export!($t with_types_in ::weir_plugin_authenticator);
    };
    ($t:ident, subscribe) => {
        impl ::weir_plugin_subscriber::exports::weir::plugin::subscriber::Guest for $t {
            fn subscribe(client: &$crate::Client, subscription: $crate::Subscription) -> $crate::SubscribeResult {
                $crate::batch::begin();
                <$t as $crate::Subscribe>::subscribe(client, subscription)
            }
        }
        ::weir_plugin_subscriber::export!($t with_types_in ::weir_plugin_subscriber);
    };
    ($t:ident, deliver) => {
        impl ::weir_plugin_deliverer::exports::weir::plugin::deliverer::Guest for $t {
            fn deliver(client: &$crate::Client, message: &$crate::context::Message, header: $crate::MessageHeader) -> $crate::DeliverOutcome {
                $crate::batch::begin();
                <$t as $crate::Deliver>::deliver(client, &$crate::Message::handle(message), header)
            }
        }
        ::weir_plugin_deliverer::export!($t with_types_in ::weir_plugin_deliverer);
    };
    ($t:ident, observe) => {
        impl ::weir_plugin_observer::exports::weir::plugin::observer::Guest for $t {
            fn observe(events: Vec<$crate::TimedEvent>) {
                <$t as $crate::Observe>::observe(events)
            }
        }
        ::weir_plugin_observer::export!($t with_types_in ::weir_plugin_observer);
    };
}

/// Logging into the broker's log, tagged with the plugin's name.
pub mod log {
    use super::host;
    use super::types::Level;

    pub fn debug(message: &str) {
        host::log(Level::Debug, message)
    }
    pub fn info(message: &str) {
        host::log(Level::Info, message)
    }
    pub fn warn(message: &str) {
        host::log(Level::Warn, message)
    }
    pub fn error(message: &str) {
        host::log(Level::Error, message)
    }
}

/// The broker-side key-value store, shared by all instances of this plugin and kept
/// across reloads.
pub mod kv {
    use super::host;
    use std::time::Duration;

    pub fn get(key: &str) -> Option<Vec<u8>> {
        host::kv_get(key)
    }
    pub fn set(key: &str, value: &[u8], ttl: Option<Duration>) {
        host::kv_set(key, value, ttl.map(|d| d.as_millis() as u64))
    }
    pub fn delete(key: &str) -> bool {
        host::kv_delete(key)
    }
    /// Adds `delta` to a counter and returns the new value.
    pub fn increment(key: &str, delta: i64, ttl: Option<Duration>) -> i64 {
        host::kv_increment(key, delta, ttl.map(|d| d.as_millis() as u64))
    }
}

/// Token buckets kept by the broker: `take("client:abc", 100, 10.0, 1)` allows bursts of
/// 100 and 10 per second on average.
pub fn take_tokens(key: &str, capacity: u64, refill_per_second: f64, n: u64) -> bool {
    host::bucket_take(key, capacity, refill_per_second, n)
}

/// Lets the broker give the answer this call is about to return again, for this client
/// and topic, for up to `ttl` (at most 10 minutes), without calling the plugin. Call it
/// only when the answer depends on nothing but the client and the topic, action, QoS
/// and retain flag (for `transform`: the message without its payload), not on the
/// payload, the clock or `kv`. Honoured by `authorize`, and by `transform` returning
/// `Keep` or a `Replace` that keeps the payload; a reload or a reconnect forgets it.
pub fn reuse_answer(ttl: std::time::Duration) {
    let ms = ttl.as_millis().min(u32::MAX as u128) as u32;
    if !batch::reuse(ms) {
        host::reuse_answer(ms)
    }
}

/// From `rate_limit` answering `Allow` to a publish: the plugin has already taken the
/// tokens for this client's next `events` publishes of up to `bytes` bytes in all, so
/// the broker may allow those without calling it, for up to `ttl`. Tokens left in a
/// lease that expires or whose client reconnects are not returned.
pub fn lease(events: u32, bytes: u64, ttl: std::time::Duration) {
    let ttl_ms = ttl.as_millis().min(u32::MAX as u128) as u32;
    if !batch::lease(events, bytes, ttl_ms) {
        host::lease(events, bytes, ttl_ms)
    }
}

/// The batch forms of the hooks (`authz-many` and the like), which `export_plugin!`
/// exports for every plugin: the broker asks once for several messages a client sent
/// together, and each answer carries what its call of the hook granted.
#[doc(hidden)]
pub mod batch {
    use super::types::{Event, Grants, LeaseGrant, RateResult};
    use std::cell::{Cell, RefCell};
    use std::collections::HashMap;
    use std::rc::Rc;

    /// Patterns come from the plugin's configuration, not from clients: a fixed seed.
    type Memo = HashMap<String, Option<Rc<str>>, foldhash::fast::FixedState>;

    thread_local! {
        /// What the current input of a batch call granted; `None` outside one.
        static GRANTS: RefCell<Option<Grants>> = const { RefCell::new(None) };
        /// The client's id and username, once asked during the current call.
        static CLIENT: RefCell<(Option<String>, Option<Option<String>>)> =
            const { RefCell::new((None, None)) };
        /// The patterns `substitute` filled in during the current call.
        static SUBSTITUTED: RefCell<Memo> = RefCell::new(Memo::default());
        /// Which hook call this is.
        static CALL: Cell<u64> = const { Cell::new(0) };
    }

    /// A hook call starts: what was asked of the last one's client is forgotten.
    pub fn begin() {
        CLIENT.with(|c| *c.borrow_mut() = (None, None));
        SUBSTITUTED.with(|s| s.borrow_mut().clear());
        CALL.with(|c| c.set(c.get().wrapping_add(1)));
    }

    pub(crate) fn call_number() -> u64 {
        CALL.with(Cell::get)
    }

    /// `pattern` filled in for the call's client, by `fill` once per call.
    pub(crate) fn substituted(
        pattern: &str,
        fill: impl FnOnce() -> Option<String>,
    ) -> Option<Rc<str>> {
        let known = SUBSTITUTED.with(|s| s.borrow().get(pattern).cloned());
        if let Some(v) = known {
            return v;
        }
        let v: Option<Rc<str>> = fill().map(Rc::from);
        SUBSTITUTED.with(|s| s.borrow_mut().insert(pattern.to_owned(), v.clone()));
        v
    }

    pub(crate) fn client_id(client: &super::Client) -> String {
        CLIENT.with(|c| {
            let mut c = c.borrow_mut();
            c.0.get_or_insert_with(|| client.client_id()).clone()
        })
    }

    pub(crate) fn username(client: &super::Client) -> Option<String> {
        CLIENT.with(|c| {
            let mut c = c.borrow_mut();
            c.1.get_or_insert_with(|| client.username()).clone()
        })
    }

    /// Input `i`'s topic of a batch call's `topics`.
    fn topic(t: &super::types::Topics, i: usize) -> String {
        let start = match i {
            0 => 0,
            _ => t.ends.get(i - 1).copied().unwrap_or(0) as usize,
        };
        let end = t.ends.get(i).copied().unwrap_or(0) as usize;
        t.text.get(start..end).unwrap_or_default().to_owned()
    }

    /// `authorize-many`'s run as the `access` of each publish.
    pub fn accesses(run: super::types::Publishes) -> impl Iterator<Item = super::Access> {
        (0..run.topics.ends.len()).map(move |i| super::Access {
            action: super::Action::Publish,
            topic: topic(&run.topics, i),
            qos: run.qos.get(i).copied().unwrap_or(0),
            retain: run.retain.get(i).is_some_and(|r| *r != 0),
        })
    }

    /// `transform-many`'s run as the `message-header` of each message.
    pub fn headers(
        mut run: super::types::MessageRun,
    ) -> impl Iterator<Item = super::MessageHeader> {
        let mut expiring = std::mem::take(&mut run.message_expiry)
            .into_iter()
            .peekable();
        (0..run.topics.ends.len()).map(move |i| {
            let flag = |column: &[u8]| column.get(i).is_some_and(|f| *f != 0);
            super::MessageHeader {
                topic: topic(&run.topics, i),
                qos: run.qos.get(i).copied().unwrap_or(0),
                retain: flag(&run.retain),
                payload_len: run.payload_lens.get(i).copied().unwrap_or(0),
                message_expiry: expiring
                    .next_if(|(at, _)| *at as usize == i)
                    .map(|(_, s)| s),
                payload_utf8: flag(&run.payload_utf8),
            }
        })
    }

    /// Runs the hook for one input of a batch call.
    pub fn each<T>(hook: impl FnOnce() -> T) -> (T, Grants) {
        let none = || Grants {
            reuse_ms: None,
            lease: None,
        };
        GRANTS.with(|g| *g.borrow_mut() = Some(none()));
        let answer = hook();
        let grants = GRANTS.with(|g| g.borrow_mut().take());
        (answer, grants.unwrap_or_else(none))
    }

    /// The rate limiter over a batch of publishes, with its leases used as the broker
    /// uses them between calls: a publish a lease covers is allowed without asking,
    /// so a limiter that leases is not charged again for the publishes its lease paid
    /// for. The broker keeps what is left of the last lease.
    pub fn rate_limits(
        sizes: Vec<u64>,
        run: impl FnOnce(&[u64]) -> Option<Vec<RateResult>>,
        mut hook: impl FnMut(Event) -> RateResult,
    ) -> Vec<(RateResult, Grants)> {
        let none = || Grants {
            reuse_ms: None,
            lease: None,
        };
        // The plugin's own answers for the whole run, if it gives them (a wrong number
        // of them is the broker's to refuse).
        if let Some(list) = run(sizes.as_slice()) {
            return list.into_iter().map(|r| (r, none())).collect();
        }
        let mut out: Vec<(RateResult, Grants)> = Vec::with_capacity(sizes.len());
        // The answer that granted the current lease, and what is left of it.
        let mut lease: Option<(usize, u32, u64)> = None;
        for b in sizes {
            if let Some((_, n, bytes)) = &mut lease {
                if *n > 0 && *bytes >= b {
                    (*n, *bytes) = (*n - 1, *bytes - b);
                    out.push((RateResult::Allow, none()));
                    continue;
                }
                // A lease that cannot cover a publish ends, as the broker's does.
                lease = None;
            }
            let (r, mut g) = each(|| hook(Event::Publish(b)));
            if let (RateResult::Allow, Some(l)) = (&r, &g.lease) {
                lease = Some((out.len(), l.events, l.bytes));
            } else {
                g.lease = None;
            }
            out.push((r, g));
        }
        // Earlier leases were used up or replaced within the batch.
        for (j, (_, g)) in out.iter_mut().enumerate() {
            let left = lease.filter(|(at, n, _)| *at == j && *n > 0);
            match (&mut g.lease, left) {
                (Some(l), Some((_, n, bytes))) => (l.events, l.bytes) = (n, bytes),
                (l, _) => *l = None,
            }
        }
        out
    }

    /// Records `reuse_answer` for the current input; false outside a batch call.
    pub(crate) fn reuse(ttl_ms: u32) -> bool {
        GRANTS.with(|g| match &mut *g.borrow_mut() {
            Some(g) => {
                g.reuse_ms = Some(ttl_ms);
                true
            }
            None => false,
        })
    }

    pub(crate) fn lease(events: u32, bytes: u64, ttl_ms: u32) -> bool {
        GRANTS.with(|g| match &mut *g.borrow_mut() {
            Some(g) => {
                g.lease = Some(LeaseGrant {
                    events,
                    bytes,
                    ttl_ms,
                });
                true
            }
            None => false,
        })
    }
}

/// Takes `n` tokens whether or not they are there (the bucket may go into debt) and
/// returns the milliseconds until it is out of debt: how long to throttle a client to
/// hold it at the rate without refusing anything.
pub fn charge_tokens(key: &str, capacity: u64, refill_per_second: f64, n: u64) -> u64 {
    host::bucket_charge(key, capacity, refill_per_second, n)
}

/// [`take_tokens`] for each of `amounts` in turn, in one call into the broker: whether
/// each got its tokens.
pub fn take_tokens_each(
    key: &str,
    capacity: u64,
    refill_per_second: f64,
    amounts: &[u64],
) -> Vec<bool> {
    host::bucket_take_each(key, capacity, refill_per_second, amounts)
}

/// [`charge_tokens`] for each of `amounts` in turn, in one call into the broker: what
/// each would have returned.
pub fn charge_tokens_each(
    key: &str,
    capacity: u64,
    refill_per_second: f64,
    amounts: &[u64],
) -> Vec<u64> {
    host::bucket_charge_each(key, capacity, refill_per_second, amounts)
}

/// Milliseconds since the Unix epoch, from the broker.
pub fn now_ms() -> u64 {
    host::now_ms()
}

/// Parses the `config` JSON handed to `init` into the plugin's own type.
pub fn parse_config<T: serde::de::DeserializeOwned>(config: &str) -> Result<T, String> {
    serde_json::from_str(config).map_err(|e| format!("invalid plugin config: {e}"))
}

/// The client's id, asked of the broker once per hook call (a batch call is one call
/// for one client): ask through this rather than `client.client_id()` where a hook
/// may need it for several messages.
pub fn client_id(client: &Client) -> String {
    batch::client_id(client)
}

/// The client's username, asked of the broker once per hook call; see [`client_id`].
pub fn username(client: &Client) -> Option<String> {
    batch::username(client)
}

/// The value of a client attribute set at authentication.
pub fn attribute(client: &Client, name: &str) -> Option<String> {
    client.attribute(name)
}

/// A number that changes with every call of a hook about a client (`authorize`,
/// `rate_limit`, `transform`, `subscribe`, `deliver`; a batch call is one call, for one
/// client) exported with [`export_plugin!`]: what a plugin works out from the call's
/// client (keys, patterns) it may keep while this stays the same.
pub fn call_number() -> u64 {
    batch::call_number()
}

/// Replaces `%u` (username) and `%c` (client id) in a topic pattern. `None` when the
/// pattern needs a value the client lacks, or has with `/`, `+` or `#` in it: such a
/// value could widen the pattern to other clients' topics, so the rule must not apply.
/// Worked out once per pattern per hook call (a batch call asks about many messages
/// of one client; see [`call_number`]).
pub fn substitute(pattern: &str, client: &Client) -> Option<std::rc::Rc<str>> {
    batch::substituted(pattern, || {
        let safe = |s: Option<&str>| {
            s.filter(|s| !s.is_empty() && !s.contains(['/', '+', '#']))
                .map(str::to_owned)
        };
        let mut out = pattern.to_owned();
        if out.contains("%u") {
            out = out.replace("%u", &safe(username(client).as_deref())?);
        }
        if out.contains("%c") {
            out = out.replace("%c", &safe(Some(&client_id(client)))?);
        }
        Some(out)
    })
}
