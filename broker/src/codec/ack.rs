//! PUBACK, PUBREC, PUBREL and PUBCOMP: one shape, four packet types.

use super::properties::Context;
use super::{
    read_code, read_packet_id, write_packet, CodeIn, Properties, ReasonCode, Result, Version,
};
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

    /// The packet, for which reason codes it may carry.
    fn carrier(self) -> CodeIn {
        match self {
            AckKind::PubAck => CodeIn::PubAck,
            AckKind::PubRec => CodeIn::PubRec,
            AckKind::PubRel => CodeIn::PubRel,
            AckKind::PubComp => CodeIn::PubComp,
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
    pub code: ReasonCode,
    pub properties: Properties,
}

impl Ack {
    pub fn new(kind: AckKind, pid: u16) -> Ack {
        Ack {
            kind,
            pid,
            code: ReasonCode::Success,
            properties: Properties::default(),
        }
    }

    pub fn with_code(kind: AckKind, pid: u16, code: ReasonCode) -> Ack {
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
            ack.code = read_code(
                b,
                kind.carrier(),
                "invalid reason code for this acknowledgement",
            )?;
            if !b.is_empty() {
                ack.properties = Properties::decode(b, Context::Ack)?;
            }
        }
        Ok(ack)
    }

    pub(crate) fn encode(&self, version: Version, out: &mut BytesMut) -> Result<()> {
        // The short form (no reason code, no properties) is what 3.1.1 requires and what
        // 5.0 allows for success, and it is the common case.
        if version == Version::V311
            || (self.code == ReasonCode::Success && self.properties.is_empty())
        {
            out.put_u8(self.kind.header());
            out.put_u8(2);
            out.put_u16(self.pid);
            return Ok(());
        }
        let mut body = BytesMut::with_capacity(8);
        body.put_u16(self.pid);
        body.put_u8(self.code.into());
        if !self.properties.is_empty() {
            self.properties.encode(&mut body)?;
        }
        write_packet(out, self.kind.header(), &body)
    }
}
