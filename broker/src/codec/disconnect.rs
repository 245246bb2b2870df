//! DISCONNECT and AUTH.

use super::properties::Context;
use super::{read_u8, write_packet, Error, Properties, Result, Version};
use bytes::{BufMut, Bytes, BytesMut};

#[derive(Debug, Clone, PartialEq, Default)]
pub struct Disconnect {
    pub code: u8,
    pub properties: Properties,
}

impl Disconnect {
    pub fn with_code(code: u8) -> Disconnect {
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
                    d.code = read_u8(b)?;
                }
                if !b.is_empty() {
                    d.properties = Properties::decode(b, Context::Disconnect)?;
                }
            }
        }
        Ok(d)
    }

    pub(crate) fn encode(&self, version: Version, out: &mut BytesMut) {
        if version == Version::V311 || (self.code == 0 && self.properties.is_empty()) {
            out.put_slice(&[0xE0, 0]);
            return;
        }
        let mut body = BytesMut::new();
        body.put_u8(self.code);
        self.properties.encode(&mut body);
        write_packet(out, 0xE0, &body);
    }
}

#[derive(Debug, Clone, PartialEq, Default)]
pub struct Auth {
    pub code: u8,
    pub properties: Properties,
}

impl Auth {
    pub(crate) fn decode(b: &mut Bytes) -> Result<Auth> {
        let mut a = Auth::default();
        if !b.is_empty() {
            a.code = read_u8(b)?;
            if !matches!(a.code, 0x00 | 0x18 | 0x19) {
                return Err(Error::Malformed("invalid AUTH reason code"));
            }
        }
        if !b.is_empty() {
            a.properties = Properties::decode(b, Context::Auth)?;
        }
        Ok(a)
    }

    pub(crate) fn encode(&self, out: &mut BytesMut) {
        let mut body = BytesMut::new();
        body.put_u8(self.code);
        self.properties.encode(&mut body);
        write_packet(out, 0xF0, &body);
    }
}
