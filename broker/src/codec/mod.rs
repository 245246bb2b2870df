//! MQTT wire format: bytes to packets and back, for protocol levels 4 (3.1.1) and 5 (5.0).
//!
//! One packet model serves both versions; the protocol level is passed to `decode` and
//! `encode` instead of keeping two copied trees. Decoding is strict: anything the
//! specification calls malformed or a protocol error comes back as an [`Error`] whose
//! [`Error::reason_code`] is what a 5.0 client is told before the connection closes.
//! Payloads are `Bytes` slices of the read buffer, so a message is never copied on the
//! way in and is shared by every subscriber on the way out.

mod ack;
mod connect;
mod disconnect;
mod properties;
mod publish;
mod subscribe;

pub use ack::{Ack, AckKind};
pub use connect::{ConnAck, Connect, Will};
pub use disconnect::{Auth, Disconnect};
pub(crate) use properties::Context;
pub use properties::{PerDelivery, Properties, PropertySet};
pub use publish::{encode_publish, Publish, PublishHeader};
pub use subscribe::{
    RetainHandling, SubAck, Subscribe, SubscriptionOptions, UnsubAck, Unsubscribe,
};

use bytes::{Buf, BufMut, Bytes, BytesMut};
use std::sync::Arc;

/// The protocol level a connection speaks, fixed by its CONNECT.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, serde::Serialize, serde::Deserialize)]
pub enum Version {
    V311,
    V5,
}

impl Version {
    pub fn level(self) -> u8 {
        match self {
            Version::V311 => 4,
            Version::V5 => 5,
        }
    }
}

impl std::fmt::Display for Version {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Version::V311 => "3.1.1",
            Version::V5 => "5.0",
        })
    }
}

/// Quality of service. Ordered, so `min` gives the delivery QoS.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Default)]
pub enum QoS {
    #[default]
    AtMostOnce = 0,
    AtLeastOnce = 1,
    ExactlyOnce = 2,
}

impl QoS {
    pub fn from_u8(v: u8) -> Option<QoS> {
        match v {
            0 => Some(QoS::AtMostOnce),
            1 => Some(QoS::AtLeastOnce),
            2 => Some(QoS::ExactlyOnce),
            _ => None,
        }
    }
}

pub(crate) use weir_protocol::Packet as CodeIn;
/// Reason codes (MQTT 5.0 section 2.4), shared with the plugin SDK. 3.1.1 has its own
/// smaller CONNACK set; [`ReasonCode::connack_v311`] maps onto it.
pub use weir_protocol::ReasonCode;

/// Why bytes could not become a packet. Each kind maps to the reason code the
/// specification asks the server to send before it closes the connection.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Error {
    #[error("malformed packet: {0}")]
    Malformed(&'static str),
    #[error("protocol error: {0}")]
    Protocol(&'static str),
    #[error("unsupported protocol level {0}")]
    UnsupportedVersion(u8),
    #[error("packet of {size} bytes exceeds the maximum packet size of {max}")]
    TooLarge { size: usize, max: usize },
    #[error("invalid topic name: {0}")]
    TopicName(&'static str),
    #[error("invalid topic filter: {0}")]
    TopicFilter(&'static str),
    #[error("payload format indicator says UTF-8 but the payload is not")]
    PayloadFormat,
    #[error("{what} of {len} bytes is longer than the 65535 an MQTT string or binary can hold")]
    TooLong { what: &'static str, len: usize },
}

impl Error {
    pub fn reason_code(&self) -> ReasonCode {
        match self {
            Error::Malformed(_) | Error::TooLong { .. } => ReasonCode::MalformedPacket,
            Error::Protocol(_) => ReasonCode::ProtocolError,
            Error::UnsupportedVersion(_) => ReasonCode::UnsupportedProtocolVersion,
            Error::TooLarge { .. } => ReasonCode::PacketTooLarge,
            Error::TopicName(_) => ReasonCode::TopicNameInvalid,
            Error::TopicFilter(_) => ReasonCode::TopicFilterInvalid,
            Error::PayloadFormat => ReasonCode::PayloadFormatInvalid,
        }
    }

    pub(crate) fn topic_name(e: weir_protocol::topic::TopicError) -> Error {
        Error::TopicName(e.reason())
    }
}

pub type Result<T> = std::result::Result<T, Error>;

/// Every MQTT control packet.
#[derive(Debug, Clone, PartialEq)]
pub enum Packet {
    Connect(Box<Connect>),
    ConnAck(ConnAck),
    Publish(Publish),
    Ack(Ack),
    Subscribe(Subscribe),
    SubAck(SubAck),
    Unsubscribe(Unsubscribe),
    UnsubAck(UnsubAck),
    PingReq,
    PingResp,
    Disconnect(Disconnect),
    Auth(Auth),
}

impl Packet {
    /// A short name for logs.
    pub fn name(&self) -> &'static str {
        match self {
            Packet::Connect(_) => "CONNECT",
            Packet::ConnAck(_) => "CONNACK",
            Packet::Publish(_) => "PUBLISH",
            Packet::Ack(a) => a.kind.name(),
            Packet::Subscribe(_) => "SUBSCRIBE",
            Packet::SubAck(_) => "SUBACK",
            Packet::Unsubscribe(_) => "UNSUBSCRIBE",
            Packet::UnsubAck(_) => "UNSUBACK",
            Packet::PingReq => "PINGREQ",
            Packet::PingResp => "PINGRESP",
            Packet::Disconnect(_) => "DISCONNECT",
            Packet::Auth(_) => "AUTH",
        }
    }

    /// Appends the wire form of this packet to `out`. A field longer than MQTT can
    /// carry (a string or binary over 65 535 bytes, a packet over 256 MiB) is an error,
    /// and `out` is then left as it was: a plugin's overlong reason string must never
    /// turn into a corrupt packet.
    pub fn encode(&self, version: Version, out: &mut BytesMut) -> Result<()> {
        let start = out.len();
        let written = match self {
            Packet::Connect(c) => c.encode(out),
            Packet::ConnAck(c) => c.encode(version, out),
            Packet::Publish(p) => p.encode(version, out),
            Packet::Ack(a) => a.encode(version, out),
            Packet::Subscribe(s) => s.encode(version, out),
            Packet::SubAck(s) => s.encode(version, out),
            Packet::Unsubscribe(u) => u.encode(version, out),
            Packet::UnsubAck(u) => u.encode(version, out),
            Packet::PingReq => {
                out.put_slice(&[0xC0, 0]);
                Ok(())
            }
            Packet::PingResp => {
                out.put_slice(&[0xD0, 0]);
                Ok(())
            }
            Packet::Disconnect(d) => d.encode(version, out),
            Packet::Auth(a) => a.encode(out),
        };
        if written.is_err() {
            out.truncate(start);
        }
        written
    }

    /// Encodes the packet within a peer's Maximum Packet Size. What MQTT 5.0 lets a
    /// sender leave out goes first when the packet would be too large, or cannot be
    /// encoded at all (a plugin's reason string over 65 535 bytes): the reason string,
    /// then the user properties (MQTT-3.2.2-19, -20, 3.14.2-3, -4). An error only if
    /// the packet is still too large without them.
    pub fn encode_within(
        &mut self,
        version: Version,
        max: usize,
        out: &mut BytesMut,
    ) -> Result<()> {
        let start = out.len();
        let mut stripped = 0;
        loop {
            let error = match self.encode(version, out) {
                Ok(()) if out.len() - start <= max => return Ok(()),
                Ok(()) => Error::TooLarge {
                    size: out.len() - start,
                    max,
                },
                Err(e) => e,
            };
            out.truncate(start);
            let Some(p) = self.properties_mut().filter(|_| stripped < 2) else {
                return Err(error);
            };
            if let Some(set) = p.get_mut() {
                match stripped {
                    0 => set.reason_string = None,
                    _ => set.user_properties.clear(),
                }
            }
            stripped += 1;
        }
    }

    /// The properties of a packet that may carry a reason string.
    fn properties_mut(&mut self) -> Option<&mut Properties> {
        match self {
            Packet::ConnAck(c) => Some(&mut c.properties),
            Packet::Ack(a) => Some(&mut a.properties),
            Packet::SubAck(s) => Some(&mut s.properties),
            Packet::UnsubAck(u) => Some(&mut u.properties),
            Packet::Disconnect(d) => Some(&mut d.properties),
            Packet::Auth(a) => Some(&mut a.properties),
            _ => None,
        }
    }

    /// The encoded size in bytes, for checking against a peer's Maximum Packet Size.
    pub fn encoded_len(&self, version: Version) -> Result<usize> {
        let mut b = BytesMut::new();
        self.encode(version, &mut b)?;
        Ok(b.len())
    }
}

/// Looks for one complete packet at the start of `buf`. Returns its total length
/// (fixed header included) once all of it has arrived, `None` while more bytes are
/// needed, and an error as soon as the length is invalid or larger than `max_size`, so
/// an oversized packet is refused before it is buffered.
pub fn frame_len(buf: &[u8], max_size: usize) -> Result<Option<usize>> {
    if buf.len() < 2 {
        return Ok(None);
    }
    let mut len: usize = 0;
    let mut shift = 0;
    let mut i = 1;
    loop {
        if i > 4 {
            return Err(Error::Malformed("remaining length longer than 4 bytes"));
        }
        let Some(&b) = buf.get(i) else {
            return Ok(None);
        };
        len |= ((b & 0x7F) as usize) << shift;
        i += 1;
        if b & 0x80 == 0 {
            break;
        }
        shift += 7;
    }
    let total = i + len;
    if total > max_size {
        return Err(Error::TooLarge {
            size: total,
            max: max_size,
        });
    }
    Ok((buf.len() >= total).then_some(total))
}

/// Decodes one complete packet. `version` is the connection's protocol level; a
/// CONNECT carries its own and ignores it. The frame is checked, not trusted: its
/// remaining length must say exactly how many bytes follow the fixed header, so a frame
/// that [`frame_len`] did not delimit is an error, never a panic or a misread.
pub fn decode(frame: Bytes, version: Version) -> Result<Packet> {
    decode_with(frame, version, &mut LastTopic::default())
}

/// The topic of the last PUBLISH a reader decoded. A run of PUBLISH packets on one
/// topic (a sensor's readings, a batch from another node of a cluster) then shares one
/// string, checked once, instead of allocating and validating a copy for each.
#[derive(Default)]
pub struct LastTopic(Option<Arc<str>>);

impl LastTopic {
    /// The topic string `b` starts with, read past: the last one again when the bytes
    /// are the same (and whether it was).
    fn read(&mut self, b: &mut Bytes) -> Result<(Arc<str>, bool)> {
        let len = read_u16(b)? as usize;
        let raw = b.get(..len).ok_or(Error::Malformed("truncated packet"))?;
        let read = match &self.0 {
            Some(t) if t.as_bytes() == raw => (t.clone(), true),
            _ => (Arc::from(checked_str(raw)?), false),
        };
        b.advance(len);
        Ok(read)
    }

    /// A topic name `b` starts with, read past and checked as a PUBLISH's must be
    /// (never empty: no topic alias stands in for it here).
    pub(crate) fn read_name(&mut self, b: &mut Bytes) -> Result<Arc<str>> {
        let (topic, known) = self.read(b)?;
        if !known {
            weir_protocol::topic::validate_name(&topic).map_err(Error::topic_name)?;
            self.keep(&topic);
        }
        Ok(topic)
    }

    /// Keeps `topic`, which passed every check a topic name must, for the next.
    fn keep(&mut self, topic: &Arc<str>) {
        self.0 = Some(topic.clone());
    }
}

/// [`decode`] for a reader of many packets, which keeps its [`LastTopic`].
pub fn decode_with(mut frame: Bytes, version: Version, last: &mut LastTopic) -> Result<Packet> {
    let header = read_u8(&mut frame)?;
    let remaining = read_varint(&mut frame)? as usize;
    if remaining != frame.len() {
        return Err(Error::Malformed(
            "remaining length does not match the frame",
        ));
    }
    let kind = header >> 4;
    let flags = header & 0x0F;
    let fixed_flags = |want: u8| {
        if flags == want {
            Ok(())
        } else {
            Err(Error::Malformed("reserved fixed header flags are wrong"))
        }
    };
    let packet = match kind {
        1 => {
            fixed_flags(0)?;
            Packet::Connect(Box::new(Connect::decode(&mut frame)?))
        }
        2 => {
            fixed_flags(0)?;
            Packet::ConnAck(ConnAck::decode(&mut frame, version)?)
        }
        3 => Packet::Publish(Publish::decode(flags, &mut frame, version, last)?),
        4..=7 => {
            let kind = AckKind::from_type(kind);
            fixed_flags(if kind == AckKind::PubRel { 2 } else { 0 })?;
            Packet::Ack(Ack::decode(kind, &mut frame, version)?)
        }
        8 => {
            fixed_flags(2)?;
            Packet::Subscribe(Subscribe::decode(&mut frame, version)?)
        }
        9 => {
            fixed_flags(0)?;
            Packet::SubAck(SubAck::decode(&mut frame, version)?)
        }
        10 => {
            fixed_flags(2)?;
            Packet::Unsubscribe(Unsubscribe::decode(&mut frame, version)?)
        }
        11 => {
            fixed_flags(0)?;
            Packet::UnsubAck(UnsubAck::decode(&mut frame, version)?)
        }
        12 | 13 => {
            fixed_flags(0)?;
            if !frame.is_empty() {
                return Err(Error::Malformed("PINGREQ/PINGRESP has a body"));
            }
            if kind == 12 {
                Packet::PingReq
            } else {
                Packet::PingResp
            }
        }
        14 => {
            fixed_flags(0)?;
            Packet::Disconnect(Disconnect::decode(&mut frame, version)?)
        }
        15 => {
            fixed_flags(0)?;
            if version != Version::V5 {
                return Err(Error::Malformed("AUTH is a 5.0 packet"));
            }
            Packet::Auth(Auth::decode(&mut frame)?)
        }
        _ => return Err(Error::Malformed("packet type 0 is reserved")),
    };
    if !frame.is_empty() {
        return Err(Error::Malformed("bytes left over after the packet"));
    }
    Ok(packet)
}

// ---- primitive readers: every one checks length first, so truncation is an error, never a panic.

pub(crate) fn read_u8(b: &mut Bytes) -> Result<u8> {
    if b.remaining() < 1 {
        return Err(Error::Malformed("truncated packet"));
    }
    Ok(b.get_u8())
}

pub(crate) fn read_u16(b: &mut Bytes) -> Result<u16> {
    if b.remaining() < 2 {
        return Err(Error::Malformed("truncated packet"));
    }
    Ok(b.get_u16())
}

pub(crate) fn read_u32(b: &mut Bytes) -> Result<u32> {
    if b.remaining() < 4 {
        return Err(Error::Malformed("truncated packet"));
    }
    Ok(b.get_u32())
}

/// A reason code that `packet` may carry, or a malformed-packet error saying `what`.
pub(crate) fn read_code(b: &mut Bytes, packet: CodeIn, what: &'static str) -> Result<ReasonCode> {
    ReasonCode::from_u8(read_u8(b)?)
        .filter(|c| c.allowed_in(packet))
        .ok_or(Error::Malformed(what))
}

pub(crate) fn read_varint(b: &mut Bytes) -> Result<u32> {
    let mut value: u32 = 0;
    for i in 0..4 {
        let byte = read_u8(b)?;
        value |= ((byte & 0x7F) as u32) << (7 * i);
        if byte & 0x80 == 0 {
            return Ok(value);
        }
    }
    Err(Error::Malformed(
        "variable byte integer longer than 4 bytes",
    ))
}

pub(crate) fn read_binary(b: &mut Bytes) -> Result<Bytes> {
    let len = read_u16(b)? as usize;
    if b.remaining() < len {
        return Err(Error::Malformed("truncated packet"));
    }
    Ok(b.split_to(len))
}

pub(crate) fn read_string(b: &mut Bytes) -> Result<String> {
    read_str_as(b, str::to_owned)
}

/// A string checked as MQTT wants it (UTF-8, no U+0000), kept the way the caller
/// needs it (`Arc::from` for a topic: one copy, not two).
pub(crate) fn read_str_as<T>(b: &mut Bytes, keep: impl FnOnce(&str) -> T) -> Result<T> {
    let raw = read_binary(b)?;
    checked_str(&raw).map(keep)
}

fn checked_str(raw: &[u8]) -> Result<&str> {
    let s = std::str::from_utf8(raw).map_err(|_| Error::Malformed("string is not valid UTF-8"))?;
    if s.contains('\0') {
        return Err(Error::Malformed("string contains U+0000"));
    }
    Ok(s)
}

pub(crate) fn read_packet_id(b: &mut Bytes) -> Result<u16> {
    match read_u16(b)? {
        0 => Err(Error::Malformed("packet identifier 0")),
        id => Ok(id),
    }
}

// ---- primitive writers.

pub(crate) fn varint_len(v: usize) -> usize {
    match v {
        0..=127 => 1,
        128..=16_383 => 2,
        16_384..=2_097_151 => 3,
        _ => 4,
    }
}

pub(crate) fn write_varint(out: &mut BytesMut, mut v: usize) {
    loop {
        let mut byte = (v % 128) as u8;
        v /= 128;
        if v > 0 {
            byte |= 0x80;
        }
        out.put_u8(byte);
        if v == 0 {
            break;
        }
    }
}

/// The largest remaining length a fixed header can state (four varint bytes).
pub const MAX_REMAINING: usize = 268_435_455;

/// A length-prefixed field; `what` names it in the error when it is too long.
pub(crate) fn write_binary(out: &mut BytesMut, b: &[u8], what: &'static str) -> Result<()> {
    let len = u16::try_from(b.len()).map_err(|_| Error::TooLong { what, len: b.len() })?;
    out.put_u16(len);
    out.put_slice(b);
    Ok(())
}

pub(crate) fn write_string(out: &mut BytesMut, s: &str, what: &'static str) -> Result<()> {
    write_binary(out, s.as_bytes(), what)
}

/// The remaining length of a packet, checked against what a fixed header can state.
pub(crate) fn remaining_len(len: usize) -> Result<usize> {
    if len > MAX_REMAINING {
        return Err(Error::TooLarge {
            size: len,
            max: MAX_REMAINING,
        });
    }
    Ok(len)
}

/// Writes the fixed header and `body` — the form every packet but PUBLISH uses,
/// since only PUBLISH is large and hot enough to avoid the body copy.
pub(crate) fn write_packet(out: &mut BytesMut, header: u8, body: &[u8]) -> Result<()> {
    let len = remaining_len(body.len())?;
    out.reserve(5 + len);
    out.put_u8(header);
    write_varint(out, len);
    out.put_slice(body);
    Ok(())
}

#[cfg(test)]
mod tests;
