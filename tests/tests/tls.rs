//! TLS and mutual TLS listeners, driven by Mosquitto's clients (OpenSSL underneath) with
//! certificates generated for each test.

use std::path::Path;
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};
use weir_tests::clients::v5::QoS;
use weir_tests::clients::C5;
use weir_tests::pki::{Ca, Pair, Pki};
use weir_tests::raw::Raw;
use weir_tests::{eventually, wait_timeout, Listener, Opts, Weir};

fn tls_listener(name: &str, pki: &Pki, extra: &str) -> Listener {
    let lines = format!(
        "cert = {:?}\nkey = {:?}\n{extra}",
        pki.server.cert, pki.server.key
    );
    Listener::new(name, "tls", &lines)
}

fn mtls_lines(pki: &Pki, extra: &str) -> String {
    format!("client_ca = {:?}\n{extra}", pki.ca_file)
}

/// Arguments for a TLS connection to `localhost` (the server certificate's name).
fn tls_args(port: u16, ca: &Path, client: Option<&Pair>) -> Vec<String> {
    let mut a = vec![
        "-h".into(),
        "localhost".into(),
        "-p".into(),
        port.to_string(),
        "--cafile".into(),
    ];
    a.push(ca.display().to_string());
    if let Some(c) = client {
        a.extend([
            "--cert".into(),
            c.cert.display().to_string(),
            "--key".into(),
            c.key.display().to_string(),
        ]);
    }
    a
}

fn mosquitto_pub(args: &[String], extra: &[&str]) -> Output {
    Command::new("mosquitto_pub")
        .args(args)
        .args(extra)
        .output()
        .expect("mosquitto_pub (run .ci/setup)")
}

/// Publishes once over TLS; true if the broker accepted the connection and the message.
fn tls_publish_ok(port: u16, ca: &Path, client: Option<&Pair>, id: &str) -> bool {
    let out = mosquitto_pub(
        &tls_args(port, ca, client),
        &["-i", id, "-q", "1", "-t", "probe", "-m", "x"],
    );
    out.status.success()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn tls_clients_exchange_messages_with_tcp_clients() {
    let pki = Pki::new();
    let w = Weir::with(Opts {
        listeners: vec![tls_listener("secure", &pki, "")],
        ..Default::default()
    });
    let tls = w.port_of("secure");
    // TLS publisher -> TCP subscriber, with TLS 1.2, 1.3 and ALPN "mqtt".
    let (mut tcp, _) = C5::connect_with(C5::opts(w.port, "tcp-sub")).await;
    tcp.subscribe("x/#", QoS::AtLeastOnce).await;
    for (i, extra) in [
        vec!["--tls-version", "tlsv1.2"],
        vec!["--tls-version", "tlsv1.3"],
        vec!["--tls-alpn", "mqtt"],
    ]
    .into_iter()
    .enumerate()
    {
        let msg = format!("over tls {i}");
        let mut args: Vec<&str> = vec!["-q", "1", "-t", "x/tls", "-m", &msg];
        args.extend(extra);
        let out = mosquitto_pub(&tls_args(tls, &pki.ca_file, None), &args);
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        assert_eq!(tcp.publish().await.payload, msg.as_bytes());
    }
    // TCP publisher -> TLS subscriber.
    let mut sub = Command::new("mosquitto_sub")
        .args(tls_args(tls, &pki.ca_file, None))
        .args(["-t", "y/#", "-C", "1", "-W", "10", "-v"])
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let (p, _) = C5::connect_with(C5::opts(w.port, "tcp-pub")).await;
    let deadline = Instant::now() + Duration::from_secs(10);
    while Instant::now() < deadline && sub.try_wait().unwrap().is_none() {
        p.send("y/tcp", QoS::AtLeastOnce, false, "over tcp").await;
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let out = sub.wait_with_output().unwrap();
    assert_eq!(
        String::from_utf8_lossy(&out.stdout).trim(),
        "y/tcp over tcp"
    );
}

#[test]
fn tls_sessions_are_resumed() {
    let pki = Pki::new();
    let w = Weir::with(Opts {
        listeners: vec![tls_listener("secure", &pki, "")],
        ..Default::default()
    });
    let sess = pki.dir.path().join("session.pem");
    let connect = |extra: &[&str]| {
        let mut c = Command::new("openssl")
            .args([
                "s_client",
                "-connect",
                &format!("127.0.0.1:{}", w.port_of("secure")),
                "-tls1_2",
            ])
            .args(["-CAfile", &pki.ca_file.display().to_string()])
            .args(extra)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .expect("openssl");
        drop(c.stdin.take());
        String::from_utf8_lossy(&c.wait_with_output().unwrap().stdout).into_owned()
    };
    let first = connect(&["-sess_out", &sess.display().to_string()]);
    assert!(first.contains("Verify return code: 0"), "{first}");
    let second = connect(&["-sess_in", &sess.display().to_string()]);
    assert!(
        second.contains("Reused,"),
        "second handshake did not resume:\n{second}"
    );
}

#[test]
fn mutual_tls_refuses_missing_foreign_and_expired_certificates() {
    let pki = Pki::new();
    let w = Weir::with(Opts {
        listeners: vec![tls_listener(
            "mtls",
            &pki,
            &mtls_lines(&pki, "client_cert = \"required\""),
        )],
        ..Default::default()
    });
    let port = w.port_of("mtls");
    assert!(
        tls_publish_ok(port, &pki.ca_file, Some(&pki.client), "good"),
        "{}",
        w.log()
    );
    assert!(
        !tls_publish_ok(port, &pki.ca_file, None, "none"),
        "no certificate"
    );
    assert!(
        !tls_publish_ok(port, &pki.ca_file, Some(&pki.foreign_client), "foreign"),
        "other CA"
    );
    assert!(
        !tls_publish_ok(port, &pki.ca_file, Some(&pki.expired_client), "expired"),
        "expired"
    );
    // The client may be gone before the broker has logged its side of the handshake.
    let refusals = || {
        w.log()
            .lines()
            .filter(|l| l.contains("listener=mtls") && l.contains("TLS handshake failed"))
            .count()
    };
    assert!(
        eventually(Duration::from_secs(5), || refusals() >= 3),
        "each refusal is logged with the listener and the cause:\n{}",
        w.log()
    );
    let log = w.log();
    assert!(log.contains("Expired") || log.contains("expired"), "{log}");
}

#[test]
fn certificate_identity_reaches_authentication() {
    let pki = Pki::new();
    let w = Weir::with(Opts {
        listeners: vec![
            tls_listener(
                "byname",
                &pki,
                &mtls_lines(
                    &pki,
                    "use_identity_as_username = true\nallow_anonymous = false",
                ),
            ),
            tls_listener(
                "optional",
                &pki,
                &mtls_lines(&pki, "client_cert = \"optional\"\nallow_anonymous = false"),
            ),
        ],
        ..Default::default()
    });
    assert!(tls_publish_ok(
        w.port_of("byname"),
        &pki.ca_file,
        Some(&pki.client),
        "cert-user"
    ));
    assert!(eventually(Duration::from_secs(5), || w
        .log()
        .contains("client_id=cert-user")));
    let log = w.log();
    let line = log
        .lines()
        .find(|l| l.contains("client connected") && l.contains("client_id=cert-user"))
        .unwrap();
    assert!(
        line.contains("username=device-17") && line.contains("identity=device-17"),
        "{line}"
    );

    // Optional client certificates: with one the client is authenticated by it,
    // without one it is anonymous, which this listener refuses.
    assert!(tls_publish_ok(
        w.port_of("optional"),
        &pki.ca_file,
        Some(&pki.client),
        "with-cert"
    ));
    assert!(!tls_publish_ok(
        w.port_of("optional"),
        &pki.ca_file,
        None,
        "without-cert"
    ));
    assert!(eventually(Duration::from_secs(5), || {
        w.log()
            .lines()
            .any(|l| l.contains("client_id=without-cert") && l.contains("connection refused"))
    }));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn sighup_reloads_certificates_without_dropping_connections() {
    let pki = Pki::new();
    let w = Weir::with(Opts {
        listeners: vec![tls_listener("secure", &pki, "")],
        ..Default::default()
    });
    let port = w.port_of("secure");
    // A TLS subscriber connected before the reload.
    let mut sub = Command::new("mosquitto_sub")
        .args(tls_args(port, &pki.ca_file, None))
        .args(["-i", "old-sub", "-t", "reload/#", "-C", "1", "-W", "20"])
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    assert!(eventually(Duration::from_secs(5), || w
        .log()
        .contains("client_id=old-sub")));

    // New certificates from a new CA replace the files.
    let ca2 = Ca::new("Weir Test CA 2");
    let ca2_file = ca2.write(&pki.dir.path().join("ca2.pem"));
    let fresh = ca2.server(pki.dir.path(), "server2");
    std::fs::copy(&fresh.cert, &pki.server.cert).unwrap();
    std::fs::copy(&fresh.key, &pki.server.key).unwrap();
    w.sighup_until("TLS certificates reloaded");

    assert!(
        tls_publish_ok(port, &ca2_file, None, "new-ca"),
        "new connections get the new certificate"
    );
    assert!(
        !tls_publish_ok(port, &pki.ca_file, None, "old-ca"),
        "the old certificate is gone"
    );
    // The connection made before the reload is still there and still receives.
    let (p, _) = C5::connect_with(C5::opts(w.port, "pub")).await;
    p.send("reload/x", QoS::AtLeastOnce, false, "still here")
        .await;
    let status =
        wait_timeout(&mut sub, Duration::from_secs(10)).expect("old subscriber got the message");
    assert!(status.success());

    // A broken file is refused and the listener keeps serving.
    std::fs::write(&pki.server.key, "not a key").unwrap();
    w.sighup_until("TLS reload failed");
    assert!(tls_publish_ok(port, &ca2_file, None, "after-bad-reload"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn bad_input_closes_only_that_connection_with_a_logged_cause() {
    let pki = Pki::new();
    let w = Weir::with(Opts {
        listeners: vec![tls_listener("secure", &pki, "")],
        limits: "connect_timeout_secs = 1".into(),
        ..Default::default()
    });
    let (mut bystander, _) = C5::connect_with(C5::opts(w.port, "bystander")).await;
    bystander.subscribe("ok", QoS::AtMostOnce).await;

    // Plain HTTP on the MQTT port: closed at once, not after the connect timeout.
    let mut r = Raw::connect(w.port);
    let t0 = Instant::now();
    r.send(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n");
    assert!(r.closed());
    assert!(t0.elapsed() < Duration::from_millis(900));
    // Garbage where a TLS handshake should be.
    let mut r = Raw::connect(w.port_of("secure"));
    r.send(b"\x10\x0c\x00\x04MQTT\x04\x02\x00\x3c\x00\x00");
    assert!(r.closed());
    // A client that stalls in the TLS handshake.
    let mut r = Raw::connect(w.port_of("secure"));
    r.send(&[0x16, 0x03, 0x01]);
    let t0 = Instant::now();
    assert!(r.closed());
    assert!(t0.elapsed() < Duration::from_secs(4));

    for cause in [
        "plain HTTP request on an MQTT listener",
        "TLS handshake failed",
        "TLS handshake not completed in time",
    ] {
        let logged = eventually(Duration::from_secs(5), || {
            w.log()
                .lines()
                .any(|l| l.contains(cause) && l.contains("listener="))
        });
        assert!(logged, "no log line for {cause}:\n{}", w.log());
    }
    let (p, _) = C5::connect_with(C5::opts(w.port, "p")).await;
    p.send("ok", QoS::AtMostOnce, false, "fine").await;
    assert_eq!(
        &bystander.publish().await.payload[..],
        b"fine",
        "the other client is unaffected"
    );
}
