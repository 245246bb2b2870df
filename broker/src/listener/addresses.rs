//! Limits per client address, across all listeners: how many connections one address
//! may hold open (`limits.max_connections_per_address`) and how many it may open a
//! second (`limits.connect_rate_per_address`, a token bucket holding one second's
//! worth). One misbehaving host, or a reconnect loop gone wrong, cannot take the whole
//! broker's connection budget or its CPU for handshakes.

use crate::connection::OverLimit;
use crate::FastMap;
use std::net::IpAddr;
use std::sync::{Arc, Mutex};
use std::time::Instant;

/// Addresses kept beyond those with connections open before idle ones are forgotten.
const KEEP: usize = 4_096;

pub struct Addresses {
    max_open: usize,
    rate: f64,
    book: Mutex<FastMap<IpAddr, Entry>>,
}

struct Entry {
    open: usize,
    /// Connects this address may still make now, as of `at`.
    tokens: f64,
    at: Instant,
}

/// An open connection's place in its address's count; given back on drop.
pub struct AddressPlace {
    book: Arc<Addresses>,
    ip: IpAddr,
}

impl Addresses {
    /// 0 for either limit means none.
    pub fn new(max_open: usize, rate: u32) -> Arc<Addresses> {
        Arc::new(Addresses {
            max_open,
            rate: rate as f64,
            book: Mutex::new(FastMap::default()),
        })
    }

    fn limits_anything(&self) -> bool {
        self.max_open > 0 || self.rate > 0.0
    }

    /// A place for a new connection from `ip` (`None` when nothing is limited), or the
    /// limit it is over.
    pub fn enter(self: &Arc<Self>, ip: IpAddr) -> Result<Option<AddressPlace>, OverLimit> {
        if !self.limits_anything() {
            return Ok(None);
        }
        let now = Instant::now();
        let mut book = crate::sync::lock(&self.book);
        if book.len() > KEEP {
            book.retain(|_, e| e.open > 0 || self.refilled(e, now) < self.rate);
        }
        let e = book.entry(ip).or_insert(Entry {
            open: 0,
            tokens: self.rate,
            at: now,
        });
        if self.max_open > 0 && e.open >= self.max_open {
            return Err(OverLimit::PerAddress);
        }
        if self.rate > 0.0 {
            e.tokens = self.refilled(e, now);
            e.at = now;
            if e.tokens < 1.0 {
                return Err(OverLimit::ConnectRate);
            }
            e.tokens -= 1.0;
        }
        e.open += 1;
        Ok(Some(AddressPlace {
            book: self.clone(),
            ip,
        }))
    }

    fn refilled(&self, e: &Entry, now: Instant) -> f64 {
        let elapsed = now.saturating_duration_since(e.at).as_secs_f64();
        (e.tokens + elapsed * self.rate).min(self.rate)
    }
}

impl Drop for AddressPlace {
    fn drop(&mut self) {
        let mut book = crate::sync::lock(&self.book.book);
        if let Some(e) = book.get_mut(&self.ip) {
            e.open = e.open.saturating_sub(1);
            if e.open == 0 && self.book.rate == 0.0 {
                book.remove(&self.ip);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_address_gets_its_share_and_no_more() {
        let ip: IpAddr = "10.0.0.1".parse().unwrap();
        let other: IpAddr = "10.0.0.2".parse().unwrap();
        let a = Addresses::new(2, 0);
        let one = a.enter(ip).unwrap();
        let _two = a.enter(ip).unwrap();
        assert!(matches!(a.enter(ip), Err(OverLimit::PerAddress)));
        assert!(
            a.enter(other).unwrap().is_some(),
            "another address is not held up"
        );
        drop(one);
        assert!(a.enter(ip).is_ok(), "a place given back is free again");

        let r = Addresses::new(0, 3);
        let kept: Vec<_> = (0..3).map(|_| r.enter(ip).unwrap()).collect();
        drop(kept);
        assert!(
            matches!(r.enter(ip), Err(OverLimit::ConnectRate)),
            "closing does not give connects back"
        );
        std::thread::sleep(std::time::Duration::from_millis(400));
        assert!(r.enter(ip).is_ok(), "a third of a second later, one more");
        assert!(Addresses::new(0, 0).enter(ip).unwrap().is_none());
    }
}
