//! What the Weir broker and its plugins must agree on about MQTT, in one place both
//! build: how topic names and filters are validated and matched, and the reason codes.
//!
//! The broker uses it natively; the plugin SDK re-exports it for plugins built for
//! `wasm32-wasip2`. It has no dependencies so that it costs a plugin nothing to link.

mod reason;
pub mod topic;

pub use reason::{Packet, ReasonCode};
