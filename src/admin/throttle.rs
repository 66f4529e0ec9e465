//! Failed console logins, counted per client address: after
//! `MAX_FAILURES` within `WINDOW` the address is locked out of the console
//! until the window has passed, and every failure is answered only after
//! `FAILURE_DELAY` (as PostgreSQL's auth_delay does). A success clears the
//! address's count.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

pub const MAX_FAILURES: u32 = 10;
pub const WINDOW: Duration = Duration::from_secs(60);
pub const FAILURE_DELAY: Duration = Duration::from_millis(500);
/// Addresses remembered at most (the oldest entries are forgotten first).
const MAX_ADDRESSES: usize = 10_000;

#[derive(Default)]
pub struct Throttle {
    by_address: Mutex<HashMap<String, (u32, Instant)>>,
}

impl Throttle {
    /// If `address` is locked out, how long until it may try again.
    pub fn locked(&self, address: &str) -> Option<Duration> {
        let map = self.by_address.lock().unwrap();
        let (failures, since) = map.get(address)?;
        let left = WINDOW.checked_sub(since.elapsed())?;
        (*failures >= MAX_FAILURES).then_some(left)
    }

    /// Counts a failure; returns the failures in the current window.
    pub fn failed(&self, address: &str) -> u32 {
        let mut map = self.by_address.lock().unwrap();
        if map.len() >= MAX_ADDRESSES && !map.contains_key(address) {
            map.retain(|_, (_, since)| since.elapsed() < WINDOW);
            if map.len() >= MAX_ADDRESSES {
                return MAX_FAILURES;
            }
        }
        let entry = map.entry(address.to_owned()).or_insert((0, Instant::now()));
        if entry.1.elapsed() >= WINDOW {
            *entry = (0, Instant::now());
        }
        entry.0 += 1;
        entry.0
    }

    pub fn succeeded(&self, address: &str) {
        self.by_address.lock().unwrap().remove(address);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_address_is_locked_after_repeated_failures() {
        let t = Throttle::default();
        for n in 1..MAX_FAILURES {
            assert_eq!(t.failed("10.0.0.1"), n);
            assert!(t.locked("10.0.0.1").is_none());
        }
        t.failed("10.0.0.1");
        assert!(t.locked("10.0.0.1").is_some());
        assert!(t.locked("10.0.0.2").is_none());
        t.succeeded("10.0.0.1");
        assert!(t.locked("10.0.0.1").is_none());
    }
}
