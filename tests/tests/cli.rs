//! The `weir` command: configuration errors, the no-argument start, the log lines.

use std::process::Command;
use std::time::Duration;
use weir_tests::clients::{v5::QoS, C4, C5};
use weir_tests::{eventually, free_port, signal, wait_timeout, weir_bin, Weir};

fn run_with_config(text: &str) -> (bool, String) {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("weir.toml");
    std::fs::write(&path, text).unwrap();
    let out = Command::new(weir_bin())
        .arg("--config")
        .arg(&path)
        .arg("--check")
        .output()
        .unwrap();
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[test]
fn config_errors_name_the_key() {
    let cases = [
        ("[limits]\nmax_conections = 5\n", "max_conections"),
        ("[limits]\nmax_inflight = 0\n", "limits.max_inflight"),
        ("[storage]\ndurability = \"sometimes\"\n", "durability"),
        ("[[listener]]\nname = \"a\"\nbind = \"not-an-address\"\n", "bind"),
        ("[[listener]]\nname = \"a\"\nbind = \"127.0.0.1:1\"\n[[listener]]\nname = \"a\"\nbind = \"127.0.0.1:2\"\n", "listener[1].name"),
        ("[limits]\nmax_packet_size = 10\n", "limits.max_packet_size"),
        ("[log]\nlevel = \"[[[\"\n", "log.level"),
        ("bogus = 1\n", "bogus"),
    ];
    for (text, key) in cases {
        let (ok, err) = run_with_config(text);
        assert!(!ok, "{text:?} was accepted");
        assert!(
            err.contains(key),
            "error for {text:?} does not name {key}: {err}"
        );
    }
    let out = Command::new(weir_bin())
        .args(["--config", "/nonexistent/weir.toml"])
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("/nonexistent/weir.toml"));
}

#[test]
fn the_documented_example_config_is_valid() {
    let example = concat!(env!("CARGO_MANIFEST_DIR"), "/../docs/weir.example.toml");
    let out = Command::new(weir_bin())
        .args(["--check", "--config", example])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

#[test]
fn no_arguments_starts_tcp_1883_and_ws_8083_with_data_in_the_working_directory() {
    // This is the one test that needs the well-known ports.
    for port in [1883, 8083] {
        assert!(
            std::net::TcpListener::bind(("127.0.0.1", port)).is_ok(),
            "port {port} is in use on this machine; stop whatever holds it to run this test"
        );
    }
    let dir = tempfile::tempdir().unwrap();
    let mut child = Command::new(weir_bin())
        .current_dir(dir.path())
        .spawn()
        .unwrap();
    let up = eventually(Duration::from_secs(20), || {
        std::net::TcpStream::connect("127.0.0.1:1883").is_ok()
    });
    let ws_up = eventually(Duration::from_secs(5), || {
        std::net::TcpStream::connect("127.0.0.1:8083").is_ok()
    });
    let data = dir.path().join("weir-data").exists();
    signal(child.id(), "INT");
    let status = wait_timeout(&mut child, Duration::from_secs(15));
    assert!(up, "not listening on 127.0.0.1:1883");
    assert!(ws_up, "no WebSocket listener on 127.0.0.1:8083");
    assert!(data, "no weir-data directory in the working directory");
    assert!(
        status.is_some_and(|s| s.success()),
        "SIGINT exits 0: {status:?}"
    );
    let _ = free_port();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn connect_and_disconnect_are_logged_with_id_address_version_and_reason() {
    let w = Weir::start();
    let (c, _) = C5::connect_with(C5::opts(w.port, "logged-five")).await;
    c.disconnect().await;
    let (mut c4, _) = C4::connect_with(C4::opts(w.port, "logged-311")).await;
    c4.subscribe("x", rumqttc::QoS::AtMostOnce).await;
    c4.drop_connection();
    let _ = QoS::AtMostOnce;
    assert!(eventually(Duration::from_secs(5), || w
        .log()
        .matches("client disconnected")
        .count()
        >= 2));
    let log = w.log();
    let lines: Vec<&str> = log.lines().filter(|l| l.contains("logged-")).collect();
    let find = |needles: &[&str]| lines.iter().any(|l| needles.iter().all(|n| l.contains(n)));
    assert!(
        find(&[
            "client connected",
            "client_id=logged-five",
            "peer=127.0.0.1:",
            "protocol=5.0"
        ]),
        "{log}"
    );
    assert!(
        find(&[
            "client disconnected",
            "client_id=logged-five",
            "reason=client sent DISCONNECT"
        ]),
        "{log}"
    );
    assert!(
        find(&["client connected", "client_id=logged-311", "protocol=3.1.1"]),
        "{log}"
    );
    assert!(
        find(&[
            "client disconnected",
            "client_id=logged-311",
            "without DISCONNECT"
        ]),
        "{log}"
    );
}
