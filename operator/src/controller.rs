//! Wires the watches, stores and the two controllers; runs them until
//! shutdown.

use std::sync::Arc;

use futures::StreamExt;
use futures::channel::mpsc;
use k8s_openapi::api::core::v1::{Namespace, Secret};
use kube::Client;
use kube::api::Api;
use kube::core::PartialObjectMeta;
use kube::runtime::controller::{Config as ControllerConfig, Controller};
use kube::runtime::events::{Recorder, Reporter};
use kube::runtime::reflector::{self, ObjectRef};
use kube::runtime::watcher::{self, Event};
use kube::runtime::{PredicateConfig, WatchStreamExt, predicates};
use sigil_crds::{MANAGED_BY_LABEL, MANAGED_BY_VALUE, OAuthClient, OAuthResource, SigningKey};

use crate::config::Args;
use crate::context::Context;
use crate::grants::{GrantSources, ResourceFanout, clients_in, namespace_grant_inputs};
use crate::health::Health;
use crate::issuer_ca;
use crate::metrics::Metrics;
use crate::reconcile::{self, oauth_client, oauth_resource, signing_key};
use crate::watch::{Scope, tolerant_reflector, with_watch_backoff};

/// Runs both controllers until `shutdown` resolves; they finish the
/// reconciles in flight first.
pub async fn run(
    client: Client,
    args: &Args,
    metrics: Arc<Metrics>,
    health: Arc<Health>,
    shutdown: impl Future<Output = ()> + Send + Sync + Clone + 'static,
) {
    let client_scope = Scope::from_list(&args.watch_namespaces);
    let key_scope = Scope::Namespace(args.namespace.clone());

    let (client_store, client_writer) = reflector::store::<OAuthClient>();
    let (key_store, key_writer) = reflector::store::<SigningKey>();
    let (resource_store, resource_writer) = reflector::store::<OAuthResource>();
    let (namespace_store, namespace_writer) = reflector::store::<PartialObjectMeta<Namespace>>();
    metrics.set_stores(client_store.clone(), key_store.clone());

    let reporter = Reporter {
        controller: crate::FIELD_MANAGER.to_owned(),
        instance: args.lease_identity.clone(),
    };
    // The issuer's CA bundle for client Secrets; every change of it
    // re-reconciles every client.
    let (issuer_ca, ca_changes) = issuer_ca::watch(
        client.clone(),
        &args.namespace,
        &args.tls_secret,
        &args.issuer_url,
    );
    let ctx = Arc::new(Context::new(
        client.clone(),
        Recorder::new(client.clone(), reporter),
        &args.issuer_url,
        issuer_ca,
        metrics.clone(),
        client_store.clone(),
        key_store.clone(),
        GrantSources {
            resources: resource_store.clone(),
            namespaces: namespace_store,
            unclaimed: args.unclaimed_audiences,
        },
    ));

    // A change to one OAuthClient can settle another's clientId conflict:
    // re-check the clients claiming the same id, and those marked duplicate.
    let (peer_tx, peer_rx) = mpsc::unbounded::<ObjectRef<OAuthClient>>();
    let index = ctx.client_index.clone();
    let client_events = tolerant_reflector(
        client.clone(),
        client_scope.clone(),
        client_writer,
        "OAuthClient",
        metrics.clone(),
        health.clone(),
    )
    .inspect(move |event| {
        let mut index = index.lock().unwrap_or_else(|p| p.into_inner());
        let peers = match event {
            Ok(Event::Init) => {
                index.clear();
                return;
            }
            Ok(Event::InitApply(c)) => {
                index.upsert(c);
                return;
            }
            Ok(Event::Apply(c)) => {
                let before = index.upsert(c);
                let now = c.client_id();
                let ids: Vec<&str> = std::iter::once(now.as_str())
                    .chain(before.as_deref())
                    .collect();
                index.peers(&ObjectRef::from_obj(c), &ids)
            }
            Ok(Event::Delete(c)) => {
                let before = index.remove(c);
                let ids: Vec<&str> = before.as_deref().into_iter().collect();
                index.peers(&ObjectRef::from_obj(c), &ids)
            }
            _ => return,
        };
        for peer in peers {
            let _ = peer_tx.unbounded_send(peer);
        }
    })
    .applied_objects()
    // Our own status writes change no generation: they need no reconcile.
    // (Secret edits, rotations and clientId conflicts have triggers of
    // their own.)
    .predicate_filter(predicates::generation, PredicateConfig::default());

    // Owned Secrets, by metadata only: an edit or a deletion triggers the
    // owner at once.
    let managed = format!("{MANAGED_BY_LABEL}={MANAGED_BY_VALUE}");
    let client_secrets = with_watch_backoff(watcher::watcher(
        client_scope.api::<PartialObjectMeta<Secret>>(client.clone()),
        watcher::Config::default().labels(&managed),
    ))
    .touched_objects();
    let key_secrets = with_watch_backoff(watcher::watcher(
        Api::<PartialObjectMeta<Secret>>::namespaced(client.clone(), &args.namespace),
        watcher::Config::default().labels(&managed),
    ))
    .touched_objects();

    // OAuthResources: every change re-checks who holds each audience, and
    // re-grants the clients that request its audience or scopes (before or
    // after the change). A relist may have missed deletions: it re-grants
    // everyone.
    let (grant_tx, grant_rx) = mpsc::unbounded::<ObjectRef<OAuthClient>>();
    let (claims_tx, claims_rx) = mpsc::unbounded::<()>();
    let (regrant_all_tx, regrant_all_rx) = mpsc::unbounded::<()>();
    let fanout = ResourceFanout::default();
    let clients_for_fanout = client_store.clone();
    let resource_events = tolerant_reflector(
        client.clone(),
        Scope::All,
        resource_writer,
        "OAuthResource",
        metrics.clone(),
        health.clone(),
    )
    .inspect(move |event| match event {
        Ok(Event::Apply(r) | Event::Delete(r)) => {
            for c in fanout.clients(r, &clients_for_fanout) {
                let _ = grant_tx.unbounded_send(c);
            }
            let _ = claims_tx.unbounded_send(());
        }
        Ok(Event::InitDone) => {
            let _ = regrant_all_tx.unbounded_send(());
            let _ = claims_tx.unbounded_send(());
        }
        _ => {}
    })
    .applied_objects()
    .predicate_filter(predicates::generation, PredicateConfig::default());

    // Namespaces, by metadata: their labels select grants and their
    // annotation allows client ids.
    let namespace_events = reflector::reflector(
        namespace_writer,
        with_watch_backoff(watcher::watcher(
            Api::<PartialObjectMeta<Namespace>>::all(client.clone()),
            watcher::Config::default(),
        )),
    )
    .applied_objects()
    .predicate_filter(
        |ns: &PartialObjectMeta<Namespace>| {
            use std::hash::{Hash, Hasher};
            let mut hasher = std::collections::hash_map::DefaultHasher::new();
            namespace_grant_inputs(ns).hash(&mut hasher);
            Some(hasher.finish())
        },
        PredicateConfig::default(),
    );
    // Driven on its own (not as a trigger of the client controller): a
    // reconcile waits for this store's first list, and a trigger stream is
    // not polled while the controller is busy, which held the first
    // reconciles after a leader change for the full wait.
    let (namespace_tx, namespace_rx) = mpsc::unbounded::<ObjectRef<OAuthClient>>();
    let clients_for_namespaces = client_store.clone();
    let namespace_watch = namespace_events.for_each(move |namespace| {
        if let Ok(namespace) = namespace {
            for c in clients_in(&namespace, &clients_for_namespaces) {
                let _ = namespace_tx.unbounded_send(c);
            }
        }
        futures::future::ready(())
    });

    let key_events = tolerant_reflector(
        client.clone(),
        key_scope,
        key_writer,
        "SigningKey",
        metrics.clone(),
        health.clone(),
    )
    .applied_objects();

    let config = ControllerConfig::default().concurrency(args.concurrency);
    // Each controller also backs off on the errors of its merged triggers,
    // by default like client-go (800 ms doubling to 30 s, reset only after
    // 120 s): during an API server outage every watch error there paused
    // all of its triggers, watches included, up to 30 s at a time, so a
    // client created after the outage waited 40-55 s. Faster watch backoffs
    // made it worse (more errors, so the outer backoff reached 30 s sooner),
    // and even a 4 s trigger backoff stacked one pause per failing watch.
    // Every trigger that can fail is a watch with a backoff of its own, so
    // the controllers add none.
    let client_controller = Controller::for_stream(client_events, client_store.clone())
        .trigger_backoff(NoTriggerBackoff)
        .owns_stream(client_secrets)
        .reconcile_on(peer_rx)
        .reconcile_all_on(ca_changes)
        .reconcile_on(grant_rx)
        .reconcile_all_on(regrant_all_rx)
        .reconcile_on(namespace_rx)
        .with_config(config.clone())
        .graceful_shutdown_on(shutdown.clone())
        .run(
            oauth_client::reconcile,
            reconcile::error_policy,
            ctx.clone(),
        )
        .for_each(|result| async move {
            if let Err(error) = result {
                tracing::debug!(%error, "OAuthClient controller event");
            }
        });
    let key_controller = Controller::for_stream(key_events, key_store.clone())
        .trigger_backoff(NoTriggerBackoff)
        .owns_stream(key_secrets)
        .with_config(config.clone())
        .graceful_shutdown_on(shutdown.clone())
        .run(signing_key::reconcile, reconcile::error_policy, ctx.clone())
        .for_each(|result| async move {
            if let Err(error) = result {
                tracing::debug!(%error, "SigningKey controller event");
            }
        });

    let resource_controller = Controller::for_stream(resource_events, resource_store)
        .trigger_backoff(NoTriggerBackoff)
        .reconcile_all_on(claims_rx)
        .with_config(config)
        .graceful_shutdown_on(shutdown)
        .run(
            oauth_resource::reconcile,
            reconcile::error_policy,
            ctx.clone(),
        )
        .for_each(|result| async move {
            if let Err(error) = result {
                tracing::debug!(%error, "OAuthResource controller event");
            }
        });

    tracing::info!(namespace = %args.namespace, "controllers running");
    // The namespace watch ends with the controllers (its stream is endless).
    tokio::select! {
        _ = async { futures::join!(client_controller, key_controller, resource_controller) } => {}
        _ = namespace_watch => {}
    }
    health.reset_listed();
    tracing::info!("controllers stopped");
}

/// A trigger backoff that never waits: the watches behind the triggers
/// back off themselves ([`with_watch_backoff`]), so an error is already one
/// attempt per backoff step and needs no second pause.
struct NoTriggerBackoff;

impl Iterator for NoTriggerBackoff {
    type Item = std::time::Duration;

    fn next(&mut self) -> Option<std::time::Duration> {
        // `None` would end the trigger stream; zero means "go on at once".
        Some(std::time::Duration::ZERO)
    }
}

impl kube::runtime::utils::Backoff for NoTriggerBackoff {
    fn reset(&mut self) {}
}
