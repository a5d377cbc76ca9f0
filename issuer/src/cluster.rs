//! Cluster mode: kube-runtime watches of `OAuthClient` (cluster-wide),
//! `SigningKey` and the `<name>-keys` Secrets (the issuer's namespace)
//! feed the store. Requests never wait for the API server; when it goes
//! away the watches retry with backoff while the issuer serves from what it
//! has, and a metric plus a log line say so.

use std::collections::{BTreeMap, HashSet};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU8, Ordering};

use futures::{Stream, StreamExt};
use k8s_openapi::api::core::v1::Secret;
use kube::Api;
use kube::runtime::WatchStreamExt;
use kube::runtime::watcher::{self, Event};
use sigil_crds::backoff::WatchBackoff;
use sigil_crds::{OAuthClient, SigningKey};

use crate::admission::ClientDirectory;
use crate::metrics::{Metrics, ResourceLabel};
use crate::store::{ObjectKey, Store};

const RESOURCES: [&str; 3] = ["oauthclients", "signingkeys", "secrets"];

/// Which watches have listed at least once and which are connected now.
struct Health {
    store: Arc<Store>,
    metrics: Arc<Metrics>,
    synced: [AtomicBool; 3],
    /// Bit i set while watch i is failing.
    failing: AtomicU8,
}

impl Health {
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

/// Runs the three watches until the process ends. The OAuthClient watch
/// also feeds the admission webhook's `directory`.
pub async fn run(
    client: kube::Client,
    namespace: String,
    store: Arc<Store>,
    metrics: Arc<Metrics>,
    directory: Arc<ClientDirectory>,
) {
    let health = Arc::new(Health {
        store: store.clone(),
        metrics: metrics.clone(),
        synced: Default::default(),
        failing: AtomicU8::new(0),
    });
    metrics.apiserver_connected.set(0);
    let config = watcher::Config::default();
    let clients = watch_clients(
        watcher::watcher(Api::<OAuthClient>::all(client.clone()), config.clone())
            .backoff(WatchBackoff::default()),
        store.clone(),
        directory,
        health.clone(),
    );
    let keys = watch_signing_keys(
        watcher::watcher(
            Api::<SigningKey>::namespaced(client.clone(), &namespace),
            config.clone(),
        )
        .backoff(WatchBackoff::default()),
        store.clone(),
        health.clone(),
    );
    let secrets = watch_key_secrets(
        watcher::watcher(Api::<Secret>::namespaced(client, &namespace), config)
            .backoff(WatchBackoff::default()),
        store,
        health,
    );
    tokio::join!(clients, keys, secrets);
}

async fn watch_clients(
    stream: impl Stream<Item = Result<Event<OAuthClient>, watcher::Error>>,
    store: Arc<Store>,
    directory: Arc<ClientDirectory>,
    health: Arc<Health>,
) {
    let mut stream = std::pin::pin!(stream);
    let mut listing: Vec<OAuthClient> = Vec::new();
    while let Some(event) = stream.next().await {
        match event {
            Ok(Event::Init) => listing.clear(),
            Ok(Event::InitApply(client)) => listing.push(client),
            Ok(Event::InitDone) => {
                store.replace_clients(&listing);
                directory.replace(&listing);
                tracing::info!(clients = store.client_count(), "listed OAuthClients");
                listing = Vec::new();
                health.listed(0);
            }
            Ok(Event::Apply(client)) => {
                store.upsert_client(&client);
                directory.upsert(&client);
                tracing::debug!(client = %ObjectKey::of(&client.metadata), "OAuthClient updated");
                health.connected(0);
            }
            Ok(Event::Delete(client)) => {
                store.remove_client(&ObjectKey::of(&client.metadata));
                directory.remove(&ObjectKey::of(&client.metadata));
                tracing::info!(client = %ObjectKey::of(&client.metadata), "OAuthClient deleted");
                health.connected(0);
            }
            Err(error) => health.failed(0, &error),
        }
    }
}

async fn watch_signing_keys(
    stream: impl Stream<Item = Result<Event<SigningKey>, watcher::Error>>,
    store: Arc<Store>,
    health: Arc<Health>,
) {
    let mut stream = std::pin::pin!(stream);
    let mut listing: Vec<SigningKey> = Vec::new();
    let mut known: HashSet<String> = HashSet::new();
    while let Some(event) = stream.next().await {
        match event {
            Ok(Event::Init) => listing.clear(),
            Ok(Event::InitApply(key)) => listing.push(key),
            Ok(Event::InitDone) => {
                let names: HashSet<String> = listing
                    .iter()
                    .filter_map(|k| k.metadata.name.clone())
                    .collect();
                for gone in known.difference(&names) {
                    store.remove_signing_key(gone);
                }
                for key in &listing {
                    store.upsert_signing_key(key);
                }
                known = names;
                listing = Vec::new();
                health.listed(1);
            }
            Ok(Event::Apply(key)) => {
                if let Some(name) = &key.metadata.name {
                    known.insert(name.clone());
                }
                store.upsert_signing_key(&key);
                health.connected(1);
            }
            Ok(Event::Delete(key)) => {
                if let Some(name) = &key.metadata.name {
                    known.remove(name);
                    store.remove_signing_key(name);
                }
                health.connected(1);
            }
            Err(error) => health.failed(1, &error),
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

async fn watch_key_secrets(
    stream: impl Stream<Item = Result<Event<Secret>, watcher::Error>>,
    store: Arc<Store>,
    health: Arc<Health>,
) {
    let mut stream = std::pin::pin!(stream);
    let mut listing: Vec<(String, BTreeMap<String, String>)> = Vec::new();
    let mut known: HashSet<String> = HashSet::new();
    while let Some(event) = stream.next().await {
        match event {
            Ok(Event::Init) => listing.clear(),
            Ok(Event::InitApply(secret)) => listing.extend(key_pems(&secret)),
            Ok(Event::InitDone) => {
                let names: HashSet<String> = listing.iter().map(|(n, _)| n.clone()).collect();
                for gone in known.difference(&names) {
                    store.remove_key_secret(gone);
                }
                for (name, pems) in listing.drain(..) {
                    store.upsert_key_secret(&name, pems);
                }
                known = names;
                health.listed(2);
            }
            Ok(Event::Apply(secret)) => {
                if let Some((name, pems)) = key_pems(&secret) {
                    known.insert(name.clone());
                    store.upsert_key_secret(&name, pems);
                }
                health.connected(2);
            }
            Ok(Event::Delete(secret)) => {
                if let Some((name, _)) = key_pems(&secret) {
                    known.remove(&name);
                    store.remove_key_secret(&name);
                }
                health.connected(2);
            }
            Err(error) => health.failed(2, &error),
        }
    }
}
