//! Weir: an MQTT 3.1.1 and 5.0 broker.
//!
//! Data flows one way: `listener` (sockets to byte streams) -> `codec` (bytes to
//! packets) -> `connection` (one client's protocol state) -> `hooks` (may it?) ->
//! `broker`/`router` (who wants it) -> `session` (what each client is owed, made durable
//! by `store`) -> back out through the subscriber's connection.

pub mod admin;
pub mod broker;
pub mod cluster;
pub mod codec;
pub mod config;
pub mod connection;
pub mod events;
pub mod hooks;
pub mod listener;
pub mod message;
pub mod metrics;
pub mod pace;
pub mod plugin;
pub mod router;
pub mod scaffold;
pub mod server;
pub mod session;
pub mod store;
mod sync;
pub mod sys;
pub mod testkit;

/// Topic names and filters: one implementation, shared with the plugin SDK.
pub use weir_protocol::topic;

/// The maps on the path of every message (sessions by client id, the topic trie,
/// in-flight packet ids) hash with foldhash: several times cheaper than SipHash, and
/// still randomly seeded per process, so clients cannot choose colliding topics or ids.
pub(crate) type FastMap<K, V> = std::collections::HashMap<K, V, foldhash::fast::RandomState>;
pub(crate) type FastSet<K> = std::collections::HashSet<K, foldhash::fast::RandomState>;

/// Lower-case hex of `bytes` (digests in logs, API answers and NATS names).
pub(crate) fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// The bytes [`hex`] wrote; `None` for anything else.
pub(crate) fn unhex(s: &str) -> Option<Vec<u8>> {
    if !s.len().is_multiple_of(2) {
        return None;
    }
    (0..s.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(s.get(i..i + 2)?, 16).ok())
        .collect()
}

#[cfg(test)]
#[test]
fn hex_round_trips() {
    assert_eq!(unhex(&hex(&[0, 1, 254, 255])), Some(vec![0, 1, 254, 255]));
    assert_eq!(unhex("abc"), None);
    assert_eq!(unhex("zz"), None);
}
