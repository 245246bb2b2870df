//! SUBSCRIBE, SUBACK, UNSUBSCRIBE and UNSUBACK.

use super::properties::Context;
use super::{
    read_code, read_packet_id, read_string, read_u8, write_packet, write_string, CodeIn, Error,
    Properties, QoS, ReasonCode, Result, Version,
};
use bytes::{BufMut, Bytes, BytesMut};

#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, serde::Serialize, serde::Deserialize)]
pub enum RetainHandling {
    /// Send retained messages at the time of the subscribe.
    #[default]
    SendAlways,
    /// Send them only if the subscription did not already exist.
    SendIfNew,
    /// Never send them.
    Never,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct SubscriptionOptions {
    pub qos: QoS,
    pub no_local: bool,
    pub retain_as_published: bool,
    pub retain_handling: RetainHandling,
}

impl SubscriptionOptions {
    pub fn to_byte(self) -> u8 {
        let rh = match self.retain_handling {
            RetainHandling::SendAlways => 0,
            RetainHandling::SendIfNew => 1,
            RetainHandling::Never => 2,
        };
        (self.qos as u8)
            | ((self.no_local as u8) << 2)
            | ((self.retain_as_published as u8) << 3)
            | (rh << 4)
    }

    pub fn from_byte(b: u8, version: Version) -> Result<SubscriptionOptions> {
        let qos = QoS::from_u8(b & 0x03).ok_or(Error::Malformed("subscription QoS 3"))?;
        match version {
            Version::V311 => {
                if b & 0xFC != 0 {
                    return Err(Error::Malformed("reserved subscription option bits set"));
                }
                Ok(SubscriptionOptions {
                    qos,
                    ..Default::default()
                })
            }
            Version::V5 => {
                if b & 0xC0 != 0 {
                    return Err(Error::Malformed("reserved subscription option bits set"));
                }
                let retain_handling = match (b >> 4) & 0x03 {
                    0 => RetainHandling::SendAlways,
                    1 => RetainHandling::SendIfNew,
                    2 => RetainHandling::Never,
                    _ => return Err(Error::Protocol("retain handling 3")),
                };
                Ok(SubscriptionOptions {
                    qos,
                    no_local: b & 0x04 != 0,
                    retain_as_published: b & 0x08 != 0,
                    retain_handling,
                })
            }
        }
    }
}

#[derive(Debug, Clone, PartialEq)]
pub struct Subscribe {
    pub pid: u16,
    pub filters: Vec<(String, SubscriptionOptions)>,
    pub properties: Properties,
}

impl Subscribe {
    pub(crate) fn decode(b: &mut Bytes, version: Version) -> Result<Subscribe> {
        let pid = read_packet_id(b)?;
        let properties = match version {
            Version::V5 => Properties::decode(b, Context::Subscribe)?,
            Version::V311 => Properties::default(),
        };
        let mut filters = Vec::new();
        while !b.is_empty() {
            // Filters are validated by the connection, which answers a bad one with a
            // per-filter reason code in 5.0 rather than dropping the connection.
            let filter = read_string(b)?;
            let opts = SubscriptionOptions::from_byte(read_u8(b)?, version)?;
            filters.push((filter, opts));
        }
        if filters.is_empty() {
            return Err(Error::Protocol("SUBSCRIBE without a topic filter"));
        }
        Ok(Subscribe {
            pid,
            filters,
            properties,
        })
    }

    pub(crate) fn encode(&self, version: Version, out: &mut BytesMut) -> Result<()> {
        let mut body = BytesMut::new();
        body.put_u16(self.pid);
        if version == Version::V5 {
            self.properties.encode(&mut body)?;
        }
        for (f, o) in &self.filters {
            write_string(&mut body, f, "topic filter")?;
            body.put_u8(o.to_byte());
        }
        write_packet(out, 0x82, &body)
    }
}

#[derive(Debug, Clone, PartialEq)]
pub struct SubAck {
    pub pid: u16,
    /// One per filter; on 3.1.1 every failure is written as 0x80.
    pub codes: Vec<ReasonCode>,
    pub properties: Properties,
}

impl SubAck {
    pub(crate) fn decode(b: &mut Bytes, version: Version) -> Result<SubAck> {
        let pid = read_packet_id(b)?;
        let properties = match version {
            Version::V5 => Properties::decode(b, Context::SubAck)?,
            Version::V311 => Properties::default(),
        };
        let mut codes = Vec::with_capacity(b.len());
        while !b.is_empty() {
            let code = read_code(b, CodeIn::SubAck, "invalid SUBACK reason code")?;
            // 3.1.1 has four return codes: the granted QoS, or 0x80 (found by fuzzing).
            if version == Version::V311 && !matches!(code.code(), 0 | 1 | 2 | 0x80) {
                return Err(Error::Malformed("invalid SUBACK return code for 3.1.1"));
            }
            codes.push(code);
        }
        Ok(SubAck {
            pid,
            codes,
            properties,
        })
    }

    pub(crate) fn encode(&self, version: Version, out: &mut BytesMut) -> Result<()> {
        let mut body = BytesMut::new();
        body.put_u16(self.pid);
        if version == Version::V5 {
            self.properties.encode(&mut body)?;
        }
        for c in &self.codes {
            body.put_u8(match version {
                Version::V311 if c.is_failure() => 0x80,
                _ => c.code(),
            });
        }
        write_packet(out, 0x90, &body)
    }
}

#[derive(Debug, Clone, PartialEq)]
pub struct Unsubscribe {
    pub pid: u16,
    pub filters: Vec<String>,
    pub properties: Properties,
}

impl Unsubscribe {
    pub(crate) fn decode(b: &mut Bytes, version: Version) -> Result<Unsubscribe> {
        let pid = read_packet_id(b)?;
        let properties = match version {
            Version::V5 => Properties::decode(b, Context::Unsubscribe)?,
            Version::V311 => Properties::default(),
        };
        let mut filters = Vec::new();
        while !b.is_empty() {
            filters.push(read_string(b)?);
        }
        if filters.is_empty() {
            return Err(Error::Protocol("UNSUBSCRIBE without a topic filter"));
        }
        Ok(Unsubscribe {
            pid,
            filters,
            properties,
        })
    }

    pub(crate) fn encode(&self, version: Version, out: &mut BytesMut) -> Result<()> {
        let mut body = BytesMut::new();
        body.put_u16(self.pid);
        if version == Version::V5 {
            self.properties.encode(&mut body)?;
        }
        for f in &self.filters {
            write_string(&mut body, f, "topic filter")?;
        }
        write_packet(out, 0xA2, &body)
    }
}

#[derive(Debug, Clone, PartialEq)]
pub struct UnsubAck {
    pub pid: u16,
    /// 5.0 only: one reason code per filter.
    pub codes: Vec<ReasonCode>,
    pub properties: Properties,
}

impl UnsubAck {
    pub(crate) fn decode(b: &mut Bytes, version: Version) -> Result<UnsubAck> {
        let pid = read_packet_id(b)?;
        let (properties, codes) = match version {
            Version::V5 => {
                let properties = Properties::decode(b, Context::UnsubAck)?;
                let mut codes = Vec::with_capacity(b.len());
                while !b.is_empty() {
                    codes.push(read_code(
                        b,
                        CodeIn::UnsubAck,
                        "invalid UNSUBACK reason code",
                    )?);
                }
                (properties, codes)
            }
            Version::V311 => (Properties::default(), Vec::new()),
        };
        Ok(UnsubAck {
            pid,
            codes,
            properties,
        })
    }

    pub(crate) fn encode(&self, version: Version, out: &mut BytesMut) -> Result<()> {
        let mut body = BytesMut::new();
        body.put_u16(self.pid);
        if version == Version::V5 {
            self.properties.encode(&mut body)?;
            for c in &self.codes {
                body.put_u8(c.code());
            }
        }
        write_packet(out, 0xB0, &body)
    }
}
