//! Token-bucket rate limits kept in the broker (so they hold across every instance of
//! the plugin and across reloads):
//! - messages and bytes per second, per client id and per username;
//! - connects per second per source address.
//!
//! Over a publish limit the client is throttled (the broker stops reading from it until
//! the bucket has refilled) or, with `action = "reject"`, the message is refused with
//! 0x96 *Message rate too high*. Over the connect limit a CONNECT gets 0x9F
//! *Connection rate exceeded*.
//!
//! A client well within its limits is given a lease: the plugin takes the tokens for
//! its next publishes (`lease_ms` of its rates, default 10 ms, at most 1 000 messages)
//! while the buckets have them to spare, and the broker allows those without calling
//! the plugin. `lease_ms = 0` counts every message in the plugin.
//! Near a limit there is nothing to spare and every message is counted one by one, so
//! the limits hold exactly as without leases.

use serde::Deserialize;
use std::cell::RefCell;
use std::sync::OnceLock;
use weir_plugin_sdk::{
    call_number, charge_tokens, charge_tokens_each, client_id, lease, parse_config, take_tokens,
    take_tokens_each, username, Client, Event, Init, RateLimit, RateResult, ReasonCode,
};

/// A lease is at most this many messages.
const LEASE_MAX: u64 = 1000;
/// How long a lease lasts if the client does not use it up.
const LEASE_TTL: std::time::Duration = std::time::Duration::from_secs(1);

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct Config {
    per_client: Option<Limits>,
    per_username: Option<Limits>,
    connects_per_address: Option<Rate>,
    #[serde(default)]
    action: Over,
    /// How much of its rates a client may be given in advance, in ms.
    #[serde(default = "ten")]
    lease_ms: u64,
}

fn ten() -> u64 {
    10
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
        if c.lease_ms > 1000 {
            return Err("lease_ms must be at most 1000".into());
        }
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
    fn rate_limit(client: &Client, event: Event) -> RateResult {
        let Some(c) = CONFIG.get() else {
            return RateResult::Allow;
        };
        match event {
            Event::Connect => {
                if let Some(r) = c.connects_per_address {
                    let key = format!("connect:{}", address(&client.peer()));
                    if !take_tokens(&key, r.burst(), r.per_second, 1) {
                        return RateResult::Reject(ReasonCode::ConnectionRateExceeded.into());
                    }
                }
                RateResult::Allow
            }
            Event::Publish(bytes) => with_buckets(c, client, |b| publish(c, b, bytes)),
            Event::Subscribe => RateResult::Allow,
        }
    }

    /// A run of publishes: each bucket charged once for all of them. A limiter that
    /// leases answers one publish at a time instead: then one call takes a lease that
    /// covers the rest of the run and the runs after it.
    fn rate_limit_publishes(client: &Client, sizes: &[u64]) -> Option<Vec<RateResult>> {
        let c = CONFIG.get().filter(|c| c.lease_ms == 0)?;
        Some(with_buckets(c, client, |b| publishes(c, b, sizes)))
    }
}

/// Runs `f` on the buckets of the current call's client, worked out once per call.
fn with_buckets<R>(c: &Config, client: &Client, f: impl FnOnce(&[Bucket]) -> R) -> R {
    BUCKETS.with(|b| {
        let mut b = b.borrow_mut();
        if b.0 != Some(call_number()) {
            *b = (Some(call_number()), buckets(c, client));
        }
        f(&b.1)
    })
}

/// A bucket a client's publishes are counted in.
struct Bucket {
    key: String,
    rate: Rate,
    /// It counts messages (rather than bytes).
    messages: bool,
}

thread_local! {
    /// The buckets of the current call's client, and that call's number.
    static BUCKETS: RefCell<(Option<u64>, Vec<Bucket>)> = const { RefCell::new((None, Vec::new())) };
}

/// The buckets `client`'s publishes are counted in. Only what a configured limit needs
/// is asked of the broker.
fn buckets(c: &Config, client: &Client) -> Vec<Bucket> {
    let scopes = [
        (c.per_client.as_ref()).map(|l| (l, format!("client:{}", client_id(client)))),
        (c.per_username.as_ref()).and_then(|l| Some((l, format!("user:{}", username(client)?)))),
    ];
    let mut out = Vec::new();
    for (limits, key) in scopes.into_iter().flatten() {
        for (rate, kind) in [(limits.messages, "msg"), (limits.bytes, "bytes")] {
            if let Some(rate) = rate {
                let key = format!("{kind}:{key}");
                out.push(Bucket {
                    key,
                    rate,
                    messages: kind == "msg",
                });
            }
        }
    }
    out
}

/// One publish of `bytes` counted in every bucket.
fn publish(c: &Config, buckets: &[Bucket], bytes: u64) -> RateResult {
    let mut wait = 0;
    let mut over = false;
    for b in buckets {
        let (rate, n) = (b.rate, if b.messages { 1 } else { bytes });
        match c.action {
            // Every message is paid for, going into debt if need be; the client is
            // held back until the debt is repaid, so it runs at exactly the rate and
            // nothing is refused.
            Over::Throttle => {
                wait = wait.max(charge_tokens(&b.key, rate.burst(), rate.per_second, n))
            }
            // A message larger than the whole burst could never fit: it is counted
            // against a full bucket.
            Over::Reject => {
                over |= !take_tokens(&b.key, rate.burst(), rate.per_second, n.min(rate.burst()))
            }
        }
    }
    let result = answer(over, wait);
    if matches!(result, RateResult::Allow) {
        take_lease(buckets, bytes, c.lease_ms as f64 / 1000.0);
    }
    result
}

/// Publishes of `sizes`, in turn, counted in every bucket: each bucket asked once for
/// all of them, with what asking it once per publish would have answered.
fn publishes(c: &Config, buckets: &[Bucket], sizes: &[u64]) -> Vec<RateResult> {
    let mut wait = vec![0; sizes.len()];
    let mut over = vec![false; sizes.len()];
    for b in buckets {
        let (rate, burst) = (b.rate.per_second, b.rate.burst());
        let amounts = sizes
            .iter()
            .map(|&bytes| if b.messages { 1 } else { bytes });
        match c.action {
            Over::Throttle => {
                let amounts: Vec<u64> = amounts.collect();
                let waits = charge_tokens_each(&b.key, burst, rate, &amounts);
                wait.iter_mut()
                    .zip(waits)
                    .for_each(|(w, x)| *w = (*w).max(x));
            }
            Over::Reject => {
                let amounts: Vec<u64> = amounts.map(|n| n.min(burst)).collect();
                let took = take_tokens_each(&b.key, burst, rate, &amounts);
                over.iter_mut().zip(took).for_each(|(o, ok)| *o |= !ok);
            }
        }
    }
    (wait.into_iter().zip(over))
        .map(|(wait, over)| answer(over, wait))
        .collect()
}

/// A publish's answer from what its buckets said.
fn answer(over: bool, wait: u64) -> RateResult {
    if over {
        RateResult::Reject(ReasonCode::MessageRateTooHigh.into())
    } else if wait > 0 {
        RateResult::Throttle(wait.min(60_000))
    } else {
        RateResult::Allow
    }
}

/// Takes a lease's tokens from every bucket while all have them to spare, and tells
/// the broker. `bytes` is the size of the message just counted, the guess for the next.
fn take_lease(buckets: &[Bucket], bytes: u64, secs: f64) {
    let mut events = LEASE_MAX;
    let mut budget = u64::MAX;
    for b in buckets {
        let share = (b.rate.per_second * secs).floor() as u64;
        if b.messages {
            events = events.min(share);
        } else {
            budget = budget.min(share);
            events = events.min(share / bytes.max(1));
        }
    }
    if events == 0 || buckets.is_empty() {
        return;
    }
    for Bucket {
        key,
        rate,
        messages,
    } in buckets
    {
        let n = if *messages { events } else { budget };
        // A bucket without that many tokens to spare ends the attempt; what the
        // buckets before it gave is not returned (at most 10 ms of the rate).
        if !take_tokens(key, rate.burst(), rate.per_second, n) {
            return;
        }
    }
    lease(events as u32, budget, LEASE_TTL);
}

weir_plugin_sdk::export_plugin!(Limiter: init, rate_limit);
