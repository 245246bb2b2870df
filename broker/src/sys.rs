//! `$SYS` topics: the broker describing itself over MQTT, under Mosquitto's names where
//! Mosquitto has one (so existing tools and dashboards read Weir unchanged), and
//! Weir's own for its plugins, listeners and drops.
//!
//! Every `sys_interval` seconds the values that changed are published as retained
//! QoS 0 messages to this node's subscribers. They are not stored (a restart
//! publishes them afresh) nor sent to the rest of a cluster: each node describes itself.
//! Reading them is a subscription like any other, so an ACL decides who may; clients
//! cannot publish under `$SYS/`.

use crate::broker::Broker;
use crate::connection::ListenerInfo;
use crate::metrics::DropCause;
use crate::plugin::PluginChain;
use std::collections::HashMap;
use std::sync::atomic::Ordering::Relaxed;
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::sync::watch;

/// What the `$SYS` publisher reads from.
pub struct Sources {
    pub broker: Arc<Broker>,
    pub listeners: Vec<Arc<ListenerInfo>>,
    pub plugins: Option<Arc<PluginChain>>,
}

/// Publishes until shutdown; nothing with an interval of 0.
pub fn start(sources: Sources, interval: Duration, mut shutdown: watch::Receiver<bool>) {
    if interval.is_zero() {
        return;
    }
    tokio::spawn(async move {
        let mut tree = Tree::new(Instant::now());
        let mut tick = tokio::time::interval(interval);
        loop {
            tokio::select! {
                _ = tick.tick() => {}
                _ = shutdown.changed() => return,
            }
            for (topic, value) in tree.changes(&sources, Instant::now()) {
                sources
                    .broker
                    .publish_sys(&topic, value.into_bytes().into());
            }
        }
    });
}

/// Exponentially damped averages of a per-minute rate over 1, 5 and 15 minutes, as
/// Unix load averages (and Mosquitto's `load/...` topics) are.
#[derive(Default)]
struct Load {
    last: u64,
    averages: [f64; 3],
}

impl Load {
    const WINDOWS: [(f64, &'static str); 3] = [(60.0, "1min"), (300.0, "5min"), (900.0, "15min")];

    fn update(&mut self, total: u64, elapsed: f64) {
        let delta = total.saturating_sub(self.last);
        self.last = total;
        if elapsed <= 0.0 {
            return;
        }
        let per_minute = delta as f64 * 60.0 / elapsed;
        for (avg, (window, _)) in self.averages.iter_mut().zip(Self::WINDOWS) {
            let keep = (-elapsed / window).exp();
            *avg = *avg * keep + per_minute * (1.0 - keep);
        }
    }
}

/// The values last published, and what the load averages need.
struct Tree {
    started: Instant,
    last_tick: Option<Instant>,
    published: HashMap<String, String>,
    loads: HashMap<&'static str, Load>,
    max_connected: u64,
}

impl Tree {
    fn new(started: Instant) -> Tree {
        Tree {
            started,
            last_tick: None,
            published: HashMap::new(),
            loads: HashMap::new(),
            max_connected: 0,
        }
    }

    /// Every topic whose value differs from what was last published, with the value.
    fn changes(&mut self, s: &Sources, now: Instant) -> Vec<(String, String)> {
        let mut all = self.broker_values(s, now);
        plugin_values(s, &mut all);
        all.retain(|(topic, value)| self.published.get(topic) != Some(value));
        for (topic, value) in &all {
            self.published.insert(topic.clone(), value.clone());
        }
        all
    }

    fn broker_values(&mut self, s: &Sources, now: Instant) -> Vec<(String, String)> {
        let b = &s.broker;
        let m = b.metrics();
        let connected = m.connections();
        self.max_connected = self.max_connected.max(connected);
        let sessions = b.session_count() as u64;
        let dropped: u64 = DropCause::ALL.iter().map(|c| m.drops(*c)).sum();
        let queued = b.queued_messages() as u64;
        let retained = b.retained_count() as u64;
        let counts: [(&str, u64); 17] = [
            ("clients/connected", connected),
            ("clients/active", connected),
            ("clients/total", sessions.max(connected)),
            ("clients/disconnected", sessions.saturating_sub(connected)),
            ("clients/inactive", sessions.saturating_sub(connected)),
            ("clients/maximum", self.max_connected),
            ("messages/received", m.messages_received()),
            ("messages/sent", m.messages_sent()),
            ("publish/messages/received", m.messages_received()),
            ("publish/messages/sent", m.messages_sent()),
            ("publish/messages/dropped", dropped),
            ("bytes/received", m.bytes_read()),
            ("bytes/sent", m.bytes_written()),
            ("subscriptions/count", b.subscription_count() as u64),
            ("retained messages/count", retained),
            ("store/messages/count", queued),
            ("messages/stored", retained + queued),
        ];
        let mut out: Vec<(String, String)> = counts
            .iter()
            .map(|(k, v)| (format!("$SYS/broker/{k}"), v.to_string()))
            .collect();
        out.push(("$SYS/broker/version".into(), version()));
        let uptime = now.duration_since(self.started).as_secs();
        out.push(("$SYS/broker/uptime".into(), format!("{uptime} seconds")));
        for c in DropCause::ALL {
            let topic = format!("$SYS/broker/dropped/{}", c.label());
            out.push((topic, m.drops(c).to_string()));
        }
        for l in &s.listeners {
            let topic = format!("$SYS/broker/listeners/{}/connections", l.name);
            out.push((topic, l.connections().to_string()));
        }
        let connects = m.connacks().find(|(c, _)| *c == 0).map_or(0, |(_, n)| n);
        self.loads(
            now,
            &mut out,
            [
                ("messages/received", m.messages_received()),
                ("messages/sent", m.messages_sent()),
                ("publish/received", m.messages_received()),
                ("publish/sent", m.messages_sent()),
                ("publish/dropped", dropped),
                ("bytes/received", m.bytes_read()),
                ("bytes/sent", m.bytes_written()),
                ("connections", connects),
            ],
        );
        out
    }

    fn loads(
        &mut self,
        now: Instant,
        out: &mut Vec<(String, String)>,
        totals: [(&'static str, u64); 8],
    ) {
        let elapsed = self
            .last_tick
            .map_or(0.0, |t| now.duration_since(t).as_secs_f64());
        self.last_tick = Some(now);
        for (name, total) in totals {
            let load = self.loads.entry(name).or_default();
            if elapsed == 0.0 {
                // The first tick: nothing to average yet, only where the counts start.
                load.last = total;
            }
            load.update(total, elapsed);
            for (avg, (_, window)) in load.averages.iter().zip(Load::WINDOWS) {
                out.push((
                    format!("$SYS/broker/load/{name}/{window}"),
                    format!("{avg:.2}"),
                ));
            }
        }
    }
}

fn version() -> String {
    format!("weir {}", env!("CARGO_PKG_VERSION"))
}

/// `$SYS/broker/plugins/<name>/...`: the running version (its SHA-256), whether it is
/// enabled, its calls, denials, errors and mean call time.
fn plugin_values(s: &Sources, out: &mut Vec<(String, String)>) {
    let Some(chain) = &s.plugins else { return };
    for p in chain.plugins().iter() {
        let st = &p.stats;
        let calls = st.calls.load();
        let errors: u64 = st.errors().iter().map(|(_, n)| n).sum();
        let mean_us = st.mean_call_us();
        let base = format!("$SYS/broker/plugins/{}", p.name);
        out.extend([
            (format!("{base}/version"), p.hash.clone()),
            (format!("{base}/enabled"), st.enabled().to_string()),
            (format!("{base}/calls"), calls.to_string()),
            (
                format!("{base}/denials"),
                st.denials.load(Relaxed).to_string(),
            ),
            (format!("{base}/errors"), errors.to_string()),
            (format!("{base}/latency/mean_us"), format!("{mean_us:.2}")),
        ]);
    }
}

/// Whether a client may publish to `topic`: not under `$SYS/`, which only the broker
/// writes (a client could otherwise forge what operators read).
pub fn client_may_publish(topic: &str) -> bool {
    !(topic == "$SYS" || topic.starts_with("$SYS/"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_steady_rate_becomes_the_load_average() {
        let mut load = Load::default();
        // 600 messages every 10 s: 3600 a minute, for 100 minutes (the 15-minute
        // average has come within 0.2% of it).
        for i in 1..=600u64 {
            load.update(i * 600, 10.0);
        }
        for avg in load.averages {
            assert!((avg - 3600.0).abs() < 3600.0 * 0.002, "{avg}");
        }
        // A silent minute: the 1-minute average falls to 1/e of the rate.
        load.update(600 * 600, 60.0);
        assert!(
            load.averages[0] < 3600.0 * 0.37 + 1.0,
            "{:?}",
            load.averages
        );
        assert!(load.averages[2] > load.averages[0]);
    }

    #[test]
    fn only_the_broker_writes_under_sys() {
        assert!(!client_may_publish("$SYS/broker/uptime"));
        assert!(!client_may_publish("$SYS"));
        assert!(client_may_publish("$SYSTEM/x"));
        assert!(client_may_publish("a/$SYS/b"));
    }
}
