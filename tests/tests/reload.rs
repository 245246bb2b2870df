//! Hot reload of plugins and the admin HTTP API, against the real broker.

use std::collections::{HashMap, HashSet};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};
use weir_tests::clients::v5::QoS;
use weir_tests::clients::C5;
use weir_tests::http::{request, rss_kib};
use weir_tests::raw::{ack_code, disconnect_code, publish5, v5_client};
use weir_tests::{eventually, plugins, Opts, Weir};

/// A broker whose plugin `tag` is loaded from a file the test may replace.
fn tagging_broker(dir: &Path) -> (Weir, PathBuf) {
    tagging_broker_and(dir, "")
}

/// [`tagging_broker`] with `more` configuration after the plugin's entry.
fn tagging_broker_and(dir: &Path, more: &str) -> (Weir, PathBuf) {
    let file = dir.join("tag.wasm");
    std::fs::copy(plugins::wasm("tagger"), &file).unwrap();
    let w = Weir::with(Opts {
        extra: format!("[[plugin]]\nname = \"tag\"\npath = {file:?}\n{more}"),
        plugins: "watch_ms = 100".into(),
        ..Default::default()
    });
    (w, file)
}

fn version_of(p: &rumqttc::v5::mqttbytes::v5::Publish) -> String {
    let props = p.properties.clone().unwrap_or_default();
    let v = props
        .user_properties
        .iter()
        .find(|(k, _)| k == "version")
        .map(|(_, v)| v.clone());
    v.unwrap_or_else(|| "untagged".into())
}

fn plugin_field(w: &Weir, field: &str) -> serde_like::Value {
    let (status, body) = request(w.admin_port, "GET", "/plugins", None);
    assert_eq!(status, 200, "{body}");
    serde_like::field(&body, field)
}

/// Just enough JSON reading for these assertions, without a JSON library of our own.
mod serde_like {
    pub type Value = String;
    /// The raw text of the first `"field":` value in `body`.
    pub fn field(body: &str, field: &str) -> Value {
        let key = format!("\"{field}\":");
        let Some(at) = body.find(&key) else {
            return String::new();
        };
        let rest = &body[at + key.len()..];
        if let Some(text) = rest.strip_prefix('"') {
            // A string: up to the closing quote that is not escaped.
            let mut out = String::new();
            let mut chars = text.chars();
            while let Some(c) = chars.next() {
                match c {
                    '\\' => out.extend(chars.next()),
                    '"' => break,
                    c => out.push(c),
                }
            }
            return out;
        }
        let end = rest.find([',', '}']).unwrap_or(rest.len());
        rest[..end].to_owned()
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn broken_versions_are_rejected_and_the_old_one_keeps_serving() {
    let dir = tempfile::tempdir().unwrap();
    let (w, file) = tagging_broker(dir.path());
    let (mut sub, _) = C5::connect_with(C5::opts(w.port, "sub")).await;
    sub.subscribe("t/#", QoS::AtLeastOnce).await;
    let (p, _) = C5::connect_with(C5::opts(w.port, "pub")).await;
    let garbage = dir.path().join("garbage.wasm");
    std::fs::write(&garbage, b"\0asm\x01\0\0\0 not a component at all").unwrap();
    let cases = [
        (garbage, "not a valid WebAssembly component"),
        (
            plugins::wasm("wrong-version"),
            "another version of the interface",
        ),
        // Its init wants a `mode` this plugin's (empty) config does not give.
        (plugins::wasm("misbehave"), "init refused"),
    ];
    for (i, (bad, why)) in cases.iter().enumerate() {
        std::fs::copy(bad, &file).unwrap();
        let n = (i + 1).to_string();
        assert!(
            eventually(Duration::from_secs(10), || plugin_field(&w, "rejections")
                == n),
            "rejection {n} ({why}) not recorded: {}",
            request(w.admin_port, "GET", "/plugins", None).1
        );
        assert!(
            plugin_field(&w, "last_rejection").contains(why),
            "{}",
            plugin_field(&w, "last_rejection")
        );
        p.send("t/x", QoS::AtLeastOnce, false, "m").await;
        assert_eq!(
            version_of(&sub.publish().await),
            "a",
            "the old version keeps serving after {why}"
        );
    }
    let (_, metrics) = request(w.admin_port, "GET", "/metrics", None);
    assert!(
        metrics.contains("weir_plugin_rejections_total{plugin=\"tag\"} 3"),
        "{metrics}"
    );
    assert!(
        metrics.contains("weir_plugin_reloads_total{plugin=\"tag\"} 0"),
        "{metrics}"
    );
    // A good version after the bad ones is taken.
    std::fs::copy(plugins::wasm("tagger-b"), &file).unwrap();
    assert!(eventually(Duration::from_secs(10), || plugin_field(
        &w, "reloads"
    ) == "1"));
    p.send("t/x", QoS::AtLeastOnce, false, "m").await;
    assert_eq!(version_of(&sub.publish().await), "b");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn twenty_swaps_under_load_lose_and_duplicate_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let (w, file) = tagging_broker(dir.path());
    let (mut sub, _) = C5::connect_with(C5::opts(w.port, "sub")).await;
    sub.subscribe("load/#", QoS::AtLeastOnce).await;

    let stop = Arc::new(AtomicBool::new(false));
    let mut publishers = Vec::new();
    for n in 0..3 {
        let (mut p, _) = C5::connect_with(C5::opts(w.port, &format!("pub{n}"))).await;
        let stop = stop.clone();
        publishers.push(tokio::spawn(async move {
            let mut sent = 0u32;
            while !stop.load(Ordering::Relaxed) {
                p.send(
                    format!("load/{n}"),
                    QoS::AtLeastOnce,
                    false,
                    format!("{n}:{sent}"),
                )
                .await;
                sent += 1;
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
            // Everything sent must be acknowledged before the count is final.
            let mut acked = 0;
            while acked < sent {
                match p.next(Duration::from_secs(10)).await {
                    Some(Ok(rumqttc::v5::Incoming::PubAck(_))) => acked += 1,
                    Some(Ok(_)) => {}
                    other => panic!("publisher {n} lost its connection or acks: {other:?}"),
                }
            }
            sent
        }));
    }

    let mut seen: HashMap<String, String> = HashMap::new();
    let mut duplicates = Vec::new();
    let mut record = |m: &rumqttc::v5::mqttbytes::v5::Publish,
                      seen: &mut HashMap<String, String>| {
        let id = String::from_utf8_lossy(&m.payload).into_owned();
        if seen.insert(id.clone(), version_of(m)).is_some() {
            duplicates.push(id);
        }
    };
    let versions = ["tagger-b", "tagger"];
    let mut slowest = Duration::ZERO;
    for swap in 0..20 {
        let (wasm, tag) = (
            plugins::wasm(versions[swap % 2]),
            if swap % 2 == 0 { "b" } else { "a" },
        );
        let t0 = Instant::now();
        std::fs::copy(wasm, &file).unwrap(); // written in place: the watcher must wait for it
        loop {
            let m = sub
                .publish_within(Duration::from_secs(5))
                .await
                .expect("deliveries continue during swaps");
            record(&m, &mut seen);
            // A message tagged by the new version proves the swap only once the broker
            // has counted it: another publisher's message transformed by the version
            // before the last swap may still arrive after one tagged by the last.
            if version_of(&m) == tag && plugin_field(&w, "reloads") == (swap + 1).to_string() {
                break;
            }
            assert!(
                t0.elapsed() < Duration::from_secs(3),
                "swap {swap} to {tag} not in effect after {:?}",
                t0.elapsed()
            );
        }
        // Each swap takes effect within one second (the bound).
        slowest = slowest.max(t0.elapsed());
        assert!(
            t0.elapsed() < Duration::from_secs(1),
            "swap {swap} took {:?}",
            t0.elapsed()
        );
    }
    eprintln!("slowest of 20 swaps: {slowest:?}");
    stop.store(true, Ordering::Relaxed);
    let mut sent_total = 0;
    for p in publishers {
        sent_total += p.await.expect("publisher task");
    }
    while let Some(m) = sub.publish_within(Duration::from_secs(2)).await {
        record(&m, &mut seen);
    }
    assert!(duplicates.is_empty(), "delivered twice: {duplicates:?}");
    assert_eq!(
        seen.len() as u32,
        sent_total,
        "every acknowledged message arrives exactly once"
    );
    let tags: HashSet<&String> = seen.values().collect();
    assert!(
        tags.iter().all(|t| *t == "a" || *t == "b"),
        "every message tagged by one version: {tags:?}"
    );
    assert!(
        !w.log().contains("client disconnected client_id=pub"),
        "no publisher was disconnected"
    );
    assert_eq!(plugin_field(&w, "reloads"), "20");
}

#[test]
fn hundreds_of_reloads_keep_memory_flat() {
    let dir = tempfile::tempdir().unwrap();
    let (w, _file) = tagging_broker(dir.path());
    let reload = || {
        let (status, body) = request(w.admin_port, "POST", "/plugins/tag/reload", None);
        assert_eq!(status, 200, "{body}");
    };
    for _ in 0..20 {
        reload();
    }
    let warm = rss_kib(w.pid());
    for _ in 0..180 {
        reload();
    }
    let after = rss_kib(w.pid());
    assert_eq!(plugin_field(&w, "reloads"), "200");
    // Each version is freed when the next replaces it; 180 leaked instances would be
    // hundreds of MiB.
    assert!(
        after < warm + 32 * 1024,
        "RSS grew from {warm} KiB to {after} KiB over 180 reloads"
    );
}

#[test]
fn every_admin_endpoint_and_bad_input() {
    let acl = plugins::wasm("acl");
    let w = Weir::with(Opts {
        extra: format!(
            "[[plugin]]\nname = \"acl\"\npath = {acl:?}\n[plugin.config]\nrules = [ {{ access = \"readwrite\", topic = \"open/#\" }} ]\n"
        ),
        admin: "token = \"s3cret\"".into(),
        ..Default::default()
    });
    let port = w.admin_port;
    let t = Some("s3cret");
    assert_eq!(request(port, "GET", "/health", None).0, 401, "no token");
    assert_eq!(
        request(port, "GET", "/health", Some("wrong")).0,
        401,
        "wrong token"
    );
    let (status, body) = request(port, "GET", "/health", t);
    assert_eq!(
        (status, body.contains("\"status\":\"ok\"")),
        (200, true),
        "{body}"
    );

    let mut c = v5_client(&w, "c1", &[]);
    c.send(&publish5(0x02, "closed/x", Some(1), &[], b"x"));
    assert_eq!(ack_code(&c.recv().unwrap()), 0x87);

    let (status, body) = request(port, "GET", "/plugins", t);
    assert_eq!(status, 200);
    assert!(
        body.contains("\"name\":\"acl\"")
            && body.contains("\"authorize\"")
            && body.contains("\"enabled\":true"),
        "{body}"
    );
    let (status, metrics) = request(port, "GET", "/metrics", t);
    assert_eq!(status, 200);
    for needle in [
        "weir_connections{listener=\"tcp\",protocol=\"5.0\"} 1",
        "weir_plugin_calls_total{plugin=\"acl\"}",
        "weir_plugin_denials_total{plugin=\"acl\"} 1",
        "weir_dropped_messages_total{cause=\"denied\"} 1",
        "weir_plugin_call_duration_seconds_bucket{plugin=\"acl\",le=\"+Inf\"}",
        "weir_sessions 1",
    ] {
        assert!(
            metrics.contains(needle),
            "{needle} missing from:\n{metrics}"
        );
    }

    // Disable and enable take effect for the connected client.
    assert_eq!(request(port, "POST", "/plugins/acl/disable", t).0, 200);
    c.send(&publish5(0x02, "closed/x", Some(2), &[], b"x"));
    assert_eq!(ack_code(&c.recv().unwrap()), 0, "disabled: nothing denies");
    assert_eq!(request(port, "POST", "/plugins/acl/enable", t).0, 200);
    c.send(&publish5(0x02, "closed/x", Some(3), &[], b"x"));
    assert_eq!(ack_code(&c.recv().unwrap()), 0x87);
    let (status, body) = request(port, "POST", "/plugins/acl/reload", t);
    assert_eq!(
        (status, body.contains("\"reloads\":1")),
        (200, true),
        "{body}"
    );
    for path in [
        "/plugins/nope/reload",
        "/plugins/nope/enable",
        "/plugins/nope/disable",
    ] {
        let (status, body) = request(port, "POST", path, t);
        assert_eq!(
            (status, body.contains("\"error\"")),
            (404, true),
            "{path}: {body}"
        );
    }

    let _c2 = v5_client(&w, "c2", &[]);
    let (status, body) = request(port, "GET", "/clients?limit=1&offset=1", t);
    assert_eq!(status, 200, "{body}");
    assert!(
        body.contains("\"total\":2")
            && body.contains("\"client_id\":\"c2\"")
            && !body.contains("\"client_id\":\"c1\""),
        "{body}"
    );
    assert!(
        body.contains("\"listener\":\"tcp\"")
            && body.contains("\"protocol\":\"5.0\"")
            && body.contains("connected_since")
    );
    for bad in [
        "/clients?limit=0",
        "/clients?limit=abc",
        "/clients?bogus=1",
        "/clients?limit=100000",
    ] {
        let (status, body) = request(port, "GET", bad, t);
        assert_eq!(
            (status, body.contains("\"error\"")),
            (400, true),
            "{bad}: {body}"
        );
    }
    let (status, _) = request(port, "DELETE", "/clients/c1", t);
    assert_eq!(status, 204);
    let p = c.recv().expect("DISCONNECT");
    assert_eq!(disconnect_code(&p), Some(0x98), "administrative action");
    let (status, body) = request(port, "DELETE", "/clients/nobody", t);
    assert_eq!((status, body.contains("\"error\"")), (404, true));
    let (status, body) = request(port, "GET", "/no/such/endpoint", t);
    assert_eq!((status, body.contains("\"error\"")), (404, true));
    let (status, body) = request(port, "DELETE", "/health", t);
    assert_eq!((status, body.contains("\"error\"")), (405, true));
}

#[test]
fn the_cli_talks_to_the_admin_api() {
    let dir = tempfile::tempdir().unwrap();
    let (w, _file) = tagging_broker(dir.path());
    let weir = |args: &[&str]| weir_cli(&w, args);
    let (ok, out) = weir(&["plugins"]);
    assert!(ok && out.contains("\"name\":\"tag\""), "{out}");
    let (ok, out) = weir(&["reload", "tag"]);
    assert!(ok && out.contains("\"reloads\":1"), "{out}");
    let (ok, out) = weir(&["disable", "tag"]);
    assert!(ok && out.contains("\"enabled\":false"), "{out}");
    let (ok, out) = weir(&["health"]);
    assert!(ok && out.contains("ok"), "{out}");
    let (ok, out) = weir(&["kick", "nobody"]);
    assert!(
        !ok && out.contains("no connected client"),
        "errors are shown and fail the command: {out}"
    );
    let (ok, out) = weir(&["clients"]);
    assert!(ok && out.contains("\"total\":0"), "{out}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn sighup_rereads_the_plugin_configuration() {
    let dir = tempfile::tempdir().unwrap();
    let (w, file) = tagging_broker(dir.path());
    let (mut sub, _) = C5::connect_with(C5::opts(w.port, "sub")).await;
    sub.subscribe("t/#", QoS::AtLeastOnce).await;
    let (p, _) = C5::connect_with(C5::opts(w.port, "pub")).await;
    p.send("t/x", QoS::AtLeastOnce, false, "m").await;
    assert_eq!(version_of(&sub.publish().await), "a");
    // Point the configuration at the other version and add a second plugin after it.
    let text = std::fs::read_to_string(w.config_path()).unwrap();
    let b = plugins::wasm("tagger-b");
    let acl = plugins::wasm("acl");
    let text = text.replace(&format!("{file:?}"), &format!("{b:?}"))
        + &format!("[[plugin]]\nname = \"acl\"\npath = {acl:?}\n[plugin.config]\nrules = [ {{ access = \"readwrite\", topic = \"t/#\" }} ]\n");
    std::fs::write(w.config_path(), text).unwrap();
    w.sighup_until("plugin chain reconfigured");
    p.send("t/x", QoS::AtLeastOnce, false, "m").await;
    assert_eq!(version_of(&sub.publish().await), "b");
    let (_, body) = request(w.admin_port, "GET", "/plugins", None);
    assert!(body.contains("\"name\":\"acl\""), "{body}");
    // A configuration that does not load leaves the chain as it is.
    let broken = std::fs::read_to_string(w.config_path())
        .unwrap()
        .replace(&format!("{acl:?}"), "\"/nonexistent.wasm\"");
    std::fs::write(w.config_path(), broken).unwrap();
    w.sighup_until("plugin chain not changed");
    p.send("t/x", QoS::AtLeastOnce, false, "m").await;
    assert_eq!(version_of(&sub.publish().await), "b");
}

/// `weir` against the broker's admin API: whether it succeeded, and what it printed.
fn weir_cli(w: &Weir, args: &[&str]) -> (bool, String) {
    weir_tests::weir_cli(w.admin_port, args)
}

fn shadow_count(w: &Weir, result: &str) -> u64 {
    w.metric(&format!(
        "weir_plugin_shadow_answers_total{{plugin=\"tag\",result=\"{result}\"}}"
    ))
}

/// Sends `n` QoS 1 messages on `topic` and returns the versions that tagged them, in
/// the order they arrived.
async fn tags_of(p: &C5, sub: &mut C5, topic: &str, n: usize) -> Vec<String> {
    for i in 0..n {
        p.send(topic, QoS::AtLeastOnce, false, i.to_string()).await;
    }
    let mut tags = Vec::new();
    while tags.len() < n {
        let m = sub.publish_within(Duration::from_secs(5)).await;
        tags.push(version_of(&m.expect("every message arrives")));
    }
    tags
}

/// A candidate shadowing the plugin answers every question the plugin is asked: the
/// same version always agrees, another always disagrees and is never applied, a broken
/// one is refused; then the candidate is promoted while a publisher keeps sending, and
/// every message arrives once, tagged by the old version until the new one takes over.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_shadow_is_compared_never_applied_and_promoted_under_load() {
    let dir = tempfile::tempdir().unwrap();
    let (w, _file) = tagging_broker(dir.path());
    let (mut sub, _) = C5::connect_with(C5::opts(w.port, "sub")).await;
    sub.subscribe("s/#", QoS::AtLeastOnce).await;
    let (p, _) = C5::connect_with(C5::opts(w.port, "pub")).await;
    let path = |name: &str| plugins::wasm(name).to_string_lossy().into_owned();

    let (ok, out) = weir_cli(&w, &["shadow", "tag", &path("tagger")]);
    assert!(ok && out.contains("\"agreed\":0"), "{out}");
    assert_eq!(tags_of(&p, &mut sub, "s/same", 20).await, vec!["a"; 20]);
    assert!(eventually(Duration::from_secs(5), || shadow_count(
        &w, "agreed"
    ) == 20));
    assert_eq!(shadow_count(&w, "disagreed"), 0);

    let (ok, out) = weir_cli(&w, &["shadow", "tag", &path("tagger-b")]);
    assert!(ok, "{out}");
    assert_eq!(
        tags_of(&p, &mut sub, "s/other", 20).await,
        vec!["a"; 20],
        "a shadow's answers are never applied"
    );
    assert!(eventually(Duration::from_secs(5), || shadow_count(
        &w,
        "disagreed"
    ) == 20));
    assert_eq!(
        shadow_count(&w, "agreed"),
        0,
        "a new candidate counts afresh"
    );
    assert!(w.log().contains("shadow disagrees"), "a sample is logged");

    // A candidate that cannot load (misbehave refuses a config without `mode`) is
    // refused, and the shadow before it stays.
    let (ok, out) = weir_cli(&w, &["shadow", "tag", &path("misbehave")]);
    assert!(!ok && out.contains("rejected"), "{out}");
    assert_eq!(plugin_field(&w, "sha256").len(), 64);
    assert!(shadow_count(&w, "disagreed") >= 20);

    // Promotion while a publisher sends 300 messages, one every 3 ms.
    let (loader, _) = C5::connect_with(C5::opts(w.port, "loader")).await;
    let sending = tokio::spawn(async move {
        for i in 0..300 {
            loader
                .send("s/load", QoS::AtLeastOnce, false, i.to_string())
                .await;
            tokio::time::sleep(Duration::from_millis(3)).await;
        }
        loader
    });
    tokio::time::sleep(Duration::from_millis(300)).await;
    let (ok, out) = weir_cli(&w, &["promote", "tag"]);
    assert!(ok && out.contains("\"reloads\":1"), "{out}");
    let _loader = sending.await.unwrap();
    let mut got = Vec::new();
    while let Some(m) = sub.publish_within(Duration::from_secs(2)).await {
        got.push((
            String::from_utf8_lossy(&m.payload).into_owned(),
            version_of(&m),
        ));
    }
    let ids: Vec<String> = got.iter().map(|(id, _)| id.clone()).collect();
    let want: Vec<String> = (0..300).map(|i| i.to_string()).collect();
    assert_eq!(ids, want, "every message once, in order");
    let switches = got.windows(2).filter(|w| w[0].1 != w[1].1).count();
    assert_eq!(switches, 1, "tagged a, then b: {got:?}");
    assert_eq!((got[0].1.as_str(), got[299].1.as_str()), ("a", "b"));
    let (ok, out) = weir_cli(&w, &["plugins"]);
    assert!(
        ok && out.contains("\"shadow\":null"),
        "the shadow stops: {out}"
    );
    let (ok, out) = weir_cli(&w, &["promote", "tag"]);
    assert!(!ok && out.contains("has no shadow"), "{out}");
}

/// A `shadow_of` entry shadows its plugin from startup; a new file under it is a new
/// candidate and a reload of the plugin keeps it (both counted afresh); promotion swaps
/// it in; SIGHUP loads the file's chain again, shadow included.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_configured_shadow_is_watched_promoted_and_restored_by_sighup() {
    let dir = tempfile::tempdir().unwrap();
    let next = dir.path().join("tag-next.wasm");
    std::fs::copy(plugins::wasm("tagger"), &next).unwrap();
    let entry = format!("[[plugin]]\nname = \"tag-next\"\npath = {next:?}\nshadow_of = \"tag\"\n");
    let (w, _file) = tagging_broker_and(dir.path(), &entry);
    let (mut sub, _) = C5::connect_with(C5::opts(w.port, "sub")).await;
    sub.subscribe("s/#", QoS::AtLeastOnce).await;
    let (p, _) = C5::connect_with(C5::opts(w.port, "pub")).await;
    let (_, body) = request(w.admin_port, "GET", "/plugins", None);
    assert!(
        body.contains("tag-next.wasm"),
        "the shadow runs from startup: {body}"
    );

    assert_eq!(tags_of(&p, &mut sub, "s/same", 10).await, vec!["a"; 10]);
    assert!(eventually(Duration::from_secs(5), || shadow_count(
        &w, "agreed"
    ) == 10));

    // A new file under the entry: the watcher loads it as the new candidate.
    std::fs::copy(plugins::wasm("tagger-b"), &next).unwrap();
    assert!(eventually(Duration::from_secs(10), || shadow_count(
        &w, "agreed"
    ) == 0));
    assert_eq!(tags_of(&p, &mut sub, "s/other", 10).await, vec!["a"; 10]);
    assert!(eventually(Duration::from_secs(5), || shadow_count(
        &w,
        "disagreed"
    ) == 10));

    // A reload of the plugin keeps a configured shadow, counted afresh.
    let (ok, out) = weir_cli(&w, &["reload", "tag"]);
    assert!(ok && out.contains("tag-next.wasm"), "{out}");
    assert_eq!(shadow_count(&w, "disagreed"), 0);
    assert_eq!(tags_of(&p, &mut sub, "s/again", 5).await, vec!["a"; 5]);
    assert!(eventually(Duration::from_secs(5), || shadow_count(
        &w,
        "disagreed"
    ) == 5));

    let (ok, out) = weir_cli(&w, &["promote", "tag"]);
    assert!(ok && out.contains("\"shadow\":null"), "{out}");
    assert_eq!(tags_of(&p, &mut sub, "s/promoted", 10).await, vec!["b"; 10]);

    // The configuration file still says tagger with tagger-b shadowing it.
    w.sighup_until("plugin chain reconfigured");
    assert_eq!(tags_of(&p, &mut sub, "s/restored", 10).await, vec!["a"; 10]);
    let (_, body) = request(w.admin_port, "GET", "/plugins", None);
    assert!(body.contains("tag-next.wasm"), "the shadow is back: {body}");
}
