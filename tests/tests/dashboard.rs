//! The dashboard at `/ui`, driven in headless Chromium by playwright-core
//! (tests/js/dashboard.mjs) against the real broker: sign in with the admin token, see
//! a client, its session, subscription and a retained message, watch a chart move,
//! reload a plugin and see its version change, promote a shadow, switch it off and on,
//! kick the client.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;
use weir_tests::clients::v5::QoS;
use weir_tests::clients::C5;
use weir_tests::http::request;
use weir_tests::{plugins, Opts, Weir};

fn js_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("js")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn an_operator_signs_in_watches_reloads_and_kicks_in_a_real_browser() {
    assert!(
        js_dir().join("node_modules/playwright-core").is_dir(),
        "tests/js/node_modules missing: run .ci/setup"
    );
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("tag.wasm");
    std::fs::copy(plugins::wasm("tagger"), &file).unwrap();
    let w = Weir::with(Opts {
        extra: format!("[[plugin]]\nname = \"tag\"\npath = {file:?}\n"),
        admin: "token = \"s3cret\"".into(),
        ..Default::default()
    });

    // A client with a lasting session, a subscription and, once kicked, a queue.
    let mut o = C5::opts(w.port, "dash-victim");
    o.set_clean_start(false);
    o.set_session_expiry_interval(Some(3600));
    let (mut victim, _) = C5::connect_with(o).await;
    victim.subscribe("dash/#", QoS::AtLeastOnce).await;
    let (publisher, _) = C5::connect_with(C5::opts(w.port, "dash-publisher")).await;
    publisher
        .client
        .publish("dash/retained", QoS::AtLeastOnce, true, "kept")
        .await
        .unwrap();
    // Traffic for the chart, 20 messages a second until the test ends (QoS 1: once the
    // client is kicked they queue in its session).
    let traffic = tokio::spawn(async move {
        loop {
            let _ = publisher
                .client
                .publish("dash/live", QoS::AtLeastOnce, false, "x")
                .await;
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    });

    let url = format!("http://127.0.0.1:{}/ui", w.admin_port);
    let tagger_b = plugins::wasm("tagger-b");
    let shots = std::env::var("WEIR_SCREENSHOTS").unwrap_or_default();
    let script = js_dir().join("dashboard.mjs");
    let args = [
        url.clone(),
        "s3cret".into(),
        "dash-victim".into(),
        "tag".into(),
        file.display().to_string(),
        tagger_b.display().to_string(),
        plugins::wasm("tagger").display().to_string(),
        shots,
    ];
    let out = tokio::task::spawn_blocking(move || {
        Command::new("node")
            .arg(script)
            .args(args)
            .output()
            .unwrap()
    })
    .await
    .unwrap();
    traffic.abort();
    let said = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(
        out.status.success() && said.contains("DONE"),
        "dashboard.mjs: {said}\n{}\n---- broker log ----\n{}",
        String::from_utf8_lossy(&out.stderr),
        w.log()
    );
    for step in [
        "SEEN dash-victim",
        "TABLES",
        "CHART",
        "VERSION",
        "TOGGLED",
        "KICKED",
    ] {
        assert!(said.contains(step), "no {step} in {said}");
    }
    // The version shown changed from tagger's hash to tagger-b's.
    let hash = |p: &Path| {
        let out = Command::new("sha256sum").arg(p).output().unwrap();
        String::from_utf8_lossy(&out.stdout)[..12].to_string()
    };
    let line = said.lines().find(|l| l.starts_with("VERSION")).unwrap();
    assert_eq!(
        line,
        format!(
            "VERSION {} {}",
            hash(&plugins::wasm("tagger")),
            hash(&tagger_b)
        )
    );
    // The kick reached the client as 5.0 reason 0x98 (administrative action).
    let closed = victim.closed_within(Duration::from_secs(10)).await;
    assert!(
        closed
            .as_deref()
            .is_some_and(|c| c.contains("AdministrativeAction")),
        "{closed:?}"
    );
    assert!(w.log().contains("client disconnected by the admin API"));
    // The page and its script need the token; the login script does not.
    assert_eq!(request(w.admin_port, "GET", "/ui/app.js", None).0, 401);
    assert_eq!(request(w.admin_port, "GET", "/ui/login.js", None).0, 200);
    let (status, page) = request(w.admin_port, "GET", "/ui", Some("s3cret"));
    assert_eq!(status, 200);
    assert!(
        page.contains("chart-messages") && !page.contains("http://") && !page.contains("https://")
    );
}
