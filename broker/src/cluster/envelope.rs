//! What travels between nodes: the message as the store keeps it (a 5.0 PUBLISH with
//! its properties, expiry absolute), behind a short envelope naming where it was
//! published (node and number: [`Origin`]) and by whom (for No Local).
//!
//! Not NATS headers: a header map costs allocations and hashing per message on both
//! sides, and they were the most of what a node spent on a message it forwarded.
//! Layout: `W` and a version byte; the node's name (u16 length, bytes); the number
//! (u64); the time of the publish (u64 Unix seconds); the publisher's client id (u16
//! length, bytes; `0xFFFF`: none); the record.
//!
//! QoS 0 messages for one subject that wait together go as one NATS message, a batch:
//! `W` and `B`, then each envelope behind its u32 length. Every NATS message costs the
//! sending node, the NATS server and each receiving node a fixed amount of work, the
//! most of what a small message costs in all.

use crate::message::{Message, Origin};
use crate::store::{decode_message, encode_message_into};
use bytes::{Buf, BufMut, Bytes, BytesMut};
use std::sync::Arc;

const MAGIC: [u8; 2] = [b'W', 2];
const BATCH: [u8; 2] = [b'W', b'B'];
/// The most bytes of envelopes one batch carries (NATS refuses messages over its
/// `max_payload`, 1 MiB by default).
pub(super) const BATCH_BYTES: usize = 64 * 1024;

/// QoS 0 envelopes for one subject, gathered into one NATS message.
pub(super) struct Batch {
    buf: BytesMut,
    count: usize,
}

impl Batch {
    pub(super) fn new() -> Batch {
        let mut buf = BytesMut::with_capacity(256);
        buf.put_slice(&BATCH);
        Batch { buf, count: 0 }
    }

    /// Adds the envelope `write` appends (nothing, if it fails).
    pub(super) fn push(
        &mut self,
        write: impl FnOnce(&mut BytesMut) -> Result<(), String>,
    ) -> Result<(), String> {
        let start = self.buf.len();
        self.buf.put_u32(0);
        if let Err(e) = write(&mut self.buf) {
            self.buf.truncate(start);
            return Err(e);
        }
        let n = (self.buf.len() - start - 4) as u32;
        self.buf[start..start + 4].copy_from_slice(&n.to_be_bytes());
        self.count += 1;
        Ok(())
    }

    pub(super) fn len(&self) -> usize {
        self.count
    }

    pub(super) fn is_full(&self) -> bool {
        self.buf.len() >= BATCH_BYTES
    }

    /// The NATS message: the envelope itself when there is only one.
    pub(super) fn finish(mut self) -> Bytes {
        if self.count == 1 {
            self.buf.advance(BATCH.len() + 4);
        }
        self.buf.freeze()
    }
}

/// The envelopes a NATS message carries: one, or those of a batch.
pub(super) fn envelopes(mut b: Bytes) -> Result<Vec<Bytes>, String> {
    if b.len() < 2 || b[..2] != BATCH {
        return Ok(vec![b]);
    }
    b.advance(2);
    let mut out = Vec::new();
    while !b.is_empty() {
        if b.len() < 4 {
            return Err("batch cut short".into());
        }
        let n = b.get_u32() as usize;
        if b.len() < n {
            return Err("batch cut short".into());
        }
        out.push(b.split_to(n));
    }
    Ok(out)
}
const NO_PUBLISHER: u16 = u16::MAX;

/// The envelope and record of `msg`, published as number `seq` of `node` at `at`.
pub(super) fn wrap(node: &str, number: (u64, u64), msg: &Message) -> Result<Bytes, String> {
    let mut out = BytesMut::with_capacity(64 + msg.topic.len() + msg.payload.len());
    wrap_into(&mut out, node, number, msg)?;
    Ok(out.freeze())
}

/// [`wrap`] appended to `out` (nothing appended on an error).
pub(super) fn wrap_into(
    out: &mut BytesMut,
    node: &str,
    (seq, at): (u64, u64),
    msg: &Message,
) -> Result<(), String> {
    let start = out.len();
    let short = |s: &str| u16::try_from(s.len()).ok().filter(|n| *n != NO_PUBLISHER);
    let node_len = short(node).ok_or("node name too long")?;
    let publisher = match &msg.publisher {
        Some(p) => Some((short(p).ok_or("client id too long")?, p)),
        None => None,
    };
    out.put_slice(&MAGIC);
    out.put_u16(node_len);
    out.put_slice(node.as_bytes());
    out.put_u64(seq);
    out.put_u64(at);
    match publisher {
        Some((n, p)) => {
            out.put_u16(n);
            out.put_slice(p.as_bytes());
        }
        None => out.put_u16(NO_PUBLISHER),
    }
    encode_message_into(msg, out).map_err(|e| {
        out.truncate(start);
        e.to_string()
    })
}

/// The message an envelope carries, with its origin and publisher.
pub(super) fn unwrap(b: Bytes) -> Result<Message, String> {
    unwrap_named(b, &Names::default())
}

/// The names of the nodes messages came from, kept once: a message from a node shares
/// its name instead of carrying a copy.
#[derive(Default)]
pub(super) struct Names(std::sync::Mutex<Vec<Arc<str>>>);

impl Names {
    fn name(&self, bytes: &[u8]) -> Result<Arc<str>, String> {
        let mut names = crate::sync::lock(&self.0);
        if let Some(n) = names.iter().find(|n| n.as_bytes() == bytes) {
            return Ok(n.clone());
        }
        let name: Arc<str> = Arc::from(utf8(bytes)?);
        // Bounded: nodes are few; a flood of names (a broken peer) is not kept.
        if names.len() < 64 {
            names.push(name.clone());
        }
        Ok(name)
    }
}

/// [`unwrap`], taking node names from `names`.
pub(super) fn unwrap_named(mut b: Bytes, names: &Names) -> Result<Message, String> {
    if b.len() < 4 || b[..2] != MAGIC {
        return Err("not a Weir envelope".into());
    }
    b.advance(2);
    let node = text(&mut b)?.ok_or("no node")?;
    let node = names.name(&node)?;
    if b.len() < 16 {
        return Err("envelope cut short".into());
    }
    let seq = b.get_u64();
    let at = b.get_u64();
    let publisher = match text(&mut b)? {
        Some(p) => Some(Arc::from(utf8(&p)?)),
        None => None,
    };
    let msg = decode_message(b)?;
    Ok(Message {
        publisher,
        origin: Some(Origin { node, seq, at }),
        ..msg
    })
}

fn utf8(b: &[u8]) -> Result<&str, String> {
    std::str::from_utf8(b).map_err(|_| "name not UTF-8".to_string())
}

/// A length-prefixed string's bytes; `None` for the "none" length.
fn text(b: &mut Bytes) -> Result<Option<Bytes>, String> {
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
    Ok(Some(b.split_to(n)))
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

    #[test]
    fn a_batch_carries_its_envelopes_in_order_and_one_goes_bare() {
        let a = Bytes::from_static(b"W\x02first");
        let b = Bytes::from_static(b"W\x02second");
        let put = |e: &Bytes| {
            let e = e.clone();
            move |buf: &mut BytesMut| {
                buf.put_slice(&e);
                Ok(())
            }
        };
        let mut one = Batch::new();
        one.push(put(&a)).unwrap();
        assert!(one.push(|_| Err("no".into())).is_err());
        assert_eq!(one.finish(), a, "a batch of one is the envelope");
        assert_eq!(envelopes(a.clone()).unwrap(), vec![a.clone()]);
        let mut two = Batch::new();
        two.push(put(&a)).unwrap();
        two.push(put(&b)).unwrap();
        let sent = two.finish();
        assert_eq!(envelopes(sent.clone()).unwrap(), vec![a, b]);
        for cut in 3..sent.len() {
            let r = envelopes(sent.slice(..cut));
            assert!(r.is_err() || r.unwrap().len() < 2, "cut at {cut}");
        }
    }
}
