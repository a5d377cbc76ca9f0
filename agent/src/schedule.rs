//! The token agent's timing decisions, as pure functions of the clock:
//! when a token counts as valid, when to renew it, and how long to wait
//! after a failed attempt.

use std::time::{Duration, SystemTime};

/// Renew at this fraction of a token's lifetime (as kubelet does for
/// projected service-account tokens) …
pub const RENEW_FRACTION: f64 = 0.8;
/// … minus up to this fraction as jitter, so many pods started together do
/// not renew together.
pub const JITTER_FRACTION: f64 = 0.1;
/// Never retry faster than this.
pub const MIN_RETRY: Duration = Duration::from_secs(1);
/// Never wait longer than this between attempts after a failure.
pub const MAX_RETRY: Duration = Duration::from_secs(30);

/// The validity of a token the agent holds.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Validity {
    /// When the request that returned it was sent (a conservative start).
    pub obtained_at: SystemTime,
    pub expires_at: SystemTime,
}

impl Validity {
    /// True while the token has not expired.
    pub fn is_valid(&self, now: SystemTime) -> bool {
        now < self.expires_at
    }

    pub fn lifetime(&self) -> Duration {
        self.expires_at
            .duration_since(self.obtained_at)
            .unwrap_or_default()
    }
}

/// When a token's lifetime ends: `expires_in` counted from the moment the
/// request was sent, or the JWT's `exp` if that is earlier (or the only
/// one given). None if the answer says neither.
pub fn expiry(
    obtained_at: SystemTime,
    expires_in: Option<u64>,
    jwt_exp: Option<i64>,
) -> Option<Validity> {
    let from_expires_in = expires_in.map(|seconds| obtained_at + Duration::from_secs(seconds));
    let from_exp = jwt_exp
        .and_then(|exp| u64::try_from(exp).ok())
        .map(|exp| SystemTime::UNIX_EPOCH + Duration::from_secs(exp));
    let expires_at = match (from_expires_in, from_exp) {
        (Some(a), Some(b)) => a.min(b),
        (a, b) => a.or(b)?,
    };
    Some(Validity {
        obtained_at,
        expires_at,
    })
}

/// When to renew: at 80% of the lifetime, minus `jitter` (in [0, 1)) times
/// 10% of it.
pub fn renew_at(validity: &Validity, jitter: f64) -> SystemTime {
    let jitter = if jitter.is_finite() {
        jitter.clamp(0.0, 1.0)
    } else {
        0.0
    };
    let fraction = RENEW_FRACTION - JITTER_FRACTION * jitter;
    validity.obtained_at + validity.lifetime().mul_f64(fraction)
}

/// How long to wait after a failed attempt: the exponential backoff's
/// `backoff_delay`, but while the old token is still valid never more than
/// half of its remaining life, so several more attempts fit before it
/// expires.
pub fn retry_delay(backoff_delay: Duration, held: Option<&Validity>, now: SystemTime) -> Duration {
    let delay = backoff_delay.clamp(MIN_RETRY, MAX_RETRY);
    match held.and_then(|v| v.expires_at.duration_since(now).ok()) {
        Some(remaining) if !remaining.is_zero() => delay.min((remaining / 2).max(MIN_RETRY)),
        _ => delay,
    }
}

/// Whether to ask for a token right away after the credential files
/// changed: when none is held, the last attempt failed (the new files may
/// fix it), or the client id or token URL changed (the token held belongs
/// to other credentials). A rotated secret alone does not: the token held
/// stays valid, and the next renewal uses the new secret.
pub fn renew_on_credentials_change(
    holds_valid_token: bool,
    last_attempt_failed: bool,
    identity_changed: bool,
) -> bool {
    !holds_valid_token || last_attempt_failed || identity_changed
}

#[cfg(test)]
mod tests {
    use super::*;

    fn at(seconds: u64) -> SystemTime {
        SystemTime::UNIX_EPOCH + Duration::from_secs(seconds)
    }

    fn hour_token() -> Validity {
        Validity {
            obtained_at: at(1_000),
            expires_at: at(1_000 + 3_600),
        }
    }

    #[test]
    fn valid_strictly_before_expiry() {
        let v = hour_token();
        assert!(v.is_valid(at(1_000)));
        assert!(v.is_valid(at(4_599)));
        assert!(!v.is_valid(at(4_600)));
        assert!(!v.is_valid(at(9_999)));
    }

    #[test]
    fn expiry_prefers_the_earlier_of_expires_in_and_exp() {
        let sent = at(1_000);
        assert_eq!(expiry(sent, Some(60), None).unwrap().expires_at, at(1_060));
        assert_eq!(
            expiry(sent, None, Some(1_030)).unwrap().expires_at,
            at(1_030)
        );
        assert_eq!(
            expiry(sent, Some(60), Some(1_030)).unwrap().expires_at,
            at(1_030)
        );
        assert_eq!(
            expiry(sent, Some(60), Some(2_000)).unwrap().expires_at,
            at(1_060)
        );
        assert_eq!(expiry(sent, None, None), None);
        assert_eq!(expiry(sent, None, Some(-5)), None);
    }

    #[test]
    fn renews_between_70_and_80_percent_of_the_lifetime() {
        let v = hour_token();
        assert_eq!(renew_at(&v, 0.0), at(1_000 + 2_880));
        assert_eq!(renew_at(&v, 1.0), at(1_000 + 2_520));
        let mid = renew_at(&v, 0.5);
        assert!(mid > at(1_000 + 2_520) && mid < at(1_000 + 2_880));
        // Out-of-range jitter is clamped, never past 80%.
        assert_eq!(renew_at(&v, 7.0), at(1_000 + 2_520));
        assert_eq!(renew_at(&v, -1.0), at(1_000 + 2_880));
        assert_eq!(renew_at(&v, f64::NAN), at(1_000 + 2_880));
        // A one-minute token leaves 12 s or more of margin.
        let minute = expiry(at(0), Some(60), None).unwrap();
        assert!(
            minute
                .expires_at
                .duration_since(renew_at(&minute, 0.0))
                .unwrap()
                >= Duration::from_secs(12)
        );
    }

    #[test]
    fn retries_back_off_but_fit_before_the_old_token_expires() {
        let v = hour_token();
        // Plenty of life left: the backoff decides, within bounds.
        assert_eq!(
            retry_delay(Duration::from_secs(4), Some(&v), at(1_100)),
            Duration::from_secs(4)
        );
        assert_eq!(
            retry_delay(Duration::from_millis(10), Some(&v), at(1_100)),
            MIN_RETRY
        );
        assert_eq!(
            retry_delay(Duration::from_secs(3_000), Some(&v), at(1_100)),
            MAX_RETRY
        );
        // 20 s left: at most 10 s.
        assert_eq!(
            retry_delay(Duration::from_secs(30), Some(&v), at(4_580)),
            Duration::from_secs(10)
        );
        // 1 s left: still at least MIN_RETRY.
        assert_eq!(
            retry_delay(Duration::from_secs(30), Some(&v), at(4_599)),
            MIN_RETRY
        );
        // Expired or none held: the backoff alone.
        assert_eq!(
            retry_delay(Duration::from_secs(16), Some(&v), at(5_000)),
            Duration::from_secs(16)
        );
        assert_eq!(
            retry_delay(Duration::from_secs(16), None, at(5_000)),
            Duration::from_secs(16)
        );
    }

    #[test]
    fn credential_changes_renew_only_when_needed() {
        assert!(!renew_on_credentials_change(true, false, false));
        assert!(renew_on_credentials_change(false, false, false));
        assert!(renew_on_credentials_change(true, true, false));
        assert!(renew_on_credentials_change(true, false, true));
    }
}
