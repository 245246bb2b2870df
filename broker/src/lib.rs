//! Weir: an MQTT 3.1.1 and 5.0 broker.
//!
//! Data flows one way: listener -> codec -> connection -> hooks -> router -> session ->
//! back out through the connection's writer. See `docs/architecture.md`.

pub mod codec;
pub mod topic;
