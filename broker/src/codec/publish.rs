//! PUBLISH: the one packet on the hot path, so its encoder writes straight into the
//! output buffer with a precomputed length and copies the payload exactly once.

use super::properties::{Context, PerDelivery};
use super::{
    read_packet_id, remaining_len, varint_len, write_string, write_varint, Error, LastTopic,
    Properties, QoS, Result, Version,
};
use bytes::{BufMut, Bytes, BytesMut};
use std::sync::Arc;

#[derive(Debug, Clone, PartialEq)]
pub struct Publish {
    pub dup: bool,
    pub qos: QoS,
    pub retain: bool,
    /// Empty only in a 5.0 PUBLISH that uses an established topic alias. Shared, as
    /// the routed message keeps it.
    pub topic: Arc<str>,
    /// 0 at QoS 0.
    pub pid: u16,
    pub properties: Properties,
    pub payload: Bytes,
}

impl Publish {
    pub(crate) fn decode(
        flags: u8,
        b: &mut Bytes,
        version: Version,
        last: &mut LastTopic,
    ) -> Result<Publish> {
        let dup = flags & 0x08 != 0;
        let qos =
            QoS::from_u8((flags >> 1) & 0x03).ok_or(Error::Malformed("PUBLISH with QoS 3"))?;
        let retain = flags & 0x01 != 0;
        if qos == QoS::AtMostOnce && dup {
            return Err(Error::Malformed("DUP set on a QoS 0 PUBLISH"));
        }
        let (topic, known) = last.read(b)?;
        let pid = if qos == QoS::AtMostOnce {
            0
        } else {
            read_packet_id(b)?
        };
        let properties = match version {
            Version::V5 => Properties::decode(b, Context::Publish)?,
            Version::V311 => Properties::default(),
        };
        if topic.is_empty() {
            if properties.topic_alias.is_none() {
                return Err(Error::Protocol("empty topic name without a topic alias"));
            }
        } else if !known {
            weir_protocol::topic::validate_name(&topic).map_err(Error::topic_name)?;
            last.keep(&topic);
        }
        let payload = std::mem::take(b);
        if properties.payload_format_indicator == Some(1) && std::str::from_utf8(&payload).is_err()
        {
            return Err(Error::PayloadFormat);
        }
        Ok(Publish {
            dup,
            qos,
            retain,
            topic,
            pid,
            properties,
            payload,
        })
    }

    pub(crate) fn encode(&self, version: Version, out: &mut BytesMut) -> Result<()> {
        let header = PublishHeader {
            dup: self.dup,
            qos: self.qos,
            retain: self.retain,
            pid: self.pid,
        };
        encode_publish(
            out,
            version,
            header,
            &self.topic,
            &self.properties,
            None,
            &self.payload,
        )
    }
}

/// The fixed-size parts of a PUBLISH that differ per delivery.
#[derive(Debug, Clone, Copy)]
pub struct PublishHeader {
    pub dup: bool,
    pub qos: QoS,
    pub retain: bool,
    /// Ignored at QoS 0.
    pub pid: u16,
}

/// Encodes a PUBLISH from borrowed parts, so a delivery shared by many subscribers is
/// written without building a `Publish` (or copying its topic and properties) for each
/// of them. `per` replaces the message's own expiry, subscription identifiers and topic
/// alias. Properties are left out on a 3.1.1 connection. On an error (a field too long
/// for MQTT) nothing is written.
pub fn encode_publish(
    out: &mut BytesMut,
    version: Version,
    h: PublishHeader,
    topic: &str,
    properties: &Properties,
    per: Option<PerDelivery<'_>>,
    payload: &[u8],
) -> Result<()> {
    match version {
        Version::V311 => write_publish(out, h, topic, None, payload),
        Version::V5 => properties.with_body(per, |body| {
            write_publish(out, h, topic, Some(body?), payload)
        }),
    }
}

/// `properties`: the encoded properties without their length; `None` on 3.1.1.
fn write_publish(
    out: &mut BytesMut,
    h: PublishHeader,
    topic: &str,
    properties: Option<&[u8]>,
    payload: &[u8],
) -> Result<()> {
    let props_len = properties.map_or(0, |b| varint_len(b.len()) + b.len());
    let pid_len = if h.qos == QoS::AtMostOnce { 0 } else { 2 };
    let remaining = remaining_len(2 + topic.len() + pid_len + props_len + payload.len())?;
    if topic.len() > u16::MAX as usize {
        return Err(Error::TooLong {
            what: "topic",
            len: topic.len(),
        });
    }
    out.reserve(1 + varint_len(remaining) + remaining);
    let mut header = 0x30 | ((h.qos as u8) << 1);
    if h.dup {
        header |= 0x08;
    }
    if h.retain {
        header |= 0x01;
    }
    out.put_u8(header);
    write_varint(out, remaining);
    write_string(out, topic, "topic")?;
    if pid_len > 0 {
        out.put_u16(h.pid);
    }
    if let Some(body) = properties {
        write_varint(out, body.len());
        out.put_slice(body);
    }
    out.put_slice(payload);
    Ok(())
}
