//! DISCONNECT and AUTH.

use super::properties::Context;
use super::{read_code, write_packet, CodeIn, Error, Properties, ReasonCode, Result, Version};
use bytes::{BufMut, Bytes, BytesMut};

#[derive(Debug, Clone, PartialEq, Default)]
pub struct Disconnect {
    pub code: ReasonCode,
    pub properties: Properties,
}

impl Disconnect {
    pub fn with_code(code: ReasonCode) -> Disconnect {
        Disconnect {
            code,
            properties: Properties::default(),
        }
    }

    pub(crate) fn decode(b: &mut Bytes, version: Version) -> Result<Disconnect> {
        let mut d = Disconnect::default();
        match version {
            Version::V311 => {
                if !b.is_empty() {
                    return Err(Error::Malformed("3.1.1 DISCONNECT has a body"));
                }
            }
            Version::V5 => {
                if !b.is_empty() {
                    d.code = read_code(b, CodeIn::Disconnect, "invalid DISCONNECT reason code")?;
                }
                if !b.is_empty() {
                    d.properties = Properties::decode(b, Context::Disconnect)?;
                }
            }
        }
        Ok(d)
    }

    pub(crate) fn encode(&self, version: Version, out: &mut BytesMut) -> Result<()> {
        if version == Version::V311
            || (self.code == ReasonCode::Success && self.properties.is_empty())
        {
            out.put_slice(&[0xE0, 0]);
            return Ok(());
        }
        let mut body = BytesMut::new();
        body.put_u8(self.code.into());
        self.properties.encode(&mut body)?;
        write_packet(out, 0xE0, &body)
    }
}

#[derive(Debug, Clone, PartialEq, Default)]
pub struct Auth {
    pub code: ReasonCode,
    pub properties: Properties,
}

impl Auth {
    pub(crate) fn decode(b: &mut Bytes) -> Result<Auth> {
        let mut a = Auth::default();
        if !b.is_empty() {
            a.code = read_code(b, CodeIn::Auth, "invalid AUTH reason code")?;
        }
        if !b.is_empty() {
            a.properties = Properties::decode(b, Context::Auth)?;
        }
        Ok(a)
    }

    pub(crate) fn encode(&self, out: &mut BytesMut) -> Result<()> {
        let mut body = BytesMut::new();
        body.put_u8(self.code.into());
        self.properties.encode(&mut body)?;
        write_packet(out, 0xF0, &body)
    }
}
