//! Watch retry delays shared by the operator and the issuer.

use std::time::Duration;

use kube::runtime::utils::Backoff;

/// 250 ms doubling to at most 4 s, with up to 25% jitter; back to 250 ms
/// once a watch works again. kube's default backoff grows to tens of
/// seconds during an API server outage, so after one of 30 s the watches
/// came back a minute late; with this, a client created right after the API
/// server returns is served within seconds.
pub struct WatchBackoff {
    next: Duration,
}

pub const WATCH_BACKOFF_MIN: Duration = Duration::from_millis(250);
pub const WATCH_BACKOFF_MAX: Duration = Duration::from_secs(4);

impl Default for WatchBackoff {
    fn default() -> Self {
        WatchBackoff {
            next: WATCH_BACKOFF_MIN,
        }
    }
}

impl Iterator for WatchBackoff {
    type Item = Duration;

    fn next(&mut self) -> Option<Duration> {
        let delay = self.next;
        self.next = (self.next * 2).min(WATCH_BACKOFF_MAX);
        let jitter_ms = rand::random_range(0..=delay.as_millis() as u64 / 4);
        Some(delay + Duration::from_millis(jitter_ms))
    }
}

impl Backoff for WatchBackoff {
    fn reset(&mut self) {
        self.next = WATCH_BACKOFF_MIN;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn watch_backoff_is_quick_and_bounded() {
        let mut backoff = WatchBackoff::default();
        let delays: Vec<Duration> = (0..10).map(|_| backoff.next().unwrap()).collect();
        assert!(delays[0] >= WATCH_BACKOFF_MIN && delays[0] < Duration::from_millis(400));
        assert!(
            delays
                .iter()
                .all(|d| *d <= WATCH_BACKOFF_MAX + WATCH_BACKOFF_MAX / 4)
        );
        assert!(delays[9] >= WATCH_BACKOFF_MAX);
        backoff.reset();
        assert!(backoff.next().unwrap() < Duration::from_millis(400));
    }
}
