//! Sessions that follow their client from node to node, over core NATS: a node whose
//! client reconnects without Clean Start asks the node that last held the client id
//! (the bucket `weir_owners`) for the session on the subject `weir.hand.<node>`.
//!
//! The answer comes as a run of messages to the asker's inbox, one per delivery the
//! session owes (its stored record; the origin in headers), then one that ends the run
//! with the session's record and the count: a session of any length fits NATS's
//! payload limit. The move takes two asks: `session` (the old node lets the session go
//! and sends what it owes) and, once the new node has made the subscriptions, `rest`
//! (what reached the session on the old node meanwhile; the old node ends it).

use super::Arrivals;
use crate::message::{Delivery, Message, Origin};
use crate::session::Moving;
use crate::store::{DeliveryState, SessionMeta, StoredDelivery, StoredSession};
use async_nats::{Client, HeaderMap};
use futures_util::StreamExt;
use serde::{Deserialize, Serialize};
use std::sync::Arc;
use std::time::Duration;

/// Headers naming a delivery's origin (its node and number there).
const NODE_HEADER: &str = "Weir-Node";
const SEQ_HEADER: &str = "Weir-Seq";
const AT_HEADER: &str = "Weir-At";
/// Header telling a part of an answer from its end.
const PART_HEADER: &str = "Weir-Part";
/// How long the asker waits for the first part from a node that is there but slow (NATS
/// says at once when no node listens on the subject: that one is gone).
const FIRST_PART: Duration = Duration::from_secs(5);
/// How long it waits for each further part.
const NEXT_PART: Duration = Duration::from_secs(5);
/// How long the old node keeps routing to a moving session after the new node has
/// made its subscriptions: NATS spreads a new subscription to the other servers of
/// its cluster, and messages already on their way to the old node arrive, within it.
const GRACE: Duration = Duration::from_millis(250);

fn subject(node: &str) -> String {
    format!("weir.hand.{node}")
}

#[derive(Serialize, Deserialize)]
struct Ask {
    client: String,
    step: Step,
}

#[derive(Serialize, Deserialize, Clone, Copy, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
enum Step {
    Session,
    Rest,
}

/// The last part of an answer.
#[derive(Serialize, Deserialize)]
struct End {
    /// `None`: the node holds no persistent session of the client.
    meta: Option<SessionMeta>,
    incoming: Vec<u16>,
    count: usize,
}

/// Answers other nodes' asks for this node's sessions, for as long as the process runs.
pub(super) async fn serve(client: Client, node: Arc<str>, arrivals: Arc<dyn Arrivals>) {
    let mut asks = match client.subscribe(subject(&node)).await {
        Ok(s) => s,
        Err(e) => {
            tracing::error!(error = %e, "cannot offer sessions to other nodes: clients moving from here start afresh");
            return;
        }
    };
    while let Some(m) = asks.next().await {
        let (Some(reply), Ok(ask)) = (m.reply, serde_json::from_slice::<Ask>(&m.payload)) else {
            tracing::warn!(subject = %m.subject, "unreadable ask for a session");
            continue;
        };
        let (client, arrivals) = (client.clone(), arrivals.clone());
        tokio::spawn(async move {
            let (parts, end) = match ask.step {
                Step::Session => match arrivals.hand_over(&ask.client) {
                    Some(s) => {
                        let parts = s.deliveries.into_iter().map(|(_, d)| d).collect();
                        (parts, (Some(s.meta), s.incoming))
                    }
                    None => (Vec::new(), (None, Vec::new())),
                },
                Step::Rest => {
                    tokio::time::sleep(GRACE).await;
                    let rest = arrivals.hand_over_rest(&ask.client);
                    (rest.into_iter().map(queued).collect(), (None, Vec::new()))
                }
            };
            if let Err(e) = answer(&client, reply.to_string(), parts, end).await {
                tracing::error!(error = %e, client_id = %ask.client,
                    "a session could not be sent to the node that asked for it");
            }
        });
    }
}

fn queued(d: Delivery) -> StoredDelivery {
    StoredDelivery {
        state: DeliveryState::Queued,
        qos: d.qos,
        retain: d.retain,
        subscription_ids: d.subscription_ids,
        message: Message::clone(&d.message),
    }
}

async fn answer(
    client: &Client,
    reply: String,
    parts: Vec<StoredDelivery>,
    (meta, incoming): (Option<SessionMeta>, Vec<u16>),
) -> Result<(), String> {
    let count = parts.len();
    for d in parts {
        let mut h = HeaderMap::new();
        h.insert(PART_HEADER, "d");
        if let Some(o) = &d.message.origin {
            h.insert(NODE_HEADER, &*o.node);
            h.insert(SEQ_HEADER, o.seq.to_string().as_str());
            h.insert(AT_HEADER, o.at.to_string().as_str());
        }
        let body = d.encode().map_err(|e| e.to_string())?;
        let sent = client.publish_with_headers(reply.clone(), h, body.into());
        sent.await.map_err(|e| e.to_string())?;
    }
    let end = End {
        meta,
        incoming,
        count,
    };
    let body = serde_json::to_vec(&end).map_err(|e| e.to_string())?;
    let mut h = HeaderMap::new();
    h.insert(PART_HEADER, "end");
    let sent = client.publish_with_headers(reply, h, body.into());
    sent.await.map_err(|e| e.to_string())?;
    client.flush().await.map_err(|e| e.to_string())
}

/// Asks `node` for a step of `client_id`'s move: its deliveries and the end.
async fn ask(
    client: &Client,
    node: &str,
    client_id: &str,
    step: Step,
) -> Result<(Vec<StoredDelivery>, End), String> {
    let inbox = client.new_inbox();
    let mut sub = client
        .subscribe(inbox.clone())
        .await
        .map_err(|e| e.to_string())?;
    let body = serde_json::to_vec(&Ask {
        client: client_id.to_owned(),
        step,
    })
    .map_err(|e| e.to_string())?;
    let sent = client.publish_with_reply(subject(node), inbox, body.into());
    sent.await.map_err(|e| e.to_string())?;
    let mut parts = Vec::new();
    let mut wait = FIRST_PART;
    loop {
        let m = match tokio::time::timeout(wait, sub.next()).await {
            Ok(Some(m)) => m,
            _ => return Err(format!("node {node} did not answer")),
        };
        wait = NEXT_PART;
        if m.status == Some(async_nats::StatusCode::NO_RESPONDERS) {
            return Err(format!("node {node} is not there"));
        }
        let header = |name: &str| m.headers.as_ref()?.get(name).map(|v| v.as_str().to_owned());
        if header(PART_HEADER).as_deref() == Some("end") {
            let end: End = serde_json::from_slice(&m.payload).map_err(|e| e.to_string())?;
            if end.count != parts.len() {
                return Err(format!("{} of {} parts arrived", parts.len(), end.count));
            }
            return Ok((parts, end));
        }
        let mut d = StoredDelivery::decode(m.payload.clone())?;
        let number = |name| header(name).and_then(|s| s.parse::<u64>().ok());
        d.message.origin = header(NODE_HEADER)
            .zip(number(SEQ_HEADER))
            .map(|(node, seq)| Origin {
                node: Arc::from(node),
                seq,
                at: number(AT_HEADER).unwrap_or(0),
            });
        parts.push(d);
    }
}

/// The session of `client_id` from `node`, let go there; `None` if it holds none; an
/// error if the node does not answer.
pub(super) async fn fetch(
    client: Client,
    node: String,
    client_id: Arc<str>,
) -> Result<Option<Moving>, String> {
    let (deliveries, end) = ask(&client, &node, &client_id, Step::Session).await?;
    let Some(meta) = end.meta else {
        return Ok(None);
    };
    let session = StoredSession {
        meta,
        deliveries: (1..).zip(deliveries).collect(),
        incoming: end.incoming,
    };
    let rest = Box::pin(async move {
        match ask(&client, &node, &client_id, Step::Rest).await {
            Ok((rest, _)) => rest.into_iter().map(delivery).collect(),
            Err(e) => {
                tracing::error!(client_id = %client_id, node = %node, error = %e,
                    "what reached a moving session on its old node meanwhile did not arrive");
                Vec::new()
            }
        }
    });
    Ok(Some(Moving { session, rest }))
}

fn delivery(d: StoredDelivery) -> Delivery {
    Delivery {
        message: Arc::new(d.message),
        qos: d.qos,
        retain: d.retain,
        subscription_ids: d.subscription_ids,
        store_seq: None,
    }
}
