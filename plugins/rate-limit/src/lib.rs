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
use weir_plugin_sdk::{parse_config, take_tokens, Client, Event, Init, RateLimit, RateResult};

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

    /// How long until `n` tokens have refilled, in milliseconds.
    fn wait_ms(&self, n: u64) -> u64 {
        ((n as f64 / self.per_second) * 1000.0).ceil().clamp(1.0, 60_000.0) as u64
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
        let Some(c) = CONFIG.get() else { return RateResult::Allow };
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
                let scopes = [
                    (c.per_client.as_ref(), Some(format!("client:{}", client.client_id))),
                    (c.per_username.as_ref(), client.username.as_ref().map(|u| format!("user:{u}"))),
                ];
                for (limits, key) in scopes {
                    let (Some(limits), Some(key)) = (limits, key) else { continue };
                    for (rate, n, kind) in [(limits.messages, 1, "msg"), (limits.bytes, bytes, "bytes")] {
                        let Some(rate) = rate else { continue };
                        // A message larger than the whole burst can never fit: count it
                        // against an empty bucket rather than refusing it forever.
                        let n = n.min(rate.burst());
                        if !take_tokens(&format!("{kind}:{key}"), rate.burst(), rate.per_second, n) {
                            wait = wait.max(rate.wait_ms(n));
                        }
                    }
                }
                match (wait, c.action) {
                    (0, _) => RateResult::Allow,
                    (_, Over::Reject) => RateResult::Reject(0x96),
                    (ms, Over::Throttle) => RateResult::Throttle(ms),
                }
            }
            Event::Subscribe => RateResult::Allow,
        }
    }
}

weir_plugin_sdk::export_plugin!(Limiter: init, rate_limit);
