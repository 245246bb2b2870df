//! What travels between nodes: the message as the store keeps it (a 5.0 PUBLISH with
//! its properties, expiry absolute), behind a short envelope naming where it was
//! published (node and number: [`Origin`]) and by whom (for No Local).
//!
//! Not NATS headers: a header map costs allocations and hashing per message on both
//! sides, and they were the most of what a node spent on a message it forwarded.
//! Layout: `W` and a version byte; the node's name (u16 length, bytes); the number
//! (u64); the time of the publish (u64 Unix seconds); the publisher's client id (u16
//! length, bytes; `0xFFFF`: none); the record.

use crate::message::{Message, Origin};
use crate::store::{decode_message, encode_message};
use bytes::{Buf, BufMut, Bytes, BytesMut};
use std::sync::Arc;

const MAGIC: [u8; 2] = [b'W', 2];
const NO_PUBLISHER: u16 = u16::MAX;

/// The envelope and record of `msg`, published as number `seq` of `node` at `at`.
pub(super) fn wrap(node: &str, (seq, at): (u64, u64), msg: &Message) -> Result<Bytes, String> {
    let record = encode_message(msg).map_err(|e| e.to_string())?;
    let publisher = msg.publisher.as_deref().unwrap_or("");
    let short = |s: &str| u16::try_from(s.len()).ok().filter(|n| *n != NO_PUBLISHER);
    let node_len = short(node).ok_or("node name too long")?;
    let mut out = BytesMut::with_capacity(16 + node.len() + publisher.len() + record.len());
    out.put_slice(&MAGIC);
    out.put_u16(node_len);
    out.put_slice(node.as_bytes());
    out.put_u64(seq);
    out.put_u64(at);
    match &msg.publisher {
        Some(p) => {
            out.put_u16(short(p).ok_or("client id too long")?);
            out.put_slice(p.as_bytes());
        }
        None => out.put_u16(NO_PUBLISHER),
    }
    out.put_slice(&record);
    Ok(out.freeze())
}

/// The message an envelope carries, with its origin and publisher.
pub(super) fn unwrap(mut b: Bytes) -> Result<Message, String> {
    if b.len() < 4 || b[..2] != MAGIC {
        return Err("not a Weir envelope".into());
    }
    b.advance(2);
    let node = text(&mut b)?.ok_or("no node")?;
    if b.len() < 16 {
        return Err("envelope cut short".into());
    }
    let seq = b.get_u64();
    let at = b.get_u64();
    let publisher = text(&mut b)?;
    let msg = decode_message(b)?;
    Ok(Message {
        publisher: publisher.map(Arc::from),
        origin: Some(Origin {
            node: Arc::from(node),
            seq,
            at,
        }),
        ..msg
    })
}

/// A length-prefixed string; `None` for the "none" length.
fn text(b: &mut Bytes) -> Result<Option<String>, String> {
    if b.len() < 2 {
        return Err("envelope cut short".into());
    }
    let n = b.get_u16();
    if n == NO_PUBLISHER {
        return Ok(None);
    }
    let n = n as usize;
    if b.len() < n {
        return Err("envelope cut short".into());
    }
    let s = String::from_utf8(b.split_to(n).to_vec()).map_err(|_| "name not UTF-8")?;
    Ok(Some(s))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::codec::QoS;

    #[test]
    fn an_envelope_round_trips_and_garbage_is_refused() {
        let msg = Message {
            topic: Arc::from("a/b"),
            payload: Bytes::from_static(b"hi"),
            qos: QoS::AtLeastOnce,
            retain: false,
            properties: Default::default(),
            expires_at: Some(1_900_000_000),
            publisher: Some(Arc::from("pub")),
            origin: None,
        };
        let back = unwrap(wrap("w1", (42, 7), &msg).unwrap()).unwrap();
        assert_eq!(back.publisher.as_deref(), Some("pub"));
        assert_eq!(
            back.origin.map(|o| (o.node.to_string(), o.seq, o.at)),
            Some(("w1".into(), 42, 7))
        );
        assert_eq!(
            (back.topic, back.payload, back.expires_at),
            (msg.topic.clone(), msg.payload.clone(), msg.expires_at)
        );
        let anonymous = Message {
            publisher: None,
            ..msg
        };
        assert_eq!(
            unwrap(wrap("w1", (1, 1), &anonymous).unwrap())
                .unwrap()
                .publisher,
            None
        );
        let whole = wrap("w1", (1, 1), &anonymous).unwrap();
        for cut in 0..whole.len() {
            assert!(unwrap(whole.slice(..cut)).is_err(), "cut at {cut}");
        }
    }
}
