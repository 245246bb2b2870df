//! Any bytes as what a plugin answers: a failure reason code, or a `transform`
//! replacement message. Each is accepted or refused as invalid, never a panic.
#![no_main]

use bytes::Bytes;
use libfuzzer_sys::fuzz_target;
use std::sync::Arc;
use weir::codec::QoS;
use weir::message::Message;
use weir::plugin::bindings::weir::plugin::types as wit;
use weir::plugin::convert;

/// Takes the next length-prefixed (one byte) piece of `data`.
fn piece<'a>(data: &mut &'a [u8]) -> &'a [u8] {
    let Some((&n, rest)) = data.split_first() else {
        return &[];
    };
    let n = (n as usize).min(rest.len());
    let (p, rest) = rest.split_at(n);
    *data = rest;
    p
}

fn text(data: &mut &[u8]) -> String {
    String::from_utf8_lossy(piece(data)).into_owned()
}

fn maybe(data: &mut &[u8]) -> Option<String> {
    let p = piece(data);
    (!p.is_empty()).then(|| String::from_utf8_lossy(p).into_owned())
}

fuzz_target!(|data: &[u8]| {
    let mut d = data;
    let code = piece(&mut d).first().copied().unwrap_or(0);
    let _ = convert::failure_code(code, "fuzz");
    let flags = piece(&mut d).first().copied().unwrap_or(0);
    let m = wit::Message {
        topic: text(&mut d),
        payload: piece(&mut d).to_vec(),
        qos: flags & 7,
        retain: flags & 8 != 0,
        message_expiry: (flags & 16 != 0).then_some(u32::from(flags)),
        payload_utf8: flags & 32 != 0,
        content_type: maybe(&mut d),
        response_topic: maybe(&mut d),
        correlation_data: (flags & 64 != 0).then(|| piece(&mut d).to_vec()),
        user_properties: (0..flags >> 6)
            .map(|_| wit::Pair {
                name: text(&mut d),
                value: text(&mut d),
            })
            .collect(),
    };
    let original = Message {
        topic: Arc::from("t"),
        payload: Bytes::from_static(b"p"),
        qos: QoS::AtLeastOnce,
        retain: false,
        properties: Default::default(),
        expires_at: None,
        publisher: Some(Arc::from("c")),
        origin: None,
        received: None,
    };
    if let Ok(r) = convert::replacement(m, &original, 256) {
        assert!(weir::topic::validate_name(&r.topic).is_ok());
        assert!(r.payload.len() <= 256);
    }
});
