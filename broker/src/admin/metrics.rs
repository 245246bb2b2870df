//! Prometheus text exposition of the broker's and the plugins' counters.

use super::AdminState;
use crate::broker::Broker;
use crate::codec::{ReasonCode, Version};
use crate::metrics::{AuthResult, DropCause, Ending, Histogram};
use crate::plugin::{Plugin, LATENCY_BUCKETS_NS};
use std::fmt::Write;
use std::sync::atomic::Ordering::Relaxed;
use std::sync::Arc;

/// Label values are escaped as the exposition format requires.
fn label(v: &str) -> String {
    v.replace('\\', "\\\\")
        .replace('"', "\\\"")
        .replace('\n', "\\n")
}

fn family(out: &mut String, name: &str, kind: &str, help: &str) {
    let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} {kind}");
}

pub fn render(s: &AdminState) -> String {
    let mut out = String::new();
    broker_families(&mut out, s);
    connection_families(&mut out, s);
    latency_families(&mut out, &s.broker);
    super::process::render(&mut out);
    if let Some(chain) = &s.plugins {
        plugin_families(&mut out, &chain.plugins());
    }
    if let Some(c) = &s.cluster {
        cluster_families(&mut out, c);
    }
    out
}

fn cluster_families(out: &mut String, c: &crate::cluster::ClusterStats) {
    for (name, kind, help, v) in [
        (
            "weir_cluster_published_total",
            "counter",
            "Messages this node published to the other nodes (QoS 1 and 2 once JetStream has them).",
            &c.published,
        ),
        (
            "weir_cluster_received_total",
            "counter",
            "Messages other nodes forwarded to this one.",
            &c.received,
        ),
        (
            "weir_cluster_publish_retries_total",
            "counter",
            "JetStream publishes that failed and were sent again (their publishers wait meanwhile).",
            &c.publish_retries,
        ),
        (
            "weir_cluster_undecodable_total",
            "counter",
            "Messages from the cluster that could not be decoded and were dropped.",
            &c.undecodable,
        ),
        (
            "weir_cluster_copies_total",
            "counter",
            "Extra copies of a message NATS sent for overlapping subscriptions, dropped.",
            &c.copies,
        ),
        (
            "weir_cluster_disconnects_total",
            "counter",
            "Times the connection to NATS was lost.",
            &c.disconnects,
        ),
        (
            "weir_cluster_dropped_total",
            "counter",
            "QoS 0 messages for other nodes dropped: 65536 were waiting for NATS already.",
            &c.dropped_once,
        ),
        (
            "weir_cluster_replayed_total",
            "counter",
            "QoS 1/2 messages read back from JetStream after a subscription or a reconnect, copies included.",
            &c.replayed,
        ),
        (
            "weir_cluster_replay_failures_total",
            "counter",
            "Read-backs from JetStream that failed; messages published then may not have reached this node.",
            &c.replay_failures,
        ),
        (
            "weir_cluster_records_swept_total",
            "counter",
            "Records of expired sessions that dead nodes left in weir_sessions, deleted.",
            &c.records_swept,
        ),
    ] {
        family(out, name, kind, help);
        let _ = writeln!(out, "{name} {}", v.load(Relaxed));
    }
    cluster_gauges(out, c);
}

fn cluster_gauges(out: &mut String, c: &crate::cluster::ClusterStats) {
    for (name, help, v) in [
        (
            "weir_cluster_queued",
            "QoS 0 messages waiting to be sent to NATS.",
            c.queued_once.gauge(),
        ),
        (
            "weir_cluster_subjects",
            "NATS subjects this node subscribes to for its clients' filters.",
            &c.subjects,
        ),
        (
            "weir_cluster_connected",
            "1 while the connection to NATS is up.",
            &c.connected,
        ),
    ] {
        family(out, name, "gauge", help);
        let _ = writeln!(out, "{name} {}", v.load(Relaxed));
    }
    let name = "weir_cluster_jetstream_publish_seconds";
    let help = "A QoS 1/2 message's JetStream publish -> its acknowledgement, retries included (its PUBACK waits for this).";
    family(out, name, "histogram", help);
    histogram(out, name, "", &c.jetstream_publish);
}

/// A histogram family's samples (`labels` inside the braces, before `le`).
fn histogram(out: &mut String, name: &str, labels: &str, h: &Histogram) {
    samples(out, name, labels, h.cumulative(), h.sum_seconds());
}

/// A histogram's samples from its cumulative buckets (upper bound in ns, `u64::MAX` for
/// +Inf) and its sum in seconds; `labels` go inside the braces, before `le`.
fn samples(
    out: &mut String,
    name: &str,
    labels: &str,
    cumulative: impl Iterator<Item = (u64, u64)>,
    sum_seconds: f64,
) {
    let sep = if labels.is_empty() { "" } else { "," };
    // `_count` is the +Inf bucket as printed: read apart, they could differ under load.
    let mut count = 0;
    for (bound, n) in cumulative {
        count = n;
        let le = match bound {
            u64::MAX => "+Inf".to_string(),
            b => format!("{}", b as f64 / 1e9),
        };
        let _ = writeln!(out, "{name}_bucket{{{labels}{sep}le=\"{le}\"}} {n}");
    }
    let braces = if labels.is_empty() {
        String::new()
    } else {
        format!("{{{labels}}}")
    };
    let _ = writeln!(out, "{name}_sum{braces} {sum_seconds}");
    let _ = writeln!(out, "{name}_count{braces} {count}");
}

fn latency_families(out: &mut String, b: &Broker) {
    let name = "weir_delivery_latency_seconds";
    let help = "A PUBLISH read from a client of this node -> its copy written for a subscriber (a message queued for an offline session counts its wait).";
    family(out, name, "histogram", help);
    histogram(out, name, "", b.metrics().delivery_latency());
    let name = "weir_store_sync_seconds";
    let help = "The store's group-commit syncs, which durable acknowledgements wait for (none with storage.durability = periodic or persistence off).";
    family(out, name, "histogram", help);
    histogram(
        out,
        name,
        "",
        b.store_sync_latency().unwrap_or(&Histogram::default()),
    );
}

/// The `code` label of a reason code: its name in the MQTT 5 specification, snake case.
fn reason_label(code: u8) -> String {
    let Some(c) = ReasonCode::from_u8(code) else {
        return format!("0x{code:02x}");
    };
    let mut label = String::new();
    for (i, ch) in format!("{c:?}").chars().enumerate() {
        if ch.is_ascii_uppercase() && i > 0 {
            label.push('_');
        }
        label.push(ch.to_ascii_lowercase());
    }
    label
}

fn connection_families(out: &mut String, s: &AdminState) {
    let m = s.broker.metrics();
    family(
        out,
        "weir_connections",
        "gauge",
        "Connected clients by listener and protocol level.",
    );
    for l in &s.listeners {
        for (v, level) in [(Version::V311, "3.1.1"), (Version::V5, "5.0")] {
            let (name, n) = (label(&l.name), l.connections_of(v));
            let _ = writeln!(
                out,
                "weir_connections{{listener=\"{name}\",protocol=\"{level}\"}} {n}"
            );
        }
    }
    let name = "weir_connects_total";
    family(
        out,
        name,
        "counter",
        "CONNACKs sent, by reason code (success: the client is in).",
    );
    for (code, n) in m.connacks() {
        let _ = writeln!(out, "{name}{{code=\"{}\"}} {n}", reason_label(code));
    }
    let name = "weir_disconnects_total";
    family(out, name, "counter", "Connections ended, by reason.");
    for e in Ending::ALL {
        let _ = writeln!(out, "{name}{{reason=\"{}\"}} {}", e.label(), m.endings(e));
    }
    let name = "weir_authentications_total";
    family(
        out,
        name,
        "counter",
        "Credential checks at CONNECT: allowed, denied, or failed (the checker erred).",
    );
    for o in AuthResult::ALL {
        let _ = writeln!(
            out,
            "{name}{{outcome=\"{}\"}} {}",
            o.label(),
            m.auth_outcomes(o)
        );
    }
}

fn broker_families(out: &mut String, s: &AdminState) {
    let b = &s.broker;
    let m = b.metrics();
    for (name, help, v) in [
        (
            "weir_messages_received_total",
            "PUBLISH packets received from clients.",
            m.messages_received(),
        ),
        (
            "weir_messages_sent_total",
            "PUBLISH packets sent to clients.",
            m.messages_sent(),
        ),
        (
            "weir_bytes_received_total",
            "Bytes read from clients.",
            m.bytes_read(),
        ),
        (
            "weir_bytes_sent_total",
            "Bytes written to clients.",
            m.bytes_written(),
        ),
        (
            "weir_connections_refused_total",
            "Sockets over a connection limit closed without a CONNACK: too many were being refused already.",
            m.busy_refusals(),
        ),
        (
            "weir_events_total",
            "Events queued for observer plugins.",
            b.events().stats().emitted.load(Relaxed),
        ),
        (
            "weir_events_lost_total",
            "Events lost because the queue for observer plugins was full (plugins.events_queue).",
            b.events().stats().overflow.load(Relaxed),
        ),
        (
            "weir_event_batches_total",
            "Batches of events handed to observer plugins.",
            b.events().stats().batches.load(Relaxed),
        ),
    ] {
        family(out, name, "counter", help);
        let _ = writeln!(out, "{name} {v}");
    }
    broker_gauges(out, b);
    family(
        out,
        "weir_dropped_messages_total",
        "counter",
        "Messages not delivered, by cause.",
    );
    for cause in DropCause::ALL {
        let _ = writeln!(
            out,
            "weir_dropped_messages_total{{cause=\"{}\"}} {}",
            cause.label(),
            m.drops(cause)
        );
    }
}

fn broker_gauges(out: &mut String, b: &Broker) {
    for (name, help, v) in [
        (
            "weir_retained_messages",
            "Retained messages held.",
            b.retained_count(),
        ),
        (
            "weir_sessions",
            "Sessions, connected or not.",
            b.session_count(),
        ),
        (
            "weir_subscriptions",
            "Subscriptions of this node's sessions, connected or not (each shared group member counts).",
            b.subscription_count(),
        ),
        (
            "weir_queued_messages",
            "Messages waiting in session queues, in memory and on disk.",
            b.queued_messages(),
        ),
        (
            "weir_spilled_messages",
            "Messages of slow sessions' queues kept on disk (storage.max_spill_mb).",
            b.spilled().messages().load(Relaxed) as usize,
        ),
        (
            "weir_spilled_bytes",
            "Bytes of slow sessions' queues kept on disk (storage.max_spill_mb).",
            b.spilled().bytes().load(Relaxed) as usize,
        ),
    ] {
        family(out, name, "gauge", help);
        let _ = writeln!(out, "{name} {v}");
    }
}

/// A plugin's figure for one family.
type PerPlugin = fn(&Plugin) -> u64;

fn plugin_families(out: &mut String, plugins: &[Arc<Plugin>]) {
    let info = "The loaded version of each plugin (1).";
    family(out, "weir_plugin_info", "gauge", info);
    for p in plugins {
        let (name, hash) = (label(&p.name), &p.hash);
        let _ = writeln!(
            out,
            "weir_plugin_info{{plugin=\"{name}\",sha256=\"{hash}\"}} 1"
        );
    }
    let families: [(&str, &str, &str, PerPlugin); 9] = [
        (
            "weir_plugin_enabled",
            "gauge",
            "1 if the plugin takes part in the chain.",
            |p| p.stats.enabled() as u64,
        ),
        ("weir_plugin_calls_total", "counter", "Hook calls.", |p| {
            p.stats.calls.load()
        }),
        (
            "weir_plugin_reused_answers_total",
            "counter",
            "Answers reused (host.reuse-answer) or publishes leased (host.lease) instead of calling the plugin.",
            |p| p.stats.reused.load(),
        ),
        (
            "weir_plugin_denials_total",
            "counter",
            "Denials, rejections and drops.",
            |p| p.stats.denials.load(Relaxed),
        ),
        (
            "weir_plugin_deadline_hits_total",
            "counter",
            "Calls stopped at their deadline.",
            |p| p.stats.errors_deadline.load(Relaxed),
        ),
        (
            "weir_plugin_reloads_total",
            "counter",
            "New versions swapped in.",
            |p| p.stats.reloads.load(Relaxed),
        ),
        (
            "weir_plugin_rejections_total",
            "counter",
            "New versions refused; the old one kept serving.",
            |p| p.stats.rejections.load(Relaxed),
        ),
        (
            "weir_plugin_http_requests_total",
            "counter",
            "HTTP requests the plugin sent (its allow-list covered them).",
            |p| p.stats.http_sent.load(Relaxed),
        ),
        (
            "weir_plugin_http_refused_total",
            "counter",
            "HTTP requests refused before sending: not under the plugin's allow_http.",
            |p| p.stats.http_refused.load(Relaxed),
        ),
    ];
    for (name, kind, help, value) in families {
        family(out, name, kind, help);
        for p in plugins {
            let _ = writeln!(out, "{name}{{plugin=\"{}\"}} {}", label(&p.name), value(p));
        }
    }
    plugin_errors(out, plugins);
    plugin_latency(out, plugins);
    plugin_shadows(out, plugins);
}

fn plugin_shadows(out: &mut String, plugins: &[Arc<Plugin>]) {
    let name = "weir_plugin_shadow_answers_total";
    let help =
        "A shadow candidate's answers compared with the plugin's: agreed, disagreed, failed.";
    family(out, name, "counter", help);
    for p in plugins {
        let Some(s) = p.shadow() else { continue };
        let plugin = label(&p.name);
        for (result, n) in [
            ("agreed", &s.agreed),
            ("disagreed", &s.disagreed),
            ("failed", &s.failed),
        ] {
            let n = n.load(Relaxed);
            let _ = writeln!(out, "{name}{{plugin=\"{plugin}\",result=\"{result}\"}} {n}");
        }
    }
}

fn plugin_errors(out: &mut String, plugins: &[Arc<Plugin>]) {
    let name = "weir_plugin_errors_total";
    family(out, name, "counter", "Failed calls by kind.");
    for p in plugins {
        for (kind, n) in p.stats.errors() {
            let plugin = label(&p.name);
            let _ = writeln!(out, "{name}{{plugin=\"{plugin}\",kind=\"{kind}\"}} {n}");
        }
    }
}

fn plugin_latency(out: &mut String, plugins: &[Arc<Plugin>]) {
    let family_name = "weir_plugin_call_duration_seconds";
    family(out, family_name, "histogram", "Hook call latency.");
    for p in plugins {
        let labels = format!("plugin=\"{}\"", label(&p.name));
        let counts = LATENCY_BUCKETS_NS.iter().zip(&p.stats.latency_buckets);
        let cumulative = counts.scan(0, |total, (bound, n)| {
            *total += n.load(Relaxed);
            Some((*bound, *total))
        });
        let sum = p.stats.latency_ns_sum.load(Relaxed) as f64 / 1e9;
        samples(out, family_name, &labels, cumulative, sum);
    }
}
