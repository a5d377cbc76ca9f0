//! Failed-authentication budget per source address.
//!
//! Credentials are always checked first and a request with correct
//! credentials always proceeds: nobody else's failures (another client
//! behind the same NAT, a guesser using a victim's client id) can refuse a
//! correct credential. Only failed authentications are counted, per source
//! address (IPv6 per /64), with GCRA: a source may fail `per_minute` times
//! at once and then once per `60 s / per_minute`. Once a source is over
//! budget its *failed* requests are answered 429 with `Retry-After` instead
//! of 401. Guessing a 256-bit secret is hopeless either way; the budget
//! tells a misconfigured client to back off and bounds log and CPU noise.
//!
//! The state is bounded: at most `max_sources` sources are tracked; when a
//! new one arrives at the limit, the source closest to a fresh budget is
//! forgotten (which can only make the limiter more lenient, never refuse a
//! correct credential). Sources whose budget has refilled are dropped by
//! [`FailedAuthLimiter::housekeeping`] and on insert.

use std::collections::{BTreeSet, HashMap};
use std::net::IpAddr;
use std::num::NonZeroU32;
use std::sync::Mutex;
use std::time::{Duration, Instant};

/// The key of a source: an IPv4 address, or an IPv6 /64 (one host usually
/// holds a whole /64, so per-address keys would be free to rotate).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub(crate) enum SourceKey {
    V4([u8; 4]),
    V6Prefix([u8; 8]),
}

impl SourceKey {
    pub(crate) fn of(ip: IpAddr) -> Self {
        match ip {
            IpAddr::V4(v4) => SourceKey::V4(v4.octets()),
            IpAddr::V6(v6) => match v6.to_ipv4_mapped() {
                Some(v4) => SourceKey::V4(v4.octets()),
                None => {
                    let mut prefix = [0u8; 8];
                    prefix.copy_from_slice(&v6.octets()[..8]);
                    SourceKey::V6Prefix(prefix)
                }
            },
        }
    }
}

#[derive(Default)]
struct Sources {
    /// GCRA theoretical arrival time per source.
    tat: HashMap<SourceKey, Instant>,
    /// The same entries ordered by TAT: the first ones are the closest to
    /// a full budget, so expiry and eviction never scan.
    by_tat: BTreeSet<(Instant, SourceKey)>,
}

impl Sources {
    fn set(&mut self, key: SourceKey, tat: Instant) {
        if let Some(old) = self.tat.insert(key, tat) {
            self.by_tat.remove(&(old, key));
        }
        self.by_tat.insert((tat, key));
    }

    /// Drops sources whose budget is full again (TAT in the past).
    fn expire(&mut self, now: Instant) {
        while let Some(&(tat, key)) = self.by_tat.first() {
            if tat > now {
                break;
            }
            self.by_tat.pop_first();
            self.tat.remove(&key);
        }
    }
}

pub struct FailedAuthLimiter {
    sources: Mutex<Sources>,
    /// Time one failure costs: 60 s / per_minute.
    interval: Duration,
    /// How far ahead the TAT may run: the whole minute's budget.
    burst: Duration,
    max_sources: usize,
}

impl FailedAuthLimiter {
    /// `per_minute` failures per source address (all of them may come at
    /// once), tracking at most `max_sources` sources.
    pub fn new(per_minute: NonZeroU32, max_sources: usize) -> Self {
        let interval = Duration::from_secs(60) / per_minute.get();
        FailedAuthLimiter {
            sources: Mutex::new(Sources::default()),
            interval,
            burst: interval * per_minute.get(),
            max_sources: max_sources.max(1),
        }
    }

    /// Counts one failed authentication of `source`; `Some(seconds)` if the
    /// source is over its budget (answer 429 with `Retry-After: seconds`).
    /// A failure over budget is not counted again, so a source that keeps
    /// failing slowly gets one 401 per interval.
    pub fn record_failure(&self, source: Option<IpAddr>) -> Option<u64> {
        let key = SourceKey::of(source?);
        self.record_failure_at(key, Instant::now())
    }

    fn record_failure_at(&self, key: SourceKey, now: Instant) -> Option<u64> {
        let mut sources = self.sources.lock().unwrap_or_else(|p| p.into_inner());
        let tat = sources.tat.get(&key).copied().unwrap_or(now).max(now);
        let next = tat + self.interval;
        if next > now + self.burst {
            // Over budget until the TAT falls back within the window.
            let wait = next - (now + self.burst);
            return Some(ceil_seconds(wait));
        }
        if !sources.tat.contains_key(&key) && sources.tat.len() >= self.max_sources {
            sources.expire(now);
            if sources.tat.len() >= self.max_sources
                && let Some((_, oldest)) = sources.by_tat.pop_first()
            {
                sources.tat.remove(&oldest);
            }
        }
        sources.set(key, next);
        None
    }

    /// Sources currently tracked (for the metric).
    pub fn tracked_sources(&self) -> usize {
        self.sources
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .tat
            .len()
    }

    /// Forgets sources whose budget is full again (call periodically).
    pub fn housekeeping(&self) {
        let mut sources = self.sources.lock().unwrap_or_else(|p| p.into_inner());
        sources.expire(Instant::now());
        if sources.tat.capacity() > 4 * sources.tat.len().max(1024) {
            sources.tat.shrink_to_fit();
        }
    }
}

fn ceil_seconds(duration: Duration) -> u64 {
    let seconds = duration.as_secs() + u64::from(duration.subsec_nanos() > 0);
    seconds.max(1)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ip(text: &str) -> Option<IpAddr> {
        Some(text.parse().unwrap())
    }

    #[test]
    fn a_source_may_fail_its_whole_budget_at_once_then_gets_retry_after() {
        let limiter = FailedAuthLimiter::new(NonZeroU32::new(60).unwrap(), 100);
        for attempt in 0..60 {
            assert_eq!(limiter.record_failure(ip("10.0.0.1")), None, "{attempt}");
        }
        let retry = limiter.record_failure(ip("10.0.0.1")).unwrap();
        assert!((1..=60).contains(&retry), "{retry}");
        // Another source is unaffected.
        assert_eq!(limiter.record_failure(ip("10.0.0.2")), None);
    }

    #[test]
    fn the_budget_refills_one_failure_per_interval() {
        let limiter = FailedAuthLimiter::new(NonZeroU32::new(60).unwrap(), 100);
        let key = SourceKey::V4([10, 0, 0, 1]);
        let start = Instant::now();
        for _ in 0..60 {
            assert_eq!(limiter.record_failure_at(key, start), None);
        }
        assert!(limiter.record_failure_at(key, start).is_some());
        let later = start + Duration::from_secs(1);
        assert_eq!(limiter.record_failure_at(key, later), None);
        assert!(limiter.record_failure_at(key, later).is_some());
        // A minute of quiet gives the whole budget back, and the entry goes.
        let much_later = start + Duration::from_secs(62);
        limiter.sources.lock().unwrap().expire(much_later);
        assert_eq!(limiter.tracked_sources(), 0);
    }

    #[test]
    fn tracked_sources_are_bounded_and_the_most_lenient_is_dropped() {
        let limiter = FailedAuthLimiter::new(NonZeroU32::new(5).unwrap(), 3);
        let now = Instant::now();
        let noisy = SourceKey::V4([10, 0, 0, 9]);
        for _ in 0..5 {
            assert_eq!(limiter.record_failure_at(noisy, now), None);
        }
        for i in 0..10u8 {
            limiter.record_failure_at(SourceKey::V4([10, 1, 0, i]), now);
            assert!(limiter.tracked_sources() <= 3);
        }
        // The source that used its budget is still remembered.
        assert!(limiter.record_failure_at(noisy, now).is_some());
    }

    #[test]
    fn ipv6_sources_share_a_budget_per_64() {
        let limiter = FailedAuthLimiter::new(NonZeroU32::new(2).unwrap(), 100);
        assert_eq!(limiter.record_failure(ip("2001:db8::1")), None);
        assert_eq!(limiter.record_failure(ip("2001:db8::2")), None);
        assert!(limiter.record_failure(ip("2001:db8::3")).is_some());
        assert_eq!(limiter.record_failure(ip("2001:db8:0:1::1")), None);
        assert_eq!(limiter.record_failure(None), None, "no address, no limit");
    }
}
