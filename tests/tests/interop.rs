//! Interoperability with clients that share no code with Weir: paho-mqtt (Python) and
//! Mosquitto's command-line clients. `.ci/setup` installs both.

use std::process::{Command, Stdio};
use std::time::{Duration, Instant};
use weir_tests::{wait_timeout, Weir};

fn need(cmd: &str, hint: &str) {
    let found = Command::new("sh")
        .arg("-c")
        .arg(format!("command -v {cmd} >/dev/null"))
        .status()
        .is_ok_and(|s| s.success());
    assert!(found, "{cmd} not found: {hint}");
}

#[test]
fn paho_python_client_behaviours() {
    need("python3", "install Python 3");
    let w = Weir::start();
    let script = concat!(env!("CARGO_MANIFEST_DIR"), "/paho/paho_check.py");
    let out = Command::new("python3")
        .arg(script)
        .arg(w.port.to_string())
        .output()
        .expect("running python3");
    assert!(
        out.status.success(),
        "paho checks failed (is paho-mqtt installed? run .ci/setup)\nstdout:\n{}\nstderr:\n{}\nbroker log:\n{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr),
        w.log()
    );
}

/// Starts `mosquitto_sub` for one message, then publishes with `mosquitto_pub` until the
/// subscriber has it (so the test does not guess when the subscription is in place).
fn sub_then_pub(w: &Weir, version: &str, qos: u8, topic: &str, message: &str) -> String {
    let port = w.port.to_string();
    let q = qos.to_string();
    let sub = Command::new("mosquitto_sub")
        .args([
            "-h",
            "127.0.0.1",
            "-p",
            &port,
            "-V",
            version,
            "-q",
            &q,
            "-t",
            topic,
            "-C",
            "1",
            "-W",
            "10",
        ])
        .stdout(Stdio::piped())
        .spawn()
        .expect("mosquitto_sub");
    let pid = sub.id();
    let deadline = Instant::now() + Duration::from_secs(10);
    let mut sub = Some(sub);
    while Instant::now() < deadline {
        let status = Command::new("mosquitto_pub")
            .args([
                "-h",
                "127.0.0.1",
                "-p",
                &port,
                "-V",
                version,
                "-q",
                &q,
                "-t",
                topic,
                "-m",
                message,
            ])
            .status()
            .expect("mosquitto_pub");
        assert!(status.success(), "mosquitto_pub failed");
        std::thread::sleep(Duration::from_millis(200));
        if let Some(Ok(Some(_))) = sub.as_mut().map(|s| s.try_wait()) {
            break;
        }
    }
    let out = sub
        .take()
        .unwrap()
        .wait_with_output()
        .unwrap_or_else(|e| panic!("mosquitto_sub {pid}: {e}"));
    String::from_utf8_lossy(&out.stdout).trim().to_string()
}

#[test]
fn mosquitto_clients_publish_and_subscribe_at_each_qos() {
    need(
        "mosquitto_pub",
        "install Debian's mosquitto-clients (run .ci/setup)",
    );
    let w = Weir::start();
    for version in ["mqttv311", "mqttv5"] {
        for qos in 0..=2u8 {
            let topic = format!("mosq/{version}/{qos}");
            let msg = format!("hello {version} qos {qos}");
            assert_eq!(sub_then_pub(&w, version, qos, &topic, &msg), msg);
        }
    }
}

#[test]
fn mosquitto_clients_retained_message() {
    need(
        "mosquitto_pub",
        "install Debian's mosquitto-clients (run .ci/setup)",
    );
    let w = Weir::start();
    let port = w.port.to_string();
    let status = Command::new("mosquitto_pub")
        .args([
            "-h",
            "127.0.0.1",
            "-p",
            &port,
            "-q",
            "1",
            "-r",
            "-t",
            "mosq/retained",
            "-m",
            "kept",
        ])
        .status()
        .unwrap();
    assert!(status.success());
    let mut sub = Command::new("mosquitto_sub")
        .args([
            "-h",
            "127.0.0.1",
            "-p",
            &port,
            "-t",
            "mosq/#",
            "-C",
            "1",
            "-W",
            "5",
            "-F",
            "%r %t %p",
        ])
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let status = wait_timeout(&mut sub, Duration::from_secs(8)).expect("mosquitto_sub finished");
    assert!(status.success());
    let mut out = String::new();
    std::io::Read::read_to_string(sub.stdout.as_mut().unwrap(), &mut out).unwrap();
    assert_eq!(
        out.trim(),
        "1 mosq/retained kept",
        "retain flag, topic, payload"
    );
}
