//! Every transport through one broker: a TCP client (rumqttc), a TLS client (Mosquitto's),
//! MQTT.js from Node over ws and wss, and MQTT.js in headless Chromium over ws and wss.
//! Each publishes one message after a common signal; each must receive everyone else's.

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};
use weir_tests::clients::v5::QoS;
use weir_tests::clients::C5;
use weir_tests::pki::Pki;
use weir_tests::{eventually, Listener, Opts, Weir};

const ALL: [&str; 6] = [
    "tcp",
    "tls",
    "node-ws",
    "node-wss",
    "browser-ws",
    "browser-wss",
];

fn js_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("js")
}

/// A child process whose stdout lines arrive on a channel.
struct Proc {
    child: Child,
    lines: mpsc::Receiver<String>,
    seen: Vec<String>,
}

impl Proc {
    fn spawn(cmd: &mut Command) -> Proc {
        let mut child = cmd
            .stdout(Stdio::piped())
            .spawn()
            .unwrap_or_else(|e| panic!("{cmd:?}: {e}"));
        let out = child.stdout.take().unwrap();
        let (tx, lines) = mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(out).lines().map_while(Result::ok) {
                if tx.send(line).is_err() {
                    return;
                }
            }
        });
        Proc {
            child,
            lines,
            seen: Vec::new(),
        }
    }

    /// Waits for a line starting with `prefix`; panics (with everything seen) if a
    /// FAIL line or the timeout comes first.
    fn expect(&mut self, prefix: &str, timeout: Duration) -> String {
        let deadline = Instant::now() + timeout;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match self.lines.recv_timeout(left) {
                Ok(l) => {
                    self.seen.push(l.clone());
                    if l.starts_with(prefix) {
                        return l;
                    }
                    assert!(!l.starts_with("FAIL"), "{l}\nall output: {:?}", self.seen);
                }
                Err(_) => panic!("no {prefix:?} line in time; output so far: {:?}", self.seen),
            }
        }
    }
}

/// On a failed assertion, the broker's own account of the connections is what explains it.
struct LogOnPanic<'a>(&'a Weir);

impl Drop for LogOnPanic<'_> {
    fn drop(&mut self) {
        if std::thread::panicking() {
            eprintln!("---- broker log ----\n{}", self.0.log());
        }
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn others(me: &str) -> Vec<&'static str> {
    ALL.iter().copied().filter(|n| *n != me).collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn tcp_tls_node_and_browser_clients_exchange_messages() {
    assert!(
        js_dir().join("node_modules/mqtt").is_dir(),
        "tests/js/node_modules missing: run .ci/setup"
    );
    let pki = Pki::new();
    let tls = format!("cert = {:?}\nkey = {:?}", pki.server.cert, pki.server.key);
    let w = Weir::with(Opts {
        listeners: vec![
            Listener::new("secure", "tls", &tls),
            Listener::new("web", "ws", ""),
            Listener::new("websecure", "wss", &tls),
        ],
        ..Default::default()
    });
    let _log = LogOnPanic(&w);
    let ws = format!("ws://127.0.0.1:{}/mqtt", w.port_of("web"));
    let wss = format!("wss://127.0.0.1:{}/mqtt", w.port_of("websecure"));
    let all = ALL.join(",");
    let ca = pki.ca_file.display().to_string();

    let (mut tcp, _) = C5::connect_with(C5::opts(w.port, "tcp")).await;
    tcp.subscribe("mesh/#", QoS::AtLeastOnce).await;
    let tls_args = |cmd: &mut Command| {
        cmd.args([
            "-h",
            "localhost",
            "-p",
            &w.port_of("secure").to_string(),
            "--cafile",
            &ca,
        ]);
    };
    let mut tls_sub = Command::new("mosquitto_sub");
    tls_args(&mut tls_sub);
    let tls_sub =
        Proc::spawn(tls_sub.args(["-i", "tls", "-V", "mqttv5", "-q", "1", "-t", "mesh/#", "-v"]));

    let node = |url: &str, name: &str| {
        let mut c = Command::new("node");
        c.arg(js_dir().join("mesh-node.mjs"))
            .args([url, name, &all]);
        if url.starts_with("wss") {
            c.arg(&ca);
        }
        Proc::spawn(&mut c)
    };
    let mut node_ws = node(&ws, "node-ws");
    let mut node_wss = node(&wss, "node-wss");
    let mut browser = Proc::spawn(
        Command::new("node")
            .arg(js_dir().join("browser.mjs"))
            .args([&ws, &wss, &all, &ca]),
    );

    let ready = Duration::from_secs(60);
    node_ws.expect("READY", ready);
    node_wss.expect("READY", ready);
    browser.expect("READY", ready);
    browser.expect("READY", ready);
    assert!(
        eventually(ready, || w.log().contains("client_id=tls ")),
        "TLS subscriber connected"
    );
    tokio::time::sleep(Duration::from_millis(500)).await; // its SUBSCRIBE follows the CONNECT

    tcp.send("mesh/go", QoS::AtLeastOnce, false, "go").await;
    tcp.send("mesh/tcp", QoS::AtLeastOnce, false, "tcp").await;
    let mut tls_pub = Command::new("mosquitto_pub");
    tls_args(&mut tls_pub);
    let status = tls_pub
        .args(["-i", "tls-pub", "-q", "1", "-t", "mesh/tls", "-m", "tls"])
        .status()
        .unwrap();
    assert!(status.success());

    let done = Duration::from_secs(60);
    for (p, name) in [(&mut node_ws, "node-ws"), (&mut node_wss, "node-wss")] {
        let line = p.expect("DONE", done);
        assert_eq!(
            line,
            format!("DONE {name} {}", sorted(others(name))),
            "{name}"
        );
    }
    let mut browser_done = [browser.expect("DONE", done), browser.expect("DONE", done)];
    browser_done.sort();
    for (line, name) in browser_done.iter().zip(["browser-ws", "browser-wss"]) {
        assert_eq!(line, &format!("DONE {name} {}", sorted(others(name))));
    }

    let mut got_tcp: Vec<String> = Vec::new();
    while let Some(m) = tcp.publish_within(Duration::from_secs(2)).await {
        got_tcp.push(String::from_utf8_lossy(&m.payload).into_owned());
    }
    got_tcp.retain(|n| n != "go" && n != "tcp");
    got_tcp.sort();
    assert_eq!(got_tcp.join(","), sorted(others("tcp")), "TCP client");

    let mut got_tls = Vec::new();
    let deadline = Instant::now() + Duration::from_secs(10);
    while got_tls.len() < others("tls").len() && Instant::now() < deadline {
        if let Ok(l) = tls_sub.lines.recv_timeout(Duration::from_millis(200)) {
            let payload = l
                .split_once(' ')
                .map(|x| x.1.to_string())
                .unwrap_or_default();
            if payload != "go" && payload != "tls" {
                got_tls.push(payload);
            }
        }
    }
    got_tls.sort();
    assert_eq!(got_tls.join(","), sorted(others("tls")), "TLS client");
}

fn sorted(mut v: Vec<&str>) -> String {
    v.sort();
    v.join(",")
}
