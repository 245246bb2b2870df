//! Any bytes as the packets of a 3.1.1 and of a 5.0 connection: framing and decoding
//! never panic, and whatever decodes encodes again and decodes to the same packet.
#![no_main]

use bytes::{Bytes, BytesMut};
use libfuzzer_sys::fuzz_target;
use weir::codec::{self, LastTopic, Version};

fuzz_target!(|data: &[u8]| {
    for version in [Version::V311, Version::V5] {
        let mut rest = data;
        let mut last = LastTopic::default();
        while let Ok(Some(n)) = codec::frame_len(rest, 1 << 20) {
            let frame = Bytes::copy_from_slice(&rest[..n]);
            rest = &rest[n..];
            let Ok(packet) = codec::decode_with(frame, version, &mut last) else {
                break;
            };
            let mut out = BytesMut::new();
            if packet.encode(version, &mut out).is_ok() {
                let again =
                    codec::decode(out.freeze(), version).expect("what the codec wrote, it reads");
                assert_eq!(format!("{again:?}"), format!("{packet:?}"), "round trip");
            }
        }
    }
});
