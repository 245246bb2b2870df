//! Who wants a topic: the subscription trie (with shared subscription groups) and the
//! retained-message index.
//!
//! Routing is read-mostly: every publish walks the trie, subscriptions change rarely.
//! Lookups take only the read side of the lock, so publishers on different threads never
//! wait for one another; only SUBSCRIBE and UNSUBSCRIBE take the write side.

mod retained;
mod trie;

pub use retained::Retained;
pub use trie::{Router, Target};
