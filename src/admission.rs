//! Admission: what a connection may hold before it is authenticated, and
//! which slots are left for the admin console.
//!
//! * A connection that has not authenticated yet holds a *ticket*, capped per
//!   client address (`max_unauthenticated_per_address`) and in total
//!   (`max_unauthenticated`). At a cap the oldest unauthenticated connection
//!   (of that address, or overall) is evicted rather than the new one
//!   refused: a flood of silent connections can slow a newcomer down, never
//!   lock it out, and the admin's console login gets through it.
//! * Session slots (`max_clients`) are taken only after the startup packet,
//!   so silent connections take none; the console also has
//!   `reserved_console_slots` of its own, as PostgreSQL keeps
//!   `superuser_reserved_connections`.

use std::collections::{HashMap, VecDeque};
use std::sync::{Arc, Mutex};

use tokio::sync::{Notify, OwnedSemaphorePermit, Semaphore};

/// Shared by all connections of one guard.
pub struct Admission {
    sessions: Arc<Semaphore>,
    console: Arc<Semaphore>,
    waiting: Mutex<Waiting>,
    per_address: usize,
    total: usize,
}

#[derive(Default)]
struct Waiting {
    next_id: u64,
    /// Oldest first.
    queue: VecDeque<(u64, String, Arc<Notify>)>,
    by_address: HashMap<String, usize>,
    evicted: u64,
}

/// An unauthenticated connection's place; dropping it frees the place.
pub struct Ticket {
    admission: Arc<Admission>,
    id: u64,
    address: String,
    evict: Arc<Notify>,
}

/// A future that completes when a connection is evicted.
pub type Evicted = std::pin::Pin<Box<dyn std::future::Future<Output = ()> + Send>>;

impl Ticket {
    /// Completes when the connection is evicted to make room for others.
    pub fn evicted(&self) -> Evicted {
        let evict = self.evict.clone();
        Box::pin(async move { evict.notified().await })
    }

    /// A future that never completes (no ticket held).
    pub fn never() -> Evicted {
        Box::pin(std::future::pending())
    }
}

impl Drop for Ticket {
    fn drop(&mut self) {
        let mut w = self.admission.waiting.lock().unwrap();
        if let Some(at) = w.queue.iter().position(|(id, ..)| *id == self.id) {
            w.queue.remove(at);
            w.release(&self.address);
        }
    }
}

impl Waiting {
    fn release(&mut self, address: &str) {
        if let Some(n) = self.by_address.get_mut(address) {
            *n -= 1;
            if *n == 0 {
                self.by_address.remove(address);
            }
        }
    }

    /// Evicts the oldest entry (of `address`, if given).
    fn evict_oldest(&mut self, address: Option<&str>) {
        let at = self
            .queue
            .iter()
            .position(|(_, a, _)| address.is_none_or(|want| a == want));
        if let Some(at) = at {
            let (_, a, evict) = self.queue.remove(at).unwrap();
            self.release(&a);
            self.evicted += 1;
            evict.notify_one();
        }
    }
}

/// What kind of session slot a connection asks for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Slot {
    Database,
    Console,
}

impl Admission {
    pub fn new(
        max_clients: usize,
        reserved_console: usize,
        per_address: usize,
        total: usize,
    ) -> Arc<Admission> {
        Arc::new(Admission {
            sessions: Arc::new(Semaphore::new(max_clients)),
            console: Arc::new(Semaphore::new(reserved_console)),
            waiting: Mutex::new(Waiting::default()),
            per_address: per_address.max(1),
            total: total.max(1),
        })
    }

    /// A ticket for a new, unauthenticated connection from `peer` (its
    /// address with or without a port), evicting the oldest one at a cap.
    pub fn admit(self: &Arc<Self>, peer: &str) -> Ticket {
        let address = host_of(peer).to_owned();
        let mut w = self.waiting.lock().unwrap();
        let evicted_before = w.evicted;
        if w.by_address.get(&address).copied().unwrap_or(0) >= self.per_address {
            w.evict_oldest(Some(&address));
        }
        if w.queue.len() >= self.total {
            w.evict_oldest(None);
        }
        // Logged at the 1st, 2nd, 4th, 8th, ... eviction: a flood cannot
        // flood the log in turn.
        if w.evicted != evicted_before && w.evicted.is_power_of_two() {
            tracing::warn!(address = ?address, evicted_total = w.evicted, "unauthenticated connections at a cap: the oldest are being dropped");
        }
        w.next_id += 1;
        let id = w.next_id;
        let evict = Arc::new(Notify::new());
        w.queue.push_back((id, address.clone(), evict.clone()));
        *w.by_address.entry(address.clone()).or_default() += 1;
        Ticket {
            admission: self.clone(),
            id,
            address,
            evict,
        }
    }

    /// A session slot; the console may also take a reserved one.
    pub fn slot(&self, kind: Slot) -> Option<OwnedSemaphorePermit> {
        self.sessions
            .clone()
            .try_acquire_owned()
            .ok()
            .or_else(|| match kind {
                Slot::Console => self.console.clone().try_acquire_owned().ok(),
                Slot::Database => None,
            })
    }

    /// Unauthenticated connections now, and evicted so far.
    pub fn unauthenticated(&self) -> (usize, u64) {
        let w = self.waiting.lock().unwrap();
        (w.queue.len(), w.evicted)
    }
}

/// The address part of `ip:port`, `[v6]:port` or `[local]`.
pub fn host_of(peer: &str) -> &str {
    if let Some(rest) = peer.strip_prefix('[') {
        return match rest.split_once(']') {
            Some((host, _)) => host,
            None => peer,
        };
    }
    match peer.rsplit_once(':') {
        Some((host, port)) if port.bytes().all(|b| b.is_ascii_digit()) => host,
        _ => peer,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn the_oldest_unauthenticated_connection_makes_room() {
        let a = Admission::new(2, 1, 2, 3);
        let t1 = a.admit("10.0.0.1:1000");
        let t2 = a.admit("10.0.0.1:1001");
        // A third from the same address evicts the first.
        let _t3 = a.admit("10.0.0.1:1002");
        tokio::time::timeout(std::time::Duration::from_secs(1), t1.evicted())
            .await
            .expect("the oldest is evicted");
        assert_eq!(a.unauthenticated(), (2, 1));
        // Other addresses count towards the total only.
        let _t4 = a.admit("10.0.0.2:1");
        let _t5 = a.admit("[::1]:5");
        tokio::time::timeout(std::time::Duration::from_secs(1), t2.evicted())
            .await
            .expect("the total cap evicts the oldest overall");
        drop(t1);
        drop(t2);
        assert_eq!(a.unauthenticated(), (3, 2));
    }

    #[test]
    fn the_console_has_reserved_slots() {
        let a = Admission::new(1, 1, 8, 8);
        let _s = a.slot(Slot::Database).unwrap();
        assert!(a.slot(Slot::Database).is_none());
        let _c = a.slot(Slot::Console).expect("reserved for the console");
        assert!(a.slot(Slot::Console).is_none());
        assert_eq!(host_of("[local]"), "local");
        assert_eq!(host_of("127.0.0.1:5432"), "127.0.0.1");
        assert_eq!(host_of("[::1]:5432"), "::1");
    }
}
