//! PUBLISH: the one packet on the hot path, so its encoder writes straight into the
//! output buffer with a precomputed length and copies the payload exactly once.

use super::properties::Context;
use super::{read_packet_id, read_string, varint_len, write_string, write_varint, Error, Properties, QoS, Result, Version};
use bytes::{BufMut, Bytes, BytesMut};

#[derive(Debug, Clone, PartialEq)]
pub struct Publish {
    pub dup: bool,
    pub qos: QoS,
    pub retain: bool,
    /// Empty only in a 5.0 PUBLISH that uses an established topic alias.
    pub topic: String,
    /// 0 at QoS 0.
    pub pid: u16,
    pub properties: Properties,
    pub payload: Bytes,
}

impl Publish {
    pub(crate) fn decode(flags: u8, b: &mut Bytes, version: Version) -> Result<Publish> {
        let dup = flags & 0x08 != 0;
        let qos = QoS::from_u8((flags >> 1) & 0x03).ok_or(Error::Malformed("PUBLISH with QoS 3"))?;
        let retain = flags & 0x01 != 0;
        if qos == QoS::AtMostOnce && dup {
            return Err(Error::Malformed("DUP set on a QoS 0 PUBLISH"));
        }
        let topic = read_string(b)?;
        let pid = if qos == QoS::AtMostOnce { 0 } else { read_packet_id(b)? };
        let properties = match version {
            Version::V5 => Properties::decode(b, Context::Publish)?,
            Version::V311 => Properties::default(),
        };
        if topic.is_empty() {
            if properties.topic_alias.is_none() {
                return Err(Error::Protocol("empty topic name without a topic alias"));
            }
        } else {
            crate::topic::validate_name(&topic)?;
        }
        let payload = std::mem::take(b);
        if properties.payload_format_indicator == Some(1) && std::str::from_utf8(&payload).is_err() {
            return Err(Error::PayloadFormat);
        }
        Ok(Publish { dup, qos, retain, topic, pid, properties, payload })
    }

    pub(crate) fn encode(&self, version: Version, out: &mut BytesMut) {
        let props_len = match version {
            Version::V5 => self.properties.encoded_len(),
            Version::V311 => 0,
        };
        let pid_len = if self.qos == QoS::AtMostOnce { 0 } else { 2 };
        let remaining = 2 + self.topic.len() + pid_len + props_len + self.payload.len();
        out.reserve(1 + varint_len(remaining) + remaining);
        let mut header = 0x30 | ((self.qos as u8) << 1);
        if self.dup {
            header |= 0x08;
        }
        if self.retain {
            header |= 0x01;
        }
        out.put_u8(header);
        write_varint(out, remaining);
        write_string(out, &self.topic);
        if pid_len > 0 {
            out.put_u16(self.pid);
        }
        if version == Version::V5 {
            self.properties.encode(out);
        }
        out.put_slice(&self.payload);
    }
}
