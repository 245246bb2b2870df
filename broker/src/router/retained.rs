use crate::message::{now_secs, Message};
use crate::sync::{read, write};
use crate::topic;
use crate::FastMap;
use std::sync::{Arc, RwLock};

/// The last retained message of each topic.
///
/// Matching on subscribe scans every retained topic; subscribes are rare next to
/// publishes, and a scan keeps the publish path to one hash insert.
#[derive(Default)]
pub struct Retained {
    map: RwLock<FastMap<Arc<str>, Arc<Message>>>,
}

impl Retained {
    /// Stores the message, or deletes the topic's retained message when the payload is
    /// empty (MQTT-3.3.1-6).
    pub fn set(&self, msg: Arc<Message>) {
        let mut map = write(&self.map);
        if msg.payload.is_empty() {
            map.remove(&msg.topic);
        } else {
            map.insert(msg.topic.clone(), msg);
        }
    }

    /// Deletes the topic's retained message.
    pub fn remove(&self, topic: &str) {
        write(&self.map).remove(topic);
    }

    /// Unexpired retained messages matching `filter`.
    pub fn matching(&self, filter: &str) -> Vec<Arc<Message>> {
        let now = now_secs();
        let map = read(&self.map);
        map.values()
            .filter(|m| !m.is_expired(now) && topic::matches(filter, &m.topic))
            .cloned()
            .collect()
    }

    /// Drops expired messages; returns their topics so the store can forget them too.
    pub fn purge_expired(&self) -> Vec<Arc<str>> {
        let now = now_secs();
        let mut map = write(&self.map);
        let gone: Vec<Arc<str>> = map
            .values()
            .filter(|m| m.is_expired(now))
            .map(|m| m.topic.clone())
            .collect();
        for t in &gone {
            map.remove(t);
        }
        gone
    }

    pub fn len(&self) -> usize {
        read(&self.map).len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}
