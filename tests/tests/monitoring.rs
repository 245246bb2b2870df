//! What operators watch and alert on: `$SYS` topics (Mosquitto's names, Weir's own,
//! behind the ACL) and `/metrics` (process, connections, authentication, latency
//! histograms), with the Grafana dashboard in docs/ querying only what exists.

use std::collections::HashMap;
use std::process::Command;
use std::time::{Duration, Instant};
use weir_tests::clients::v4::C4;
use weir_tests::clients::v5::QoS;
use weir_tests::clients::C5;
use weir_tests::http::request;
use weir_tests::raw::{
    ack_code, connack_code, connect, publish5, subscribe5, v5_client, Raw, CLEAN,
};
use weir_tests::{eventually, grafana, plugins, Opts, Weir};

/// The last payload seen per topic from `c` within `d`.
async fn gather(c: &mut C5, d: Duration) -> HashMap<String, String> {
    let mut seen = HashMap::new();
    let end = tokio::time::Instant::now() + d;
    while let Some(p) = c
        .publish_within(end.saturating_duration_since(tokio::time::Instant::now()))
        .await
    {
        let topic = String::from_utf8_lossy(&p.topic).into_owned();
        seen.insert(topic, String::from_utf8_lossy(&p.payload).into_owned());
    }
    seen
}

fn num(seen: &HashMap<String, String>, topic: &str) -> f64 {
    let v = seen
        .get(topic)
        .unwrap_or_else(|| panic!("no {topic} in {seen:#?}"));
    v.split_whitespace().next().unwrap().parse().unwrap()
}

fn sys_every_second() -> Opts {
    Opts {
        top: "sys_interval = 1".into(),
        ..Default::default()
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn sys_topics_have_mosquitto_names_and_follow_the_broker() {
    let w = Weir::with(sys_every_second());
    let (mut watcher, _) = C5::connect_with(C5::opts(w.port, "watcher")).await;
    watcher.subscribe("$SYS/#", QoS::AtMostOnce).await;
    let first = gather(&mut watcher, Duration::from_millis(1500)).await;
    assert_eq!(
        first["$SYS/broker/version"],
        format!("weir {}", env!("CARGO_PKG_VERSION"))
    );
    assert!(first["$SYS/broker/uptime"].ends_with(" seconds"));
    assert_eq!(num(&first, "$SYS/broker/clients/connected"), 1.0);
    assert_eq!(num(&first, "$SYS/broker/subscriptions/count"), 1.0);
    for topic in [
        "$SYS/broker/clients/total",
        "$SYS/broker/clients/maximum",
        "$SYS/broker/messages/received",
        "$SYS/broker/messages/sent",
        "$SYS/broker/bytes/received",
        "$SYS/broker/retained messages/count",
        "$SYS/broker/store/messages/count",
        "$SYS/broker/messages/stored",
        "$SYS/broker/load/publish/sent/5min",
        "$SYS/broker/load/messages/received/1min",
        "$SYS/broker/load/bytes/sent/15min",
        "$SYS/broker/dropped/queue_full",
        "$SYS/broker/listeners/tcp/connections",
    ] {
        num(&first, topic);
    }

    // Publishes and a second client show in the next updates.
    let (p, _) = C5::connect_with(C5::opts(w.port, "publisher")).await;
    for _ in 0..50 {
        p.client
            .publish("load/x", QoS::AtMostOnce, false, "x")
            .await
            .unwrap();
    }
    let mut now = HashMap::new();
    let deadline = Instant::now() + Duration::from_secs(10);
    while Instant::now() < deadline {
        now.extend(gather(&mut watcher, Duration::from_millis(1200)).await);
        if now
            .get("$SYS/broker/messages/received")
            .is_some_and(|v| v.parse::<u64>().unwrap_or(0) >= 50)
            && now
                .get("$SYS/broker/load/messages/received/1min")
                .is_some_and(|v| v.parse::<f64>().unwrap_or(0.0) > 0.0)
        {
            break;
        }
    }
    assert!(
        num(&now, "$SYS/broker/messages/received") >= 50.0,
        "{now:#?}"
    );
    assert!(num(&now, "$SYS/broker/load/messages/received/1min") > 0.0);
    assert_eq!(num(&now, "$SYS/broker/clients/connected"), 2.0);
    assert_eq!(num(&now, "$SYS/broker/clients/maximum"), 2.0);

    // An independent client reads the same tree (a retained value arrives at once).
    let out = Command::new("mosquitto_sub")
        .args(["-p", &w.port.to_string(), "-t", "$SYS/broker/version"])
        .args(["-C", "1", "-W", "10"])
        .output()
        .expect("mosquitto_sub (run .ci/setup)");
    assert_eq!(
        String::from_utf8_lossy(&out.stdout).trim(),
        format!("weir {}", env!("CARGO_PKG_VERSION"))
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn sys_is_off_at_0_and_out_of_reach_of_wildcards_and_publishers() {
    let w = Weir::with(Opts {
        top: "sys_interval = 0".into(),
        ..Default::default()
    });
    let (mut c, _) = C5::connect_with(C5::opts(w.port, "c")).await;
    c.subscribe("$SYS/#", QoS::AtMostOnce).await;
    assert!(gather(&mut c, Duration::from_millis(1500)).await.is_empty());

    let w = Weir::with(sys_every_second());
    // `#` does not match `$` topics (MQTT-4.7.2-1).
    let (mut all, _) = C5::connect_with(C5::opts(w.port, "all")).await;
    all.subscribe("#", QoS::AtMostOnce).await;
    let seen = gather(&mut all, Duration::from_millis(2500)).await;
    assert!(seen.keys().all(|t| !t.starts_with('$')), "{seen:#?}");
    // Clients cannot write under $SYS/: 0x87, and the broker's value stands.
    let mut forger = v5_client(&w, "forger", &[]);
    forger.send(&publish5(
        0x02,
        "$SYS/broker/version",
        Some(1),
        &[],
        b"evil",
    ));
    assert_eq!(ack_code(&forger.recv().unwrap()), 0x87);
    // Nor through a will: the connection is refused (0x87).
    let mut o = C5::opts(w.port, "will-forger");
    o.set_last_will(rumqttc::v5::mqttbytes::v5::LastWill::new(
        "$SYS/broker/version",
        "evil",
        QoS::AtMostOnce,
        true,
        None,
    ));
    let mut refused = C5::start(o);
    let ended = refused.next(Duration::from_secs(10)).await;
    assert!(
        matches!(&ended, Some(Err(e)) if e.contains("NotAuthorized")),
        "{ended:?}"
    );
    let out = Command::new("mosquitto_sub")
        .args(["-p", &w.port.to_string(), "-t", "$SYS/broker/version"])
        .args(["-C", "1", "-W", "10"])
        .output()
        .unwrap();
    assert!(String::from_utf8_lossy(&out.stdout).starts_with("weir "));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn the_acl_decides_who_reads_sys_and_plugins_report_there() {
    let acl = plugins::wasm("acl");
    let w = Weir::with(Opts {
        top: "sys_interval = 1".into(),
        extra: format!(
            "[[plugin]]\nname = \"acl\"\npath = {acl:?}\n[plugin.config]\ndefault = \"deny\"\nrules = [ {{ access = \"read\", topic = \"$SYS/broker/clients/#\" }}, {{ access = \"read\", topic = \"$SYS/broker/plugins/#\" }} ]\n"
        ),
        ..Default::default()
    });
    let mut c = v5_client(&w, "reader", &[]);
    c.send(&subscribe5(1, "$SYS/#", 0));
    let suback = c.recv().unwrap();
    assert_eq!(
        (suback[0], suback[suback.len() - 1]),
        (0x90, 0x87),
        "{suback:?}"
    );
    let (mut ok, _) = C5::connect_with(C5::opts(w.port, "ok")).await;
    ok.subscribe("$SYS/broker/clients/connected", QoS::AtMostOnce)
        .await;
    ok.subscribe("$SYS/broker/plugins/acl/+", QoS::AtMostOnce)
        .await;
    let seen = gather(&mut ok, Duration::from_millis(2500)).await;
    assert!(num(&seen, "$SYS/broker/clients/connected") >= 1.0);
    let sha = Command::new("sha256sum").arg(&acl).output().unwrap();
    let sha = String::from_utf8_lossy(&sha.stdout);
    assert_eq!(
        seen["$SYS/broker/plugins/acl/version"],
        sha.split_whitespace().next().unwrap()
    );
    assert!(
        num(&seen, "$SYS/broker/plugins/acl/calls") >= 2.0,
        "{seen:#?}"
    );
    assert!(num(&seen, "$SYS/broker/plugins/acl/denials") >= 1.0);
    assert_eq!(seen["$SYS/broker/plugins/acl/enabled"], "true");
}

/// The value of the sample `name` (labels as printed) in a /metrics text.
fn sample(metrics: &str, name: &str) -> f64 {
    metrics
        .lines()
        .find_map(|l| l.strip_prefix(name)?.strip_prefix(' ')?.parse().ok())
        .unwrap_or_else(|| panic!("no {name} in /metrics:\n{metrics}"))
}

fn metrics(w: &Weir) -> String {
    let (status, body) = request(w.admin_port, "GET", "/metrics", None);
    assert_eq!(status, 200);
    body
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn metrics_cover_the_process_connections_auth_and_latency() {
    let w = Weir::with(Opts {
        listeners: vec![weir_tests::Listener::new(
            "closed",
            "tcp",
            "allow_anonymous = false",
        )],
        ..Default::default()
    });
    // Persistent: its QoS 1 messages are stored, and acknowledged after a sync.
    let mut o = C5::opts(w.port, "sub");
    o.set_clean_start(false);
    o.set_session_expiry_interval(Some(600));
    let (mut sub, _) = C5::connect_with(o).await;
    sub.subscribe("m/#", QoS::AtLeastOnce).await;
    sub.subscribe("n/#", QoS::AtMostOnce).await;
    let (old, _) = C4::connect_with(C4::opts(w.port, "old")).await;
    // Refused: 3.1.1 with an empty id and no clean session; no credentials where needed.
    let mut bad = Raw::connect(w.port);
    bad.send(&connect(4, "", 0, 60, &[]));
    assert_eq!(connack_code(&bad.recv().unwrap()), 0x02);
    let mut anon = Raw::connect(w.port_of("closed"));
    anon.send(&connect(5, "anon", CLEAN, 60, &[]));
    assert_eq!(connack_code(&anon.recv().unwrap()), 0x87);

    let mut p = v5_client(&w, "pub", &[]);
    for i in 0..20u16 {
        p.send(&publish5(0x02, "m/x", Some(i + 1), &[], b"x"));
        assert_eq!(ack_code(&p.recv().unwrap()), 0);
    }
    for _ in 0..20 {
        sub.publish().await;
    }
    old.disconnect().await;
    let v311 = "weir_connections{listener=\"tcp\",protocol=\"3.1.1\"}";
    assert!(eventually(Duration::from_secs(5), || sample(
        &metrics(&w),
        v311
    ) == 0.0));
    let m = metrics(&w);
    for family in [
        "process_resident_memory_bytes",
        "process_cpu_seconds_total",
        "process_open_fds",
        "process_max_fds",
        "process_threads",
        "process_start_time_seconds",
    ] {
        assert!(sample(&m, family) > 0.0, "{family}");
    }
    assert!(sample(&m, "process_max_fds") >= sample(&m, "process_open_fds"));
    assert_eq!(
        sample(&m, "weir_connections{listener=\"tcp\",protocol=\"5.0\"}"),
        2.0
    );
    for (name, value) in [
        ("weir_connects_total{code=\"success\"}", 3.0),
        (
            "weir_connects_total{code=\"client_identifier_not_valid\"}",
            1.0,
        ),
        ("weir_connects_total{code=\"not_authorized\"}", 1.0),
        ("weir_authentications_total{outcome=\"allowed\"}", 3.0),
        ("weir_authentications_total{outcome=\"denied\"}", 1.0),
        ("weir_disconnects_total{reason=\"client_disconnect\"}", 1.0),
    ] {
        assert_eq!(sample(&m, name), value, "{name}");
    }
    assert_eq!(sample(&m, "weir_subscriptions"), 2.0);
    let delivered = sample(&m, "weir_delivery_latency_seconds_count");
    assert!(delivered >= 20.0, "{delivered}");
    assert_eq!(
        sample(&m, "weir_delivery_latency_seconds_bucket{le=\"+Inf\"}"),
        delivered
    );
    assert!(sample(&m, "weir_delivery_latency_seconds_sum") > 0.0);
    // QoS 1 on a persistent broker waits for syncs.
    assert!(sample(&m, "weir_store_sync_seconds_count") >= 1.0);

    // A kick and an unsubscribe show too.
    let (status, _) = request(w.admin_port, "DELETE", "/clients/sub", None);
    assert_eq!(status, 204);
    assert!(eventually(Duration::from_secs(5), || sample(
        &metrics(&w),
        "weir_disconnects_total{reason=\"kicked\"}"
    ) == 1.0));
    // The session outlived the kick; a clean start ends it, and its subscriptions.
    assert_eq!(sample(&metrics(&w), "weir_subscriptions"), 2.0);
    let _fresh = v5_client(&w, "sub", &[]);
    assert_eq!(sample(&metrics(&w), "weir_subscriptions"), 0.0);
}

#[test]
fn the_grafana_dashboard_queries_only_metrics_that_exist() {
    let tag = plugins::wasm("tagger");
    let w = Weir::with(Opts {
        extra: format!("[[plugin]]\nname = \"tag\"\npath = {tag:?}\n"),
        ..Default::default()
    });
    let m = metrics(&w);
    let (local, cluster) = grafana::queried_metrics();
    assert!(local.len() >= 20, "{local:?}");
    assert!(!cluster.is_empty());
    let missing: Vec<&String> = local.iter().filter(|n| !grafana::exposes(&m, n)).collect();
    assert!(
        missing.is_empty(),
        "the dashboard queries {missing:?}, not in:\n{m}"
    );
}
