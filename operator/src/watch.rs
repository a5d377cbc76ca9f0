//! Watches that survive one bad object.
//!
//! A typed watcher fails a whole list or watch event when one object does
//! not deserialize, and retries forever. Here the custom resources are
//! watched as `DynamicObject`s and decoded one by one: an object that does
//! not decode is logged, counted and skipped, and every other object keeps
//! being reconciled.

use std::collections::HashSet;
use std::fmt::Debug;
use std::sync::Arc;

use futures::{Stream, StreamExt};
use kube::api::{Api, ApiResource, DynamicObject};
use kube::runtime::reflector::{self, store::Writer};
use kube::runtime::watcher::{self, Event};
use kube::{Client, Resource};
use serde::de::DeserializeOwned;
use sigil_crds::watch::{Undecodable, decode_event as decode_event_guarded, event_object};

use crate::health::Health;
use crate::metrics::{KindLabels, Metrics};

/// Where to watch.
#[derive(Clone, Debug)]
pub enum Scope {
    All,
    Namespace(String),
    /// Watched cluster-wide and filtered here.
    Namespaces(HashSet<String>),
}

impl Scope {
    pub fn from_list(namespaces: &[String]) -> Scope {
        let set: HashSet<String> = namespaces
            .iter()
            .map(|n| n.trim().to_owned())
            .filter(|n| !n.is_empty())
            .collect();
        match set.len() {
            0 => Scope::All,
            1 => Scope::Namespace(set.into_iter().next().unwrap_or_default()),
            _ => Scope::Namespaces(set),
        }
    }

    pub fn api<K>(&self, client: Client) -> Api<K>
    where
        K: Resource<Scope = kube::core::NamespaceResourceScope, DynamicType = ()>,
    {
        match self {
            Scope::Namespace(ns) => Api::namespaced(client, ns),
            Scope::All | Scope::Namespaces(_) => Api::all(client),
        }
    }

    fn admits(&self, namespace: Option<&str>) -> bool {
        match self {
            Scope::Namespaces(set) => namespace.is_some_and(|ns| set.contains(ns)),
            _ => true,
        }
    }
}

/// Decodes one watcher event of the scope ([`sigil_crds::watch`] does the
/// decoding); `None` drops an object outside the scope or undecodable.
fn decode_event<K>(
    event: Event<DynamicObject>,
    kind: &'static str,
    metrics: &Metrics,
    health: &Health,
    scope: &Scope,
) -> Option<Event<K>>
where
    K: Resource<DynamicType = ()> + DeserializeOwned,
{
    if event_object(&event).is_some_and(|obj| !scope.admits(obj.metadata.namespace.as_deref())) {
        return None;
    }
    match &event {
        Event::Init => tracing::debug!(kind, "listing"),
        Event::InitDone => health.mark_listed(kind),
        _ => {}
    }
    decode_event_guarded(event, |skipped: Undecodable| {
        metrics
            .skipped_objects
            .get_or_create(&KindLabels { kind })
            .inc();
        tracing::warn!(kind, namespace = %skipped.namespace, name = %skipped.name, error = %skipped.error, "skipping an object that does not deserialize");
    })
}

/// A reflector-backed stream of events of `K`, tolerant of undecodable
/// objects. Events are yielded after the store has applied them.
pub fn tolerant_reflector<K>(
    client: Client,
    scope: Scope,
    writer: Writer<K>,
    kind: &'static str,
    metrics: Arc<Metrics>,
    health: Arc<Health>,
) -> impl Stream<Item = Result<Event<K>, watcher::Error>> + Send + 'static
where
    K: Resource<DynamicType = (), Scope = kube::core::NamespaceResourceScope>
        + DeserializeOwned
        + Clone
        + Debug
        + Send
        + Sync
        + 'static,
{
    let resource = ApiResource::erase::<K>(&());
    let api: Api<DynamicObject> = match &scope {
        Scope::Namespace(ns) => Api::namespaced_with(client, ns, &resource),
        Scope::All | Scope::Namespaces(_) => Api::all_with(client, &resource),
    };
    let events = with_watch_backoff(watcher::watcher(api, watcher::Config::default())).filter_map(
        move |event| {
            let decoded = match event {
                Ok(event) => decode_event::<K>(event, kind, &metrics, &health, &scope).map(Ok),
                Err(error) => Some(Err(error)),
            };
            futures::future::ready(decoded)
        },
    );
    reflector::reflector(writer, events)
}

pub use sigil_crds::watch::with_watch_backoff;

#[cfg(test)]
mod tests {
    use super::*;
    use sigil_crds::OAuthClient;

    fn dynamic(name: &str, namespace: &str, spec: serde_json::Value) -> DynamicObject {
        serde_json::from_value(serde_json::json!({
            "apiVersion": "sigil.dev/v1alpha1",
            "kind": "OAuthClient",
            "metadata": { "name": name, "namespace": namespace, "uid": name },
            "spec": spec,
        }))
        .expect("dynamic object")
    }

    #[test]
    fn an_undecodable_object_is_skipped_and_the_rest_flows() {
        let metrics = Metrics::new();
        let health = Health::default();
        let scope = Scope::All;
        let good = dynamic("good", "a", serde_json::json!({ "scopes": ["x"] }));
        let bad = dynamic("bad", "a", serde_json::json!({ "scopes": "not a list" }));
        let decoded: Option<Event<OAuthClient>> =
            decode_event(Event::Apply(good), "OAuthClient", &metrics, &health, &scope);
        assert!(
            matches!(decoded, Some(Event::Apply(c)) if c.metadata.name.as_deref() == Some("good"))
        );
        let skipped: Option<Event<OAuthClient>> = decode_event(
            Event::InitApply(bad),
            "OAuthClient",
            &metrics,
            &health,
            &scope,
        );
        assert!(skipped.is_none());
        let text = metrics.encode().expect("metrics");
        assert!(
            text.contains("sigil_operator_undecodable_objects_total{kind=\"OAuthClient\"} 1"),
            "{text}"
        );
        // Init/InitDone pass, and InitDone marks the kind listed.
        let done: Option<Event<OAuthClient>> =
            decode_event(Event::InitDone, "OAuthClient", &metrics, &health, &scope);
        assert!(matches!(done, Some(Event::InitDone)));
        health
            .leading
            .store(true, std::sync::atomic::Ordering::Release);
        assert!(!health.ready(), "SigningKeys not listed yet");
        let _: Option<Event<sigil_crds::SigningKey>> =
            decode_event(Event::InitDone, "SigningKey", &metrics, &health, &scope);
        assert!(health.ready());
    }

    #[test]
    fn several_namespaces_are_filtered_client_side() {
        let metrics = Metrics::new();
        let health = Health::default();
        let scope = Scope::from_list(&["a".to_owned(), " b ".to_owned(), String::new()]);
        assert!(matches!(&scope, Scope::Namespaces(set) if set.len() == 2));
        let outside = dynamic("x", "c", serde_json::json!({}));
        let inside = dynamic("y", "b", serde_json::json!({}));
        let out: Option<Event<OAuthClient>> = decode_event(
            Event::Apply(outside),
            "OAuthClient",
            &metrics,
            &health,
            &scope,
        );
        assert!(out.is_none());
        let kept: Option<Event<OAuthClient>> = decode_event(
            Event::Apply(inside),
            "OAuthClient",
            &metrics,
            &health,
            &scope,
        );
        assert!(kept.is_some());
        assert!(matches!(Scope::from_list(&[]), Scope::All));
        assert!(
            matches!(Scope::from_list(&["only".to_owned()]), Scope::Namespace(ns) if ns == "only")
        );
    }
}
