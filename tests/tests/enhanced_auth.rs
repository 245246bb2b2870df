//! MQTT 5 enhanced authentication (CONNECT with an Authentication Method, the AUTH
//! exchange, re-authentication with AUTH 0x19) through the `auth-scram` plugin
//! (SCRAM-SHA-256), driven by MQTT.js (`tests/js/scram.mjs`), which answers the
//! broker's challenge and checks the broker's signature in the CONNACK.

use std::path::Path;
use std::process::Command;
use weir_tests::{plugins, Opts, Weir};

/// bob's verifier, as PostgreSQL stores one, for the password "through the looking
/// glass" (salt "weir-test-salt-b", 4096 iterations).
const BOB: &str = "SCRAM-SHA-256$4096:d2Vpci10ZXN0LXNhbHQtYg==$NPVzP7NK4zZ+BzEkiZDDCTG6k82dTwnWVBgIgazAtjc=:aowWTIx/kOC/Q/toT2BEiQTkfD8IWxu7akR9cbiZkxU=";

fn scram_broker() -> Weir {
    let entry = format!(
        "[[plugin]]\nname = \"scram\"\npath = {:?}\n[plugin.config]\nusers = [\n  {{ username = \"alice\", password = \"wonderland\" }},\n  {{ username = \"bob\", scram = {BOB:?} }},\n]\n",
        plugins::wasm("auth-scram")
    );
    Weir::with(Opts {
        extra: entry,
        ..Default::default()
    })
}

/// What `scram.mjs` printed.
fn mqtt_js(w: &Weir, args: &[&str]) -> String {
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("js/scram.mjs");
    let url = format!("mqtt://127.0.0.1:{}", w.port);
    let out = Command::new("node")
        .arg(script)
        .arg(url)
        .args(args)
        .output()
        .expect("node (run .ci/setup)");
    let said = String::from_utf8_lossy(&out.stdout).trim().to_owned();
    assert!(
        !said.is_empty(),
        "scram.mjs said nothing: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    said
}

#[test]
fn scram_sha_256_admits_the_right_password_and_proves_the_broker() {
    let w = scram_broker();
    assert_eq!(
        mqtt_js(&w, &["alice", "wonderland"]),
        "OK connected verified"
    );
    assert_eq!(
        mqtt_js(&w, &["bob", "through the looking glass"]),
        "OK connected verified",
        "a user given by a stored verifier"
    );
    let log = w.log();
    assert!(
        log.contains("client connected client_id=scram-alice"),
        "{log}"
    );
    assert!(
        log.contains("username=alice"),
        "the plugin's user is the client's username"
    );
}

#[test]
fn a_wrong_password_or_unknown_user_is_refused_with_0x86() {
    let w = scram_broker();
    assert_eq!(mqtt_js(&w, &["alice", "looking glass"]), "REFUSED 134");
    assert_eq!(mqtt_js(&w, &["carol", "wonderland"]), "REFUSED 134");
    assert!(w
        .log()
        .contains("authentication failed: unknown user or wrong password"));
}

#[test]
fn an_unknown_method_is_refused_with_0x8c() {
    let w = scram_broker();
    assert_eq!(
        mqtt_js(&w, &["alice", "wonderland", "SCRAM-SHA-1"]),
        "REFUSED 140"
    );
    let plain = Weir::start();
    assert_eq!(
        mqtt_js(&plain, &["alice", "wonderland"]),
        "REFUSED 140",
        "no plugin takes any method"
    );
}

#[test]
fn a_client_reauthenticates_on_its_live_connection() {
    let w = scram_broker();
    assert_eq!(
        mqtt_js(&w, &["alice", "wonderland", "SCRAM-SHA-256", "reauth"]),
        "OK connected verified reauthenticated verified"
    );
}
