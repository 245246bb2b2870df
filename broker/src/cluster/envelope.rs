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
//! `W` and `C`, the node's name once, then each message as what differs from the one
//! before it ([`Batch`]). Every NATS message costs the sending node, the NATS server
//! and each receiving node a fixed amount of work, and every byte of it some more: an
//! envelope repeats node, publisher, topic and time, four fifths of a small message.
//! (`W` and `B`, a batch of whole envelopes each behind its u32 length, is still read.)

use crate::codec::{Context, Properties, QoS};
use crate::message::{Message, Origin};
use crate::store::{decode_message_with, encode_message_into};
use bytes::{Buf, BufMut, Bytes, BytesMut};
use std::sync::Arc;

const MAGIC: [u8; 2] = [b'W', 2];
const BATCH: [u8; 2] = [b'W', b'B'];
const COMPACT: [u8; 2] = [b'W', b'C'];
/// The most bytes of messages one batch carries (NATS refuses messages over its
/// `max_payload`, 1 MiB by default).
pub(super) const BATCH_BYTES: usize = 64 * 1024;

/// What a batch's entry carries besides its number and payload (the flags byte).
mod has {
    pub const PUBLISHER: u8 = 0x01;
    pub const NO_PUBLISHER: u8 = 0x02;
    pub const TOPIC: u8 = 0x04;
    pub const AT: u8 = 0x08;
    pub const EXPIRY: u8 = 0x10;
    pub const RETAIN: u8 = 0x20;
    pub const PROPERTIES: u8 = 0x40;
}

/// QoS 0 messages for one subject, gathered into one NATS message. Each entry: its
/// length (LEB128), a flags byte ([`has`]), its number as the difference from the one
/// before (zigzag LEB128: two publishers' numbers interleave), then only what changed
/// since the entry before (publisher, topic, time), the expiry and properties when it
/// has them, and the payload.
pub(super) struct Batch {
    buf: BytesMut,
    entry: BytesMut,
    count: usize,
    node_ok: bool,
    seq: u64,
    at: Option<u64>,
    publisher: Option<Option<Arc<str>>>,
    topic: Option<Arc<str>>,
}

impl Batch {
    pub(super) fn new(node: &str) -> Batch {
        let mut buf = BytesMut::with_capacity(4096);
        buf.put_slice(&COMPACT);
        let node_ok = node.len() < NO_PUBLISHER as usize;
        if node_ok {
            buf.put_u16(node.len() as u16);
            buf.put_slice(node.as_bytes());
        }
        Batch {
            buf,
            entry: BytesMut::new(),
            count: 0,
            node_ok,
            seq: 0,
            at: None,
            publisher: None,
            topic: None,
        }
    }

    /// Adds `msg`, numbered `seq` and published at `at` (nothing, on an error).
    pub(super) fn push(&mut self, (seq, at): (u64, u64), msg: &Message) -> Result<(), String> {
        if !self.node_ok {
            return Err("node name too long".into());
        }
        if msg.qos != QoS::AtMostOnce {
            return Err("only QoS 0 messages go in batches".into());
        }
        let e = &mut self.entry;
        e.clear();
        e.put_u8(0);
        let mut flags = 0;
        put_leb(e, zigzag(seq.wrapping_sub(self.seq) as i64));
        if self.publisher.as_ref() != Some(&msg.publisher) {
            match &msg.publisher {
                Some(p) => {
                    put_short(e, p).ok_or("client id too long")?;
                    flags |= has::PUBLISHER;
                }
                None => flags |= has::NO_PUBLISHER,
            }
        }
        if self.topic.as_ref() != Some(&msg.topic) {
            put_short(e, &msg.topic).ok_or("topic too long")?;
            flags |= has::TOPIC;
        }
        if self.at != Some(at) {
            e.put_u64(at);
            flags |= has::AT;
        }
        if let Some(expires) = msg.expires_at {
            e.put_u64(expires);
            flags |= has::EXPIRY;
        }
        if !msg.properties.is_empty() {
            msg.properties.encode(e).map_err(|e| e.to_string())?;
            flags |= has::PROPERTIES;
        }
        if msg.retain {
            flags |= has::RETAIN;
        }
        e[0] = flags;
        put_leb(&mut self.buf, (e.len() + msg.payload.len()) as u64);
        self.buf.put_slice(e);
        self.buf.put_slice(&msg.payload);
        self.count += 1;
        self.seq = seq;
        self.at = Some(at);
        self.publisher = Some(msg.publisher.clone());
        self.topic = Some(msg.topic.clone());
        Ok(())
    }

    pub(super) fn len(&self) -> usize {
        self.count
    }

    pub(super) fn is_full(&self) -> bool {
        self.buf.len() >= BATCH_BYTES
    }

    /// The NATS message.
    pub(super) fn finish(self) -> Bytes {
        self.buf.freeze()
    }
}

/// A string behind its u16 length; `None` if too long for one.
fn put_short(out: &mut BytesMut, s: &str) -> Option<()> {
    let n = u16::try_from(s.len()).ok().filter(|n| *n != NO_PUBLISHER)?;
    out.put_u16(n);
    out.put_slice(s.as_bytes());
    Some(())
}

fn put_leb(out: &mut BytesMut, mut v: u64) {
    while v >= 0x80 {
        out.put_u8((v as u8) | 0x80);
        v >>= 7;
    }
    out.put_u8(v as u8);
}

fn get_leb(b: &mut Bytes) -> Result<u64, String> {
    let mut v = 0u64;
    for shift in (0..64).step_by(7) {
        let byte = *b.first().ok_or("batch cut short")?;
        b.advance(1);
        v |= u64::from(byte & 0x7F) << shift;
        if byte & 0x80 == 0 {
            return Ok(v);
        }
    }
    Err("number longer than 64 bits".into())
}

fn zigzag(v: i64) -> u64 {
    ((v << 1) ^ (v >> 63)) as u64
}

fn unzigzag(v: u64) -> i64 {
    ((v >> 1) as i64) ^ -((v & 1) as i64)
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

    /// Every message a NATS message carries (an envelope, or a batch of either kind),
    /// in order, each handed to `each`, or the error that stops the reading of it.
    pub(super) fn read_all(&mut self, b: Bytes, mut each: impl FnMut(Result<Message, String>)) {
        if b.len() >= 2 && b[..2] == COMPACT {
            if let Err(e) = self.read_compact(b, &mut each) {
                each(Err(e));
            }
            return;
        }
        for e in envelopes(b) {
            each(e.and_then(|e| self.read(e)));
        }
    }

    /// A compact batch's messages ([`Batch`]); an entry that cannot be read ends it,
    /// as the entries after it are told apart from it.
    fn read_compact(
        &mut self,
        mut b: Bytes,
        each: &mut impl FnMut(Result<Message, String>),
    ) -> Result<(), String> {
        b.advance(2);
        let names = self.names;
        let node = shared(&mut b, &mut self.node, |raw| names.name(raw))?.ok_or("no node")?;
        let (mut seq, mut at) = (0u64, None);
        let (mut publisher, mut topic) = (None, None);
        while !b.is_empty() {
            let n = get_leb(&mut b)?;
            let mut e = match usize::try_from(n) {
                Ok(n) if n <= b.len() => b.split_to(n),
                _ => return Err("batch cut short".into()),
            };
            let flags = *e.first().ok_or("empty batch entry")?;
            e.advance(1);
            seq = seq.wrapping_add(unzigzag(get_leb(&mut e)?) as u64);
            if flags & has::PUBLISHER != 0 {
                let utf8_arc = |raw: &[u8]| Ok(Arc::from(utf8(raw)?));
                publisher = shared(&mut e, &mut self.publisher, utf8_arc)?;
            } else if flags & has::NO_PUBLISHER != 0 {
                publisher = None;
            }
            if flags & has::TOPIC != 0 {
                topic = Some(self.topic.read_name(&mut e).map_err(|e| e.to_string())?);
            }
            if flags & has::AT != 0 {
                at = Some(get_u64(&mut e)?);
            }
            let expires_at = match flags & has::EXPIRY != 0 {
                true => Some(get_u64(&mut e)?),
                false => None,
            };
            let properties = match flags & has::PROPERTIES != 0 {
                true => Properties::decode(&mut e, Context::Publish).map_err(|e| e.to_string())?,
                false => Properties::default(),
            };
            each(Ok(Message {
                topic: topic.clone().ok_or("no topic")?,
                payload: e,
                qos: QoS::AtMostOnce,
                retain: flags & has::RETAIN != 0,
                properties,
                expires_at,
                publisher: publisher.clone(),
                origin: Some(Origin {
                    node: node.clone(),
                    seq,
                    at: at.ok_or("no time")?,
                }),
                received: None,
            }));
        }
        Ok(())
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

fn get_u64(b: &mut Bytes) -> Result<u64, String> {
    match b.len() >= 8 {
        true => Ok(b.get_u64()),
        false => Err("batch cut short".into()),
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
            received: None,
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
            received: None,
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

    type Seen = (
        String,
        Bytes,
        bool,
        Option<u64>,
        Option<String>,
        String,
        u64,
        u64,
        Properties,
    );

    fn seen(m: &Message) -> Seen {
        let o = m.origin.as_ref().expect("an origin");
        (
            m.topic.to_string(),
            m.payload.clone(),
            m.retain,
            m.expires_at,
            m.publisher.as_deref().map(str::to_owned),
            o.node.to_string(),
            o.seq,
            o.at,
            m.properties.clone(),
        )
    }

    fn read_all(b: Bytes) -> (Vec<Seen>, Option<String>) {
        let names = Names::default();
        let (mut read, mut error) = (Vec::new(), None);
        Reader::new(&names).read_all(b, |r| match r {
            Ok(m) => read.push(seen(&m)),
            Err(e) => error = Some(e),
        });
        (read, error)
    }

    #[test]
    fn a_batch_carries_its_messages_in_order_and_only_what_changed() {
        let props: Properties = crate::codec::PropertySet {
            user_properties: vec![("k".into(), "v".into())],
            ..Default::default()
        }
        .into();
        let msg = |topic: &str, publisher: Option<&str>, payload: &'static [u8]| Message {
            topic: Arc::from(topic),
            payload: Bytes::from_static(payload),
            qos: QoS::AtMostOnce,
            retain: false,
            properties: Default::default(),
            expires_at: None,
            publisher: publisher.map(Arc::from),
            origin: None,
            received: None,
        };
        let mut sent = vec![
            ((7, 100), msg("t/1", Some("p1"), b"one")),
            ((9, 100), msg("t/1", Some("p1"), b"")),
            ((8, 101), msg("t/1", Some("p2"), b"three")),
            ((10, 101), msg("t/2", None, b"four")),
            ((11, 101), msg("t/2", Some("p1"), b"five")),
        ];
        sent[1].1.retain = true;
        sent[2].1.expires_at = Some(1_900_000_000);
        sent[3].1.properties = props;
        let mut batch = Batch::new("w1");
        let mut bounds = Vec::new();
        for (number, m) in &sent {
            batch.push(*number, m).unwrap();
            bounds.push(batch.buf.len());
        }
        let qos1 = Message {
            qos: QoS::AtLeastOnce,
            ..sent[0].1.clone()
        };
        assert!(
            batch.push((12, 101), &qos1).is_err(),
            "QoS 1 is not batched"
        );
        assert_eq!(batch.len(), sent.len());
        let wire = batch.finish();
        let mut want: Vec<Seen> = Vec::new();
        for ((seq, at), m) in &sent {
            let mut m = m.clone();
            m.origin = Some(Origin {
                node: Arc::from("w1"),
                seq: *seq,
                at: *at,
            });
            want.push(seen(&m));
        }
        assert_eq!(read_all(wire.clone()), (want.clone(), None));
        // Smaller than envelopes: the five messages' 15 payload bytes take about 80.
        assert!(wire.len() < 100, "{} bytes", wire.len());
        // Cut anywhere: the messages before the cut, whole, then an error (none when
        // cut between two, or right after the node's name).
        let header = 2 + 2 + "w1".len();
        for cut in 3..wire.len() {
            let (read, error) = read_all(wire.slice(..cut));
            let whole = bounds.iter().filter(|b| **b <= cut).count();
            assert_eq!(read, want[..whole], "cut at {cut}");
            assert_eq!(
                error.is_some(),
                !bounds.contains(&cut) && cut != header,
                "cut at {cut}: {error:?}"
            );
        }
    }

    #[test]
    fn a_batch_of_whole_envelopes_is_still_read() {
        let m = Message {
            topic: Arc::from("a/b"),
            payload: Bytes::from_static(b"hi"),
            qos: QoS::AtMostOnce,
            retain: false,
            properties: Default::default(),
            expires_at: None,
            publisher: None,
            origin: None,
            received: None,
        };
        let mut old = BytesMut::from(&BATCH[..]);
        for seq in [1, 2] {
            let e = wrap("w1", (seq, 5), &m).unwrap();
            old.put_u32(e.len() as u32);
            old.put_slice(&e);
        }
        let (read, error) = read_all(old.freeze());
        assert_eq!(error, None);
        assert_eq!(read.iter().map(|r| r.6).collect::<Vec<_>>(), vec![1, 2]);
        let bare = read_all(wrap("w1", (3, 5), &m).unwrap());
        assert_eq!((bare.0.len(), bare.1), (1, None));
    }
}
