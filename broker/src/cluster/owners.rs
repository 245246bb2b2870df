//! Who holds a client id's connection, cluster-wide: one entry per client id in the
//! JetStream key-value bucket `weir_owners`, naming the node and connection. A node
//! whose client connects writes the entry by compare-and-swap on its revision, so of
//! two nodes racing for one client id exactly one write comes last; every node watches
//! the bucket and disconnects its own connection of a client id (DISCONNECT 0x8E) once
//! the bucket names a later owner elsewhere.
//!
//! A node's own claim counts from the moment its client attached, before its write is
//! in: a watcher event older than that write must not disconnect the connection that is
//! about to be written as the owner. The CONNACK waits for the write, so a client that
//! connects to another node after it always takes the client id over.

use super::fanout::Out;
use super::records;
use super::tickets::Tickets;
use super::wills::Change;
use super::Arrivals;
use crate::message::Message;
use crate::session::{Announced, BoxFuture, Claim, Directory, Moving, Session, Sessions};
use crate::sync;
use async_nats::jetstream::kv;
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::sync::mpsc;

/// How long a CONNACK waits, at most, for its client id's claim to be written.
const CLAIM_WAIT: Duration = Duration::from_secs(2);

/// The bucket of owners.
pub const OWNERS_BUCKET: &str = "weir_owners";

pub(super) fn bucket_config(replicas: usize) -> kv::Config {
    kv::Config {
        bucket: OWNERS_BUCKET.into(),
        history: 1,
        num_replicas: replicas,
        ..Default::default()
    }
}

/// A bucket key for a client id, which may hold characters keys may not.
pub(super) fn key(client_id: &str) -> String {
    crate::hex(&Sha256::digest(client_id.as_bytes())[..16])
}

#[derive(Serialize, Deserialize)]
struct Owner {
    client: String,
    node: String,
    conn: u64,
}

/// This node's claims: attached but not yet written, or written at a revision.
#[derive(Default)]
pub(super) struct Claims {
    by_client: Mutex<HashMap<Arc<str>, Option<u64>>>,
}

impl Claims {
    fn pending(&self, client_id: &Arc<str>) {
        sync::lock(&self.by_client).insert(client_id.clone(), None);
    }

    fn written(&self, client_id: &Arc<str>, revision: u64) {
        let mut claims = sync::lock(&self.by_client);
        if let Some(c) = claims.get_mut(client_id) {
            *c = Some(c.map_or(revision, |r| r.max(revision)));
        }
    }

    /// Whether an owner elsewhere at `revision` is newer than this node's claim; if
    /// so the claim is given up.
    fn superseded(&self, client_id: &str, revision: u64) -> bool {
        let mut claims = sync::lock(&self.by_client);
        match claims.get(client_id) {
            Some(None) => false,
            Some(Some(mine)) if *mine >= revision => false,
            Some(Some(_)) => {
                claims.remove(client_id);
                true
            }
            None => true,
        }
    }
}

/// The cluster's [`Directory`]: this node's sessions, and the client ids claimed
/// cluster-wide as their clients attach here.
pub struct ClusterDirectory {
    pub(super) local: Arc<Sessions>,
    pub(super) claims: Arc<Claims>,
    pub(super) outbox: mpsc::UnboundedSender<Out>,
    pub(super) wills: mpsc::UnboundedSender<Change>,
    /// Session records ([`super::records`]) and the tickets their writes hold.
    pub(super) records: (mpsc::UnboundedSender<records::Change>, Arc<Tickets>),
    pub(super) elsewhere: Elsewhere,
}

/// Where sessions held elsewhere are looked for.
pub(super) struct Elsewhere {
    pub nats: async_nats::Client,
    pub owners: kv::Store,
    pub sessions: kv::Store,
    /// Nodes' heartbeats: when a dead node was last alive.
    pub nodes: kv::Store,
    pub me: Arc<str>,
}

impl Directory for ClusterDirectory {
    fn claim(&self, client_id: &str) -> Claim<'_> {
        self.local.claim(client_id)
    }
    fn find(&self, client_id: &str) -> Option<Arc<Session>> {
        self.local.find(client_id)
    }
    fn register(&self, session: Arc<Session>) {
        self.local.register(session)
    }
    fn unregister(&self, session: &Arc<Session>) -> bool {
        let gone = self.local.unregister(session);
        if gone {
            let change = records::Change::Gone(session.client_id().clone());
            let _ = self.records.0.send(change);
        }
        gone
    }
    fn all(&self) -> Vec<Arc<Session>> {
        self.local.all()
    }
    fn count(&self) -> usize {
        self.local.count()
    }
    /// Without NATS no other node can see the claim, nor take the client id over, so
    /// the CONNACK waits only while NATS is there (and [`CLAIM_WAIT`] at most).
    fn announce(&self, client_id: &Arc<str>, conn_id: u64) -> Announced {
        self.claims.pending(client_id);
        let (written, claimed) = tokio::sync::oneshot::channel();
        let _ = self
            .outbox
            .send(Out::Own(client_id.clone(), conn_id, written));
        let state = self.elsewhere.nats.connection_state();
        if state != async_nats::connection::State::Connected {
            return None;
        }
        let client_id = client_id.clone();
        Some(Box::pin(async move {
            if tokio::time::timeout(CLAIM_WAIT, claimed).await.is_err() {
                tracing::warn!(client_id = %client_id,
                    "the client id's claim is not in NATS yet; the client is let in regardless");
            }
        }))
    }
    fn keep_will(&self, client_id: &Arc<str>, conn_id: u64, will: Option<(Arc<Message>, u32)>) {
        let _ = self.wills.send(Change::Attached {
            client: client_id.clone(),
            conn: conn_id,
            will,
        });
    }
    /// Asks the node the owners bucket names for the client id; if that node does not
    /// answer, resumes the session from its record. So too if that node (or this one)
    /// holds no session but the record says it did: it restarted without its store.
    fn fetch(&self, client_id: &Arc<str>) -> BoxFuture<'_, Option<Moving>> {
        let client_id = client_id.clone();
        Box::pin(async move {
            let e = &self.elsewhere;
            let entry = e.owners.get(key(&client_id)).await.ok()??;
            let owner = serde_json::from_slice::<Owner>(&entry).ok()?;
            let mut only_of = Some(owner.node.as_str());
            if *owner.node != *e.me {
                let node = owner.node.clone();
                match super::handover::fetch(e.nats.clone(), node, client_id.clone()).await {
                    Ok(Some(moving)) => return Some(moving),
                    Ok(None) => {}
                    Err(error) => {
                        tracing::warn!(client_id = %client_id, node = %owner.node, %error,
                            "the node that held the session does not answer; resuming it from its record");
                        only_of = None;
                    }
                }
            }
            records::resume(e, client_id, only_of).await
        })
    }
    fn record(&self, session: &Session) -> bool {
        let (changes, tickets) = &self.records;
        changes.send(records::kept(session, tickets)).is_ok()
    }
    fn settle_will(&self, client_id: &Arc<str>, conn_id: Option<u64>) {
        let _ = self.wills.send(Change::Settled {
            client: client_id.clone(),
            conn: conn_id,
        });
    }
}

/// Writes this node as the owner of `client_id`, whatever the entry said before.
pub(super) async fn own(
    store: &kv::Store,
    claims: &Claims,
    node: &str,
    client_id: Arc<str>,
    conn: u64,
) {
    let value = Owner {
        client: client_id.to_string(),
        node: node.to_owned(),
        conn,
    };
    let Ok(value) = serde_json::to_vec(&value) else {
        return;
    };
    let key = key(&client_id);
    let mut delay = Duration::from_millis(10);
    loop {
        let written = match store.entry(key.as_str()).await {
            Ok(Some(e)) => store
                .update(key.as_str(), value.clone().into(), e.revision)
                .await
                .map_err(|e| e.to_string()),
            Ok(None) => store
                .create(key.as_str(), value.clone().into())
                .await
                .map_err(|e| e.to_string()),
            Err(e) => Err(e.to_string()),
        };
        match written {
            Ok(revision) => {
                claims.written(&client_id, revision);
                return;
            }
            // Another node wrote in between (or NATS is away): read again and retry.
            Err(e) => {
                tracing::debug!(error = %e, client_id = %client_id, "claiming a client id again");
                tokio::time::sleep(delay).await;
                delay = (delay * 2).min(Duration::from_secs(1));
            }
        }
    }
}

/// Watches the bucket for as long as the process runs, and hands over the client ids
/// another node has taken.
pub(super) async fn watch(
    store: kv::Store,
    claims: Arc<Claims>,
    node: Arc<str>,
    arrivals: Arc<dyn Arrivals>,
) {
    super::follow(store, OWNERS_BUCKET, |entry| {
        if entry.operation != kv::Operation::Put {
            return;
        }
        let Ok(owner) = serde_json::from_slice::<Owner>(&entry.value) else {
            return;
        };
        if *owner.node != *node && claims.superseded(&owner.client, entry.revision) {
            arrivals.taken_over(&owner.client);
        }
    })
    .await
}
