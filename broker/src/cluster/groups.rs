//! Shared groups' QoS 1 and 2 messages: one durable JetStream consumer per group and
//! subject, on the stream `WEIR_MSGS`, that every node with members of the group pulls
//! from. JetStream hands each message to one node, and takes it back from a node that
//! does not acknowledge it within [`ACK_WAIT`] (one that died, or lost its NATS server
//! with the message on the way) to give it to another: at least once, where a NATS
//! queue group would have lost it. QoS 0 messages still go through the queue group.
//!
//! A consumer per group, not per session or subscription: a broker has few groups.
//! One that no node pulls from for [`INACTIVE`] is deleted by JetStream; a member that
//! joins a group within that time after its last member left gets what was published
//! meanwhile.

use super::fanout::Shared;
use super::{subject, Link, MESSAGES_STREAM};
use async_nats::jetstream::consumer::{pull, AckPolicy, DeliverPolicy, PullConsumer};
use futures_util::StreamExt;
use sha2::{Digest, Sha256};
use std::sync::Arc;
use std::time::Duration;

/// How long JetStream waits for a node to acknowledge a message before it gives the
/// message to another node.
pub(super) const ACK_WAIT: Duration = Duration::from_secs(30);
/// How long a group's consumer outlives the last node pulling from it.
pub(super) const INACTIVE: Duration = Duration::from_secs(120);
/// Messages handed to one node and not acknowledged yet, at most.
const MAX_ACK_PENDING: i64 = 10_000;

/// The group's consumer for its QoS 1/2 messages, made if no node has made it yet:
/// what is published once this returns reaches the group.
pub(super) async fn consumer(link: &Link, q: &Shared) -> Result<PullConsumer, String> {
    let kept = subject::kept(&q.subject);
    let name = format!(
        "{}_{}",
        q.queue,
        crate::hex(&Sha256::digest(kept.as_bytes())[..8])
    );
    let config = pull::Config {
        durable_name: Some(name.clone()),
        filter_subject: kept,
        deliver_policy: DeliverPolicy::New,
        ack_policy: AckPolicy::Explicit,
        ack_wait: ACK_WAIT,
        max_ack_pending: MAX_ACK_PENDING,
        inactive_threshold: INACTIVE,
        ..Default::default()
    };
    let stream = (link.js.get_stream(MESSAGES_STREAM).await).map_err(|e| e.to_string())?;
    (stream.get_or_create_consumer(&name, config).await).map_err(|e| e.to_string())
}

/// Hands the group's messages to this node's members and acknowledges each, for as
/// long as the interest lasts; after an error (NATS away), pulls again, making the
/// consumer again if JetStream deleted it meanwhile.
pub(super) async fn receive(link: Arc<Link>, q: Shared, first: Option<PullConsumer>) {
    let mut consumer = first;
    loop {
        let current = match consumer.take() {
            Some(c) => Ok(c),
            None => self::consumer(&link, &q).await,
        };
        match current {
            Ok(c) => pull_from(&link, &q, &c).await,
            Err(e) => {
                tracing::warn!(error = %e, share = %q.share,
                    "cannot reach the shared group's JetStream consumer; trying again")
            }
        }
        tokio::time::sleep(Duration::from_secs(1)).await;
    }
}

async fn pull_from(link: &Link, q: &Shared, consumer: &PullConsumer) {
    let mut messages = match consumer.messages().await {
        Ok(m) => m,
        Err(e) => {
            tracing::warn!(error = %e, share = %q.share, "cannot pull a shared group's messages");
            return;
        }
    };
    while let Some(m) = messages.next().await {
        match m {
            Ok(m) => {
                let (message, acker) = m.split();
                link.arrived_shared(&q.share, message);
                if let Err(e) = acker.ack().await {
                    tracing::debug!(error = %e, "a shared group's message was not acknowledged; JetStream gives it again");
                }
            }
            Err(e) => {
                tracing::debug!(error = %e, share = %q.share, "pulling a shared group's messages again");
                return;
            }
        }
    }
}
