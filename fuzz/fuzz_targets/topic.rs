//! Any bytes as a topic filter and a topic name (split at the first NUL): validation,
//! shared-subscription parsing and matching never panic, and agree with each other.
#![no_main]

use libfuzzer_sys::fuzz_target;
use weir::topic;

fuzz_target!(|data: &[u8]| {
    let text = String::from_utf8_lossy(data);
    let (filter, name) = text.split_once('\0').unwrap_or((&text, ""));
    let filter_ok = topic::validate_filter(filter).is_ok();
    let name_ok = topic::validate_name(name).is_ok();
    let _ = topic::parse_shared(filter);
    let _ = topic::levels(name);
    let matched = topic::matches(filter, name);
    let _ = topic::filter_within(filter, name);
    if filter_ok && name_ok && !filter.contains(['+', '#']) && !filter.starts_with("$share/") {
        assert_eq!(
            matched,
            filter == name,
            "a filter without wildcards matches itself only"
        );
    }
    if name_ok && !name.starts_with('$') {
        assert!(
            topic::matches("#", name),
            "# matches every topic not starting with $"
        );
    }
});
