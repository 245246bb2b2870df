//! The application message as the broker holds it between publisher and subscribers.
//!
//! One `Arc<Message>` is shared by every subscriber queue, the retained index and the
//! store; what differs per subscriber (QoS, retain flag, subscription identifiers,
//! packet identifier, topic alias) lives in [`Delivery`] or is decided when encoding.

use crate::codec::{Properties, Publish, QoS};
use bytes::Bytes;
use std::sync::Arc;
use std::time::{SystemTime, UNIX_EPOCH};

/// Seconds since the Unix epoch: absolute times survive a restart, `Instant` does not.
pub fn now_secs() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

/// [`now_secs`] as a thread of its own last read it (ten times a second): for a time
/// taken per message where a second's precision is plenty, without a clock call for
/// each (one was a twentieth of what a node spent forwarding a QoS 0 message).
pub fn coarse_secs() -> u64 {
    use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
    static NOW: AtomicU64 = AtomicU64::new(0);
    static TICKING: std::sync::Once = std::sync::Once::new();
    TICKING.call_once(|| {
        NOW.store(now_secs(), Relaxed);
        let ticking = std::thread::Builder::new().name("weir-clock".into());
        let started = ticking.spawn(|| loop {
            std::thread::sleep(std::time::Duration::from_millis(100));
            NOW.store(now_secs(), Relaxed);
        });
        if let Err(e) = started {
            tracing::warn!(error = %e, "no clock thread: message times stay at startup");
        }
    });
    NOW.load(Relaxed)
}

#[derive(Debug, Clone, PartialEq)]
pub struct Message {
    pub topic: Arc<str>,
    pub payload: Bytes,
    pub qos: QoS,
    pub retain: bool,
    /// The properties forwarded unchanged: payload format, content type, response topic,
    /// correlation data, user properties. Expiry is kept absolute in `expires_at`.
    pub properties: Properties,
    /// Unix seconds after which the message must not be sent; `None` never expires.
    pub expires_at: Option<u64>,
    /// Who published it, for No Local. Not persisted: only routing needs it.
    pub publisher: Option<Arc<str>>,
    /// In cluster mode, the node it was published on and its number there: how a
    /// session moving between nodes tells a message it already has from a new one.
    pub origin: Option<Origin>,
    /// When its PUBLISH was read from a client of this node: where the delivery
    /// latency histogram starts. `None` for what a store, the retained index or
    /// another node gave back, whose wait is not the broker's speed.
    pub received: Option<std::time::Instant>,
}

/// Where in the cluster a message was published: the node, and the number the node
/// gave it (growing in the order it published). The two name the message; `at` comes
/// with them.
#[derive(Debug, Clone)]
pub struct Origin {
    pub node: Arc<str>,
    pub seq: u64,
    /// Unix seconds of the publish, by the publishing node's clock: how far back a node
    /// that resumes a session whose node died reads the cluster's stream for what it
    /// still owes.
    pub at: u64,
}

impl PartialEq for Origin {
    fn eq(&self, other: &Self) -> bool {
        self.seq == other.seq && self.node == other.node
    }
}

impl Eq for Origin {}

impl std::hash::Hash for Origin {
    fn hash<H: std::hash::Hasher>(&self, h: &mut H) {
        self.node.hash(h);
        self.seq.hash(h);
    }
}

impl Message {
    /// Builds the routed message from an inbound PUBLISH (topic alias already resolved).
    pub fn from_publish(p: Publish, publisher: Option<Arc<str>>) -> Message {
        let mut properties = p.properties;
        let mut expires_at = None;
        if let Some(set) = properties.get_mut() {
            expires_at = set
                .message_expiry_interval
                .take()
                .map(|s| now_secs() + s as u64);
            set.topic_alias = None;
            set.subscription_identifiers.clear();
        }
        let properties = properties.compact();
        Message {
            topic: p.topic,
            payload: p.payload,
            qos: p.qos,
            retain: p.retain,
            properties,
            expires_at,
            publisher,
            origin: None,
            received: None,
        }
    }

    pub fn is_expired(&self, now: u64) -> bool {
        self.expires_at.is_some_and(|t| now >= t)
    }

    /// [`Message::remaining_expiry`] now, reading the clock only for a message that
    /// expires.
    pub fn remaining_expiry_now(&self) -> Option<u32> {
        self.expires_at
            .and_then(|_| self.remaining_expiry(now_secs()))
    }

    /// Seconds left, for the Message Expiry Interval sent onward (MQTT-3.3.2-6).
    pub fn remaining_expiry(&self, now: u64) -> Option<u32> {
        self.expires_at
            .map(|t| t.saturating_sub(now).min(u32::MAX as u64) as u32)
    }
}

/// One message owed to one session.
#[derive(Debug, Clone)]
pub struct Delivery {
    pub message: Arc<Message>,
    /// min(published QoS, granted QoS).
    pub qos: QoS,
    pub retain: bool,
    pub subscription_ids: Vec<u32>,
    /// Key of the stored copy when the session is persistent and QoS > 0.
    pub store_seq: Option<u64>,
}
