//! MQTT 5.0 properties: one struct for every packet, with the set of identifiers each
//! packet may carry checked on decode. A 3.1.1 connection never reads or writes them.

use super::{
    read_binary, read_string, read_u16, read_u32, read_u8, read_varint, remaining_len,
    write_binary, write_string, write_varint, Error, Result,
};
use bytes::{BufMut, Bytes, BytesMut};
use std::cell::RefCell;
use std::sync::Arc;

const PAYLOAD_FORMAT: u8 = 0x01;
const MESSAGE_EXPIRY: u8 = 0x02;
const CONTENT_TYPE: u8 = 0x03;
const RESPONSE_TOPIC: u8 = 0x08;
const CORRELATION_DATA: u8 = 0x09;
const SUBSCRIPTION_ID: u8 = 0x0B;
const SESSION_EXPIRY: u8 = 0x11;
const ASSIGNED_CLIENT_ID: u8 = 0x12;
const SERVER_KEEP_ALIVE: u8 = 0x13;
const AUTH_METHOD: u8 = 0x15;
const AUTH_DATA: u8 = 0x16;
const REQUEST_PROBLEM_INFO: u8 = 0x17;
const WILL_DELAY: u8 = 0x18;
const REQUEST_RESPONSE_INFO: u8 = 0x19;
const RESPONSE_INFO: u8 = 0x1A;
const SERVER_REFERENCE: u8 = 0x1C;
const REASON_STRING: u8 = 0x1F;
const RECEIVE_MAXIMUM: u8 = 0x21;
const TOPIC_ALIAS_MAXIMUM: u8 = 0x22;
const TOPIC_ALIAS: u8 = 0x23;
const MAXIMUM_QOS: u8 = 0x24;
const RETAIN_AVAILABLE: u8 = 0x25;
const USER_PROPERTY: u8 = 0x26;
const MAXIMUM_PACKET_SIZE: u8 = 0x27;
const WILDCARD_SUB_AVAILABLE: u8 = 0x28;
const SUB_ID_AVAILABLE: u8 = 0x29;
const SHARED_SUB_AVAILABLE: u8 = 0x2A;

/// Which packet the properties belong to; decides which identifiers are allowed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Context {
    Connect,
    Will,
    ConnAck,
    Publish,
    Ack,
    Subscribe,
    SubAck,
    Unsubscribe,
    UnsubAck,
    Disconnect,
    Auth,
}

impl Context {
    fn allows(self, id: u8) -> bool {
        if id == USER_PROPERTY {
            return true;
        }
        let allowed: &[u8] = match self {
            Context::Connect => &[
                SESSION_EXPIRY,
                AUTH_METHOD,
                AUTH_DATA,
                REQUEST_PROBLEM_INFO,
                REQUEST_RESPONSE_INFO,
                RECEIVE_MAXIMUM,
                TOPIC_ALIAS_MAXIMUM,
                MAXIMUM_PACKET_SIZE,
            ],
            Context::Will => &[
                PAYLOAD_FORMAT,
                MESSAGE_EXPIRY,
                CONTENT_TYPE,
                RESPONSE_TOPIC,
                CORRELATION_DATA,
                WILL_DELAY,
            ],
            Context::ConnAck => &[
                SESSION_EXPIRY,
                ASSIGNED_CLIENT_ID,
                SERVER_KEEP_ALIVE,
                AUTH_METHOD,
                AUTH_DATA,
                RESPONSE_INFO,
                SERVER_REFERENCE,
                REASON_STRING,
                RECEIVE_MAXIMUM,
                TOPIC_ALIAS_MAXIMUM,
                MAXIMUM_QOS,
                RETAIN_AVAILABLE,
                MAXIMUM_PACKET_SIZE,
                WILDCARD_SUB_AVAILABLE,
                SUB_ID_AVAILABLE,
                SHARED_SUB_AVAILABLE,
            ],
            Context::Publish => &[
                PAYLOAD_FORMAT,
                MESSAGE_EXPIRY,
                CONTENT_TYPE,
                RESPONSE_TOPIC,
                CORRELATION_DATA,
                SUBSCRIPTION_ID,
                TOPIC_ALIAS,
            ],
            Context::Ack | Context::SubAck | Context::UnsubAck => &[REASON_STRING],
            Context::Subscribe => &[SUBSCRIPTION_ID],
            Context::Unsubscribe => &[],
            Context::Disconnect => &[SESSION_EXPIRY, SERVER_REFERENCE, REASON_STRING],
            Context::Auth => &[AUTH_METHOD, AUTH_DATA, REASON_STRING],
        };
        allowed.contains(&id)
    }
}

/// The 5.0 properties of a packet or message.
///
/// Most packets carry none: every 3.1.1 packet, and most 5.0 PUBLISH and acknowledgement
/// packets. The set therefore lives behind a pointer that is null while it is empty, so
/// a packet or a queued message without properties carries one pointer for them instead
/// of all two dozen fields. Moving decoded packets and messages by value was the largest
/// copy on the hot path before. Reading a field of an empty set reads a shared
/// empty set; writing one allocates the set.
///
/// The set is shared, not owned: a transform answer reused for many messages gives each
/// of them the same properties, and copying a set with user properties on every message
/// was the largest cost of a plugin chain. Writing to a shared set copies it first.
#[derive(Clone, Default)]
pub struct Properties(Option<Arc<PropertySet>>);

/// Every 5.0 property. Unset ones are `None` (or empty) and are not written.
#[derive(Debug, Clone, Default, PartialEq, Eq, Hash)]
pub struct PropertySet {
    pub payload_format_indicator: Option<u8>,
    pub message_expiry_interval: Option<u32>,
    pub content_type: Option<String>,
    pub response_topic: Option<String>,
    pub correlation_data: Option<Bytes>,
    /// Several only in a PUBLISH sent by the server (one per matching subscription).
    pub subscription_identifiers: Vec<u32>,
    pub session_expiry_interval: Option<u32>,
    pub assigned_client_identifier: Option<String>,
    pub server_keep_alive: Option<u16>,
    pub authentication_method: Option<String>,
    pub authentication_data: Option<Bytes>,
    pub request_problem_information: Option<u8>,
    pub will_delay_interval: Option<u32>,
    pub request_response_information: Option<u8>,
    pub response_information: Option<String>,
    pub server_reference: Option<String>,
    pub reason_string: Option<String>,
    pub receive_maximum: Option<u16>,
    pub topic_alias_maximum: Option<u16>,
    pub topic_alias: Option<u16>,
    pub maximum_qos: Option<u8>,
    pub retain_available: Option<u8>,
    pub user_properties: Vec<(String, String)>,
    pub maximum_packet_size: Option<u32>,
    pub wildcard_subscription_available: Option<u8>,
    pub subscription_identifier_available: Option<u8>,
    pub shared_subscription_available: Option<u8>,
}

/// What an empty [`Properties`] reads as.
static EMPTY: PropertySet = PropertySet {
    payload_format_indicator: None,
    message_expiry_interval: None,
    content_type: None,
    response_topic: None,
    correlation_data: None,
    subscription_identifiers: Vec::new(),
    session_expiry_interval: None,
    assigned_client_identifier: None,
    server_keep_alive: None,
    authentication_method: None,
    authentication_data: None,
    request_problem_information: None,
    will_delay_interval: None,
    request_response_information: None,
    response_information: None,
    server_reference: None,
    reason_string: None,
    receive_maximum: None,
    topic_alias_maximum: None,
    topic_alias: None,
    maximum_qos: None,
    retain_available: None,
    user_properties: Vec::new(),
    maximum_packet_size: None,
    wildcard_subscription_available: None,
    subscription_identifier_available: None,
    shared_subscription_available: None,
};

impl std::ops::Deref for Properties {
    type Target = PropertySet;
    fn deref(&self) -> &PropertySet {
        self.0.as_deref().unwrap_or(&EMPTY)
    }
}

impl std::ops::DerefMut for Properties {
    fn deref_mut(&mut self) -> &mut PropertySet {
        Arc::make_mut(self.0.get_or_insert_with(Arc::default))
    }
}

impl From<PropertySet> for Properties {
    fn from(set: PropertySet) -> Properties {
        Properties((set != EMPTY).then(|| Arc::new(set)))
    }
}

impl PartialEq for Properties {
    fn eq(&self, other: &Properties) -> bool {
        **self == **other
    }
}

impl Eq for Properties {}

impl std::hash::Hash for Properties {
    fn hash<H: std::hash::Hasher>(&self, state: &mut H) {
        // The common empty case without walking every field of the shared empty set.
        match &self.0 {
            Some(set) if !self.is_empty() => {
                state.write_u8(1);
                set.hash(state)
            }
            _ => state.write_u8(0),
        }
    }
}

impl std::fmt::Debug for Properties {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        (**self).fmt(f)
    }
}

impl Properties {
    /// The set, if any property is set; editing through this never creates one.
    pub fn get_mut(&mut self) -> Option<&mut PropertySet> {
        self.0.as_mut().map(Arc::make_mut)
    }

    /// Drops the set if edits left it empty, so it costs nothing to carry onward.
    pub fn compact(mut self) -> Properties {
        if self.is_empty() {
            self.0 = None;
        }
        self
    }
}

/// What a PUBLISH carries for one subscriber in place of the message's own: the time it
/// has left, the identifiers of the subscriptions it matched, and the topic alias. The
/// message's properties are written around them as they are, never copied to set them.
#[derive(Debug, Clone, Copy, Default)]
pub struct PerDelivery<'a> {
    pub message_expiry_interval: Option<u32>,
    pub subscription_identifiers: &'a [u32],
    pub topic_alias: Option<u16>,
}

impl PerDelivery<'_> {
    fn is_empty(&self) -> bool {
        self.message_expiry_interval.is_none()
            && self.subscription_identifiers.is_empty()
            && self.topic_alias.is_none()
    }
}

/// Sets a property once; a second occurrence is a protocol error (MQTT-2.2.2-2).
fn once<T>(slot: &mut Option<T>, v: T) -> Result<()> {
    if slot.is_some() {
        return Err(Error::Protocol("property appears more than once"));
    }
    *slot = Some(v);
    Ok(())
}

/// A two-byte property that may not be 0.
fn nonzero(b: &mut Bytes, what: &'static str) -> Result<u16> {
    match read_u16(b)? {
        0 => Err(Error::Protocol(what)),
        v => Ok(v),
    }
}

fn flag(b: &mut Bytes, what: &'static str) -> Result<u8> {
    let v = read_u8(b)?;
    if v > 1 {
        return Err(Error::Protocol(what));
    }
    Ok(v)
}

impl Properties {
    pub(crate) fn decode(b: &mut Bytes, ctx: Context) -> Result<Properties> {
        // Every property read sets a field, so a set is empty exactly when its length is
        // zero: no comparison with the empty set on each decoded packet.
        Ok(Properties(PropertySet::decode(b, ctx)?.map(Arc::new)))
    }

    /// Writes the property length and the properties.
    pub(crate) fn encode(&self, out: &mut BytesMut) -> Result<()> {
        self.with_body(None, |body| {
            let body = body?;
            write_varint(out, remaining_len(body.len())?);
            out.put_slice(body);
            Ok(())
        })
    }

    /// Calls `f` with the encoded properties (without their length), with `per` in
    /// place of the set's own per-delivery fields, or with the error that a property is
    /// too long to encode. The bytes are built in a buffer kept per thread: a packet's
    /// size is written before its properties, and this measures them without an
    /// allocation or a second pass.
    pub(crate) fn with_body<R>(
        &self,
        per: Option<PerDelivery<'_>>,
        f: impl FnOnce(Result<&[u8]>) -> R,
    ) -> R {
        thread_local! {
            static SCRATCH: RefCell<BytesMut> = RefCell::new(BytesMut::new());
        }
        if self.0.is_none() && per.is_none_or(|p| p.is_empty()) {
            return f(Ok(&[]));
        }
        SCRATCH.with(|cell| {
            let mut body = cell.borrow_mut();
            body.clear();
            match self.encode_body(&mut body, per) {
                Ok(()) => f(Ok(&body)),
                Err(e) => f(Err(e)),
            }
        })
    }

    pub fn is_empty(&self) -> bool {
        self.0.as_deref().is_none_or(|set| *set == EMPTY)
    }

    /// Are these the very same properties (none, or one shared set)? Cheaper than
    /// comparing them, and enough to know two messages' sets are alike.
    pub fn shares(&self, other: &Properties) -> bool {
        match (&self.0, &other.0) {
            (None, None) => true,
            (Some(a), Some(b)) => Arc::ptr_eq(a, b),
            _ => false,
        }
    }
}

impl PropertySet {
    /// The properties, or `None` when the property length is zero.
    fn decode(b: &mut Bytes, ctx: Context) -> Result<Option<PropertySet>> {
        let len = read_varint(b)? as usize;
        if b.len() < len {
            return Err(Error::Malformed("property length exceeds the packet"));
        }
        if len == 0 {
            return Ok(None);
        }
        let mut p = b.split_to(len);
        let mut props = PropertySet::default();
        while !p.is_empty() {
            let id = read_varint(&mut p)?;
            let id =
                u8::try_from(id).map_err(|_| Error::Malformed("unknown property identifier"))?;
            if !ctx.allows(id) {
                return Err(Error::Malformed("property not allowed in this packet"));
            }
            props.read(id, &mut p, ctx)?;
        }
        Ok(Some(props))
    }

    /// Reads the value of property `id` into its field.
    fn read(&mut self, id: u8, p: &mut Bytes, ctx: Context) -> Result<()> {
        match id {
            PAYLOAD_FORMAT | MESSAGE_EXPIRY | CONTENT_TYPE | RESPONSE_TOPIC | CORRELATION_DATA
            | SUBSCRIPTION_ID | USER_PROPERTY => self.read_message(id, p, ctx),
            _ => self.read_control(id, p),
        }
    }

    /// The properties an application message carries (and user properties).
    fn read_message(&mut self, id: u8, p: &mut Bytes, ctx: Context) -> Result<()> {
        match id {
            PAYLOAD_FORMAT => once(
                &mut self.payload_format_indicator,
                flag(p, "payload format indicator must be 0 or 1")?,
            ),
            MESSAGE_EXPIRY => once(&mut self.message_expiry_interval, read_u32(p)?),
            CONTENT_TYPE => once(&mut self.content_type, read_string(p)?),
            RESPONSE_TOPIC => {
                let t = read_string(p)?;
                weir_protocol::topic::validate_name(&t).map_err(Error::topic_name)?;
                once(&mut self.response_topic, t)
            }
            CORRELATION_DATA => once(&mut self.correlation_data, read_binary(p)?),
            SUBSCRIPTION_ID => {
                let v = read_varint(p)?;
                if v == 0 {
                    return Err(Error::Protocol("subscription identifier 0"));
                }
                if ctx == Context::Subscribe && !self.subscription_identifiers.is_empty() {
                    return Err(Error::Protocol("property appears more than once"));
                }
                self.subscription_identifiers.push(v);
                Ok(())
            }
            _ => {
                let k = read_string(p)?;
                let v = read_string(p)?;
                self.user_properties.push((k, v));
                Ok(())
            }
        }
    }

    /// The properties of the connection and its control packets.
    fn read_control(&mut self, id: u8, p: &mut Bytes) -> Result<()> {
        match id {
            SESSION_EXPIRY => once(&mut self.session_expiry_interval, read_u32(p)?),
            ASSIGNED_CLIENT_ID => once(&mut self.assigned_client_identifier, read_string(p)?),
            SERVER_KEEP_ALIVE => once(&mut self.server_keep_alive, read_u16(p)?),
            AUTH_METHOD => once(&mut self.authentication_method, read_string(p)?),
            AUTH_DATA => once(&mut self.authentication_data, read_binary(p)?),
            REQUEST_PROBLEM_INFO => once(
                &mut self.request_problem_information,
                flag(p, "request problem information must be 0 or 1")?,
            ),
            WILL_DELAY => once(&mut self.will_delay_interval, read_u32(p)?),
            REQUEST_RESPONSE_INFO => once(
                &mut self.request_response_information,
                flag(p, "request response information must be 0 or 1")?,
            ),
            RESPONSE_INFO => once(&mut self.response_information, read_string(p)?),
            SERVER_REFERENCE => once(&mut self.server_reference, read_string(p)?),
            REASON_STRING => once(&mut self.reason_string, read_string(p)?),
            RECEIVE_MAXIMUM => once(&mut self.receive_maximum, nonzero(p, "receive maximum 0")?),
            TOPIC_ALIAS_MAXIMUM => once(&mut self.topic_alias_maximum, read_u16(p)?),
            TOPIC_ALIAS => once(&mut self.topic_alias, nonzero(p, "topic alias 0")?),
            MAXIMUM_QOS => once(
                &mut self.maximum_qos,
                flag(p, "maximum QoS must be 0 or 1")?,
            ),
            RETAIN_AVAILABLE => once(
                &mut self.retain_available,
                flag(p, "retain available must be 0 or 1")?,
            ),
            MAXIMUM_PACKET_SIZE => {
                let v = read_u32(p)?;
                if v == 0 {
                    return Err(Error::Protocol("maximum packet size 0"));
                }
                once(&mut self.maximum_packet_size, v)
            }
            WILDCARD_SUB_AVAILABLE => once(
                &mut self.wildcard_subscription_available,
                flag(p, "wildcard subscription available must be 0 or 1")?,
            ),
            SUB_ID_AVAILABLE => once(
                &mut self.subscription_identifier_available,
                flag(p, "subscription identifier available must be 0 or 1")?,
            ),
            SHARED_SUB_AVAILABLE => once(
                &mut self.shared_subscription_available,
                flag(p, "shared subscription available must be 0 or 1")?,
            ),
            _ => Err(Error::Malformed("unknown property identifier")),
        }
    }

    fn encode_body(&self, o: &mut BytesMut, per: Option<PerDelivery<'_>>) -> Result<()> {
        let per = per.unwrap_or(PerDelivery {
            message_expiry_interval: self.message_expiry_interval,
            subscription_identifiers: &self.subscription_identifiers,
            topic_alias: self.topic_alias,
        });
        self.encode_message(o, per)?;
        self.encode_control(o)
    }

    /// The properties an application message carries, with `per` for the ones that
    /// differ per delivery, and user properties.
    fn encode_message(&self, o: &mut BytesMut, per: PerDelivery<'_>) -> Result<()> {
        byte(o, PAYLOAD_FORMAT, self.payload_format_indicator);
        u32p(o, MESSAGE_EXPIRY, per.message_expiry_interval);
        strp(o, CONTENT_TYPE, &self.content_type, "content type")?;
        strp(o, RESPONSE_TOPIC, &self.response_topic, "response topic")?;
        binp(
            o,
            CORRELATION_DATA,
            &self.correlation_data,
            "correlation data",
        )?;
        for id in per.subscription_identifiers {
            o.put_u8(SUBSCRIPTION_ID);
            write_varint(o, *id as usize);
        }
        u16p(o, TOPIC_ALIAS, per.topic_alias);
        for (k, v) in &self.user_properties {
            o.put_u8(USER_PROPERTY);
            write_string(o, k, "user property name")?;
            write_string(o, v, "user property value")?;
        }
        Ok(())
    }

    /// The properties of the connection and its control packets.
    fn encode_control(&self, o: &mut BytesMut) -> Result<()> {
        u32p(o, SESSION_EXPIRY, self.session_expiry_interval);
        let assigned = &self.assigned_client_identifier;
        strp(o, ASSIGNED_CLIENT_ID, assigned, "assigned client id")?;
        u16p(o, SERVER_KEEP_ALIVE, self.server_keep_alive);
        let method = &self.authentication_method;
        strp(o, AUTH_METHOD, method, "authentication method")?;
        binp(
            o,
            AUTH_DATA,
            &self.authentication_data,
            "authentication data",
        )?;
        byte(o, REQUEST_PROBLEM_INFO, self.request_problem_information);
        u32p(o, WILL_DELAY, self.will_delay_interval);
        byte(o, REQUEST_RESPONSE_INFO, self.request_response_information);
        let info = &self.response_information;
        strp(o, RESPONSE_INFO, info, "response information")?;
        strp(
            o,
            SERVER_REFERENCE,
            &self.server_reference,
            "server reference",
        )?;
        strp(o, REASON_STRING, &self.reason_string, "reason string")?;
        u16p(o, RECEIVE_MAXIMUM, self.receive_maximum);
        u16p(o, TOPIC_ALIAS_MAXIMUM, self.topic_alias_maximum);
        byte(o, MAXIMUM_QOS, self.maximum_qos);
        byte(o, RETAIN_AVAILABLE, self.retain_available);
        u32p(o, MAXIMUM_PACKET_SIZE, self.maximum_packet_size);
        let wildcard = self.wildcard_subscription_available;
        byte(o, WILDCARD_SUB_AVAILABLE, wildcard);
        byte(o, SUB_ID_AVAILABLE, self.subscription_identifier_available);
        byte(o, SHARED_SUB_AVAILABLE, self.shared_subscription_available);
        Ok(())
    }
}

fn byte(o: &mut BytesMut, id: u8, v: Option<u8>) {
    if let Some(v) = v {
        o.put_u8(id);
        o.put_u8(v);
    }
}

fn u16p(o: &mut BytesMut, id: u8, v: Option<u16>) {
    if let Some(v) = v {
        o.put_u8(id);
        o.put_u16(v);
    }
}

fn u32p(o: &mut BytesMut, id: u8, v: Option<u32>) {
    if let Some(v) = v {
        o.put_u8(id);
        o.put_u32(v);
    }
}

fn strp(o: &mut BytesMut, id: u8, v: &Option<String>, what: &'static str) -> Result<()> {
    if let Some(v) = v {
        o.put_u8(id);
        write_string(o, v, what)?;
    }
    Ok(())
}

fn binp(o: &mut BytesMut, id: u8, v: &Option<Bytes>, what: &'static str) -> Result<()> {
    if let Some(v) = v {
        o.put_u8(id);
        write_binary(o, v, what)?;
    }
    Ok(())
}
