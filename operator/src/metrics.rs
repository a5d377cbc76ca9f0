//! Prometheus metrics (`/metrics`): reconciles by kind and result, their
//! duration, signing keys by state, OAuthClients by readiness, leadership.
//!
//! Gauges about objects are computed from the reflector stores when scraped,
//! so deleted objects disappear without bookkeeping.

use std::sync::Mutex;
use std::time::Duration;

use kube::ResourceExt;
use kube::runtime::reflector::Store;
use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::Registry;
use sigil_crds::{CONDITION_READY, OAuthClient, SigningKey};

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ReconcileLabels {
    pub kind: &'static str,
    pub result: &'static str,
}

/// A failed reconcile by kind and error kind ([`crate::context::Error::metric_label`]).
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct FailureLabels {
    pub kind: &'static str,
    pub error: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct KindLabels {
    pub kind: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct KeyLabels {
    pub namespace: String,
    pub signingkey: String,
    pub state: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct RingLabels {
    pub namespace: String,
    pub signingkey: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ReadyLabels {
    pub ready: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct CertificateLabels {
    /// `serving` (the issuer's certificate) or `ca` (the CA that signs it).
    pub certificate: &'static str,
}

type HistogramFamily = Family<KindLabels, Histogram, fn() -> Histogram>;

pub struct Metrics {
    registry: Registry,
    pub reconciles: Family<ReconcileLabels, Counter>,
    pub reconcile_duration: HistogramFamily,
    pub reconcile_failures: Family<FailureLabels, Counter>,
    pub signing_keys: Family<KeyLabels, Gauge>,
    /// When each ring's active key is due to stop signing.
    pub rotation_due: Family<RingLabels, Gauge>,
    pub oauth_clients: Family<ReadyLabels, Gauge>,
    pub leader: Gauge,
    pub skipped_objects: Family<KindLabels, Counter>,
    /// notAfter of the issuer's serving certificate and of its CA.
    pub webhook_tls_expiry: Family<CertificateLabels, Gauge>,
    /// Stores to compute object gauges from, once this replica leads.
    stores: Mutex<Option<(Store<OAuthClient>, Store<SigningKey>)>>,
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

impl Metrics {
    pub fn new() -> Self {
        let mut registry = Registry::with_prefix("sigil_operator");
        let reconciles = Family::<ReconcileLabels, Counter>::default();
        registry.register(
            "reconciles",
            "Reconciles by kind and result (success, error)",
            reconciles.clone(),
        );
        let reconcile_duration: HistogramFamily =
            Family::new_with_constructor(|| Histogram::new(exponential_buckets(0.001, 2.0, 16)));
        registry.register(
            "reconcile_duration_seconds",
            "Duration of one reconcile, by kind",
            reconcile_duration.clone(),
        );
        let reconcile_failures = Family::<FailureLabels, Counter>::default();
        registry.register(
            "reconcile_failures",
            "Failed reconciles by kind and error kind (kube_api, key_generation, key_task, random, invalid, pki, not_ours)",
            reconcile_failures.clone(),
        );
        let signing_keys = Family::<KeyLabels, Gauge>::default();
        registry.register(
            "signing_keys",
            "Keys in each SigningKey ring, by state",
            signing_keys.clone(),
        );
        let rotation_due = Family::<RingLabels, Gauge>::default();
        registry.register(
            "signing_key_rotation_due_timestamp_seconds",
            "When the active key of each SigningKey is due to stop signing (Unix time): its successor's activation, else its activation plus rotationInterval. Absent while a ring has no active key",
            rotation_due.clone(),
        );
        let oauth_clients = Family::<ReadyLabels, Gauge>::default();
        registry.register(
            "oauth_clients",
            "OAuthClients by Ready condition (true, false, unknown)",
            oauth_clients.clone(),
        );
        let leader = Gauge::default();
        registry.register(
            "leader",
            "1 while this replica holds the leader Lease",
            leader.clone(),
        );
        let skipped_objects = Family::<KindLabels, Counter>::default();
        registry.register(
            "undecodable_objects",
            "Watch events skipped because the object did not deserialize",
            skipped_objects.clone(),
        );
        let webhook_tls_expiry = Family::<CertificateLabels, Gauge>::default();
        registry.register(
            "webhook_tls_expiry_timestamp_seconds",
            "notAfter (Unix time) of the issuer's serving certificate and of its signing CA, as the operator last wrote them",
            webhook_tls_expiry.clone(),
        );
        Metrics {
            registry,
            webhook_tls_expiry,
            reconciles,
            reconcile_duration,
            reconcile_failures,
            signing_keys,
            rotation_due,
            oauth_clients,
            leader,
            skipped_objects,
            stores: Mutex::new(None),
        }
    }

    /// One reconcile: `Err` holds the error's metric label.
    pub fn observe_reconcile(
        &self,
        kind: &'static str,
        result: Result<(), &'static str>,
        elapsed: Duration,
    ) {
        if let Err(error) = result {
            self.reconcile_failures
                .get_or_create(&FailureLabels { kind, error })
                .inc();
        }
        let result = if result.is_ok() { "success" } else { "error" };
        self.reconciles
            .get_or_create(&ReconcileLabels { kind, result })
            .inc();
        self.reconcile_duration
            .get_or_create(&KindLabels { kind })
            .observe(elapsed.as_secs_f64());
    }

    pub fn set_stores(&self, oauth_clients: Store<OAuthClient>, signing_keys: Store<SigningKey>) {
        *self.stores.lock().unwrap_or_else(|p| p.into_inner()) =
            Some((oauth_clients, signing_keys));
    }

    /// The Prometheus text exposition.
    pub fn encode(&self) -> Result<String, std::fmt::Error> {
        self.refresh_object_gauges();
        let mut out = String::new();
        prometheus_client::encoding::text::encode(&mut out, &self.registry)?;
        Ok(out)
    }

    fn refresh_object_gauges(&self) {
        let stores = self
            .stores
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone();
        let Some((oauth_clients, signing_keys)) = stores else {
            return;
        };
        let (mut ready, mut not_ready, mut unknown) = (0i64, 0i64, 0i64);
        for client in oauth_clients.state() {
            let condition = client
                .status
                .as_ref()
                .and_then(|s| s.conditions.iter().find(|c| c.type_ == CONDITION_READY));
            match condition.map(|c| c.status.as_str()) {
                Some("True") => ready += 1,
                Some("False") => not_ready += 1,
                _ => unknown += 1,
            }
        }
        self.oauth_clients
            .get_or_create(&ReadyLabels { ready: "true" })
            .set(ready);
        self.oauth_clients
            .get_or_create(&ReadyLabels { ready: "false" })
            .set(not_ready);
        self.oauth_clients
            .get_or_create(&ReadyLabels { ready: "unknown" })
            .set(unknown);

        self.signing_keys.clear();
        self.rotation_due.clear();
        for key in signing_keys.state() {
            let namespace = key.namespace().unwrap_or_default();
            let name = key.name_any();
            if let Some(due) = rotation_due(&key) {
                self.rotation_due
                    .get_or_create(&RingLabels {
                        namespace: namespace.clone(),
                        signingkey: name.clone(),
                    })
                    .set(due.as_second());
            }
            for (state, label) in [
                (sigil_crds::KeyState::Pending, "Pending"),
                (sigil_crds::KeyState::Active, "Active"),
                (sigil_crds::KeyState::Retired, "Retired"),
            ] {
                let count = key
                    .status
                    .as_ref()
                    .map(|s| s.keys.iter().filter(|k| k.state == state).count())
                    .unwrap_or(0);
                self.signing_keys
                    .get_or_create(&KeyLabels {
                        namespace: namespace.clone(),
                        signingkey: name.clone(),
                        state: label,
                    })
                    .set(count as i64);
            }
        }
    }
}

/// When the active key of `key`'s ring is due to stop signing: the
/// activation of its scheduled successor, else its own activation plus
/// `rotationInterval` (the successor is made `prePublish` before that).
/// `None` without an active key. A healthy operator keeps this in the
/// future; one that cannot rotate lets it pass (KeyRotationOverdue).
pub fn rotation_due(key: &SigningKey) -> Option<jiff::Timestamp> {
    let active = key
        .status
        .as_ref()?
        .keys
        .iter()
        .find(|k| k.state == sigil_crds::KeyState::Active)?;
    if let Some(retires_at) = &active.retires_at {
        return Some(retires_at.0);
    }
    let interval = jiff::SignedDuration::try_from(key.spec.rotation_interval()).ok()?;
    active.activates_at.0.checked_add(interval).ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn encodes_reconcile_metrics() {
        let metrics = Metrics::new();
        metrics.observe_reconcile("OAuthClient", Ok(()), Duration::from_millis(3));
        metrics.observe_reconcile("OAuthClient", Err("kube_api"), Duration::from_millis(3));
        metrics.leader.set(1);
        let text = metrics.encode().expect("encodes");
        assert!(
            text.contains(
                r#"sigil_operator_reconciles_total{kind="OAuthClient",result="success"} 1"#
            ),
            "{text}"
        );
        assert!(
            text.contains("sigil_operator_reconcile_duration_seconds_bucket"),
            "{text}"
        );
        assert!(text.contains("sigil_operator_leader 1"), "{text}");
        assert!(
            text.contains(
                r#"sigil_operator_reconcile_failures_total{kind="OAuthClient",error="kube_api"} 1"#
            ),
            "{text}"
        );
    }

    fn ring(spec: serde_json::Value, keys: serde_json::Value) -> SigningKey {
        serde_json::from_value(serde_json::json!({
            "apiVersion": "sigil.dev/v1alpha1",
            "kind": "SigningKey",
            "metadata": {"name": "default", "namespace": "sigil-system"},
            "spec": spec,
            "status": {"keys": keys},
        }))
        .expect("a SigningKey")
    }

    #[test]
    fn rotation_is_due_one_interval_after_activation_or_when_the_successor_activates() {
        let key = |kid: &str, state: &str, activates: &str, retires: Option<&str>| {
            let mut k = serde_json::json!({
                "kid": kid, "state": state,
                "createdAt": "2026-01-01T00:00:00Z", "activatesAt": activates,
            });
            if let Some(r) = retires {
                k["retiresAt"] = r.into();
            }
            k
        };
        let only_active = ring(
            serde_json::json!({"rotationInterval": "48h"}),
            serde_json::json!([key("a", "Active", "2026-01-02T00:00:00Z", None)]),
        );
        assert_eq!(
            rotation_due(&only_active).map(|t| t.to_string()),
            Some("2026-01-04T00:00:00Z".to_owned())
        );
        // The default interval (720h) when the spec names none.
        let default_interval = ring(
            serde_json::json!({}),
            serde_json::json!([key("a", "Active", "2026-01-01T00:00:00Z", None)]),
        );
        assert_eq!(
            rotation_due(&default_interval).map(|t| t.to_string()),
            Some("2026-01-31T00:00:00Z".to_owned())
        );
        // A forced rotation scheduled the successor earlier than that.
        let successor_scheduled = ring(
            serde_json::json!({"rotationInterval": "48h"}),
            serde_json::json!([
                key(
                    "a",
                    "Active",
                    "2026-01-02T00:00:00Z",
                    Some("2026-01-02T06:00:00Z")
                ),
                key("b", "Pending", "2026-01-02T06:00:00Z", None),
            ]),
        );
        assert_eq!(
            rotation_due(&successor_scheduled).map(|t| t.to_string()),
            Some("2026-01-02T06:00:00Z".to_owned())
        );
        let no_active = ring(
            serde_json::json!({}),
            serde_json::json!([key("b", "Pending", "2026-01-02T06:00:00Z", None)]),
        );
        assert_eq!(rotation_due(&no_active), None);
        let no_status = ring(serde_json::json!({}), serde_json::json!([]));
        assert_eq!(rotation_due(&no_status), None);
    }
}
