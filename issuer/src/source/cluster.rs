//! Cluster mode: kube-runtime watches of `OAuthClient` and `OAuthResource`
//! (cluster-wide), `SigningKey` and the `<name>-keys` Secrets (the issuer's
//! namespace, selected by the `sigil.dev/signing-key` label) feed the
//! store. Requests never wait for the API server; when it goes
//! away the watches retry with backoff while the issuer serves from what it
//! has, and a metric plus a log line say so.

use std::collections::{BTreeMap, HashSet};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU8, Ordering};

use futures::{Stream, StreamExt};
use k8s_openapi::api::core::v1::Secret;
use kube::Api;
use kube::api::{ApiResource, DynamicObject};
use kube::runtime::watcher::{self, Event};
use sigil_crds::watch::{Undecodable, guarded_watcher, with_watch_backoff};
use sigil_crds::{OAuthClient, OAuthResource, SIGNING_KEY_LABEL, SigningKey};

use crate::index::{ObjectKey, Store};
use crate::inject::admission::ClientDirectory;
use crate::metrics::{Metrics, ResourceLabel};

const RESOURCES: [&str; 4] = ["oauthclients", "signingkeys", "secrets", "oauthresources"];

/// Which watches have listed at least once and which are connected now:
/// drives the store's readiness and the `apiserver_connected` metric
/// (the operator's `Health` is about leadership and probes instead).
struct WatchStatus {
    store: Arc<Store>,
    metrics: Arc<Metrics>,
    synced: [AtomicBool; 4],
    /// Bit i set while watch i is failing.
    failing: AtomicU8,
}

impl WatchStatus {
    fn listed(&self, index: usize) {
        self.synced[index].store(true, Ordering::Release);
        if self.synced.iter().all(|s| s.load(Ordering::Acquire)) {
            self.store.mark_synced();
        }
        self.connected(index);
    }

    fn connected(&self, index: usize) {
        let before = self.failing.fetch_and(!(1 << index), Ordering::AcqRel);
        if before & (1 << index) != 0 {
            tracing::info!(
                resource = RESOURCES[index],
                "watch reconnected to the API server"
            );
        }
        if before & !(1 << index) == 0 {
            self.metrics.apiserver_connected.set(1);
        }
    }

    fn failed(&self, index: usize, error: &watcher::Error) {
        self.metrics
            .watch_errors
            .get_or_create(&ResourceLabel {
                resource: RESOURCES[index],
            })
            .inc();
        let before = self.failing.fetch_or(1 << index, Ordering::AcqRel);
        self.metrics.apiserver_connected.set(0);
        if before & (1 << index) == 0 {
            tracing::warn!(
                resource = RESOURCES[index],
                %error,
                "lost the API server; serving from cached clients and keys until it returns"
            );
        } else {
            tracing::debug!(resource = RESOURCES[index], %error, "watch still failing");
        }
    }
}

/// One resource's consumer of watch events, as linkerd2's
/// `IndexNamespacedResource`: every watch feeds its index the same way
/// ([`feed`]), so listing, re-listing and deletions follow one rule.
trait Index<K> {
    fn apply(&mut self, obj: K);
    fn delete(&mut self, obj: K);
    /// A complete (re-)list: exactly these objects exist now.
    fn reset(&mut self, objs: Vec<K>);
}

/// OAuthClients (cluster-wide) → the token store and the webhook's directory.
struct ClientIndex {
    store: Arc<Store>,
    directory: Arc<ClientDirectory>,
}

impl Index<OAuthClient> for ClientIndex {
    fn apply(&mut self, client: OAuthClient) {
        self.store.upsert_client(&client);
        self.directory.upsert(&client);
        tracing::debug!(client = %ObjectKey::of(&client.metadata), "OAuthClient updated");
    }

    fn delete(&mut self, client: OAuthClient) {
        let key = ObjectKey::of(&client.metadata);
        self.store.remove_client(&key);
        self.directory.remove(&key);
        tracing::info!(client = %key, "OAuthClient deleted");
    }

    fn reset(&mut self, clients: Vec<OAuthClient>) {
        self.store.replace_clients(&clients);
        self.directory.replace(&clients);
        tracing::info!(clients = self.store.client_count(), "listed OAuthClients");
    }
}

/// OAuthResources (cluster-wide) → the audiences' owners and token formats.
struct ResourceIndex {
    store: Arc<Store>,
}

impl Index<OAuthResource> for ResourceIndex {
    fn apply(&mut self, resource: OAuthResource) {
        self.store.upsert_resource(&resource);
    }

    fn delete(&mut self, resource: OAuthResource) {
        self.store
            .remove_resource(&ObjectKey::of(&resource.metadata));
    }

    fn reset(&mut self, resources: Vec<OAuthResource>) {
        self.store.replace_resources(&resources);
        tracing::info!(resources = resources.len(), "listed OAuthResources");
    }
}

/// SigningKeys of the issuer's namespace → the store's rings.
struct SigningKeyIndex {
    store: Arc<Store>,
    known: HashSet<String>,
}

impl Index<SigningKey> for SigningKeyIndex {
    fn apply(&mut self, key: SigningKey) {
        if let Some(name) = &key.metadata.name {
            self.known.insert(name.clone());
        }
        self.store.upsert_signing_key(&key);
    }

    fn delete(&mut self, key: SigningKey) {
        if let Some(name) = &key.metadata.name {
            self.known.remove(name);
            self.store.remove_signing_key(name);
        }
    }

    fn reset(&mut self, keys: Vec<SigningKey>) {
        let names: HashSet<String> = keys
            .iter()
            .filter_map(|k| k.metadata.name.clone())
            .collect();
        for gone in self.known.difference(&names) {
            self.store.remove_signing_key(gone);
        }
        for key in &keys {
            self.store.upsert_signing_key(key);
        }
        self.known = names;
    }
}

/// The signing-key Secrets (`<SigningKey name>-keys`) → the store's private
/// keys. Other Secrets of the namespace are ignored.
struct KeySecretIndex {
    store: Arc<Store>,
    known: HashSet<String>,
}

impl Index<Secret> for KeySecretIndex {
    fn apply(&mut self, secret: Secret) {
        if let Some((name, pems)) = key_pems(&secret) {
            self.known.insert(name.clone());
            self.store.upsert_key_secret(&name, pems);
        }
    }

    fn delete(&mut self, secret: Secret) {
        if let Some((name, _)) = key_pems(&secret) {
            self.known.remove(&name);
            self.store.remove_key_secret(&name);
        }
    }

    fn reset(&mut self, secrets: Vec<Secret>) {
        let listed: Vec<(String, BTreeMap<String, String>)> =
            secrets.iter().filter_map(key_pems).collect();
        let names: HashSet<String> = listed.iter().map(|(n, _)| n.clone()).collect();
        for gone in self.known.difference(&names) {
            self.store.remove_key_secret(gone);
        }
        for (name, pems) in listed {
            self.store.upsert_key_secret(&name, pems);
        }
        self.known = names;
    }
}

/// Runs the three watches until the process ends. The OAuthClient watch
/// also feeds the admission webhook's `directory`.
pub async fn run(
    client: kube::Client,
    namespace: String,
    store: Arc<Store>,
    metrics: Arc<Metrics>,
    directory: Arc<ClientDirectory>,
) {
    let health = Arc::new(WatchStatus {
        store: store.clone(),
        metrics: metrics.clone(),
        synced: Default::default(),
        failing: AtomicU8::new(0),
    });
    metrics.apiserver_connected.set(0);
    let api = |resource: ApiResource, namespace: Option<&str>| match namespace {
        Some(ns) => Api::<DynamicObject>::namespaced_with(client.clone(), ns, &resource),
        None => Api::<DynamicObject>::all_with(client.clone(), &resource),
    };
    let config = watcher::Config::default();
    let clients = feed(
        guarded_watcher::<OAuthClient>(
            api(ApiResource::erase::<OAuthClient>(&()), None),
            config.clone(),
            report_undecodable(metrics.clone(), RESOURCES[0]),
        ),
        ClientIndex {
            store: store.clone(),
            directory,
        },
        health.clone(),
        0,
    );
    let keys = feed(
        guarded_watcher::<SigningKey>(
            api(ApiResource::erase::<SigningKey>(&()), Some(&namespace)),
            config.clone(),
            report_undecodable(metrics.clone(), RESOURCES[1]),
        ),
        SigningKeyIndex {
            store: store.clone(),
            known: HashSet::new(),
        },
        health.clone(),
        1,
    );
    // Only the signing-key Secrets, by label: the namespace's other
    // Secrets (the CA key's, client Secrets) are never asked for. RBAC
    // cannot narrow a list by label; this selector does, and the system
    // test's audit log checks it.
    let secrets = feed(
        guarded_watcher::<Secret>(
            api(ApiResource::erase::<Secret>(&()), Some(&namespace)),
            config.clone().labels(SIGNING_KEY_LABEL),
            report_undecodable(metrics.clone(), RESOURCES[2]),
        ),
        KeySecretIndex {
            store: store.clone(),
            known: HashSet::new(),
        },
        health.clone(),
        2,
    );
    let resources = feed(
        guarded_watcher::<OAuthResource>(
            api(ApiResource::erase::<OAuthResource>(&()), None),
            config,
            report_undecodable(metrics, RESOURCES[3]),
        ),
        ResourceIndex { store },
        health,
        3,
    );
    tokio::join!(clients, keys, secrets, resources);
}

/// Logs and counts an object a watch skipped.
fn report_undecodable(metrics: Arc<Metrics>, resource: &'static str) -> impl Fn(Undecodable) {
    move |skipped| {
        metrics
            .undecodable_objects
            .get_or_create(&ResourceLabel { resource })
            .inc();
        tracing::warn!(resource, namespace = %skipped.namespace, name = %skipped.name, error = %skipped.error, "skipping an object that does not deserialize");
    }
}

/// Feeds one watch into its index, with the capped backoff of
/// [`with_watch_backoff`] and the health bookkeeping of watch `slot`.
async fn feed<K, I>(
    stream: impl Stream<Item = Result<Event<K>, watcher::Error>> + Send + 'static,
    mut index: I,
    health: Arc<WatchStatus>,
    slot: usize,
) where
    K: Send + 'static,
    I: Index<K>,
{
    let mut stream = std::pin::pin!(with_watch_backoff(stream));
    let mut listing: Vec<K> = Vec::new();
    while let Some(event) = stream.next().await {
        match event {
            Ok(Event::Init) => listing.clear(),
            Ok(Event::InitApply(obj)) => listing.push(obj),
            Ok(Event::InitDone) => {
                index.reset(std::mem::take(&mut listing));
                health.listed(slot);
            }
            Ok(Event::Apply(obj)) => {
                index.apply(obj);
                health.connected(slot);
            }
            Ok(Event::Delete(obj)) => {
                index.delete(obj);
                health.connected(slot);
            }
            Err(error) => health.failed(slot, &error),
        }
    }
}

/// Only the signing-key Secrets matter (`<SigningKey name>-keys`); their
/// data maps kid → PKCS#8 PEM.
fn key_pems(secret: &Secret) -> Option<(String, BTreeMap<String, String>)> {
    let name = secret.metadata.name.clone()?;
    if !name.ends_with("-keys") {
        return None;
    }
    let pems = secret
        .data
        .iter()
        .flatten()
        .filter_map(|(kid, value)| {
            let pem = String::from_utf8(value.0.clone()).ok()?;
            pem.contains("-----BEGIN").then(|| (kid.clone(), pem))
        })
        .collect();
    Some((name, pems))
}
