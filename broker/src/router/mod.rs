//! Who wants a topic: the subscription trie (with shared subscription groups) and the
//! retained-message index.
//!
//! Routing is read-mostly: every publish walks the trie, subscriptions change rarely.
//! Lookups take only the read side of the lock, so publishers on different threads never
//! wait for one another; only SUBSCRIBE and UNSUBSCRIBE take the write side. Nothing but
//! the walk happens under the lock: picking a shared group's member, which may call a
//! plugin, is the caller's, afterwards.

mod retained;
mod trie;

pub use retained::Retained;
pub use trie::{Matches, Router, SharedGroup, Target};

use crate::codec::SubscriptionOptions;
use crate::message::Message;
use std::sync::Arc;

/// Where a publish goes: the subscriptions that want its topic, and, in a cluster, the
/// other nodes. The broker asks only this trait; [`Router`], the topic trie, is the
/// implementation for a single process, where nothing lies beyond this process. A
/// cluster's would also tell the other nodes which filters this one wants and forward
/// what is published here to the nodes that want it.
pub trait Fanout: Send + Sync + 'static {
    /// Adds or replaces `client_id`'s subscription to `filter` (which may be
    /// `$share/group/...`, already validated).
    fn subscribe(
        &self,
        client_id: &Arc<str>,
        filter: &str,
        options: SubscriptionOptions,
        id: Option<u32>,
    ) -> Subscribed;
    /// Removes `client_id`'s subscription to `filter`; whether there was one.
    fn unsubscribe(&self, client_id: &str, filter: &str) -> bool;
    /// Collects into `out` the subscriptions of this process that match `topic`.
    fn matches(&self, topic: &str, out: &mut Matches);
    /// Sends a message published here to wherever else it must go; whether an
    /// acknowledgement of it must wait for the store's next commit.
    fn forward(&self, msg: &Arc<Message>) -> bool;
    /// The shared group `share` (`$share/group/filter`) of this process, to pick a
    /// member from.
    fn group(&self, share: &str) -> Option<SharedGroup>;
    /// Subscriptions of this process's clients.
    fn subscriptions(&self) -> usize;
    /// The message as it is routed from here: a cluster numbers what each node
    /// publishes ([`Message::origin`]); one process has no use for that.
    fn stamp(&self, msg: Arc<Message>) -> Arc<Message> {
        msg
    }
    /// What publishers wait on when it is over its mark: a cluster's backlog of
    /// messages for other nodes. One process sends nothing onward.
    fn pace(&self) -> Option<&crate::pace::Backlog> {
        None
    }
}

/// What a subscription changed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Subscribed {
    /// The client had a subscription with this filter already (it was replaced).
    pub existed: bool,
    /// The SUBACK must wait for the next commit (in a cluster: until the other nodes
    /// send this node what the filter matches).
    pub needs_sync: bool,
}

impl Fanout for Router {
    fn subscribe(
        &self,
        client_id: &Arc<str>,
        filter: &str,
        options: SubscriptionOptions,
        id: Option<u32>,
    ) -> Subscribed {
        Subscribed {
            existed: Router::subscribe(self, client_id, filter, options, id),
            needs_sync: false,
        }
    }

    fn unsubscribe(&self, client_id: &str, filter: &str) -> bool {
        Router::unsubscribe(self, client_id, filter)
    }

    fn matches(&self, topic: &str, out: &mut Matches) {
        Router::matches(self, topic, out)
    }

    /// A single process: every subscriber is in the trie already.
    fn forward(&self, _: &Arc<Message>) -> bool {
        false
    }

    fn group(&self, share: &str) -> Option<SharedGroup> {
        Router::group(self, share)
    }

    fn subscriptions(&self) -> usize {
        self.count()
    }
}
