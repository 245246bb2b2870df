//! Drops the extra copies NATS sends of one message. NATS delivers a message once per
//! matching subscription of a connection, and a node's subscriptions overlap whenever
//! its clients' filters do (`t/#` and `#`): a node would route such a message twice.
//! Every message carries its node's name and a sequence number that grows in the order
//! the node sends; a window of the last [`WINDOW`] numbers per node tells a copy from a
//! new message.

use std::collections::HashMap;
use std::sync::Arc;

/// Sequence numbers remembered per sending node. All copies of one message are sent
/// back to back by the NATS server; they can only be this far apart if a node's
/// subscription tasks fall this far behind one another.
pub const WINDOW: u64 = 1 << 16;

#[derive(Default)]
pub struct Seen {
    by_node: HashMap<Arc<str>, Window>,
}

struct Window {
    highest: u64,
    bits: Vec<u64>,
}

/// What a message's number says about it.
#[derive(Debug, PartialEq, Eq)]
pub enum Arrival {
    New,
    Copy,
    /// Older than the window: delivered, as it cannot be told from a copy.
    TooOld,
}

impl Window {
    fn new() -> Window {
        Window {
            highest: 0,
            bits: vec![0; (WINDOW / 64) as usize],
        }
    }

    fn slot(seq: u64) -> (usize, u64) {
        let i = seq % WINDOW;
        ((i / 64) as usize, 1 << (i % 64))
    }

    fn arrive(&mut self, seq: u64) -> Arrival {
        if seq > self.highest {
            // Numbers skipped over are not seen yet: clear their slots.
            let from = self.highest.max(seq.saturating_sub(WINDOW)) + 1;
            for s in from..seq {
                let (w, b) = Window::slot(s);
                self.bits[w] &= !b;
            }
            self.highest = seq;
            let (w, b) = Window::slot(seq);
            self.bits[w] |= b;
            return Arrival::New;
        }
        if seq + WINDOW <= self.highest {
            return Arrival::TooOld;
        }
        let (w, b) = Window::slot(seq);
        if self.bits[w] & b != 0 {
            return Arrival::Copy;
        }
        self.bits[w] |= b;
        Arrival::New
    }
}

impl Seen {
    pub fn arrive(&mut self, node: &str, seq: u64) -> Arrival {
        if let Some(w) = self.by_node.get_mut(node) {
            return w.arrive(seq);
        }
        let mut w = Window::new();
        let a = w.arrive(seq);
        self.by_node.insert(Arc::from(node), w);
        a
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn copies_are_told_from_new_messages_per_node() {
        let mut s = Seen::default();
        assert_eq!(s.arrive("a", 1), Arrival::New);
        assert_eq!(s.arrive("a", 1), Arrival::Copy);
        assert_eq!(s.arrive("b", 1), Arrival::New);
        assert_eq!(s.arrive("a", 3), Arrival::New);
        assert_eq!(s.arrive("a", 2), Arrival::New, "late, but not seen before");
        assert_eq!(s.arrive("a", 2), Arrival::Copy);
        assert_eq!(s.arrive("a", 3), Arrival::Copy);
        let far = 3 + WINDOW * 3;
        assert_eq!(s.arrive("a", far), Arrival::New);
        assert_eq!(
            s.arrive("a", far - 1),
            Arrival::New,
            "slot cleared when skipped"
        );
        assert_eq!(s.arrive("a", 3), Arrival::TooOld);
        assert_eq!(s.arrive("a", far - WINDOW + 1), Arrival::New);
    }
}
