//! An observer that takes `spin_ms` milliseconds over every batch (busy, as a plugin
//! that does real work would), or with `trap = true` fails on every batch.

use serde::Deserialize;
use std::cell::Cell;
use weir_plugin_sdk::{now_ms, parse_config, Init, Observe, TimedEvent};

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Config {
    #[serde(default)]
    spin_ms: u64,
    #[serde(default)]
    trap: bool,
}

thread_local! {
    static SPIN: Cell<u64> = const { Cell::new(0) };
    static TRAP: Cell<bool> = const { Cell::new(false) };
}

struct Slow;

impl Init for Slow {
    fn init(config: String) -> Result<(), String> {
        let c: Config = parse_config(&config)?;
        SPIN.with(|s| s.set(c.spin_ms));
        TRAP.with(|t| t.set(c.trap));
        Ok(())
    }
}

impl Observe for Slow {
    fn observe(events: Vec<TimedEvent>) {
        if TRAP.with(Cell::get) {
            panic!("failing on purpose with {} events", events.len());
        }
        let until = now_ms() + SPIN.with(Cell::get);
        while now_ms() < until {
            std::hint::black_box(&events);
        }
    }
}

weir_plugin_sdk::export_plugin!(Slow: init, observe);
