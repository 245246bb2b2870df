//! WebAssembly plugins, built from source for wasm32-wasip2 (Rust) and with
//! componentize-py (Python), loaded by the real broker and driven through every path:
//! allow, deny, defer, drop, replace, reject, throttle, and a chain of several plugins;
//! then plugins that misbehave on purpose.

use rumqttc::v5::mqttbytes::v5::PublishProperties;
use std::process::Command;
use std::time::{Duration, Instant};
use weir_tests::clients::v5::QoS;
use weir_tests::clients::C5;
use weir_tests::http::request;
use weir_tests::raw::{
    ack_code, connack_code, connect, connect_login, packet, publish5, string, subscribe5,
    v5_client, Raw, CLEAN,
};
use weir_tests::{eventually, plugins, tokens, weir_bin, Opts, Weir};

/// A `[[plugin]]` entry; `config` is the body of its `[plugin.config]` table.
fn entry(name: &str, wasm: &str, settings: &str, config: &str) -> String {
    format!(
        "[[plugin]]\nname = {name:?}\npath = {:?}\n{settings}\n[plugin.config]\n{config}\n\n",
        plugins::wasm(wasm)
    )
}

fn broker(entries: &[String], plugins_table: &str, listener: &str) -> Weir {
    Weir::with(Opts {
        extra: entries.concat(),
        plugins: plugins_table.into(),
        listener: listener.into(),
        ..Default::default()
    })
}

/// PUBLISH at QoS 1 and the PUBACK's reason code.
fn publish_code(r: &mut Raw, topic: &str, pid: u16, payload: &[u8]) -> u8 {
    r.send(&publish5(0x02, topic, Some(pid), &[], payload));
    ack_code(&r.recv().expect("PUBACK"))
}

/// Sends `n` QoS 1 PUBLISH packets at once (ids 1..=n, the id as payload) and checks
/// that every PUBACK accepts.
fn publish_pipelined(r: &mut Raw, topic: &str, n: u16) {
    let all: Vec<u8> = (1..=n)
        .flat_map(|i| publish5(0x02, topic, Some(i), &[], &i.to_be_bytes()))
        .collect();
    r.send(&all);
    let acks: Vec<u8> = (0..n)
        .map(|_| ack_code(&r.recv().expect("PUBACK")))
        .collect();
    assert!(acks.iter().all(|c| *c == 0), "all accepted: {acks:?}");
}

/// SUBSCRIBE at QoS 1 and the SUBACK's code.
fn subscribe_code(r: &mut Raw, filter: &str, pid: u16) -> u8 {
    r.send(&subscribe5(pid, filter, 1));
    let ack = r.recv().expect("SUBACK");
    assert_eq!(ack[0], 0x90, "{ack:?}");
    *ack.last().unwrap()
}

/// A plugin's counter from `/metrics`.
fn metric(w: &Weir, name: &str, plugin: &str) -> u64 {
    let (_, m) = request(w.admin_port, "GET", "/metrics", None);
    let prefix = format!("{name}{{plugin=\"{plugin}\"}} ");
    m.lines()
        .find_map(|l| l.strip_prefix(&prefix))
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or_else(|| panic!("{name} missing:\n{m}"))
}

fn login(w: &Weir, level: u8, id: &str, user: &str, password: &[u8]) -> (Raw, u8) {
    let mut r = Raw::connect(w.port);
    r.send(&connect_login(level, id, user, password));
    let code = connack_code(&r.recv().expect("CONNACK"));
    (r, code)
}

#[test]
fn acl_allows_and_denies_by_rule_with_substitution() {
    let rules = r#"default = "deny"
rules = [
  { access = "readwrite", topic = "devices/%c/#" },
  { access = "write", topic = "public/locked", allow = false },
  { access = "readwrite", topic = "public/#" },
  { access = "read", topic = "users/%u/inbox" },
]"#;
    let w = broker(&[entry("acl", "acl", "", rules)], "", "");
    let mut dev1 = v5_client(&w, "dev1", &[]);
    assert_eq!(publish_code(&mut dev1, "devices/dev1/t", 1, b"x"), 0);
    assert_eq!(
        publish_code(&mut dev1, "devices/dev2/t", 2, b"x"),
        0x87,
        "%c is the client's own id"
    );
    assert_eq!(
        publish_code(&mut dev1, "public/locked", 3, b"x"),
        0x87,
        "first matching rule decides"
    );
    assert_eq!(publish_code(&mut dev1, "public/news", 4, b"x"), 0);
    assert_eq!(
        publish_code(&mut dev1, "elsewhere", 5, b"x"),
        0x87,
        "default deny"
    );
    assert_eq!(subscribe_code(&mut dev1, "devices/dev1/#", 6), 1);
    assert_eq!(subscribe_code(&mut dev1, "public/+", 7), 1);
    assert_eq!(
        subscribe_code(&mut dev1, "devices/#", 8),
        0x87,
        "wider than the rule"
    );
    assert_eq!(
        subscribe_code(&mut dev1, "users/+/inbox", 9),
        0x87,
        "%u needs a username"
    );

    // A 3.1.1 client cannot be told; its denied message is simply not routed.
    let mut dev2 = Raw::connect(w.port);
    dev2.send(&connect(4, "dev2", CLEAN, 60, &[]));
    assert_eq!(connack_code(&dev2.recv().unwrap()), 0);
    let mut body = string("devices/dev1/spoof");
    body.extend_from_slice(&[0, 1, b'x']);
    dev2.send(&packet(0x32, &body));
    let _ = dev2.recv();
    assert!(
        dev1.recv_within(Duration::from_millis(500)).is_none(),
        "denied message not routed"
    );
}

#[test]
fn password_and_jwt_authentication_with_defer_and_topic_claims() {
    let secret = "jwt-test-secret";
    let dir = tempfile::tempdir().unwrap();
    let (rsa_key, rsa_public) = tokens::rsa_key(dir.path());
    let other_dir = tempfile::tempdir().unwrap();
    let (other_key, _) = tokens::rsa_key(other_dir.path());
    let hash = tokens::password_hash("s3cret", 1000);
    let users = format!("users = [ {{ username = \"alice\", password_hash = {hash:?} }} ]");
    let jwt = format!("hs256_secret = {secret:?}\nrs256_public_key = '''{rsa_public}'''\nusername_claim = \"sub\"");
    let w = broker(
        &[
            entry("passwords", "auth-password", "", &users),
            entry("jwt", "auth-jwt", "", &jwt),
        ],
        "authenticate_default = \"deny\"",
        "allow_anonymous = false",
    );
    // auth-password decides for its users.
    assert_eq!(login(&w, 5, "a1", "alice", b"s3cret").1, 0);
    assert_eq!(login(&w, 5, "a2", "alice", b"wrong").1, 0x86);
    assert_eq!(
        login(&w, 4, "a3", "alice", b"wrong").1,
        4,
        "3.1.1: bad username or password"
    );
    // Nobody decides for an anonymous client: the configured end of the chain denies.
    let mut anon = Raw::connect(w.port);
    anon.send(&connect(5, "anon", CLEAN, 60, &[]));
    assert_eq!(connack_code(&anon.recv().unwrap()), 0x87);

    // auth-password defers for a user it does not know; auth-jwt decides.
    let now = tokens::now();
    let claims = |extra: &str| {
        format!(
            "{{\"sub\":\"car-owner\",\"exp\":{},{extra}\"iat\":{now}}}",
            now + 600
        )
    };
    let topics = r#""weir":{"pub":["sensors/%c/#"],"sub":["cmd/%c/#"]},"#;
    let good = tokens::hs256(secret, &claims(topics));
    let (mut car, code) = login(&w, 5, "car1", "bob", good.as_bytes());
    assert_eq!(code, 0, "JWT accepted after the password plugin deferred");
    assert!(
        eventually(Duration::from_secs(5), || w
            .log()
            .contains("username=car-owner")),
        "username from the sub claim"
    );
    assert_eq!(publish_code(&mut car, "sensors/car1/speed", 1, b"1"), 0);
    assert_eq!(
        publish_code(&mut car, "sensors/car2/speed", 2, b"1"),
        0x87,
        "claims name the allowed topics"
    );
    assert_eq!(subscribe_code(&mut car, "cmd/car1/#", 3), 1);
    assert_eq!(subscribe_code(&mut car, "cmd/#", 4), 0x87);

    let expired = tokens::hs256(secret, &format!("{{\"sub\":\"x\",\"exp\":{}}}", now - 3600));
    let early = tokens::hs256(secret, &format!("{{\"sub\":\"x\",\"nbf\":{}}}", now + 3600));
    let forged = tokens::hs256("another-secret", &claims(""));
    for (token, what) in [
        (expired, "expired"),
        (early, "not yet valid"),
        (forged, "bad signature"),
    ] {
        assert_eq!(login(&w, 5, "t", "bob", token.as_bytes()).1, 0x86, "{what}");
    }
    assert_eq!(
        login(
            &w,
            5,
            "rs",
            "bob",
            tokens::rs256(&rsa_key, &claims("")).as_bytes()
        )
        .1,
        0,
        "RS256"
    );
    assert_eq!(
        login(
            &w,
            5,
            "rs2",
            "bob",
            tokens::rs256(&other_key, &claims("")).as_bytes()
        )
        .1,
        0x86,
        "RS256, wrong key"
    );
}

#[test]
fn rate_limit_rejects_throttles_and_limits_connects() {
    let reject = "action = \"reject\"\nper_client = { messages = { per_second = 2.0, burst = 2 } }\nconnects_per_address = { per_second = 0.5, burst = 2 }";
    let w = broker(&[entry("limits", "rate-limit", "", reject)], "", "");
    let mut r = v5_client(&w, "fast", &[]);
    let codes: Vec<u8> = (1..=6)
        .map(|i| publish_code(&mut r, "t", i, b"x"))
        .collect();
    assert_eq!(&codes[..2], &[0, 0], "within the burst: {codes:?}");
    assert!(
        codes.iter().filter(|c| **c == 0x96).count() >= 3,
        "then 0x96 message rate too high: {codes:?}"
    );
    // Two connects in the burst (this one above, one more), then 0x9F.
    let _second = v5_client(&w, "second", &[]);
    let mut third = Raw::connect(w.port);
    third.send(&connect(5, "third", CLEAN, 60, &[]));
    assert_eq!(
        connack_code(&third.recv().unwrap()),
        0x9F,
        "connection rate exceeded"
    );

    // Throttling: nothing is refused or lost, it just takes as long as the rate says.
    let throttle = "per_client = { messages = { per_second = 20.0, burst = 1 } }";
    let w = broker(&[entry("limits", "rate-limit", "", throttle)], "", "");
    let mut sub = v5_client(&w, "sub", &[]);
    assert_eq!(subscribe_code(&mut sub, "slow", 1), 1);
    let mut pubr = v5_client(&w, "pub", &[]);
    let t0 = Instant::now();
    publish_pipelined(&mut pubr, "slow", 20);
    let mut got = 0;
    while got < 20 {
        let p = sub.recv().expect("delivery");
        if p[0] & 0xF0 == 0x30 {
            got += 1;
        }
    }
    assert!(
        t0.elapsed() >= Duration::from_millis(700),
        "20 messages at 20/s took {:?}",
        t0.elapsed()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn transform_rewrites_checks_json_and_tags() {
    let rules = r#"rewrite = [ { from = "legacy/", to = "sensors/" } ]
json = [ { filter = "sensors/#", required = ["value"] } ]
tag = [ { filter = "sensors/#", name = "source", value = "weir" } ]"#;
    let w = broker(&[entry("shape", "transform", "", rules)], "", "");
    let (mut sub, _) = C5::connect_with(C5::opts(w.port, "sub")).await;
    sub.subscribe("sensors/#", QoS::AtLeastOnce).await;
    let mut r = v5_client(&w, "pub", &[]);
    assert_eq!(publish_code(&mut r, "legacy/t1", 1, br#"{"value":1}"#), 0);
    let m = sub.publish().await;
    assert_eq!(m.topic, "sensors/t1", "topic rewritten");
    let props = m.properties.unwrap();
    assert!(
        props
            .user_properties
            .contains(&("source".into(), "weir".into())),
        "tagged: {props:?}"
    );
    assert_eq!(
        publish_code(&mut r, "sensors/t2", 2, b"not json"),
        0x99,
        "dropped: payload format invalid"
    );
    assert_eq!(
        publish_code(&mut r, "sensors/t3", 3, br#"{"other":1}"#),
        0x99,
        "required field missing"
    );
    assert!(
        sub.drain_publishes().await.is_empty(),
        "dropped messages are not routed"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn python_plugin_redacts_payloads() {
    let w = broker(
        &[entry(
            "redact",
            "python-redact",
            "",
            "fields = [\"password\", \"token\"]",
        )],
        "",
        "",
    );
    let (mut sub, _) = C5::connect_with(C5::opts(w.port, "sub")).await;
    sub.subscribe("app/#", QoS::AtLeastOnce).await;
    let (p, _) = C5::connect_with(C5::opts(w.port, "pub")).await;
    p.send(
        "app/login",
        QoS::AtLeastOnce,
        false,
        r#"{"user":"ann","password":"hunter2","nested":{"token":"t"}}"#,
    )
    .await;
    p.send("app/other", QoS::AtLeastOnce, false, "plain text stays")
        .await;
    let first = sub.publish().await;
    let body: String = String::from_utf8(first.payload.to_vec()).unwrap();
    assert_eq!(
        body,
        r#"{"user":"ann","password":"***","nested":{"token":"***"}}"#
    );
    let props = first.properties.unwrap();
    assert!(props
        .user_properties
        .contains(&("redacted-by".into(), "python-redact".into())));
    assert_eq!(&sub.publish().await.payload[..], b"plain text stays");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_chain_of_plugins_works_together() {
    let hash = tokens::password_hash("pw", 1000);
    let w = broker(
        &[
            entry(
                "passwords",
                "auth-password",
                "",
                &format!("users = [ {{ username = \"alice\", password_hash = {hash:?} }} ]"),
            ),
            entry(
                "acl",
                "acl",
                "",
                "rules = [ { access = \"readwrite\", topic = \"home/%u/#\" } ]",
            ),
            entry(
                "shape",
                "transform",
                "",
                "tag = [ { filter = \"#\", name = \"checked\", value = \"yes\" } ]",
            ),
            // Built against 0.1.0 (Python), 0.2.0 (JavaScript) and 0.3.0 (Rust): one chain.
            entry("redact", "python-redact", "", ""),
            entry("js", "js-limiter", "", "messages_per_second = 1000.0"),
            entry(
                "limits",
                "rate-limit",
                "",
                "per_client = { messages = { per_second = 1000.0 } }",
            ),
        ],
        "authenticate_default = \"deny\"",
        "allow_anonymous = false",
    );
    let mut o = C5::opts(w.port, "alice-phone");
    o.set_credentials("alice", "pw");
    let (mut alice, ack) = C5::connect_with(o).await;
    assert_eq!(
        ack.code,
        rumqttc::v5::mqttbytes::v5::ConnectReturnCode::Success
    );
    alice.subscribe("home/alice/#", QoS::AtLeastOnce).await;
    let props = PublishProperties::default();
    alice
        .client
        .publish_with_properties(
            "home/alice/door",
            QoS::AtLeastOnce,
            false,
            r#"{"secret":"1234","open":true}"#,
            props,
        )
        .await
        .unwrap();
    let m = alice.publish().await;
    assert_eq!(
        &m.payload[..],
        br#"{"secret":"***","open":true}"#,
        "Python redacted after Rust tagged"
    );
    let user = m.properties.unwrap().user_properties;
    assert!(
        user.contains(&("checked".into(), "yes".into()))
            && user.contains(&("redacted-by".into(), "python-redact".into()))
    );
    // The ACL still applies to her, and the denial comes back as a reason code.
    let mut o = C5::opts(w.port, "alice-2");
    o.set_credentials("alice", "pw");
    let (mut other, _) = C5::connect_with(o).await;
    let ack = other.subscribe("home/bob/#", QoS::AtLeastOnce).await;
    assert_eq!(
        ack.return_codes,
        vec![rumqttc::v5::mqttbytes::v5::SubscribeReasonCode::NotAuthorized]
    );
    // Only the Python and JavaScript runtimes import what can wait (sockets, files,
    // timers), so only they are called on the blocking path.
    let (_, body) = weir_tests::http::request(w.admin_port, "GET", "/plugins", None);
    let list: serde_json::Value = serde_json::from_str(&body).unwrap();
    for p in list["plugins"].as_array().unwrap() {
        let interpreted = p["name"] == "redact" || p["name"] == "js";
        assert_eq!(p["blocking"], interpreted, "{p}");
    }
}

fn misbehaving(mode: &str, settings: &str) -> Weir {
    broker(
        &[entry(
            "bad",
            "misbehave",
            settings,
            &format!("mode = {mode:?}"),
        )],
        // The harness's deadline is a second; `loop` sets the default 10 ms itself.
        "memory_mb = 16",
        "",
    )
}

#[test]
fn misbehaving_plugins_fail_safe_within_the_deadline_and_are_counted() {
    for (mode, kind, settings) in [
        ("loop", "deadline", "deadline_ms = 10"),
        ("trap", "trap", ""),
        ("grab", "memory", ""),
        ("bad-code", "invalid", ""),
    ] {
        let mut w = misbehaving(mode, settings);
        let mut bystander = v5_client(&w, "bystander", &[]);
        assert_eq!(subscribe_code(&mut bystander, "ok/#", 1), 1);
        let mut r = v5_client(&w, "victim", &[]);
        for i in 0..3u16 {
            let t0 = Instant::now();
            assert_eq!(
                publish_code(&mut r, "bad/x", 10 + i, b"x"),
                0x87,
                "{mode}: on_error deny"
            );
            assert!(
                t0.elapsed() < Duration::from_secs(2),
                "{mode}: answered in {:?}",
                t0.elapsed()
            );
            // The broker keeps serving: the same client, on a fresh instance, and others.
            assert_eq!(publish_code(&mut r, "ok/x", 20 + i, b"fine"), 0, "{mode}");
            let p = bystander.recv().expect("bystander still receives");
            assert_eq!(p[0] & 0xF0, 0x30);
        }
        assert!(
            eventually(Duration::from_secs(5), || w.log().lines().any(|l| l
                .contains("plugin failed")
                && l.contains(&format!("kind={kind}")))),
            "{mode}: failure logged as {kind}:\n{}",
            w.log()
        );
        assert!(w.terminate().success());
        let log = w.log();
        let totals = log
            .lines()
            .find(|l| l.contains("plugin totals"))
            .expect("totals logged at shutdown");
        assert!(
            totals.contains(&format!("{kind}=")),
            "{mode}: counted as {kind}: {totals}"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_huge_replacement_is_invalid_and_the_message_is_kept() {
    // Time and room enough to build the 8 MiB answer, so it is the answer that is refused.
    // `bad-topic`: an edit (0.3.0's message handle) to a topic that is not a topic name.
    for (mode, why) in [
        ("huge", "over the maximum packet size"),
        ("bad-topic", "set an invalid topic"),
    ] {
        let w = misbehaving(mode, "deadline_ms = 5000\nmemory_mb = 64");
        let (mut sub, _) = C5::connect_with(C5::opts(w.port, "sub")).await;
        sub.subscribe("bad/#", QoS::AtLeastOnce).await;
        let (p, _) = C5::connect_with(C5::opts(w.port, "pub")).await;
        p.send("bad/x", QoS::AtLeastOnce, false, "original").await;
        let got = sub.publish().await;
        assert_eq!(
            (&got.topic[..], &got.payload[..]),
            (&b"bad/x"[..], &b"original"[..]),
            "{mode}: transform failures keep the message as it came by default"
        );
        assert!(
            eventually(Duration::from_secs(5), || {
                let log = w.log();
                log.contains("kind=invalid") && log.contains(why)
            }),
            "{mode}: {}",
            w.log()
        );
    }
}

/// A message that makes a plugin trap fails alone, even among messages read together
/// (asked about in one call first): its neighbours are answered as if it were not there.
#[test]
fn a_message_that_makes_a_plugin_fail_fails_alone_in_a_run() {
    let w = misbehaving("trap", "");
    let mut r = v5_client(&w, "pub", &[]);
    let topics = ["ok/1", "bad/2", "ok/3", "ok/4"];
    let all: Vec<u8> = (topics.iter().zip(1u16..))
        .flat_map(|(t, i)| publish5(0x02, t, Some(i), &[], b"x"))
        .collect();
    r.send(&all);
    let codes: Vec<u8> = (0..topics.len())
        .map(|_| ack_code(&r.recv().expect("PUBACK")))
        .collect();
    assert_eq!(
        codes,
        [0, 0x87, 0, 0],
        "authorize's on_error (deny) for the one"
    );
}

/// A transform may send a message on at another QoS; the publisher's acknowledgement
/// follows the QoS it published with, one by one or in a run read together.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_transform_that_changes_the_qos_leaves_the_acknowledgement_alone() {
    let w = misbehaving("qos0", "");
    let (mut sub, _) = C5::connect_with(C5::opts(w.port, "sub")).await;
    sub.subscribe("bad/#", QoS::AtLeastOnce).await;
    let mut r = v5_client(&w, "pub", &[]);
    assert_eq!(
        publish_code(&mut r, "bad/x", 1, b"one"),
        0,
        "PUBACK for QoS 1"
    );
    assert_eq!(sub.publish().await.qos, QoS::AtMostOnce, "sent on at QoS 0");
    let all: Vec<u8> = (2..=5u16)
        .flat_map(|i| publish5(0x02, "bad/y", Some(i), &[], b"run"))
        .collect();
    r.send(&all);
    for _ in 2..=5 {
        assert_eq!(ack_code(&r.recv().expect("a PUBACK each")), 0);
    }
}

#[test]
fn plugin_stdout_and_stderr_reach_the_log() {
    let w = misbehaving("print", "");
    let mut r = v5_client(&w, "c", &[]);
    for i in 0..3 {
        assert_eq!(
            publish_code(&mut r, "bad/x", 1 + i, b"x"),
            0,
            "printing is not a failure"
        );
    }
    assert!(
        eventually(Duration::from_secs(5), || {
            let log = w.log();
            log.contains("printing to stdout about bad/x")
                && log.contains("and to stderr")
                && log.contains("stream=stdout")
        }),
        "{}",
        w.log()
    );
    assert!(!w.log().contains("plugin failed"), "{}", w.log());
    // Printing needs no blocking path: the plugin's imports say it never waits.
    let (_, body) = weir_tests::http::request(w.admin_port, "GET", "/plugins", None);
    assert!(body.contains("\"blocking\":false"), "{body}");
}

#[test]
fn on_error_allow_lets_requests_through() {
    let w = misbehaving("trap", "on_error = \"allow\"");
    let mut r = v5_client(&w, "c", &[]);
    assert_eq!(publish_code(&mut r, "bad/x", 1, b"x"), 0);
}

#[test]
fn a_plugin_that_cannot_load_stops_startup_with_its_name() {
    plugins::build();
    let dir = tempfile::tempdir().unwrap();
    let garbage = dir.path().join("garbage.wasm");
    std::fs::write(&garbage, b"\0asm\x01\0\0\0 this is not a component").unwrap();
    let cases = [
        (
            entry("broken", "misbehave", "", "mode = \"init-fail\""),
            "init refused the configuration",
        ),
        (
            format!("[[plugin]]\nname = \"junk\"\npath = {garbage:?}\n"),
            "not a valid WebAssembly component",
        ),
    ];
    for (plugin, why) in cases {
        let config = dir.path().join("weir.toml");
        let text = format!(
            "[storage]\ndir = {:?}\n[plugins]\ncache_dir = {:?}\n{plugin}",
            dir.path().join("d"),
            plugins::cache_dir()
        );
        std::fs::write(&config, text).unwrap();
        let out = Command::new(weir_bin())
            .arg("--config")
            .arg(&config)
            .arg("--check")
            .output()
            .unwrap();
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success(), "{why}: accepted");
        assert!(
            err.contains(why) && (err.contains("'broken'") || err.contains("'junk'")),
            "{err}"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn retained_and_shared_deliveries_do_not_leak_unreadable_topics() {
    let rules = r#"rules = [
  { access = "read", topic = "public/secret", allow = false },
  { access = "readwrite", topic = "public/#" },
  { access = "read", topic = "$share/workers/jobs/#" },
  { access = "read", topic = "jobs/%c/#" },
  { access = "write", topic = "jobs/#" },
]"#;
    let w = broker(&[entry("acl", "acl", "", rules)], "", "");
    let (p, _) = C5::connect_with(C5::opts(w.port, "publisher")).await;
    p.send("public/news", QoS::AtLeastOnce, true, "news").await;
    p.send("public/secret", QoS::AtLeastOnce, true, "secret")
        .await;
    tokio::time::sleep(Duration::from_millis(200)).await;
    // `public/#` may be subscribed, but the retained message on the one topic under it
    // that this client may not read is not sent.
    let (mut reader, _) = C5::connect_with(C5::opts(w.port, "reader")).await;
    reader.subscribe("public/#", QoS::AtLeastOnce).await;
    assert_eq!(reader.drain_payloads().await, vec!["news"]);

    // A shared group whose members may each read only their own jobs: every message
    // goes to the member allowed to read it, or to nobody.
    let (mut a, _) = C5::connect_with(C5::opts(w.port, "a")).await;
    let (mut b, _) = C5::connect_with(C5::opts(w.port, "b")).await;
    a.subscribe("$share/workers/jobs/#", QoS::AtLeastOnce).await;
    b.subscribe("$share/workers/jobs/#", QoS::AtLeastOnce).await;
    for i in 0..4 {
        p.send("jobs/a/x", QoS::AtLeastOnce, false, format!("a{i}"))
            .await;
        p.send("jobs/b/x", QoS::AtLeastOnce, false, format!("b{i}"))
            .await;
    }
    p.send("jobs/c/x", QoS::AtLeastOnce, false, "c").await;
    assert_eq!(a.drain_payloads().await, vec!["a0", "a1", "a2", "a3"]);
    assert_eq!(b.drain_payloads().await, vec!["b0", "b1", "b2", "b3"]);
}

#[test]
fn compiled_plugins_are_cached_so_a_restart_does_not_recompile() {
    let cache = tempfile::tempdir().unwrap();
    let opts = Opts {
        extra: entry("acl", "acl", "", "rules = []"),
        plugins: format!("cache_dir = {:?}", cache.path()),
        ..Default::default()
    };
    let mut w = Weir::with(opts);
    assert!(
        w.log().contains("compiling plugin"),
        "first start compiles:\n{}",
        w.log()
    );
    assert!(w.terminate().success());
    let before = w.log().matches("compiling plugin").count();
    w.restart();
    assert!(eventually(Duration::from_secs(5), || w
        .log()
        .matches("plugin loaded")
        .count()
        == 2));
    assert_eq!(
        w.log().matches("compiling plugin").count(),
        before,
        "the restart loaded the cached compilation"
    );
    let cached: Vec<_> = std::fs::read_dir(cache.path()).unwrap().flatten().collect();
    assert_eq!(
        cached.len(),
        1,
        "one cached file, named by content hash and engine"
    );
}

/// The acl plugin lets the broker reuse its decisions (`host.reuse-answer`): publishing
/// to one topic again costs no call, a client that comes back as another user is asked
/// again, and new rules loaded by SIGHUP apply to the very next message.
#[test]
fn reused_answers_skip_calls_until_the_client_or_the_plugin_changes() {
    let rules = r#"rules = [ { access = "readwrite", topic = "home/%u/#" } ]"#;
    let w = broker(&[entry("acl", "acl", "", rules)], "", "");
    let metric = |name: &str| metric(&w, name, "acl");
    let (mut alice, code) = login(&w, 5, "dev", "alice", b"pw");
    assert_eq!(code, 0);
    for pid in 1..=50 {
        assert_eq!(publish_code(&mut alice, "home/alice/t", pid, b"x"), 0);
    }
    assert_eq!(metric("weir_plugin_calls_total"), 1);
    assert_eq!(metric("weir_plugin_reused_answers_total"), 49);
    assert_eq!(publish_code(&mut alice, "home/alice/other", 51, b"x"), 0);
    assert_eq!(
        metric("weir_plugin_calls_total"),
        2,
        "another topic is asked"
    );
    drop(alice);

    // The same client id as another user: alice's answer is not bob's.
    let (mut bob, code) = login(&w, 5, "dev", "bob", b"pw");
    assert_eq!(code, 0);
    assert_eq!(publish_code(&mut bob, "home/alice/t", 1, b"x"), 0x87);
    assert_eq!(publish_code(&mut bob, "home/bob/t", 2, b"x"), 0);
    assert_eq!(publish_code(&mut bob, "home/bob/t", 3, b"x"), 0);

    // New rules: the reused "allow" dies with the old version of the plugin.
    let text = std::fs::read_to_string(w.config_path())
        .unwrap()
        .replace("home/%u/#", "elsewhere/#");
    std::fs::write(w.config_path(), text).unwrap();
    w.sighup_until("plugin chain reconfigured");
    assert_eq!(publish_code(&mut bob, "home/bob/t", 4, b"x"), 0x87);
    assert_eq!(publish_code(&mut bob, "elsewhere/x", 5, b"x"), 0);
}

/// A limiter well within its limits leases tokens, and the broker allows the leased
/// publishes without calling it; near the limit there are no tokens to spare, and the
/// client still runs at exactly its rate.
#[test]
fn rate_limit_leases_skip_calls_and_the_limit_still_holds() {
    let roomy = "per_client = { messages = { per_second = 100000.0 }, bytes = { per_second = 10000000.0 } }";
    let w = broker(&[entry("limits", "rate-limit", "", roomy)], "", "");
    let calls = || metric(&w, "weir_plugin_calls_total", "limits");
    let mut r = v5_client(&w, "roomy", &[]);
    let connected = calls(); // CONNECT is an event for the limiter too
    for pid in 1..=50 {
        assert_eq!(publish_code(&mut r, "t", pid, b"x"), 0);
    }
    assert_eq!(calls(), connected + 1);
    assert_eq!(metric(&w, "weir_plugin_reused_answers_total", "limits"), 49);
    // Another connection of the same client id does not inherit the lease.
    drop(r);
    let mut again = v5_client(&w, "roomy", &[]);
    let connected = calls();
    assert_eq!(publish_code(&mut again, "t", 1, b"x"), 0);
    assert_eq!(calls(), connected + 1);

    // 1 000/s with bursts of 100: leases of 10 while the bucket has them to spare.
    // 600 messages cannot take less than (600 - 100) / 1 000 s, leases or not.
    let tight = "per_client = { messages = { per_second = 1000.0, burst = 100 } }";
    let w = broker(&[entry("limits", "rate-limit", "", tight)], "", "");
    let mut r = v5_client(&w, "tight", &[]);
    let t0 = Instant::now();
    publish_pipelined(&mut r, "t", 600);
    assert!(
        t0.elapsed() >= Duration::from_millis(490),
        "600 messages at 1000/s after a burst of 100 took {:?}",
        t0.elapsed()
    );
    assert!(
        metric(&w, "weir_plugin_reused_answers_total", "limits") > 0,
        "leases were used"
    );
}

/// A transform that tags every message on a topic lets the broker reuse its
/// replacement: each message keeps its own payload, and a message with other
/// properties is asked about afresh.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn reused_replacements_keep_each_message_its_own_payload() {
    let rules = r#"tag = [ { filter = "sensors/#", name = "source", value = "weir" } ]"#;
    let w = broker(&[entry("shape", "transform", "", rules)], "", "");
    let (mut sub, _) = C5::connect_with(C5::opts(w.port, "sub")).await;
    sub.subscribe("sensors/#", QoS::AtLeastOnce).await;
    let mut r = v5_client(&w, "pub", &[]);
    for i in 1..=20u16 {
        assert_eq!(publish_code(&mut r, "sensors/a", i, &i.to_be_bytes()), 0);
    }
    // A user property (0x26) of its own: another question for the plugin.
    let own = [&[0x26u8][..], &string("k"), &string("v")].concat();
    r.send(&publish5(0x02, "sensors/a", Some(21), &own, b"own"));
    assert_eq!(ack_code(&r.recv().expect("PUBACK")), 0);
    let mut got = Vec::new();
    while got.len() < 21 {
        let m = sub.publish().await;
        let props = m.properties.clone().unwrap_or_default().user_properties;
        got.push((m.payload.to_vec(), props));
    }
    let tag = ("source".to_string(), "weir".to_string());
    for (i, (payload, props)) in got.iter().take(20).enumerate() {
        assert_eq!(payload, &(i as u16 + 1).to_be_bytes(), "its own payload");
        assert_eq!(props, std::slice::from_ref(&tag), "tagged");
    }
    assert_eq!(got[20].0, b"own");
    assert_eq!(got[20].1, [("k".to_string(), "v".to_string()), tag]);
    assert_eq!(metric(&w, "weir_plugin_calls_total", "shape"), 2);
    assert_eq!(metric(&w, "weir_plugin_reused_answers_total", "shape"), 19);
}

/// A plugin written in JavaScript (plugins/js-limiter, built with componentize-js from
/// npm) limits publishes through the real broker, its buckets in the host.
#[test]
fn a_javascript_plugin_limits_publishes() {
    let config = "messages_per_second = 2.0\nburst = 3";
    let w = broker(&[entry("js", "js-limiter", "", config)], "", "");
    let mut sub = v5_client(&w, "watcher", &[]);
    sub.send(&subscribe5(1, "t", 0));
    assert!(sub.recv().is_some(), "SUBACK");
    let mut r = v5_client(&w, "fast", &[]);
    let codes: Vec<u8> = (1..=8)
        .map(|i| publish_code(&mut r, "t", i, b"x"))
        .collect();
    assert_eq!(&codes[..3], &[0, 0, 0], "within the burst: {codes:?}");
    let refused = codes.iter().filter(|c| **c == 0x96).count();
    assert!(refused >= 4, "then 0x96 message rate too high: {codes:?}");
    let delivered = std::iter::from_fn(|| sub.recv_within(Duration::from_millis(500))).count();
    assert_eq!(
        delivered,
        8 - refused,
        "only what was accepted is delivered"
    );
    // Another client has a bucket of its own.
    let mut other = v5_client(&w, "other", &[]);
    assert_eq!(publish_code(&mut other, "t", 1, b"x"), 0);
    let (_, metrics) = request(w.admin_port, "GET", "/metrics", None);
    assert!(
        metrics.contains("weir_plugin_errors_total{plugin=\"js\",kind=\"trap\"} 0"),
        "{metrics}"
    );
}

/// A transform that edits a message and reads it back sees its own edits, whether it
/// is asked alone (QoS 2 is never gathered into a run: each edit a call into the
/// broker) or for a run of PUBLISHes read together (the SDK keeps the edits and answers
/// them with the run). Each message comes with a user property the plugin removes.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_transform_reads_its_own_edits_alone_and_in_a_run() {
    let w = misbehaving("edit-read", "");
    let (mut sub, _) = C5::connect_with(C5::opts(w.port, "sub")).await;
    sub.subscribe("edited/#", QoS::AtLeastOnce).await;
    let mut r = v5_client(&w, "pub", &[]);
    let came = [[0x26].as_slice(), &string("b"), &string("came")].concat();
    // One alone at QoS 2, then five at QoS 1 in one write.
    r.send(&publish5(0x04, "bad/alone", Some(1), &came, b"x"));
    let rec = r.recv().expect("PUBREC");
    assert_eq!((rec[0], ack_code(&rec)), (0x50, 0));
    r.send(&packet(0x62, &1u16.to_be_bytes()));
    assert_eq!(r.recv().expect("PUBCOMP")[0], 0x70);
    // Headers that differ, to be read back from the run's columns: retained, expiring,
    // UTF-8 with a longer payload.
    let expiring = [came.as_slice(), &[0x02, 0, 0, 0x02, 0x58]].concat();
    let utf8 = [came.as_slice(), &[0x01, 1]].concat();
    let run: Vec<u8> = [
        publish5(0x02, "bad/2", Some(2), &came, b"x"),
        publish5(0x03, "bad/3", Some(3), &came, b"x"),
        publish5(0x02, "bad/4", Some(4), &expiring, b"x"),
        publish5(0x02, "bad/5", Some(5), &utf8, b"hello"),
        publish5(0x02, "bad/6", Some(6), &came, b"x"),
    ]
    .concat();
    r.send(&run);
    for _ in 2..=6 {
        assert_eq!(ack_code(&r.recv().expect("PUBACK")), 0);
    }
    let headers = [
        "qos 2 retain false len 1 expiry None utf8 false",
        "qos 1 retain false len 1 expiry None utf8 false",
        "qos 1 retain true len 1 expiry None utf8 false",
        "qos 1 retain false len 1 expiry Some(600) utf8 false",
        "qos 1 retain false len 5 expiry None utf8 true",
        "qos 1 retain false len 1 expiry None utf8 false",
    ];
    for (name, header) in ["alone", "2", "3", "4", "5", "6"].into_iter().zip(headers) {
        let m = sub.publish().await;
        let topic = format!("edited/{name}");
        assert_eq!(&m.topic[..], topic.as_bytes());
        let props = m.properties.unwrap();
        assert_eq!(props.content_type.as_deref(), Some("text/x"));
        let pair = |k: &str, v: &str| (k.to_string(), v.to_string());
        let want = vec![
            pair("a", "1"),
            pair("topic-seen", &topic),
            pair("a-seen", "1"),
            pair("count", "3"),
            pair("content-type-seen", "text/x"),
        ];
        assert_eq!(props.user_properties[..5], want, "{name}");
        // The expiry read a second later is a second less.
        let seen = &props.user_properties[5];
        let late = header.replace("Some(600)", "Some(599)");
        assert!(
            seen.0 == "header-seen" && (seen.1 == header || seen.1 == late),
            "{name}: {seen:?}"
        );
    }
}

/// PUBLISHes read together are asked about together (each plugin once for the run),
/// and each still gets its own answer, in order: a denied one takes none of the
/// limiter's tokens, the limiter's burst ends where it would one message at a time,
/// and each routed one is transformed and arrives in order.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn publishes_read_together_get_each_its_own_answer() {
    let w = broker(
        &[
            entry(
                "acl",
                "acl",
                "",
                "reuse_ms = 0\ndefault = \"deny\"\nrules = [ { access = \"readwrite\", topic = \"ok/#\" } ]",
            ),
            entry(
                "limits",
                "rate-limit",
                "",
                "action = \"reject\"\nper_client = { messages = { per_second = 0.001, burst = 5 } }",
            ),
            entry(
                "shape",
                "transform",
                "",
                "reuse_ms = 0\ntag = [ { filter = \"#\", name = \"seen\", value = \"yes\" } ]",
            ),
        ],
        "",
        "",
    );
    let (mut sub, _) = C5::connect_with(C5::opts(w.port, "sub")).await;
    sub.subscribe("ok/#", QoS::AtLeastOnce).await;
    let topics: Vec<String> = (1..=12u16)
        .map(|i| match i % 3 {
            0 => format!("bad/{i}"),
            _ => format!("ok/{i}"),
        })
        .collect();
    let mut r = v5_client(&w, "pub", &[]);
    let calls = |p: &str| metric(&w, "weir_plugin_calls_total", p);
    let before = (calls("acl"), calls("limits"), calls("shape"));
    let all: Vec<u8> = (topics.iter().zip(1u16..))
        .flat_map(|(t, i)| publish5(0x02, t, Some(i), &[], t.as_bytes()))
        .collect();
    r.send(&all);
    let codes: Vec<u8> = (0..topics.len())
        .map(|_| ack_code(&r.recv().expect("PUBACK")))
        .collect();
    let mut allowed = 0;
    let expected: Vec<u8> = (topics.iter())
        .map(|t| match t.starts_with("bad/") {
            true => 0x87,
            false if allowed < 5 => {
                allowed += 1;
                0
            }
            false => 0x96,
        })
        .collect();
    assert_eq!(codes, expected, "one answer each, in order");
    for want in ["ok/1", "ok/2", "ok/4", "ok/5", "ok/7"] {
        let m = sub.publish().await;
        assert_eq!(&m.topic[..], want.as_bytes());
        let user = m.properties.unwrap().user_properties;
        assert!(user.contains(&("seen".into(), "yes".into())), "{user:?}");
    }
    assert!(sub
        .publish_within(Duration::from_millis(300))
        .await
        .is_none());
    // Each plugin was asked about exactly the messages that reached it.
    let after = (calls("acl"), calls("limits"), calls("shape"));
    let asked = (after.0 - before.0, after.1 - before.1, after.2 - before.2);
    assert_eq!(asked, (12, 8, 5));

    // A limiter that leases takes a lease's tokens once and lets the lease cover the
    // publishes after it within the run too, as between runs: a burst of 20 is 20
    // messages however they arrive (leases of 10: a second of 10/s).
    let leasing = "action = \"reject\"\nlease_ms = 1000\nper_client = { messages = { per_second = 10.0, burst = 20 } }";
    let w = broker(&[entry("limits", "rate-limit", "", leasing)], "", "");
    let mut r = v5_client(&w, "pub", &[]);
    let all: Vec<u8> = (1..=25u16)
        .flat_map(|i| publish5(0x02, "t", Some(i), &[], b"x"))
        .collect();
    r.send(&all);
    let codes: Vec<u8> = (0..25)
        .map(|_| ack_code(&r.recv().expect("PUBACK")))
        .collect();
    let mut want = vec![0u8; 20];
    want.extend([0x96; 5]);
    assert_eq!(codes, want, "the burst, then the rate");
}
