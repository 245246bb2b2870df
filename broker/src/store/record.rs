//! Binary encoding of stored messages. The message itself is kept as a 5.0 PUBLISH
//! packet, so the codec that already validates the wire format also validates what is
//! read back from disk.

use crate::codec::{self, Packet, QoS, Version};
use crate::message::{Message, Origin};
use bytes::{Buf, BufMut, Bytes, BytesMut};
use std::sync::Arc;

/// Where a stored delivery stands in its QoS flow.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DeliveryState {
    /// Not sent yet.
    Queued,
    /// PUBLISH sent with this packet id, waiting for PUBACK / PUBREC.
    Sent(u16),
    /// PUBREC received, PUBREL sent with this packet id, waiting for PUBCOMP.
    Released(u16),
}

#[derive(Debug, Clone, PartialEq)]
pub struct StoredDelivery {
    pub state: DeliveryState,
    pub qos: QoS,
    pub retain: bool,
    pub subscription_ids: Vec<u32>,
    pub message: Message,
}

pub(crate) fn encode_message(m: &Message) -> Result<Vec<u8>, codec::Error> {
    let mut out = BytesMut::new();
    encode_message_into(m, &mut out)?;
    Ok(out.to_vec())
}

/// [`encode_message`] appended to `out` (nothing appended on an error).
pub(crate) fn encode_message_into(m: &Message, out: &mut BytesMut) -> Result<(), codec::Error> {
    let start = out.len();
    out.put_u64(m.expires_at.unwrap_or(0));
    let header = codec::PublishHeader {
        dup: false,
        qos: m.qos,
        retain: m.retain,
        pid: if m.qos == QoS::AtMostOnce { 0 } else { 1 },
    };
    let (topic, props) = (&m.topic, &m.properties);
    let written = codec::encode_publish(out, Version::V5, header, topic, props, None, &m.payload);
    if written.is_err() {
        out.truncate(start);
    }
    written
}

pub(crate) fn decode_message(b: Bytes) -> Result<Message, String> {
    decode_message_with(b, &mut codec::LastTopic::default())
}

/// [`decode_message`] for a reader of many records, which keeps its last topic.
pub(crate) fn decode_message_with(
    mut b: Bytes,
    last: &mut codec::LastTopic,
) -> Result<Message, String> {
    if b.len() < 8 {
        return Err("record shorter than its header".into());
    }
    let expires = b.get_u64();
    match codec::frame_len(&b, usize::MAX) {
        Ok(Some(n)) if n == b.len() => {}
        _ => return Err("message is not one complete packet".into()),
    }
    match codec::decode_with(b, Version::V5, last).map_err(|e| e.to_string())? {
        Packet::Publish(p) => Ok(Message {
            topic: p.topic,
            payload: p.payload,
            qos: p.qos,
            retain: p.retain,
            properties: p.properties,
            expires_at: (expires != 0).then_some(expires),
            publisher: None,
            origin: None,
            received: None,
        }),
        other => Err(format!("expected PUBLISH, found {}", other.name())),
    }
}

/// Set in a delivery record's state byte when the message's [`Origin`] follows the
/// subscription identifiers (u16 node length, node, u64 number, u64 time): a cluster
/// node that restarts tells what it holds from what it reads back. Records written
/// before it have no origin.
const HAS_ORIGIN: u8 = 0x80;

/// A delivery record appended to `out` without building a [`StoredDelivery`] first
/// (what a slow session spills, many at a time). Nothing appended on an error.
pub(crate) fn encode_delivery_into(
    out: &mut BytesMut,
    state: DeliveryState,
    qos: QoS,
    retain: bool,
    subscription_ids: &[u32],
    message: &Message,
) -> Result<(), codec::Error> {
    let start = out.len();
    let (state, pid) = match state {
        DeliveryState::Queued => (0u8, 0u16),
        DeliveryState::Sent(p) => (1, p),
        DeliveryState::Released(p) => (2, p),
    };
    let origin = (message.origin.as_ref()).filter(|o| o.node.len() <= u16::MAX as usize);
    out.put_u8(state | origin.map_or(0, |_| HAS_ORIGIN));
    out.put_u16(pid);
    out.put_u8(qos as u8);
    out.put_u8(retain as u8);
    out.put_u16(subscription_ids.len() as u16);
    for id in subscription_ids {
        out.put_u32(*id);
    }
    if let Some(o) = origin {
        out.put_u16(o.node.len() as u16);
        out.put_slice(o.node.as_bytes());
        out.put_u64(o.seq);
        out.put_u64(o.at);
    }
    encode_message_into(message, out).inspect_err(|_| out.truncate(start))
}

impl StoredDelivery {
    pub(crate) fn encode(&self) -> Result<Vec<u8>, codec::Error> {
        let mut out = BytesMut::new();
        encode_delivery_into(
            &mut out,
            self.state,
            self.qos,
            self.retain,
            &self.subscription_ids,
            &self.message,
        )?;
        Ok(out.to_vec())
    }

    pub(crate) fn decode(mut b: Bytes) -> Result<StoredDelivery, String> {
        if b.len() < 7 {
            return Err("delivery record too short".into());
        }
        let flags = b.get_u8();
        let state = flags & !HAS_ORIGIN;
        let pid = b.get_u16();
        let qos = QoS::from_u8(b.get_u8()).ok_or("bad QoS")?;
        let retain = b.get_u8() != 0;
        let n = b.get_u16() as usize;
        if b.len() < n * 4 {
            return Err("delivery record truncated".into());
        }
        let subscription_ids = (0..n).map(|_| b.get_u32()).collect();
        let origin = match flags & HAS_ORIGIN {
            0 => None,
            _ => Some(decode_origin(&mut b)?),
        };
        let state = match (state, pid) {
            (0, _) => DeliveryState::Queued,
            (1, p) if p != 0 => DeliveryState::Sent(p),
            (2, p) if p != 0 => DeliveryState::Released(p),
            _ => return Err("bad delivery state".into()),
        };
        let message = Message {
            origin,
            ..decode_message(b)?
        };
        Ok(StoredDelivery {
            state,
            qos,
            retain,
            subscription_ids,
            message,
        })
    }
}

fn decode_origin(b: &mut Bytes) -> Result<Origin, String> {
    let short = "delivery record's origin cut short";
    if b.len() < 2 {
        return Err(short.into());
    }
    let n = b.get_u16() as usize;
    if b.len() < n + 16 {
        return Err(short.into());
    }
    let node = std::str::from_utf8(&b[..n]).map_err(|_| "origin node is not UTF-8")?;
    let node = Arc::from(node);
    b.advance(n);
    Ok(Origin {
        node,
        seq: b.get_u64(),
        at: b.get_u64(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::codec::PropertySet;

    #[test]
    fn delivery_roundtrip() {
        let d = StoredDelivery {
            state: DeliveryState::Released(42),
            qos: QoS::ExactlyOnce,
            retain: true,
            subscription_ids: vec![1, 99],
            message: Message {
                topic: Arc::from("a/b"),
                payload: Bytes::from_static(b"x"),
                qos: QoS::ExactlyOnce,
                retain: false,
                properties: PropertySet {
                    content_type: Some("t".into()),
                    ..Default::default()
                }
                .into(),
                expires_at: Some(1_900_000_000),
                publisher: None,
                origin: None,
                received: None,
            },
        };
        let bare = d.encode().unwrap();
        assert_eq!(
            StoredDelivery::decode(Bytes::from(bare.clone())).unwrap(),
            d
        );
        assert!(StoredDelivery::decode(Bytes::from_static(b"\x01\x00")).is_err());

        let mut from_node = d.clone();
        from_node.message.origin = Some(Origin {
            node: Arc::from("w1"),
            seq: 7,
            at: 1_800_000_000,
        });
        let with = from_node.encode().unwrap();
        assert_eq!(with.len(), bare.len() + 2 + 2 + 16);
        let back = StoredDelivery::decode(Bytes::from(with.clone())).unwrap();
        let o = back.message.origin.clone().unwrap();
        assert_eq!((&*o.node, o.seq, o.at), ("w1", 7, 1_800_000_000));
        assert_eq!(back, from_node);
        let cut = Bytes::copy_from_slice(&with[..12]);
        assert!(StoredDelivery::decode(cut).is_err());
    }
}
