//! The in-flight window: outgoing QoS 1/2 messages a client has not acknowledged yet.
//!
//! Every acknowledgement looks a message up by packet id, and with many subscribers
//! that lookup touches a different session's window each time, so it is usually a cache
//! miss. The broker chooses the packet ids, so it chooses them to be slot indexes: the
//! window is a vector indexed by packet id, and acknowledged ids are reused oldest
//! first. A client that acknowledges in order walks the vector sequentially, which the
//! hardware prefetches, and no hashing or probing is involved. The vector only grows to
//! the most messages ever in flight at once (bounded by the Receive Maximum), and the
//! order of sending, which resends must keep (MQTT-4.6.0-1), is a sequence number.

use crate::message::Delivery;
use std::collections::VecDeque;

/// An outgoing QoS 1/2 message waiting for the client's acknowledgement.
#[derive(Debug, Clone)]
pub struct Inflight {
    pub delivery: Delivery,
    /// Position in the order of sending: resends must keep it, and packet ids, which
    /// are reused, do not.
    pub sent: u64,
    /// QoS 2: PUBREC received and PUBREL sent; only PUBCOMP is awaited.
    pub released: bool,
}

#[derive(Debug, Default)]
pub struct InflightWindow {
    /// `slots[pid - 1]` is the message in flight under `pid`, if any.
    slots: Vec<Option<Inflight>>,
    /// Packet ids up to `slots.len()` that are not in use, the longest unused first.
    free: VecDeque<u16>,
    live: usize,
    next_sent: u64,
}

impl InflightWindow {
    /// Messages in flight.
    pub fn len(&self) -> usize {
        self.live
    }

    pub fn is_empty(&self) -> bool {
        self.live == 0
    }

    /// Every message in flight, in no particular order.
    pub fn deliveries(&self) -> impl Iterator<Item = &Delivery> {
        self.slots.iter().flatten().map(|f| &f.delivery)
    }

    pub fn get(&self, pid: u16) -> Option<&Inflight> {
        self.slots.get(index(pid)?)?.as_ref()
    }

    pub fn get_mut(&mut self, pid: u16) -> Option<&mut Inflight> {
        self.slots.get_mut(index(pid)?)?.as_mut()
    }

    /// Puts a delivery in flight, last in the order of sending, under a packet id the
    /// window picks. `None` when all 65 535 ids are in use.
    pub fn push(&mut self, delivery: Delivery) -> Option<u16> {
        let pid = match self.free.pop_front() {
            Some(pid) => pid,
            None if self.slots.len() < u16::MAX as usize => {
                self.slots.push(None);
                self.slots.len() as u16
            }
            None => return None,
        };
        let sent = self.next_sent;
        self.next_sent += 1;
        self.slots[pid as usize - 1] = Some(Inflight {
            delivery,
            sent,
            released: false,
        });
        self.live += 1;
        Some(pid)
    }

    /// The acknowledgement for `pid` arrived: the message is done and its id free.
    pub fn remove(&mut self, pid: u16) -> Option<Inflight> {
        let f = self.slots.get_mut(index(pid)?)?.take()?;
        self.free.push_back(pid);
        self.live -= 1;
        Some(f)
    }

    /// Packet ids in flight, in the order their messages were first sent.
    pub fn in_order_of_sending(&self) -> Vec<u16> {
        let mut order: Vec<(u64, u16)> = self
            .slots
            .iter()
            .enumerate()
            .filter_map(|(i, s)| s.as_ref().map(|f| (f.sent, i as u16 + 1)))
            .collect();
        order.sort_unstable();
        order.into_iter().map(|(_, pid)| pid).collect()
    }

    /// Rebuilds the window from the store: `(pid, delivery, released)` in the order of
    /// sending. Ids are kept, since resends must use them (MQTT-4.4.0-1). A packet id
    /// that appears twice keeps its last message.
    pub fn restore(&mut self, entries: Vec<(u16, Delivery, bool)>) {
        let top = entries.iter().map(|(pid, ..)| *pid).max().unwrap_or(0) as usize;
        if top > self.slots.len() {
            self.slots.resize_with(top, || None);
        }
        for (pid, delivery, released) in entries {
            let Some(i) = index(pid) else { continue };
            let sent = self.next_sent;
            self.next_sent += 1;
            let previous = self.slots[i].replace(Inflight {
                delivery,
                sent,
                released,
            });
            if previous.is_none() {
                self.live += 1;
            }
        }
        self.free = (1..=self.slots.len() as u16)
            .filter(|pid| self.slots[*pid as usize - 1].is_none())
            .collect();
    }

    /// Forgets everything in flight (a session that ends) and gives the memory back.
    pub fn clear(&mut self) {
        *self = InflightWindow {
            next_sent: self.next_sent,
            ..InflightWindow::default()
        };
    }
}

/// The slot of a packet id; id 0 does not exist.
fn index(pid: u16) -> Option<usize> {
    (pid as usize).checked_sub(1)
}
