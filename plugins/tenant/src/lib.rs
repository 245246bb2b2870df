//! Each tenant its own topic space, like a mount point: a client of tenant `acme`
//! publishing to `sensors/t1` publishes to `tenants/acme/sensors/t1`, subscribing to
//! `sensors/#` subscribes to `tenants/acme/sensors/#`, and what it receives has the
//! prefix taken off again. Clients never see, and cannot reach, another tenant's topics.
//!
//! The tenant is the client's `tenant` attribute (set by an authentication plugin) or
//! else its username. A client with neither may not publish or subscribe (0x87).
//! Uses three hooks: `transform` (publish), `subscribe` and `deliver`, all new in 0.2.0
//! but `transform`.

use serde::Deserialize;
use std::cell::RefCell;
use std::time::Duration;
use weir_plugin_sdk::{
    attribute, parse_config, reuse_answer, Client, Deliver, DeliverOutcome, Init, Message,
    MessageHeader, ReasonCode, Rewrite, Subscribe, SubscribeResult, Subscription, Transform,
    TransformOutcome,
};

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Config {
    /// Where tenants' topic spaces live; `%t` is the tenant.
    #[serde(default = "default_prefix")]
    prefix: String,
    /// The highest QoS a tenant's subscription is granted (0, 1 or 2).
    #[serde(default = "default_max_qos")]
    max_qos: u8,
    /// How long the broker may reuse an answer for the same client and topic (ms).
    #[serde(default = "default_reuse_ms")]
    reuse_ms: u64,
}

fn default_prefix() -> String {
    "tenants/%t/".into()
}

fn default_max_qos() -> u8 {
    2
}

fn default_reuse_ms() -> u64 {
    60_000
}

thread_local! {
    static CONFIG: RefCell<Option<Config>> = const { RefCell::new(None) };
}

fn with_config<R>(f: impl FnOnce(&Config) -> R) -> R {
    CONFIG.with(|c| {
        let c = c.borrow();
        let fallback;
        let config = match c.as_ref() {
            Some(c) => c,
            None => {
                fallback = Config {
                    prefix: default_prefix(),
                    max_qos: default_max_qos(),
                    reuse_ms: default_reuse_ms(),
                };
                &fallback
            }
        };
        f(config)
    })
}

/// The client's topic-space prefix; `None` if it has no usable tenant (none, or one
/// with `/`, `+` or `#` in it, which could reach into another tenant's space).
fn prefix_of(client: &Client, config: &Config) -> Option<String> {
    let tenant = attribute(client, "tenant").or_else(|| client.username())?;
    if tenant.is_empty() || tenant.contains(['/', '+', '#']) {
        return None;
    }
    Some(config.prefix.replace("%t", &tenant))
}

fn reuse(config: &Config) {
    if config.reuse_ms > 0 {
        reuse_answer(Duration::from_millis(config.reuse_ms));
    }
}

struct Tenant;

impl Init for Tenant {
    fn init(config: String) -> Result<(), String> {
        let config: Config = parse_config(&config)?;
        if config.max_qos > 2 {
            return Err(format!(
                "max_qos is {}; it must be 0, 1 or 2",
                config.max_qos
            ));
        }
        if !config.prefix.contains("%t") || !config.prefix.ends_with('/') {
            return Err("prefix must contain %t and end with '/'".into());
        }
        CONFIG.with(|c| *c.borrow_mut() = Some(config));
        Ok(())
    }
}

impl Transform for Tenant {
    fn transform(client: &Client, message: &Message, header: MessageHeader) -> TransformOutcome {
        with_config(|config| {
            let Some(prefix) = prefix_of(client, config) else {
                return TransformOutcome::Drop(ReasonCode::NotAuthorized.into());
            };
            reuse(config);
            message.set_topic(&format!("{prefix}{}", header.topic));
            TransformOutcome::Apply
        })
    }
}

impl Subscribe for Tenant {
    fn subscribe(client: &Client, subscription: Subscription) -> SubscribeResult {
        with_config(|config| {
            let Some(prefix) = prefix_of(client, config) else {
                return SubscribeResult::Deny(ReasonCode::NotAuthorized.into());
            };
            let filter = &subscription.filter;
            let filter = match filter.strip_prefix("$share/") {
                // `$share/group/filter`: the group stays, the filter moves.
                Some(rest) => match rest.split_once('/') {
                    Some((group, f)) => format!("$share/{group}/{prefix}{f}"),
                    None => return SubscribeResult::Deny(ReasonCode::TopicFilterInvalid.into()),
                },
                // `$SYS/...` and the like are the broker's, not a tenant's.
                None if filter.starts_with('$') => {
                    return SubscribeResult::Deny(ReasonCode::NotAuthorized.into())
                }
                None => format!("{prefix}{filter}"),
            };
            SubscribeResult::Rewrite(Rewrite {
                filter,
                qos: subscription.qos.min(config.max_qos),
            })
        })
    }
}

impl Deliver for Tenant {
    fn deliver(client: &Client, message: &Message, header: MessageHeader) -> DeliverOutcome {
        with_config(|config| {
            let Some(prefix) = prefix_of(client, config) else {
                return DeliverOutcome::Drop;
            };
            reuse(config);
            match header.topic.strip_prefix(&prefix) {
                Some(own) => {
                    message.set_topic(own);
                    DeliverOutcome::Apply
                }
                // Routed here only through a subscription this plugin did not make.
                None => DeliverOutcome::Drop,
            }
        })
    }
}

weir_plugin_sdk::export_plugin!(Tenant: init, transform, subscribe, deliver);
