//! State shared by the reconcilers, and their error type.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use kube::runtime::events::{Event, EventType, Recorder};
use kube::runtime::reflector::Store;
use kube::{Client, Resource, ResourceExt};
use sigil_core::IssuerUrl;
use sigil_crds::{OAuthClient, SigningKey};

use crate::client_index::ClientIndex;
use crate::grants::GrantSources;
use crate::issuer_ca::IssuerCa;
use crate::metrics::Metrics;

pub struct Context {
    pub client: Client,
    pub recorder: Recorder,
    /// `issuer` in client Secrets.
    pub issuer_url: String,
    /// `token_url` in client Secrets.
    pub token_url: String,
    /// `ca.crt` in client Secrets.
    pub issuer_ca: IssuerCa,
    pub metrics: Arc<Metrics>,
    /// Every OAuthClient the operator sees, for the cluster-wide clientId
    /// uniqueness check.
    pub oauth_clients: Store<OAuthClient>,
    pub signing_keys: Store<SigningKey>,
    /// Which clients claim which clientId (maintained from the watch).
    pub client_index: Arc<Mutex<ClientIndex>>,
    /// OAuthResources, Namespaces and the policy the grants come from.
    pub grants: GrantSources,
    /// Consecutive failures per object, for exponential backoff.
    failures: Mutex<HashMap<String, u32>>,
}

/// Why a reconcile failed. Messages never contain a client secret or a
/// private key: they name objects and steps only.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("{action}: {source}")]
    Kube {
        action: String,
        #[source]
        source: kube::Error,
    },
    #[error(transparent)]
    Key(#[from] sigil_core::keys::KeyError),
    #[error(transparent)]
    Random(#[from] sigil_core::secret::RandomError),
    #[error("key generation task failed: {0}")]
    KeyTask(String),
    #[error("{0}")]
    Invalid(String),
    /// A watched object the reconcile needs has not been read yet.
    #[error("{0}")]
    NotRead(String),
}

impl Error {
    /// A low-cardinality name of the error's kind for
    /// `sigil_operator_reconcile_failures_total` (never the message: it may
    /// name objects).
    pub fn metric_label(&self) -> &'static str {
        match self {
            Error::Kube { .. } => "kube_api",
            Error::Key(_) => "key_generation",
            Error::KeyTask(_) => "key_task",
            Error::Random(_) => "random",
            Error::Invalid(_) => "invalid",
            Error::NotRead(_) => "not_read",
        }
    }

    pub fn kube(action: impl Into<String>) -> impl FnOnce(kube::Error) -> Error {
        let action = action.into();
        move |source| Error::Kube { action, source }
    }
}

pub type Result<T, E = Error> = std::result::Result<T, E>;

const BACKOFF_BASE: Duration = Duration::from_millis(500);
const BACKOFF_MAX: Duration = Duration::from_secs(300);

impl Context {
    // Each argument is a distinct dependency the reconcilers share; a
    // builder would only hide which ones a test forgot.
    #[allow(clippy::too_many_arguments)]
    pub fn new(
        client: Client,
        recorder: Recorder,
        issuer_url: &IssuerUrl,
        issuer_ca: IssuerCa,
        metrics: Arc<Metrics>,
        oauth_clients: Store<OAuthClient>,
        signing_keys: Store<SigningKey>,
        grants: GrantSources,
    ) -> Self {
        Context {
            client,
            recorder,
            issuer_url: issuer_url.to_string(),
            token_url: issuer_url.token_endpoint(),
            issuer_ca,
            metrics,
            oauth_clients,
            signing_keys,
            client_index: Arc::new(Mutex::new(ClientIndex::default())),
            grants,
            failures: Mutex::new(HashMap::new()),
        }
    }

    /// Records an Event on `obj`. A failure to record is logged, never
    /// fatal: events are for people, the status is the truth.
    pub async fn event<K>(
        &self,
        obj: &K,
        type_: EventType,
        reason: &str,
        action: &str,
        note: String,
    ) where
        K: Resource<DynamicType = ()>,
    {
        let event = Event {
            type_,
            reason: reason.to_owned(),
            note: Some(note),
            action: action.to_owned(),
            secondary: None,
        };
        if let Err(error) = self.recorder.publish(&event, &obj.object_ref(&())).await {
            tracing::warn!(%error, reason, object = %obj.name_any(), "could not record an event");
        }
    }

    /// The next retry delay of a failing object: 0.5 s doubling to 5 min,
    /// plus up to 10% deterministic jitter.
    pub fn failure_backoff(&self, key: &str) -> Duration {
        let attempt = {
            let mut failures = self.failures.lock().unwrap_or_else(|p| p.into_inner());
            let count = failures.entry(key.to_owned()).or_insert(0);
            *count = count.saturating_add(1);
            *count
        };
        backoff_delay(attempt, key)
    }

    pub fn reset_failures(&self, key: &str) {
        let mut failures = self.failures.lock().unwrap_or_else(|p| p.into_inner());
        failures.remove(key);
    }
}

pub(crate) fn backoff_delay(attempt: u32, key: &str) -> Duration {
    let exp = attempt.saturating_sub(1).min(20);
    let delay = BACKOFF_BASE.saturating_mul(1u32 << exp).min(BACKOFF_MAX);
    delay + jitter(key, delay / 10)
}

/// A deterministic delay in `[0, max)` derived from `seed` (FNV-1a), so
/// objects created together spread out, and one object always gets the
/// same offset.
pub fn jitter(seed: &str, max: Duration) -> Duration {
    let max_ms = max.as_millis() as u64;
    if max_ms == 0 {
        return Duration::ZERO;
    }
    let mut hash: u64 = 0xcbf2_9ce4_8422_2325;
    for byte in seed.bytes() {
        hash ^= u64::from(byte);
        hash = hash.wrapping_mul(0x0100_0000_01b3);
    }
    Duration::from_millis(hash % max_ms)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_doubles_and_caps() {
        let d1 = backoff_delay(1, "x");
        let d2 = backoff_delay(2, "x");
        let d10 = backoff_delay(11, "x");
        let d40 = backoff_delay(40, "x");
        assert!(d1 >= BACKOFF_BASE && d1 < BACKOFF_BASE * 2);
        assert!(d2 >= BACKOFF_BASE * 2 && d2 < BACKOFF_BASE * 3);
        assert!(d10 >= BACKOFF_MAX && d10 <= BACKOFF_MAX + BACKOFF_MAX / 10);
        assert!(d40 <= BACKOFF_MAX + BACKOFF_MAX / 10);
    }

    #[test]
    fn jitter_is_deterministic_and_bounded() {
        let max = Duration::from_secs(60);
        assert_eq!(jitter("uid-1", max), jitter("uid-1", max));
        assert!(jitter("uid-1", max) < max);
        assert_eq!(jitter("uid-1", Duration::ZERO), Duration::ZERO);
        let spread: std::collections::HashSet<_> = (0..1000)
            .map(|i| jitter(&format!("uid-{i}"), max).as_secs())
            .collect();
        assert!(spread.len() > 50, "1000 objects spread over many seconds");
    }
}
