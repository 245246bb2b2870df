//! Producers set to their consumers' pace. A [`Backlog`] counts what waits for a
//! consumer; past its high-water mark the connections that feed it stop reading their
//! sockets (TCP then slows the clients) until it has drained to half that. So the
//! broker does not accept messages only to drop them.
//!
//! A backlog that cannot drain (its consumer is away) stops pacing: producers are not
//! held for ever, and what piles up meanwhile is bounded by its owner.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering::Relaxed};
use tokio::sync::Notify;

/// The high-water mark of a backlog made by [`Backlog::default`].
pub const DEFAULT_HIGH: u64 = 4_096;

#[derive(Debug)]
pub struct Backlog {
    waiting: AtomicU64,
    high: u64,
    /// Whether the consumer is there to drain it.
    flowing: AtomicBool,
    drained: Notify,
}

impl Default for Backlog {
    fn default() -> Self {
        Backlog::new(DEFAULT_HIGH)
    }
}

impl Backlog {
    pub fn new(high: u64) -> Backlog {
        Backlog {
            waiting: AtomicU64::new(0),
            high: high.max(2),
            flowing: AtomicBool::new(true),
            drained: Notify::new(),
        }
    }

    /// One more waits; how many wait now.
    pub fn add(&self) -> u64 {
        self.waiting.fetch_add(1, Relaxed) + 1
    }

    /// `n` fewer wait; producers held back are let go once half the mark is reached.
    pub fn remove(&self, n: u64) {
        let before = self.waiting.fetch_sub(n, Relaxed);
        let half = self.high / 2;
        if before > half && before - n <= half {
            self.drained.notify_waiters();
        }
    }

    /// How many wait (a gauge for `/metrics`).
    pub fn gauge(&self) -> &AtomicU64 {
        &self.waiting
    }

    /// Whether producers should stop until [`Backlog::drained`].
    pub fn is_over(&self) -> bool {
        self.flowing.load(Relaxed) && self.waiting.load(Relaxed) >= self.high
    }

    /// The consumer came or went. While it is away nobody is held.
    pub fn set_flowing(&self, flowing: bool) {
        self.flowing.store(flowing, Relaxed);
        self.drained.notify_waiters();
    }

    /// Completes once the consumer is there: the consumer's own side waits with what
    /// it would send, so that what piles up meanwhile piles up where it is counted.
    pub async fn flowing(&self) {
        loop {
            let notified = self.drained.notified();
            tokio::pin!(notified);
            notified.as_mut().enable();
            if self.flowing.load(Relaxed) {
                return;
            }
            notified.await;
        }
    }

    /// Completes once producers may go on: the backlog is at half its mark or below,
    /// or its consumer is away.
    pub async fn drained(&self) {
        loop {
            let notified = self.drained.notified();
            tokio::pin!(notified);
            notified.as_mut().enable();
            if !self.flowing.load(Relaxed) || self.waiting.load(Relaxed) <= self.high / 2 {
                return;
            }
            notified.await;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Arc;
    use std::time::Duration;

    #[tokio::test]
    async fn producers_wait_over_the_mark_until_half_has_drained() {
        let b = Arc::new(Backlog::new(4));
        for _ in 0..4 {
            b.add();
        }
        assert!(b.is_over());
        let waiter = tokio::spawn({
            let b = b.clone();
            async move { b.drained().await }
        });
        b.remove(1);
        tokio::time::sleep(Duration::from_millis(20)).await;
        assert!(!waiter.is_finished(), "3 of 4: still over half");
        b.remove(1);
        tokio::time::timeout(Duration::from_secs(1), waiter)
            .await
            .expect("let go at half")
            .unwrap();
        b.add();
        b.add();
        b.set_flowing(false);
        assert!(!b.is_over(), "nobody is held while the consumer is away");
        b.drained().await;
        let consumer = tokio::spawn({
            let b = b.clone();
            async move { b.flowing().await }
        });
        tokio::time::sleep(Duration::from_millis(20)).await;
        assert!(
            !consumer.is_finished(),
            "the consumer's side waits while it is away"
        );
        b.set_flowing(true);
        tokio::time::timeout(Duration::from_secs(1), consumer)
            .await
            .expect("goes on once back")
            .unwrap();
    }
}
