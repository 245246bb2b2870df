//! The bench tooling runs: a short load through every scenario with tiny counts, and
//! nothing may be lost or duplicated; the connection-scale generator holds every
//! connection it opens. (Speed is measured by `bench/compare`, never here.)

use std::path::Path;
use std::process::Command;
use weir_tests::{conns_bin, load_bin, Opts, Weir};

/// Runs a bench binary, which must succeed, and returns the cells of the last row of
/// its table and its whole output (for messages).
fn last_row(bin: &Path, args: &[&str]) -> (Vec<String>, String) {
    let out = Command::new(bin).args(args).output().unwrap();
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(
        out.status.success(),
        "{args:?}: {text}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let row = text.lines().last().unwrap_or_default();
    let cols = row
        .trim()
        .trim_matches('|')
        .split('|')
        .map(|c| c.trim().to_owned())
        .collect();
    (cols, text)
}

#[test]
fn the_load_generator_runs_every_scenario_without_loss() {
    let w = Weir::with(Opts {
        storage: "persistence = false".into(),
        ..Default::default()
    });
    for scenario in ["fan-in", "fan-out", "p2p", "shared"] {
        for qos in ["0", "1"] {
            let port = w.port.to_string();
            let (cols, text) = last_row(
                &load_bin(),
                &[
                    "--port",
                    &port,
                    "--scenario",
                    scenario,
                    "--qos",
                    qos,
                    "--payload",
                    "64",
                    "--messages",
                    "200",
                    "--clients",
                    "4",
                    "--timeout-secs",
                    "20",
                    "--label",
                    "smoke",
                ],
            );
            assert_eq!(cols.len(), 11, "{text}");
            let (lost, dup) = (cols[8].as_str(), cols[9].as_str());
            // QoS 0 over loopback into a broker with room to queue loses nothing either.
            assert_eq!((lost, dup), ("0", "0"), "{scenario} qos {qos}: {text}");
        }
    }
}

#[test]
fn the_connection_scale_generator_holds_every_connection() {
    let w = Weir::with(Opts {
        storage: "persistence = false".into(),
        ..Default::default()
    });
    // Few per source address, so the spread over 127.0.0.x is exercised too.
    let (port, pid) = (w.port.to_string(), w.pid().to_string());
    let (cols, text) = last_row(
        &conns_bin(),
        &[
            "--port",
            &port,
            "--pid",
            &pid,
            "--connections",
            "300",
            "--per-address",
            "100",
            "--hold-secs",
            "1",
            "--timeout-secs",
            "60",
            "--label",
            "smoke",
        ],
    );
    assert_eq!(cols.len(), 8, "{text}");
    // Asked, connected and still answering PINGREQ after the idle period.
    assert_eq!(
        (cols[1].as_str(), cols[2].as_str(), cols[3].as_str()),
        ("300", "300", "300"),
        "{text}"
    );
    cols[7]
        .parse::<f64>()
        .unwrap_or_else(|e| panic!("bytes per connection {:?}: {e}", cols[7]));
    // The broker saw them from several source addresses.
    let log = w.log();
    assert!(
        log.contains("127.0.0.3:"),
        "no connection from 127.0.0.3 in the log:\n{log}"
    );
}
