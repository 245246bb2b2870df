//! Any text as weir.toml: parsing and validation answer Ok or an error naming the
//! problem, never a panic.
#![no_main]

use libfuzzer_sys::fuzz_target;
use weir::config::Config;

fuzz_target!(|data: &[u8]| {
    if let Ok(text) = std::str::from_utf8(data) {
        if let Err(e) = Config::from_toml(text) {
            assert!(!e.to_string().is_empty());
        }
    }
});
