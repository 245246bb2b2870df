//! MQTT 5.0 reason codes (section 2.4), by name, with the packets that may carry each.

/// Every reason code MQTT 5.0 defines. `0x00` is one code with three names in the
/// specification (Success, Normal disconnection, Granted QoS 0); here it is `Success`,
/// with [`ReasonCode::NORMAL_DISCONNECTION`] and [`ReasonCode::GRANTED_QOS0`] as aliases.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Default)]
#[repr(u8)]
pub enum ReasonCode {
    #[default]
    Success = 0x00,
    GrantedQos1 = 0x01,
    GrantedQos2 = 0x02,
    DisconnectWithWill = 0x04,
    NoMatchingSubscribers = 0x10,
    NoSubscriptionExisted = 0x11,
    ContinueAuthentication = 0x18,
    ReAuthenticate = 0x19,
    UnspecifiedError = 0x80,
    MalformedPacket = 0x81,
    ProtocolError = 0x82,
    ImplementationSpecificError = 0x83,
    UnsupportedProtocolVersion = 0x84,
    ClientIdentifierNotValid = 0x85,
    BadUserNameOrPassword = 0x86,
    NotAuthorized = 0x87,
    ServerUnavailable = 0x88,
    ServerBusy = 0x89,
    Banned = 0x8A,
    ServerShuttingDown = 0x8B,
    BadAuthenticationMethod = 0x8C,
    KeepAliveTimeout = 0x8D,
    SessionTakenOver = 0x8E,
    TopicFilterInvalid = 0x8F,
    TopicNameInvalid = 0x90,
    PacketIdentifierInUse = 0x91,
    PacketIdentifierNotFound = 0x92,
    ReceiveMaximumExceeded = 0x93,
    TopicAliasInvalid = 0x94,
    PacketTooLarge = 0x95,
    MessageRateTooHigh = 0x96,
    QuotaExceeded = 0x97,
    AdministrativeAction = 0x98,
    PayloadFormatInvalid = 0x99,
    RetainNotSupported = 0x9A,
    QosNotSupported = 0x9B,
    UseAnotherServer = 0x9C,
    ServerMoved = 0x9D,
    SharedSubscriptionsNotSupported = 0x9E,
    ConnectionRateExceeded = 0x9F,
    MaximumConnectTime = 0xA0,
    SubscriptionIdentifiersNotSupported = 0xA1,
    WildcardSubscriptionsNotSupported = 0xA2,
}

/// The packets that carry a reason code, for [`ReasonCode::allowed_in`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Packet {
    ConnAck,
    PubAck,
    PubRec,
    PubRel,
    PubComp,
    SubAck,
    UnsubAck,
    Disconnect,
    Auth,
}

use ReasonCode::*;

/// In code order, for [`ReasonCode::from_u8`].
const ALL: [ReasonCode; 43] = [
    Success,
    GrantedQos1,
    GrantedQos2,
    DisconnectWithWill,
    NoMatchingSubscribers,
    NoSubscriptionExisted,
    ContinueAuthentication,
    ReAuthenticate,
    UnspecifiedError,
    MalformedPacket,
    ProtocolError,
    ImplementationSpecificError,
    UnsupportedProtocolVersion,
    ClientIdentifierNotValid,
    BadUserNameOrPassword,
    NotAuthorized,
    ServerUnavailable,
    ServerBusy,
    Banned,
    ServerShuttingDown,
    BadAuthenticationMethod,
    KeepAliveTimeout,
    SessionTakenOver,
    TopicFilterInvalid,
    TopicNameInvalid,
    PacketIdentifierInUse,
    PacketIdentifierNotFound,
    ReceiveMaximumExceeded,
    TopicAliasInvalid,
    PacketTooLarge,
    MessageRateTooHigh,
    QuotaExceeded,
    AdministrativeAction,
    PayloadFormatInvalid,
    RetainNotSupported,
    QosNotSupported,
    UseAnotherServer,
    ServerMoved,
    SharedSubscriptionsNotSupported,
    ConnectionRateExceeded,
    MaximumConnectTime,
    SubscriptionIdentifiersNotSupported,
    WildcardSubscriptionsNotSupported,
];

impl ReasonCode {
    pub const NORMAL_DISCONNECTION: ReasonCode = Success;
    pub const GRANTED_QOS0: ReasonCode = Success;

    /// The code for a byte, if MQTT 5.0 defines one.
    pub fn from_u8(byte: u8) -> Option<ReasonCode> {
        ALL.binary_search_by_key(&byte, |c| *c as u8)
            .ok()
            .map(|i| ALL[i])
    }

    /// The byte on the wire.
    pub const fn code(self) -> u8 {
        self as u8
    }

    /// Codes of 0x80 and above say that something failed.
    pub const fn is_failure(self) -> bool {
        self as u8 >= 0x80
    }

    /// The granted QoS of a SUBACK: 0, 1 or 2 (anything else is 2).
    pub const fn granted(qos: u8) -> ReasonCode {
        match qos {
            0 => Success,
            1 => GrantedQos1,
            _ => GrantedQos2,
        }
    }

    /// Whether `packet` may carry this code (MQTT 5.0 sections 3.2.2.2 to 3.15.2.1).
    pub fn allowed_in(self, packet: Packet) -> bool {
        let b = self as u8;
        match packet {
            Packet::ConnAck => {
                matches!(b, 0x00 | 0x80..=0x8A | 0x8C | 0x90 | 0x95 | 0x97 | 0x99..=0x9D | 0x9F)
            }
            Packet::PubAck | Packet::PubRec => {
                matches!(
                    b,
                    0x00 | 0x10 | 0x80 | 0x83 | 0x87 | 0x90 | 0x91 | 0x97 | 0x99
                )
            }
            Packet::PubRel | Packet::PubComp => matches!(b, 0x00 | 0x92),
            Packet::SubAck => {
                matches!(
                    b,
                    0x00..=0x02 | 0x80 | 0x83 | 0x87 | 0x8F | 0x91 | 0x97 | 0x9E | 0xA1 | 0xA2
                )
            }
            Packet::UnsubAck => matches!(b, 0x00 | 0x11 | 0x80 | 0x83 | 0x87 | 0x8F | 0x91),
            Packet::Disconnect => matches!(
                b,
                0x00 | 0x04 | 0x80..=0x83 | 0x87 | 0x89 | 0x8B | 0x8D..=0x90 | 0x93..=0xA2
            ),
            Packet::Auth => matches!(b, 0x00 | 0x18 | 0x19),
        }
    }

    /// The 3.1.1 CONNACK return code closest to this one (3.1.1 has six).
    pub const fn connack_v311(self) -> u8 {
        match self {
            Success => 0,
            UnsupportedProtocolVersion => 1,
            ClientIdentifierNotValid => 2,
            ServerUnavailable | ServerBusy | ServerShuttingDown | ConnectionRateExceeded => 3,
            BadUserNameOrPassword => 4,
            _ => 5,
        }
    }
}

impl From<ReasonCode> for u8 {
    fn from(c: ReasonCode) -> u8 {
        c as u8
    }
}

impl TryFrom<u8> for ReasonCode {
    type Error = u8;
    /// The byte back when MQTT 5.0 defines no code for it.
    fn try_from(byte: u8) -> Result<ReasonCode, u8> {
        ReasonCode::from_u8(byte).ok_or(byte)
    }
}

impl std::fmt::Display for ReasonCode {
    /// `0x87 NotAuthorized`: the byte a client sees and the name an operator reads.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "0x{:02X} {:?}", *self as u8, self)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_defined_byte_round_trips_and_no_other_does() {
        let mut defined = 0;
        for b in 0..=255u8 {
            match ReasonCode::from_u8(b) {
                Some(c) => {
                    assert_eq!(c.code(), b);
                    defined += 1;
                }
                None => assert!(ALL.iter().all(|c| c.code() != b)),
            }
        }
        assert_eq!(defined, ALL.len());
        assert!(ALL.windows(2).all(|w| w[0] < w[1]), "ALL must stay sorted");
    }

    #[test]
    fn packets_accept_only_their_codes() {
        assert!(NotAuthorized.allowed_in(Packet::PubAck));
        assert!(!BadAuthenticationMethod.allowed_in(Packet::PubAck));
        assert!(PacketIdentifierNotFound.allowed_in(Packet::PubComp));
        assert!(Success.allowed_in(Packet::Auth));
        assert!(SessionTakenOver.allowed_in(Packet::Disconnect));
        assert!(!SessionTakenOver.allowed_in(Packet::ConnAck));
        assert!(GrantedQos2.allowed_in(Packet::SubAck));
        assert!(!GrantedQos2.allowed_in(Packet::UnsubAck));
        assert!(ReAuthenticate.allowed_in(Packet::Auth));
        assert!(!ReAuthenticate.allowed_in(Packet::Disconnect));
    }

    #[test]
    fn v311_connack_codes() {
        assert_eq!(Success.connack_v311(), 0);
        assert_eq!(ServerBusy.connack_v311(), 3);
        assert_eq!(BadUserNameOrPassword.connack_v311(), 4);
        assert_eq!(NotAuthorized.connack_v311(), 5);
        assert_eq!(Banned.connack_v311(), 5);
    }
}
