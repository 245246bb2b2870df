//! Any bytes as the start of a connection on a `proxy_protocol` listener: the PROXY
//! header parser never panics, claims no more bytes than it was given, and gives the
//! same answer for a header however the bytes arrive (every prefix of a header is
//! incomplete, never an error).
#![no_main]

use libfuzzer_sys::fuzz_target;
use weir::listener::proxy::{parse, Parsed};

fuzz_target!(|data: &[u8]| {
    let Ok(Parsed::Header { source, len }) = parse(data) else {
        return;
    };
    assert!(len <= data.len(), "a header longer than its input");
    let whole = &data[..len];
    assert_eq!(
        parse(whole).ok(),
        Some(Parsed::Header { source, len }),
        "the header alone parses the same"
    );
    for cut in 0..len {
        assert_eq!(
            parse(&whole[..cut]).ok(),
            Some(Parsed::Incomplete),
            "a prefix of {cut} bytes"
        );
    }
});
