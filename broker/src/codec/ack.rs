//! PUBACK, PUBREC, PUBREL and PUBCOMP: one shape, four packet types.

use super::properties::Context;
use super::{read_packet_id, read_u8, write_packet, Error, Properties, Result, Version};
use bytes::{BufMut, Bytes, BytesMut};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AckKind {
    PubAck,
    PubRec,
    PubRel,
    PubComp,
}

impl AckKind {
    pub(crate) fn from_type(t: u8) -> AckKind {
        match t {
            4 => AckKind::PubAck,
            5 => AckKind::PubRec,
            6 => AckKind::PubRel,
            _ => AckKind::PubComp,
        }
    }

    fn header(self) -> u8 {
        match self {
            AckKind::PubAck => 0x40,
            AckKind::PubRec => 0x50,
            AckKind::PubRel => 0x62,
            AckKind::PubComp => 0x70,
        }
    }

    pub fn name(self) -> &'static str {
        match self {
            AckKind::PubAck => "PUBACK",
            AckKind::PubRec => "PUBREC",
            AckKind::PubRel => "PUBREL",
            AckKind::PubComp => "PUBCOMP",
        }
    }
}

#[derive(Debug, Clone, PartialEq)]
pub struct Ack {
    pub kind: AckKind,
    pub pid: u16,
    pub code: u8,
    pub properties: Properties,
}

impl Ack {
    pub fn new(kind: AckKind, pid: u16) -> Ack {
        Ack {
            kind,
            pid,
            code: 0,
            properties: Properties::default(),
        }
    }

    pub fn with_code(kind: AckKind, pid: u16, code: u8) -> Ack {
        Ack {
            kind,
            pid,
            code,
            properties: Properties::default(),
        }
    }

    pub(crate) fn decode(kind: AckKind, b: &mut Bytes, version: Version) -> Result<Ack> {
        let pid = read_packet_id(b)?;
        let mut ack = Ack::new(kind, pid);
        if version == Version::V5 && !b.is_empty() {
            ack.code = read_u8(b)?;
            if !valid_code(kind, ack.code) {
                return Err(Error::Malformed(
                    "invalid reason code for this acknowledgement",
                ));
            }
            if !b.is_empty() {
                ack.properties = Properties::decode(b, Context::Ack)?;
            }
        }
        Ok(ack)
    }

    pub(crate) fn encode(&self, version: Version, out: &mut BytesMut) {
        // The short form (no reason code, no properties) is what 3.1.1 requires and what
        // 5.0 allows for success, and it is the common case.
        if version == Version::V311 || (self.code == 0 && self.properties.is_empty()) {
            out.put_u8(self.kind.header());
            out.put_u8(2);
            out.put_u16(self.pid);
            return;
        }
        let mut body = BytesMut::with_capacity(8);
        body.put_u16(self.pid);
        body.put_u8(self.code);
        if !self.properties.is_empty() {
            self.properties.encode(&mut body);
        }
        write_packet(out, self.kind.header(), &body);
    }
}

fn valid_code(kind: AckKind, code: u8) -> bool {
    match kind {
        AckKind::PubAck | AckKind::PubRec => {
            matches!(
                code,
                0x00 | 0x10 | 0x80 | 0x83 | 0x87 | 0x90 | 0x91 | 0x97 | 0x99
            )
        }
        AckKind::PubRel | AckKind::PubComp => matches!(code, 0x00 | 0x92),
    }
}
