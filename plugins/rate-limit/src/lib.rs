//! Token-bucket rate limits kept in the broker (so they hold across every instance of
//! the plugin and across reloads):
//! - messages and bytes per second, per client id and per username;
//! - connects per second per source address.
//!
//! Over a publish limit the client is throttled (the broker stops reading from it until
//! the bucket has refilled) or, with `action = "reject"`, the message is refused with
//! 0x96 *Message rate too high*. Over the connect limit a CONNECT gets 0x9F
//! *Connection rate exceeded*.

use serde::Deserialize;
use std::sync::OnceLock;
use weir_plugin_sdk::{
    charge_tokens, parse_config, take_tokens, Client, Event, Init, RateLimit, RateResult,
};

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct Config {
    per_client: Option<Limits>,
    per_username: Option<Limits>,
    connects_per_address: Option<Rate>,
    #[serde(default)]
    action: Over,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Limits {
    messages: Option<Rate>,
    bytes: Option<Rate>,
}

/// `per_second` on average, bursts of up to `burst` (default: one second's worth).
#[derive(Deserialize, Clone, Copy)]
#[serde(deny_unknown_fields)]
struct Rate {
    per_second: f64,
    burst: Option<u64>,
}

#[derive(Deserialize, Default, Clone, Copy, PartialEq)]
#[serde(rename_all = "lowercase")]
enum Over {
    #[default]
    Throttle,
    Reject,
}

static CONFIG: OnceLock<Config> = OnceLock::new();

impl Rate {
    fn burst(&self) -> u64 {
        self.burst.unwrap_or(self.per_second.ceil() as u64).max(1)
    }
}

struct Limiter;

impl Init for Limiter {
    fn init(config: String) -> Result<(), String> {
        let c: Config = parse_config(&config)?;
        let rates = [&c.per_client, &c.per_username]
            .into_iter()
            .flatten()
            .flat_map(|l| [l.messages, l.bytes])
            .chain([c.connects_per_address])
            .flatten();
        for r in rates {
            if !(r.per_second > 0.0 && r.per_second.is_finite()) {
                return Err("per_second must be a positive number".into());
            }
        }
        let _ = CONFIG.set(c);
        Ok(())
    }
}

/// The address part of `address:port` (also for `[v6]:port`).
fn address(peer: &str) -> &str {
    peer.rsplit_once(':').map_or(peer, |(a, _)| a)
}

impl RateLimit for Limiter {
    fn rate_limit(client: Client, event: Event) -> RateResult {
        let Some(c) = CONFIG.get() else {
            return RateResult::Allow;
        };
        match event {
            Event::Connect => {
                if let Some(r) = c.connects_per_address {
                    let key = format!("connect:{}", address(&client.peer));
                    if !take_tokens(&key, r.burst(), r.per_second, 1) {
                        return RateResult::Reject(0x9F);
                    }
                }
                RateResult::Allow
            }
            Event::Publish(bytes) => {
                let mut wait = 0;
                let mut over = false;
                let scopes = [
                    (
                        c.per_client.as_ref(),
                        Some(format!("client:{}", client.client_id)),
                    ),
                    (
                        c.per_username.as_ref(),
                        client.username.as_ref().map(|u| format!("user:{u}")),
                    ),
                ];
                for (limits, key) in scopes {
                    let (Some(limits), Some(key)) = (limits, key) else {
                        continue;
                    };
                    for (rate, n, kind) in
                        [(limits.messages, 1, "msg"), (limits.bytes, bytes, "bytes")]
                    {
                        let Some(rate) = rate else { continue };
                        let key = format!("{kind}:{key}");
                        match c.action {
                            // Every message is paid for, going into debt if need be; the
                            // client is held back until the debt is repaid, so it runs at
                            // exactly the rate and nothing is refused.
                            Over::Throttle => {
                                wait =
                                    wait.max(charge_tokens(&key, rate.burst(), rate.per_second, n))
                            }
                            // A message larger than the whole burst could never fit: it
                            // is counted against a full bucket.
                            Over::Reject => {
                                over |= !take_tokens(
                                    &key,
                                    rate.burst(),
                                    rate.per_second,
                                    n.min(rate.burst()),
                                )
                            }
                        }
                    }
                }
                if over {
                    RateResult::Reject(0x96)
                } else if wait > 0 {
                    RateResult::Throttle(wait.min(60_000))
                } else {
                    RateResult::Allow
                }
            }
            Event::Subscribe => RateResult::Allow,
        }
    }
}

weir_plugin_sdk::export_plugin!(Limiter: init, rate_limit);
