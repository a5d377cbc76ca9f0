//! Failed-authentication limits per source address and per client id.
//!
//! Only failures consume quota (governor GCRA). Once a key runs out it is
//! blocked until its next cell, and a blocked key is refused *before* its
//! credentials are checked, so a guesser cannot learn from a 200 that it hit
//! the right secret while over the limit.

use std::collections::HashMap;
use std::net::IpAddr;
use std::num::NonZeroU32;
use std::sync::Mutex;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use governor::clock::{Clock, DefaultClock};
use governor::{DefaultKeyedRateLimiter, Quota, RateLimiter};

/// Longest client id we key on; longer presented ids are cut so an attacker
/// cannot make keys of arbitrary size.
const MAX_KEY_LEN: usize = 256;

#[derive(Clone, Debug, PartialEq, Eq, Hash)]
enum BlockKey {
    Source(IpAddr),
    Client(String),
}

pub struct FailedAuthLimiter {
    by_source: DefaultKeyedRateLimiter<IpAddr>,
    by_client: DefaultKeyedRateLimiter<String>,
    blocked: Mutex<HashMap<BlockKey, Instant>>,
    /// Fast path: no lock on the request path while nothing is blocked.
    blocked_count: AtomicUsize,
    clock: DefaultClock,
}

impl FailedAuthLimiter {
    /// `per_minute` failures per source address and per client id; the
    /// whole minute's budget may be spent at once.
    pub fn new(per_minute: NonZeroU32) -> Self {
        let quota = Quota::per_minute(per_minute).allow_burst(per_minute);
        FailedAuthLimiter {
            by_source: RateLimiter::dashmap(quota),
            by_client: RateLimiter::dashmap(quota),
            blocked: Mutex::new(HashMap::new()),
            blocked_count: AtomicUsize::new(0),
            clock: DefaultClock::default(),
        }
    }

    fn client_key(client_id: &str) -> String {
        let mut end = client_id.len().min(MAX_KEY_LEN);
        while !client_id.is_char_boundary(end) {
            end -= 1;
        }
        client_id[..end].to_owned()
    }

    /// `Err(seconds)` when the source or the client id is blocked.
    pub fn check(&self, source: Option<IpAddr>, client_id: Option<&str>) -> Result<(), u64> {
        if self.blocked_count.load(Ordering::Relaxed) == 0 {
            return Ok(());
        }
        let now = Instant::now();
        let blocked = self.blocked.lock().unwrap_or_else(|p| p.into_inner());
        let mut keys = Vec::with_capacity(2);
        if let Some(ip) = source {
            keys.push(BlockKey::Source(ip));
        }
        if let Some(id) = client_id {
            keys.push(BlockKey::Client(Self::client_key(id)));
        }
        let longest = keys
            .iter()
            .filter_map(|key| blocked.get(key))
            .filter(|until| **until > now)
            .map(|until| *until - now)
            .max();
        match longest {
            Some(wait) => Err(ceil_seconds(wait)),
            None => Ok(()),
        }
    }

    /// Counts one failure; `Some(seconds)` if that used up the budget.
    pub fn record_failure(&self, source: Option<IpAddr>, client_id: Option<&str>) -> Option<u64> {
        let now = self.clock.now();
        let mut waits = Vec::new();
        if let Some(ip) = source
            && let Err(not_until) = self.by_source.check_key(&ip)
        {
            waits.push((BlockKey::Source(ip), not_until.wait_time_from(now)));
        }
        if let Some(id) = client_id {
            let key = Self::client_key(id);
            if let Err(not_until) = self.by_client.check_key(&key) {
                waits.push((BlockKey::Client(key), not_until.wait_time_from(now)));
            }
        }
        if waits.is_empty() {
            return None;
        }
        let instant_now = Instant::now();
        let mut blocked = self.blocked.lock().unwrap_or_else(|p| p.into_inner());
        let mut longest = Duration::ZERO;
        for (key, wait) in waits {
            let wait = wait.max(Duration::from_secs(1));
            longest = longest.max(wait);
            blocked.insert(key, instant_now + wait);
        }
        self.blocked_count.store(blocked.len(), Ordering::Relaxed);
        Some(ceil_seconds(longest))
    }

    /// Forgets expired blocks and idle limiter state (call periodically).
    pub fn housekeeping(&self) {
        let now = Instant::now();
        let mut blocked = self.blocked.lock().unwrap_or_else(|p| p.into_inner());
        blocked.retain(|_, until| *until > now);
        self.blocked_count.store(blocked.len(), Ordering::Relaxed);
        drop(blocked);
        self.by_source.retain_recent();
        self.by_client.retain_recent();
        self.by_source.shrink_to_fit();
        self.by_client.shrink_to_fit();
    }
}

fn ceil_seconds(duration: Duration) -> u64 {
    let seconds = duration.as_secs() + u64::from(duration.subsec_nanos() > 0);
    seconds.max(1)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_source_may_fail_thirty_times_a_minute_by_default() {
        let limiter = FailedAuthLimiter::new(NonZeroU32::new(60).unwrap());
        let ip: IpAddr = "10.0.0.1".parse().unwrap();
        for attempt in 0..60 {
            assert_eq!(
                limiter.check(Some(ip), Some(&format!("c{attempt}"))),
                Ok(())
            );
            assert_eq!(
                limiter.record_failure(Some(ip), Some(&format!("c{attempt}"))),
                None,
                "{attempt}"
            );
        }
        let retry = limiter.record_failure(Some(ip), Some("c61")).unwrap();
        assert!(retry >= 1);
        assert!(limiter.check(Some(ip), Some("other")).is_err());
        // Another source is unaffected.
        assert_eq!(
            limiter.check(Some("10.0.0.2".parse().unwrap()), Some("other")),
            Ok(())
        );
    }

    #[test]
    fn a_client_id_is_limited_across_sources() {
        let limiter = FailedAuthLimiter::new(NonZeroU32::new(3).unwrap());
        for i in 0..3 {
            let ip: IpAddr = format!("10.0.1.{i}").parse().unwrap();
            assert_eq!(limiter.record_failure(Some(ip), Some("victim")), None);
        }
        assert!(
            limiter
                .record_failure(Some("10.0.2.1".parse().unwrap()), Some("victim"))
                .is_some()
        );
        assert!(
            limiter
                .check(Some("10.0.3.1".parse().unwrap()), Some("victim"))
                .is_err()
        );
        assert_eq!(
            limiter.check(Some("10.0.3.1".parse().unwrap()), Some("someone-else")),
            Ok(())
        );
    }
}
