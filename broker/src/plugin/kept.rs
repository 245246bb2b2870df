//! What one connection keeps of the chain's answers: reusable answers it was given and
//! what is left of its rate-limit leases, so that a message the chain already answered
//! costs a lookup in memory only this connection's thread touches.
//!
//! The shared cache (`answers`) is still where a reusable answer goes first and where a
//! connection looks when it has none of its own: it serves deliveries to stored
//! sessions and a client that reconnects. Reading it for every message, though, moved
//! its cache lines between the cores on each lookup, and it took a quarter of the
//! broker's time under the plugins bench. A lease is kept here only: it is a budget
//! the limiter prepaid, and one copy of it is what makes it a bound.
//!
//! Everything is tagged with the chain's generation, which every load, reload,
//! reconfiguration and enable/disable advances; a connection that sees another
//! generation forgets all it kept, as the shared cache forgets a replaced version.

use super::answers::{clock, Answer, Question};
use crate::FastMap;
use std::hash::{BuildHasher, Hash, Hasher};
use std::sync::LazyLock;

/// Answers per plugin per connection before they are forgotten: a device publishes to
/// a handful of topics; one that publishes to thousands asks the shared cache instead.
const CAPACITY: usize = 64;

#[derive(Default)]
pub struct Kept {
    generation: u64,
    /// By position in the chain.
    plugins: Vec<Own>,
}

#[derive(Default)]
struct Own {
    lease: Option<Lease>,
    answers: FastMap<u64, Entry>,
}

/// Publishes the limiter was paid for in advance.
struct Lease {
    events: u32,
    bytes: u64,
    /// On the answers' clock.
    until_ms: u64,
}

struct Entry {
    topic: Box<str>,
    question: Question,
    answer: Answer,
    until_ms: u64,
}

fn key(topic: &str, q: Question) -> u64 {
    static SEED: LazyLock<foldhash::fast::RandomState> = LazyLock::new(Default::default);
    let mut h = SEED.build_hasher();
    topic.hash(&mut h);
    q.hash(&mut h);
    h.finish()
}

impl Kept {
    /// Forgets everything if the chain changed since it was kept; `plugins` is the
    /// chain's length.
    pub fn check(&mut self, generation: u64, plugins: usize) {
        if self.generation != generation || self.plugins.len() != plugins {
            self.generation = generation;
            self.plugins.clear();
            self.plugins.resize_with(plugins, Own::default);
        }
    }

    fn own(&mut self, plugin: usize) -> Option<&mut Own> {
        self.plugins.get_mut(plugin)
    }

    /// The answer the plugin at `plugin` gave this connection to `q` on `topic`, if it
    /// may still be reused.
    pub fn get(&mut self, plugin: usize, topic: &str, q: Question) -> Option<&Answer> {
        let own = self.own(plugin)?;
        let e = own.answers.get(&key(topic, q))?;
        (e.until_ms > clock() && e.question == q && &*e.topic == topic).then_some(&e.answer)
    }

    pub fn put(&mut self, plugin: usize, topic: &str, q: Question, answer: Answer, until_ms: u64) {
        let Some(own) = self.own(plugin) else {
            return;
        };
        let k = key(topic, q);
        if own.answers.len() >= CAPACITY && !own.answers.contains_key(&k) {
            own.answers.clear();
        }
        let entry = Entry {
            topic: topic.into(),
            question: q,
            answer,
            until_ms,
        };
        own.answers.insert(k, entry);
    }

    /// Uses one publish of `bytes` from the plugin's lease, if one covers it. A lease
    /// that cannot cover it is over: the limiter is asked, and may lease again.
    pub fn take_lease(&mut self, plugin: usize, bytes: u64) -> bool {
        let Some(own) = self.own(plugin) else {
            return false;
        };
        match &mut own.lease {
            Some(l) if l.events > 0 && l.bytes >= bytes && l.until_ms > clock() => {
                l.events -= 1;
                l.bytes -= bytes;
                true
            }
            Some(_) => {
                own.lease = None;
                false
            }
            None => false,
        }
    }

    pub fn lease(&mut self, plugin: usize, events: u32, bytes: u64, until_ms: u64) {
        if let Some(own) = self.own(plugin) {
            own.lease = Some(Lease {
                events,
                bytes,
                until_ms,
            });
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::codec::QoS;
    use crate::hooks::{Action, Decision};

    const Q: Question = Question::Authorize(Action::Publish, QoS::AtMostOnce, false);

    #[test]
    fn a_new_generation_forgets_answers_and_leases() {
        let mut k = Kept::default();
        k.check(1, 2);
        let far = clock() + 60_000;
        k.put(1, "a/b", Q, Answer::Authorize(Some(Decision::Allow)), far);
        k.lease(0, 5, 100, far);
        assert_eq!(
            k.get(1, "a/b", Q),
            Some(&Answer::Authorize(Some(Decision::Allow)))
        );
        assert!(k.get(1, "a/c", Q).is_none(), "another topic");
        assert!(k.get(0, "a/b", Q).is_none(), "another plugin");
        k.check(1, 2);
        assert!(k.take_lease(0, 10));
        k.check(2, 2);
        assert!(k.get(1, "a/b", Q).is_none());
        assert!(!k.take_lease(0, 10));
    }

    #[test]
    fn a_lease_ends_when_it_cannot_cover_a_publish() {
        let mut k = Kept::default();
        k.check(7, 1);
        k.lease(0, 2, 100, clock() + 60_000);
        assert!(k.take_lease(0, 60));
        assert!(!k.take_lease(0, 60), "40 bytes left");
        assert!(!k.take_lease(0, 1), "the lease is over, not just short");
        k.lease(0, 1, 100, clock() + 60_000);
        assert!(k.take_lease(0, 1));
        assert!(!k.take_lease(0, 1), "no events left");
    }

    #[test]
    fn expired_answers_and_leases_are_not_used() {
        let mut k = Kept::default();
        k.check(1, 1);
        k.put(0, "t", Q, Answer::Keep, clock());
        k.lease(0, 5, 100, clock());
        assert!(k.get(0, "t", Q).is_none());
        assert!(!k.take_lease(0, 1));
    }

    #[test]
    fn a_full_plugin_slot_starts_over_instead_of_growing() {
        let mut k = Kept::default();
        k.check(1, 1);
        let far = clock() + 60_000;
        for i in 0..CAPACITY + 1 {
            k.put(0, &format!("t/{i}"), Q, Answer::Keep, far);
        }
        assert!(k.plugins[0].answers.len() <= CAPACITY);
        assert!(k.get(0, &format!("t/{CAPACITY}"), Q).is_some());
    }
}
