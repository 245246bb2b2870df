//! The bench tooling runs: a short load through every scenario with tiny counts, and
//! nothing may be lost or duplicated. (Speed is measured by `bench/compare`, never here.)

use std::process::Command;
use weir_tests::{load_bin, Opts, Weir};

#[test]
fn the_load_generator_runs_every_scenario_without_loss() {
    let w = Weir::with(Opts {
        storage: "persistence = false".into(),
        ..Default::default()
    });
    for scenario in ["fan-in", "fan-out", "p2p", "shared"] {
        for qos in ["0", "1"] {
            let out = Command::new(load_bin())
                .args([
                    "--port",
                    &w.port.to_string(),
                    "--scenario",
                    scenario,
                    "--qos",
                    qos,
                ])
                .args([
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
                ])
                .output()
                .unwrap();
            let text = String::from_utf8_lossy(&out.stdout).into_owned();
            assert!(
                out.status.success(),
                "{scenario} qos {qos}: {text}{}",
                String::from_utf8_lossy(&out.stderr)
            );
            let cols: Vec<&str> = text
                .trim()
                .trim_matches('|')
                .split('|')
                .map(str::trim)
                .collect();
            assert_eq!(cols.len(), 11, "{text}");
            let (lost, dup) = (cols[8], cols[9]);
            // QoS 0 over loopback into a broker with room to queue loses nothing either.
            assert_eq!((lost, dup), ("0", "0"), "{scenario} qos {qos}: {text}");
        }
    }
}
