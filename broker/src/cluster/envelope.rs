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
use crate::store::{decode_message_with, encode_message_into};
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
        let mut buf = BytesMut::with_capacity(4096);
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

/// The envelopes a NATS message carries: one, or those of a batch, in order; a batch
/// cut short gives what it holds whole and then the error.
pub(super) fn envelopes(b: Bytes) -> Envelopes {
    match b.len() >= 2 && b[..2] == BATCH {
        true => Envelopes {
            rest: b.slice(2..),
            batch: true,
        },
        false => Envelopes {
            rest: b,
            batch: false,
        },
    }
}

pub(super) struct Envelopes {
    rest: Bytes,
    batch: bool,
}

impl Iterator for Envelopes {
    type Item = Result<Bytes, String>;

    fn next(&mut self) -> Option<Self::Item> {
        if !self.batch {
            self.batch = true;
            return Some(Ok(std::mem::take(&mut self.rest)));
        }
        if self.rest.is_empty() {
            return None;
        }
        let whole = self.rest.len() >= 4 && {
            let n = u32::from_be_bytes([self.rest[0], self.rest[1], self.rest[2], self.rest[3]]);
            self.rest.len() - 4 >= n as usize
        };
        if !whole {
            self.rest.clear();
            return Some(Err("batch cut short".into()));
        }
        let n = self.rest.get_u32() as usize;
        Some(Ok(self.rest.split_to(n)))
    }
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
    Reader::new(&Names::default()).read(b)
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

/// Reads envelopes one after another, sharing what repeats between them: a batch
/// carries one subject's messages, mostly from one node and one publisher, on one
/// topic, and each would otherwise be a string allocated and checked per message.
pub(super) struct Reader<'a> {
    names: &'a Names,
    node: Option<Arc<str>>,
    publisher: Option<Arc<str>>,
    topic: crate::codec::LastTopic,
}

impl<'a> Reader<'a> {
    pub(super) fn new(names: &'a Names) -> Reader<'a> {
        Reader {
            names,
            node: None,
            publisher: None,
            topic: Default::default(),
        }
    }

    /// The message an envelope carries, with its origin and publisher.
    pub(super) fn read(&mut self, mut b: Bytes) -> Result<Message, String> {
        if b.len() < 4 || b[..2] != MAGIC {
            return Err("not a Weir envelope".into());
        }
        b.advance(2);
        let names = self.names;
        let node = shared(&mut b, &mut self.node, |raw| names.name(raw))?.ok_or("no node")?;
        if b.len() < 16 {
            return Err("envelope cut short".into());
        }
        let seq = b.get_u64();
        let at = b.get_u64();
        let publisher = shared(&mut b, &mut self.publisher, |raw| Ok(Arc::from(utf8(raw)?)))?;
        let msg = decode_message_with(b, &mut self.topic)?;
        Ok(Message {
            publisher,
            origin: Some(Origin { node, seq, at }),
            ..msg
        })
    }
}

fn utf8(b: &[u8]) -> Result<&str, String> {
    std::str::from_utf8(b).map_err(|_| "name not UTF-8".to_string())
}

/// A length-prefixed name (`None` for the "none" length): `last` again when its bytes
/// are the same, else `make` of them, kept as the next one's `last`.
fn shared(
    b: &mut Bytes,
    last: &mut Option<Arc<str>>,
    make: impl FnOnce(&[u8]) -> Result<Arc<str>, String>,
) -> Result<Option<Arc<str>>, String> {
    if b.len() < 2 {
        return Err("envelope cut short".into());
    }
    let n = b.get_u16();
    if n == NO_PUBLISHER {
        return Ok(None);
    }
    let raw = b.get(..n as usize).ok_or("envelope cut short")?;
    let name = match last {
        Some(l) if l.as_bytes() == raw => l.clone(),
        _ => last.insert(make(raw)?).clone(),
    };
    b.advance(n as usize);
    Ok(Some(name))
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
    fn a_reader_shares_what_repeats_and_tells_apart_what_does_not() {
        let msg = |topic: &str, publisher: &str| Message {
            topic: Arc::from(topic),
            payload: Bytes::from_static(b"hi"),
            qos: QoS::AtMostOnce,
            retain: false,
            properties: Default::default(),
            expires_at: None,
            publisher: Some(Arc::from(publisher)),
            origin: None,
        };
        let names = Names::default();
        let mut reader = Reader::new(&names);
        let mut read =
            |node: &str, m: &Message| reader.read(wrap(node, (1, 1), m).unwrap()).unwrap();
        let a = read("w1", &msg("t/1", "p1"));
        let b = read("w1", &msg("t/1", "p1"));
        assert!(Arc::ptr_eq(&a.topic, &b.topic));
        assert!(Arc::ptr_eq(
            a.publisher.as_ref().unwrap(),
            b.publisher.as_ref().unwrap()
        ));
        let node = |m: &Message| m.origin.as_ref().unwrap().node.clone();
        assert!(Arc::ptr_eq(&node(&a), &node(&b)));
        let c = read("w2", &msg("t/2", "p2"));
        assert_eq!(
            (&*c.topic, c.publisher.as_deref(), &*node(&c)),
            ("t/2", Some("p2"), "w2")
        );
        let d = read("w1", &msg("t/1", "p1"));
        assert_eq!(
            (&*d.topic, d.publisher.as_deref(), &*node(&d)),
            ("t/1", Some("p1"), "w1")
        );
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
        let all = |b: Bytes| envelopes(b).collect::<Result<Vec<_>, _>>();
        assert_eq!(all(a.clone()).unwrap(), vec![a.clone()]);
        let mut two = Batch::new();
        two.push(put(&a)).unwrap();
        two.push(put(&b)).unwrap();
        let sent = two.finish();
        assert_eq!(all(sent.clone()).unwrap(), vec![a.clone(), b]);
        for cut in 3..sent.len() {
            let read: Vec<_> = envelopes(sent.slice(..cut)).collect();
            let whole: Vec<_> = read.iter().filter_map(|r| r.clone().ok()).collect();
            assert!(whole.len() < 2, "cut at {cut}: {whole:?}");
            assert!(whole.is_empty() || whole == vec![a.clone()], "cut at {cut}");
            let torn = cut > 2 && cut != 2 + 4 + a.len();
            assert_eq!(
                read.last().is_some_and(|r| r.is_err()),
                torn,
                "cut at {cut}"
            );
        }
    }
}
