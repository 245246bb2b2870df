//! CONNECT and CONNACK.

use super::properties::Context;
use super::{
    read_binary, read_code, read_string, read_u16, read_u8, write_binary, write_packet,
    write_string, CodeIn, Error, Properties, QoS, ReasonCode, Result, Version,
};
use bytes::{BufMut, Bytes, BytesMut};

#[derive(Debug, Clone, PartialEq)]
pub struct Will {
    pub topic: String,
    pub payload: Bytes,
    pub qos: QoS,
    pub retain: bool,
    pub properties: Properties,
}

#[derive(Debug, Clone, PartialEq)]
pub struct Connect {
    pub version: Version,
    /// 3.1.1 Clean Session or 5.0 Clean Start.
    pub clean_start: bool,
    pub keep_alive: u16,
    pub client_id: String,
    pub will: Option<Will>,
    pub username: Option<String>,
    pub password: Option<Bytes>,
    pub properties: Properties,
}

impl Connect {
    pub(crate) fn decode(b: &mut Bytes) -> Result<Connect> {
        let name = read_binary(b)?;
        let level = read_u8(b)?;
        if &name[..] != b"MQTT" {
            // MQTT 3.1 says "MQIsdp": a real protocol, just not one we speak.
            if &name[..] == b"MQIsdp" {
                return Err(Error::UnsupportedVersion(level));
            }
            return Err(Error::Malformed("protocol name is not MQTT"));
        }
        let version = match level {
            4 => Version::V311,
            5 => Version::V5,
            other => return Err(Error::UnsupportedVersion(other)),
        };
        let flags = read_u8(b)?;
        if flags & 0x01 != 0 {
            return Err(Error::Malformed("CONNECT reserved flag is set"));
        }
        let clean_start = flags & 0x02 != 0;
        let will_flag = flags & 0x04 != 0;
        let will_qos = QoS::from_u8((flags >> 3) & 0x03).ok_or(Error::Malformed("will QoS 3"))?;
        let will_retain = flags & 0x20 != 0;
        let password_flag = flags & 0x40 != 0;
        let username_flag = flags & 0x80 != 0;
        if !will_flag && (will_qos != QoS::AtMostOnce || will_retain) {
            return Err(Error::Malformed("will QoS or retain set without a will"));
        }
        if version == Version::V311 && password_flag && !username_flag {
            return Err(Error::Malformed("password without a username"));
        }
        let keep_alive = read_u16(b)?;
        let properties = match version {
            Version::V5 => Properties::decode(b, Context::Connect)?,
            Version::V311 => Properties::default(),
        };
        if properties.authentication_data.is_some() && properties.authentication_method.is_none() {
            return Err(Error::Protocol("authentication data without a method"));
        }
        let client_id = read_string(b)?;
        let will = if will_flag {
            let properties = match version {
                Version::V5 => Properties::decode(b, Context::Will)?,
                Version::V311 => Properties::default(),
            };
            let topic = read_string(b)?;
            weir_protocol::topic::validate_name(&topic).map_err(Error::topic_name)?;
            let payload = read_binary(b)?;
            Some(Will {
                topic,
                payload,
                qos: will_qos,
                retain: will_retain,
                properties,
            })
        } else {
            None
        };
        let username = if username_flag {
            Some(read_string(b)?)
        } else {
            None
        };
        let password = if password_flag {
            Some(read_binary(b)?)
        } else {
            None
        };
        Ok(Connect {
            version,
            clean_start,
            keep_alive,
            client_id,
            will,
            username,
            password,
            properties,
        })
    }

    pub(crate) fn encode(&self, out: &mut BytesMut) -> Result<()> {
        let mut body = BytesMut::new();
        write_string(&mut body, "MQTT", "protocol name")?;
        body.put_u8(self.version.level());
        let mut flags = 0u8;
        if self.clean_start {
            flags |= 0x02;
        }
        if let Some(w) = &self.will {
            flags |= 0x04 | ((w.qos as u8) << 3);
            if w.retain {
                flags |= 0x20;
            }
        }
        if self.password.is_some() {
            flags |= 0x40;
        }
        if self.username.is_some() {
            flags |= 0x80;
        }
        body.put_u8(flags);
        body.put_u16(self.keep_alive);
        if self.version == Version::V5 {
            self.properties.encode(&mut body)?;
        }
        write_string(&mut body, &self.client_id, "client id")?;
        if let Some(w) = &self.will {
            if self.version == Version::V5 {
                w.properties.encode(&mut body)?;
            }
            write_string(&mut body, &w.topic, "will topic")?;
            write_binary(&mut body, &w.payload, "will payload")?;
        }
        if let Some(u) = &self.username {
            write_string(&mut body, u, "username")?;
        }
        if let Some(p) = &self.password {
            write_binary(&mut body, p, "password")?;
        }
        write_packet(out, 0x10, &body)
    }
}

#[derive(Debug, Clone, PartialEq, Default)]
pub struct ConnAck {
    pub session_present: bool,
    /// Written as the nearest 3.1.1 return code on a 3.1.1 connection.
    pub code: ReasonCode,
    pub properties: Properties,
}

impl ConnAck {
    pub(crate) fn decode(b: &mut Bytes, version: Version) -> Result<ConnAck> {
        let flags = read_u8(b)?;
        if flags & 0xFE != 0 {
            return Err(Error::Malformed("CONNACK reserved flags are set"));
        }
        let code = match version {
            Version::V5 => read_code(b, CodeIn::ConnAck, "invalid CONNACK reason code")?,
            Version::V311 => match read_u8(b)? {
                0 => ReasonCode::Success,
                1 => ReasonCode::UnsupportedProtocolVersion,
                2 => ReasonCode::ClientIdentifierNotValid,
                3 => ReasonCode::ServerUnavailable,
                4 => ReasonCode::BadUserNameOrPassword,
                5 => ReasonCode::NotAuthorized,
                _ => return Err(Error::Malformed("invalid CONNACK return code")),
            },
        };
        let properties = match version {
            Version::V5 => Properties::decode(b, Context::ConnAck)?,
            Version::V311 => Properties::default(),
        };
        Ok(ConnAck {
            session_present: flags & 1 != 0,
            code,
            properties,
        })
    }

    pub(crate) fn encode(&self, version: Version, out: &mut BytesMut) -> Result<()> {
        let mut body = BytesMut::new();
        body.put_u8(self.session_present as u8);
        match version {
            Version::V5 => {
                body.put_u8(self.code.into());
                self.properties.encode(&mut body)?;
            }
            Version::V311 => body.put_u8(self.code.connack_v311()),
        }
        write_packet(out, 0x20, &body)
    }
}
