//! Between the broker's types and the WIT types. What a plugin returns is checked
//! here: an answer the broker cannot use (a "deny" without a failure reason code, a
//! replacement message with a wildcard in its topic, ...) is a [`Failure::Invalid`].

use super::bindings::weir::plugin::types as wit;
use super::instance::Failure;
use crate::codec::{PropertySet, QoS, ReasonCode, SubscriptionOptions, Version};
use crate::hooks::{Action, ClientInfo, ConnectInfo, RateEvent};
use crate::message::{now_secs, Message};
use bytes::Bytes;
use std::sync::Arc;

fn pairs(p: &[(String, String)]) -> Vec<wit::Pair> {
    p.iter()
        .map(|(n, v)| wit::Pair {
            name: n.clone(),
            value: v.clone(),
        })
        .collect()
}

pub fn connect_info(i: &ConnectInfo<'_>) -> wit::ConnectInfo {
    wit::ConnectInfo {
        client_id: i.client_id.to_owned(),
        username: i.username.map(str::to_owned),
        password: i.password.map(|p| p.to_vec()),
        protocol: match i.version {
            Version::V311 => wit::Protocol::V311,
            Version::V5 => wit::Protocol::V5,
        },
        peer: i.peer.to_string(),
        listener: i.listener.to_owned(),
        certificate: i.certificate.map(|c| wit::Certificate {
            common_name: c.common_name.clone(),
            sans: c.sans.clone(),
        }),
        user_properties: pairs(i.user_properties),
    }
}

pub fn client(c: &ClientInfo<'_>) -> wit::Client {
    wit::Client {
        client_id: c.client_id.to_owned(),
        username: c.username.map(str::to_owned),
        peer: c.peer.to_owned(),
        listener: c.listener.to_owned(),
        attributes: pairs(c.attributes),
    }
}

pub fn access(action: Action, topic: &str, qos: QoS, retain: bool) -> wit::Access {
    wit::Access {
        action: match action {
            Action::Publish => wit::Action::Publish,
            Action::Subscribe => wit::Action::Subscribe,
        },
        topic: topic.to_owned(),
        qos: qos as u8,
        retain,
    }
}

/// A run's topics end to end, for a batch call.
fn topics<'m>(messages: impl ExactSizeIterator<Item = &'m Message> + Clone) -> wit::Topics {
    let len = messages.clone().map(|m| m.topic.len()).sum();
    let mut text = String::with_capacity(len);
    let mut ends = Vec::with_capacity(messages.len());
    for m in messages {
        text.push_str(&m.topic);
        ends.push(text.len() as u32);
    }
    wit::Topics { text, ends }
}

/// A run of publishes for `authorize-many`.
pub fn publishes(messages: &[&Message]) -> wit::Publishes {
    wit::Publishes {
        topics: topics(messages.iter().copied()),
        qos: messages.iter().map(|m| m.qos as u8).collect(),
        retain: messages.iter().map(|m| m.retain as u8).collect(),
    }
}

/// A run's headers for `transform-many`.
pub fn message_run(messages: &[&Message]) -> wit::MessageRun {
    let utf8 = |m: &&Message| (m.properties.payload_format_indicator == Some(1)) as u8;
    wit::MessageRun {
        topics: topics(messages.iter().copied()),
        qos: messages.iter().map(|m| m.qos as u8).collect(),
        retain: messages.iter().map(|m| m.retain as u8).collect(),
        payload_lens: (messages.iter())
            .map(|m| m.payload.len().min(u32::MAX as usize) as u32)
            .collect(),
        payload_utf8: messages.iter().map(utf8).collect(),
        message_expiry: (messages.iter().enumerate())
            .filter_map(|(i, m)| Some((i as u32, m.remaining_expiry_now()?)))
            .collect(),
    }
}

pub fn subscription(filter: &str, qos: QoS, o: SubscriptionOptions) -> wit::Subscription {
    wit::Subscription {
        filter: filter.to_owned(),
        qos: qos as u8,
        no_local: o.no_local,
        retain_as_published: o.retain_as_published,
        retain_handling: o.retain_handling as u8,
    }
}

/// Events as an observer gets them.
pub fn events(events: &[crate::events::Timed]) -> Vec<wit::TimedEvent> {
    use crate::events::Event;
    let ev = |e: &Event| match e {
        Event::Connected(who) => wit::BrokerEvent::Connected(client(&who.info())),
        Event::Disconnected {
            client_id,
            reason_code,
            reason,
        } => wit::BrokerEvent::Disconnected(wit::DisconnectEvent {
            client_id: client_id.to_string(),
            reason_code: *reason_code,
            reason: reason.clone(),
        }),
        Event::Subscribed {
            client_id,
            filter,
            qos,
        } => wit::BrokerEvent::Subscribed(wit::SubscribeEvent {
            client_id: client_id.to_string(),
            filter: filter.clone(),
            qos: *qos,
        }),
        Event::Unsubscribed { client_id, filter } => {
            wit::BrokerEvent::Unsubscribed(wit::UnsubscribeEvent {
                client_id: client_id.to_string(),
                filter: filter.clone(),
            })
        }
        Event::MessageDropped {
            client_id,
            topic,
            cause,
            count,
        } => wit::BrokerEvent::MessageDropped(wit::DropEvent {
            client_id: client_id.as_ref().map(|c| c.to_string()),
            topic: topic.as_ref().map(|t| t.to_string()),
            cause: cause.label().into(),
            count: *count,
        }),
        Event::SessionExpired(id) => wit::BrokerEvent::SessionExpired(id.to_string()),
        Event::WillPublished { client_id, topic } => {
            wit::BrokerEvent::WillPublished(wit::WillEvent {
                client_id: client_id.to_string(),
                topic: topic.to_string(),
            })
        }
    };
    let timed = |t: &crate::events::Timed| wit::TimedEvent {
        at_ms: t.at_ms,
        event: ev(&t.event),
    };
    events.iter().map(timed).collect()
}

pub fn event(e: RateEvent) -> wit::Event {
    match e {
        RateEvent::Connect => wit::Event::Connect,
        RateEvent::Publish(n) => wit::Event::Publish(n),
        RateEvent::Subscribe => wit::Event::Subscribe,
    }
}

pub fn message(m: &Message) -> wit::Message {
    let p = &m.properties;
    wit::Message {
        topic: m.topic.to_string(),
        payload: m.payload.to_vec(),
        qos: m.qos as u8,
        retain: m.retain,
        message_expiry: m.remaining_expiry_now(),
        payload_utf8: p.payload_format_indicator == Some(1),
        content_type: p.content_type.clone(),
        response_topic: p.response_topic.clone(),
        correlation_data: p.correlation_data.as_ref().map(|c| c.to_vec()),
        user_properties: p
            .user_properties
            .iter()
            .map(|(n, v)| wit::Pair {
                name: n.clone(),
                value: v.clone(),
            })
            .collect(),
    }
}

/// A failure reason code, as `deny`, `reject` and `drop` must carry.
pub fn failure_code(code: u8, what: &str) -> Result<ReasonCode, Failure> {
    match ReasonCode::from_u8(code) {
        Some(c) if c.is_failure() => Ok(c),
        Some(_) => Err(Failure::Invalid(format!(
            "{what} with reason code 0x{code:02X}, which is not a failure code"
        ))),
        None => Err(Failure::Invalid(format!(
            "{what} with reason code 0x{code:02X}, which MQTT 5.0 does not define"
        ))),
    }
}

/// A replacement message from `transform`, checked like an inbound PUBLISH.
pub fn replacement(
    m: wit::Message,
    original: &Message,
    max_packet: usize,
) -> Result<Message, Failure> {
    let bad = |why: String| Err(Failure::Invalid(format!("replacement message {why}")));
    if let Err(e) = crate::topic::validate_name(&m.topic) {
        return bad(format!("has an invalid topic: {e}"));
    }
    let Some(qos) = QoS::from_u8(m.qos) else {
        return bad(format!("has QoS {}", m.qos));
    };
    if let Some(t) = &m.response_topic {
        if crate::topic::validate_name(t).is_err() {
            return bad("has an invalid response topic".into());
        }
    }
    let replaced = Message {
        topic: Arc::from(m.topic),
        payload: Bytes::from(m.payload),
        qos,
        retain: m.retain,
        properties: PropertySet {
            payload_format_indicator: m.payload_utf8.then_some(1),
            content_type: m.content_type,
            response_topic: m.response_topic,
            correlation_data: m.correlation_data.map(Bytes::from),
            user_properties: m
                .user_properties
                .into_iter()
                .map(|p| (p.name, p.value))
                .collect(),
            ..Default::default()
        }
        .into(),
        expires_at: m.message_expiry.map(|s| now_secs() + s as u64),
        publisher: original.publisher.clone(),
        origin: original.origin.clone(),
        received: original.received,
    };
    match unfit(
        &replaced.topic,
        &replaced.payload,
        &replaced.properties,
        max_packet,
    ) {
        Some(why) => bad(why),
        None => Ok(replaced),
    }
}

/// Why a replacement cannot be sent: larger than the maximum packet size, or not the
/// UTF-8 it says its payload is. Checked on a plugin's answer, and again each time a
/// reused answer is applied to another message's payload.
pub fn unfit(
    topic: &str,
    payload: &[u8],
    properties: &PropertySet,
    max_packet: usize,
) -> Option<String> {
    let size = topic.len()
        + payload.len()
        + properties
            .user_properties
            .iter()
            .map(|(k, v)| k.len() + v.len())
            .sum::<usize>();
    if size > max_packet {
        return Some(format!(
            "is {size} bytes, over the maximum packet size of {max_packet}"
        ));
    }
    if properties.payload_format_indicator == Some(1) && std::str::from_utf8(payload).is_err() {
        return Some("says its payload is UTF-8 but it is not".into());
    }
    let strings = [
        properties.content_type.as_deref().map(str::len),
        properties.response_topic.as_deref().map(str::len),
        properties.correlation_data.as_ref().map(|c| c.len()),
    ];
    let pairs = properties.user_properties.iter();
    let too_long = strings
        .into_iter()
        .flatten()
        .chain(pairs.flat_map(|(k, v)| [k.len(), v.len()]));
    if let Some(len) = too_long.filter(|l| *l > u16::MAX as usize).max() {
        return Some(format!(
            "has a property of {len} bytes; MQTT allows at most 65535"
        ));
    }
    None
}
