//! Wills that outlive their node. A node that dies (`kill -9`, a lost machine) cannot
//! publish the wills of its clients; the nodes that survive it do, once each.
//!
//! Two JetStream key-value buckets hold what that needs. In `weir_nodes` every node
//! beats (its name, and the incarnation it is in: the process's start time) four times
//! per `cluster.liveness_secs`. In `weir_wills` a node keeps the will of each connection
//! it holds, from the CONNECT until the will is settled here (published, dropped by a
//! normal DISCONNECT, or cancelled by a reconnect).
//!
//! Every node follows both buckets. A will whose node has been silent for
//! `liveness_secs`, or has restarted since, is due once its will delay has passed
//! (counted from when the node was first seen dead); the surviving nodes then purge
//! the entry by compare-and-swap on its revision, and the one whose purge succeeds
//! publishes the will. However many nodes survive, exactly one purge succeeds.

use super::Arrivals;
use crate::message::Message;
use crate::store::{decode_message, encode_message};
use async_nats::jetstream::kv;
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tokio::sync::mpsc;

/// Wills kept by the node holding their connection.
pub const WILLS_BUCKET: &str = "weir_wills";
/// Each node's heartbeat.
pub const NODES_BUCKET: &str = "weir_nodes";

pub(super) fn bucket_configs(replicas: usize) -> [kv::Config; 2] {
    [WILLS_BUCKET, NODES_BUCKET].map(|bucket| kv::Config {
        bucket: bucket.into(),
        history: 1,
        num_replicas: replicas,
        ..Default::default()
    })
}

/// One node's heartbeat.
#[derive(Serialize, Deserialize)]
struct Beat {
    node: String,
    life: u64,
}

/// A will as the bucket keeps it.
#[derive(Serialize, Deserialize, Clone)]
struct Kept {
    client: String,
    node: String,
    life: u64,
    conn: u64,
    /// Seconds after the node is found dead: the will delay, or the session expiry
    /// interval if that is shorter (the session ends first).
    delay: u32,
    /// The message in the store's record encoding, hex.
    message: String,
}

/// What the broker tells the will keeper.
pub(super) enum Change {
    /// The connection `conn` of `client` attached here, with its will and delay or
    /// without one: what this node kept for the client is replaced, and delayed wills
    /// other nodes keep for it are cancelled (the client is back).
    Attached {
        client: Arc<str>,
        conn: u64,
        will: Option<(Arc<Message>, u32)>,
    },
    /// This node settled the will of `client`'s connection `conn` (`None`: whichever
    /// connection it kept one for): published or dropped.
    Settled { client: Arc<str>, conn: Option<u64> },
}

/// This node in the buckets.
#[derive(Clone)]
pub(super) struct Me {
    pub node: Arc<str>,
    /// Milliseconds since the epoch when this process started: a restarted node is a
    /// new incarnation, and what the old one kept is left to the survivors.
    pub life: u64,
    pub liveness: Duration,
}

impl Me {
    fn key(&self, client: &str) -> String {
        let client = crate::hex(&Sha256::digest(client.as_bytes())[..16]);
        let life = Sha256::digest(format!("{}:{}", self.node, self.life).as_bytes());
        format!("{client}.{}", crate::hex(&life[..8]))
    }
}

/// What a node knows of the buckets, as it follows them.
pub(super) struct Book {
    started: Instant,
    /// Each node's incarnation and when its last beat arrived.
    beats: HashMap<String, (u64, Instant)>,
    wills: HashMap<String, (Kept, u64)>,
    /// When each will was first seen left by a dead node.
    orphaned: HashMap<String, Instant>,
}

impl Default for Book {
    fn default() -> Self {
        Book {
            started: Instant::now(),
            beats: HashMap::new(),
            wills: HashMap::new(),
            orphaned: HashMap::new(),
        }
    }
}

impl Book {
    fn is_dead(&self, k: &Kept, me: &Me) -> bool {
        if *k.node == *me.node && k.life == me.life {
            return false;
        }
        match self.beats.get(&k.node) {
            Some((life, at)) => *life != k.life || at.elapsed() > me.liveness,
            // Never seen beating: only once this node has followed the bucket as long.
            None => self.started.elapsed() > me.liveness,
        }
    }

    /// Wills of dead nodes whose delay has passed: key, entry, revision.
    fn due(&mut self, me: &Me) -> Vec<(String, Kept, u64)> {
        let now = Instant::now();
        let mut due = Vec::new();
        let dead: Vec<_> = (self.wills.iter())
            .filter(|(_, (k, _))| self.is_dead(k, me))
            .map(|(key, (k, rev))| (key.clone(), k.clone(), *rev))
            .collect();
        for (key, k, rev) in dead {
            let since = *self.orphaned.entry(key.clone()).or_insert(now);
            if now >= since + Duration::from_secs(k.delay as u64) {
                due.push((key, k, rev));
            }
        }
        due
    }

    /// Delayed wills of `client` that other nodes (or this one's earlier incarnations)
    /// keep: cancelled by its return. A node that is alive cancels its own copy too when
    /// it learns the client was taken over; one that is dead, or about to be found
    /// so, cannot.
    fn cancelled_by_return(&self, client: &str, me: &Me) -> Vec<(String, u64)> {
        let mine = |k: &Kept| *k.node == *me.node && k.life == me.life;
        (self.wills.iter())
            .filter(|(_, (k, _))| k.client == client && k.delay > 0 && !mine(k))
            .map(|(key, (_, rev))| (key.clone(), *rev))
            .collect()
    }
}

/// Runs until the process ends: beats, follows both buckets, keeps this node's wills
/// as the broker reports changes, and publishes the wills of dead nodes.
pub(super) fn start(
    wills: kv::Store,
    nodes: kv::Store,
    me: Me,
    changes: mpsc::UnboundedReceiver<Change>,
    arrivals: Arc<dyn Arrivals>,
) {
    let book = Arc::new(Mutex::new(Book::default()));
    tokio::spawn(beat(nodes.clone(), me.clone()));
    tokio::spawn(follow_beats(nodes, book.clone()));
    tokio::spawn(follow_wills(wills.clone(), book.clone()));
    tokio::spawn(keep(wills.clone(), book.clone(), me.clone(), changes));
    tokio::spawn(publish_orphans(wills, book, me, arrivals));
}

async fn beat(nodes: kv::Store, me: Me) {
    let beat = Beat {
        node: me.node.to_string(),
        life: me.life,
    };
    let Ok(value) = serde_json::to_vec(&beat) else {
        return;
    };
    let mut every = tokio::time::interval(me.liveness / 4);
    loop {
        every.tick().await;
        if let Err(e) = nodes.put(&*me.node, value.clone().into()).await {
            tracing::warn!(error = %e, "cannot beat in the cluster: other nodes may take this one for dead");
        }
    }
}

async fn follow_beats(nodes: kv::Store, book: Arc<Mutex<Book>>) {
    super::follow(nodes, NODES_BUCKET, |entry| {
        if let Ok(b) = serde_json::from_slice::<Beat>(&entry.value) {
            let mut book = crate::sync::lock(&book);
            book.beats.insert(b.node, (b.life, Instant::now()));
        }
    })
    .await
}

async fn follow_wills(wills: kv::Store, book: Arc<Mutex<Book>>) {
    super::follow(wills, WILLS_BUCKET, |entry| {
        let mut book = crate::sync::lock(&book);
        let kept = (entry.operation == kv::Operation::Put)
            .then(|| serde_json::from_slice::<Kept>(&entry.value).ok())
            .flatten();
        match kept {
            Some(k) => book.wills.insert(entry.key, (k, entry.revision)),
            None => {
                book.orphaned.remove(&entry.key);
                book.wills.remove(&entry.key)
            }
        };
    })
    .await
}

/// Carries out the broker's changes in order, each until NATS takes it.
async fn keep(
    wills: kv::Store,
    book: Arc<Mutex<Book>>,
    me: Me,
    mut changes: mpsc::UnboundedReceiver<Change>,
) {
    // The connection each client's entry of this node is for.
    let mut mine: HashMap<Arc<str>, u64> = HashMap::new();
    while let Some(change) = changes.recv().await {
        match change {
            Change::Attached { client, conn, will } => {
                let cancelled = crate::sync::lock(&book).cancelled_by_return(&client, &me);
                for (key, rev) in cancelled {
                    let _ = wills.purge_expect_revision(&key, Some(rev)).await;
                }
                match will.and_then(|(m, delay)| kept(&me, &client, conn, &m, delay)) {
                    Some(value) => {
                        mine.insert(client.clone(), conn);
                        retry(|| wills.put(me.key(&client), value.clone().into())).await;
                    }
                    None if mine.remove(&client).is_some() => {
                        retry(|| wills.purge(me.key(&client))).await;
                    }
                    None => {}
                }
            }
            Change::Settled { client, conn } => {
                if conn.is_none_or(|c| mine.get(&client) == Some(&c))
                    && mine.remove(&client).is_some()
                {
                    retry(|| wills.purge(me.key(&client))).await;
                }
            }
        }
    }
}

fn kept(me: &Me, client: &str, conn: u64, m: &Message, delay: u32) -> Option<Vec<u8>> {
    let message = match encode_message(m) {
        Ok(b) => crate::hex(&b),
        Err(e) => {
            tracing::error!(error = %e, client_id = client, "will cannot be kept in the cluster");
            return None;
        }
    };
    let k = Kept {
        client: client.to_owned(),
        node: me.node.to_string(),
        life: me.life,
        conn,
        delay,
        message,
    };
    serde_json::to_vec(&k).ok()
}

/// Tries a bucket write until NATS takes it.
async fn retry<T, E: std::fmt::Display, F, Fut>(mut write: F)
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Result<T, E>>,
{
    let mut delay = Duration::from_millis(50);
    while let Err(e) = write().await {
        tracing::warn!(error = %e, "cannot keep a will in the cluster yet; retrying");
        tokio::time::sleep(delay).await;
        delay = (delay * 2).min(Duration::from_secs(2));
    }
}

/// Publishes the wills dead nodes left, once their delay has passed: the node whose
/// purge of the entry (at the revision it saw) succeeds is the one that publishes it.
async fn publish_orphans(
    wills: kv::Store,
    book: Arc<Mutex<Book>>,
    me: Me,
    arrivals: Arc<dyn Arrivals>,
) {
    let mut every = tokio::time::interval(Duration::from_millis(500));
    loop {
        every.tick().await;
        let due = crate::sync::lock(&book).due(&me);
        for (key, k, rev) in due {
            if wills.purge_expect_revision(&key, Some(rev)).await.is_err() {
                continue; // another node took it, or NATS is away: seen again if still there
            }
            crate::sync::lock(&book).wills.remove(&key);
            match crate::unhex(&k.message)
                .map(bytes::Bytes::from)
                .map(decode_message)
            {
                Some(Ok(msg)) => {
                    tracing::info!(client_id = %k.client, node = %k.node,
                        "publishing the will a dead node left");
                    arrivals.will(msg);
                }
                _ => tracing::error!(client_id = %k.client, node = %k.node,
                    "a will a dead node left cannot be read; dropped"),
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn me(node: &str, life: u64) -> Me {
        Me {
            node: Arc::from(node),
            life,
            liveness: Duration::from_millis(50),
        }
    }

    fn will(node: &str, life: u64, delay: u32) -> Kept {
        Kept {
            client: "c".into(),
            node: node.into(),
            life,
            conn: 1,
            delay,
            message: String::new(),
        }
    }

    #[test]
    fn a_will_is_due_once_its_node_is_silent_or_restarted_and_its_delay_passed() {
        let a = me("a", 1);
        let mut book = Book::default();
        book.beats.insert("b".into(), (7, Instant::now()));
        book.wills.insert("k1".into(), (will("b", 7, 0), 3));
        book.wills.insert("k2".into(), (will("a", 1, 0), 4));
        assert!(book.due(&a).is_empty(), "b beats and a is this node");
        book.wills.insert("k3".into(), (will("b", 6, 0), 5));
        let due = book.due(&a);
        assert_eq!(due.len(), 1, "b's earlier incarnation is dead");
        assert_eq!((due[0].0.as_str(), due[0].2), ("k3", 5));
        std::thread::sleep(Duration::from_millis(80));
        let mut keys: Vec<_> = book.due(&a).into_iter().map(|d| d.0).collect();
        keys.sort();
        assert_eq!(
            keys,
            ["k1", "k3"],
            "b fell silent; a's own will is never due"
        );
        book.wills.insert("k4".into(), (will("b", 7, 3600), 6));
        assert!(
            !book.due(&a).iter().any(|d| d.0 == "k4"),
            "delay not passed"
        );
        assert_eq!(book.cancelled_by_return("c", &a), [("k4".to_string(), 6)]);
    }
}
