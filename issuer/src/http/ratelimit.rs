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
//! tells a misconfigured client to back off and bounds CPU noise.
//!
//! It bounds log noise together with [`LineBudget`]: a failure is logged
//! only while its source is within budget, plus the first one over it
//! (which says that the source's next failures are not logged), and all of
//! those together at most `--failed-auth-log-lines-per-second`; the rest
//! are counted (`sigil_issuer_failed_auth_logs_suppressed_total`) and
//! summed up in one line every 30 s.
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

/// One tracked source.
#[derive(Clone, Copy)]
struct Budget {
    /// GCRA theoretical arrival time.
    tat: Instant,
    /// Whether the source's current spell over budget was reported.
    reported: bool,
}

#[derive(Default)]
struct Sources {
    tat: HashMap<SourceKey, Budget>,
    /// The same entries ordered by TAT: the first ones are the closest to
    /// a full budget, so expiry and eviction never scan.
    by_tat: BTreeSet<(Instant, SourceKey)>,
}

impl Sources {
    fn set(&mut self, key: SourceKey, tat: Instant) {
        let budget = Budget {
            tat,
            reported: false,
        };
        if let Some(old) = self.tat.insert(key, budget) {
            self.by_tat.remove(&(old.tat, key));
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

    /// Counts one failed authentication of `source`; `Some` if the source
    /// is over its budget (answer 429 with `Retry-After`). A failure over
    /// budget is not counted again, so a source that keeps failing slowly
    /// gets one 401 per interval.
    pub fn record_failure(&self, source: Option<IpAddr>) -> Option<OverBudget> {
        let key = SourceKey::of(source?);
        self.record_failure_at(key, Instant::now())
    }

    fn record_failure_at(&self, key: SourceKey, now: Instant) -> Option<OverBudget> {
        let mut sources = self.sources.lock().unwrap_or_else(|p| p.into_inner());
        let tat = sources.tat.get(&key).map_or(now, |b| b.tat).max(now);
        let next = tat + self.interval;
        if next > now + self.burst {
            // Over budget until the TAT falls back within the window.
            let wait = next - (now + self.burst);
            let first = sources
                .tat
                .get_mut(&key)
                .is_some_and(|b| !std::mem::replace(&mut b.reported, true));
            return Some(OverBudget {
                retry_after: ceil_seconds(wait),
                first,
            });
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

/// A failure from a source over its budget.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct OverBudget {
    /// Seconds until the source may fail again (`Retry-After`).
    pub retry_after: u64,
    /// The first failure of this spell over budget (the one to log).
    pub first: bool,
}

/// A global budget of log lines (GCRA): `per_second` at once, then one per
/// 1/`per_second` s. Lines over it are counted, not written.
pub struct LineBudget {
    tat: Mutex<Option<Instant>>,
    interval: Duration,
    burst: Duration,
}

impl LineBudget {
    pub fn new(per_second: NonZeroU32) -> Self {
        let interval = Duration::from_secs(1) / per_second.get();
        LineBudget {
            tat: Mutex::new(None),
            interval,
            burst: interval * per_second.get(),
        }
    }

    /// Whether one more line may be written now.
    pub fn allow(&self) -> bool {
        self.allow_at(Instant::now())
    }

    fn allow_at(&self, now: Instant) -> bool {
        let mut tat = self.tat.lock().unwrap_or_else(|p| p.into_inner());
        let next = tat.unwrap_or(now).max(now) + self.interval;
        if next > now + self.burst {
            return false;
        }
        *tat = Some(next);
        true
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
        let over = limiter.record_failure(ip("10.0.0.1")).unwrap();
        assert!((1..=60).contains(&over.retry_after), "{over:?}");
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
    fn only_the_first_failure_of_a_spell_over_budget_is_reported() {
        let limiter = FailedAuthLimiter::new(NonZeroU32::new(60).unwrap(), 100);
        let key = SourceKey::V4([10, 0, 0, 1]);
        let start = Instant::now();
        for _ in 0..60 {
            assert_eq!(limiter.record_failure_at(key, start), None);
        }
        assert!(limiter.record_failure_at(key, start).unwrap().first);
        for _ in 0..100 {
            assert!(!limiter.record_failure_at(key, start).unwrap().first);
        }
        // Back within budget for one failure, then over again: a new spell.
        let later = start + Duration::from_secs(1);
        assert_eq!(limiter.record_failure_at(key, later), None);
        assert!(limiter.record_failure_at(key, later).unwrap().first);
        assert!(!limiter.record_failure_at(key, later).unwrap().first);
        // A source over budget from the start of tracking is reported too.
        let fresh = FailedAuthLimiter::new(NonZeroU32::new(1).unwrap(), 100);
        assert_eq!(fresh.record_failure_at(key, start), None);
        assert!(fresh.record_failure_at(key, start).unwrap().first);
    }

    #[test]
    fn the_line_budget_allows_a_seconds_worth_at_once_then_its_rate() {
        let budget = LineBudget::new(NonZeroU32::new(10).unwrap());
        let start = Instant::now();
        for line in 0..10 {
            assert!(budget.allow_at(start), "line {line}");
        }
        assert!(!budget.allow_at(start));
        assert!(!budget.allow_at(start + Duration::from_millis(50)));
        assert!(budget.allow_at(start + Duration::from_millis(100)));
        assert!(!budget.allow_at(start + Duration::from_millis(100)));
        // Over a long flood (10 s, a try every 100 µs): the refilled burst,
        // then per_second lines a second.
        let flood = start + Duration::from_secs(1);
        let allowed = (0..100_000u32)
            .filter(|&i| budget.allow_at(flood + Duration::from_micros(100) * i))
            .count();
        assert!((100..=110).contains(&allowed), "{allowed} lines in 10 s");
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
