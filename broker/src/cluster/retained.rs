//! Retained messages, cluster-wide: one JetStream record per topic (the stream keeps
//! only the last record of each subject), which every node follows into its own index.
//! An empty record deletes the topic's retained message, and being the last record of
//! its subject it also tells a node that was away. With `replicas = 3` a retained
//! message outlives the node that stored it and any one NATS server.

use super::subject;
use super::Arrivals;
use crate::store::decode_message;
use async_nats::jetstream::{self, consumer, stream};
use futures_util::StreamExt;
use std::sync::Arc;
use std::time::Duration;

/// The stream of retained messages.
pub const RETAINED_STREAM: &str = "WEIR_RETAINED";

pub(super) fn stream_config(replicas: usize) -> stream::Config {
    stream::Config {
        name: RETAINED_STREAM.into(),
        subjects: vec![format!("{}.>", subject::RETAINED_ROOT)],
        num_replicas: replicas,
        max_messages_per_subject: 1,
        ..Default::default()
    }
}

/// Follows the stream for as long as the process runs: first the last record of every
/// topic, then each new one. After an error (NATS away) it starts over from the last
/// records, which brings the index up to date with whatever changed meanwhile.
pub(super) async fn follow(js: jetstream::Context, arrivals: Arc<dyn Arrivals>) {
    loop {
        if let Err(e) = feed(&js, &arrivals).await {
            tracing::warn!(error = %e, "lost the cluster's retained messages feed; resuming");
        }
        tokio::time::sleep(Duration::from_secs(1)).await;
    }
}

async fn feed(js: &jetstream::Context, arrivals: &Arc<dyn Arrivals>) -> Result<(), String> {
    let stream = js
        .get_stream(RETAINED_STREAM)
        .await
        .map_err(|e| e.to_string())?;
    let consumer = stream
        .create_consumer(consumer::pull::OrderedConfig {
            filter_subject: format!("{}.>", subject::RETAINED_ROOT),
            deliver_policy: consumer::DeliverPolicy::LastPerSubject,
            ..Default::default()
        })
        .await
        .map_err(|e| e.to_string())?;
    let mut records = consumer.messages().await.map_err(|e| e.to_string())?;
    while let Some(record) = records.next().await {
        let record = record.map_err(|e| e.to_string())?;
        apply(arrivals, &record.subject, record.payload.clone());
    }
    Ok(())
}

fn apply(arrivals: &Arc<dyn Arrivals>, subject: &str, body: bytes::Bytes) {
    let Some(topic) = subject::retained_topic(subject) else {
        tracing::warn!(%subject, "retained record under a subject that is not a topic");
        return;
    };
    if body.is_empty() {
        arrivals.retained(&topic, None);
        return;
    }
    match decode_message(body) {
        Ok(msg) => arrivals.retained(&topic, Some(msg)),
        Err(e) => tracing::warn!(error = %e, %topic, "undecodable retained record"),
    }
}
