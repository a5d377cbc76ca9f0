//! Watches that survive one bad object, for both binaries (linkerd2's
//! guarded watches: `DeserializeGuard`).
//!
//! A typed watcher fails a whole list or watch event when one object does
//! not deserialize, and retries forever: one bad OAuthClient would stall
//! every re-list. Here objects are watched as `DynamicObject`s and decoded
//! one by one; an object that does not decode is reported to the caller
//! (which logs and counts it) and skipped, and everything else flows.

use futures::{Stream, StreamExt};
use kube::api::{Api, DynamicObject};
use kube::runtime::watcher::{self, Event};
use kube::{Resource, ResourceExt};
use serde::de::DeserializeOwned;

/// An object the watch skipped because it does not decode as its kind.
#[derive(Debug, Clone)]
pub struct Undecodable {
    pub namespace: String,
    pub name: String,
    /// The deserialization error (names the field; carries no values of
    /// Secrets, which are never decoded this way).
    pub error: String,
}

/// The object an event carries, if any.
pub fn event_object<K>(event: &Event<K>) -> Option<&K> {
    match event {
        Event::Apply(obj) | Event::Delete(obj) | Event::InitApply(obj) => Some(obj),
        Event::Init | Event::InitDone => None,
    }
}

/// Decodes one watcher event; an undecodable object is handed to `skipped`
/// and the event dropped.
pub fn decode_event<K>(
    event: Event<DynamicObject>,
    skipped: impl FnOnce(Undecodable),
) -> Option<Event<K>>
where
    K: Resource<DynamicType = ()> + DeserializeOwned,
{
    let decode = |obj: DynamicObject| -> Option<K> {
        let namespace = obj.namespace().unwrap_or_default();
        let name = obj.name_any();
        match obj.try_parse::<K>() {
            Ok(typed) => Some(typed),
            Err(error) => {
                skipped(Undecodable {
                    namespace,
                    name,
                    error: error.to_string(),
                });
                None
            }
        }
    };
    match event {
        Event::Apply(obj) => decode(obj).map(Event::Apply),
        Event::Delete(obj) => decode(obj).map(Event::Delete),
        Event::InitApply(obj) => decode(obj).map(Event::InitApply),
        Event::Init => Some(Event::Init),
        Event::InitDone => Some(Event::InitDone),
    }
}

/// A watcher of `K` through `api` (a `DynamicObject` API of `K`'s
/// resource) that skips undecodable objects, reporting each to `skipped`.
/// Callers add their own backoff.
pub fn guarded_watcher<K>(
    api: Api<DynamicObject>,
    config: watcher::Config,
    skipped: impl Fn(Undecodable) + Send + 'static,
) -> impl Stream<Item = Result<Event<K>, watcher::Error>> + Send + 'static
where
    K: Resource<DynamicType = ()> + DeserializeOwned + Send + 'static,
{
    watcher::watcher(api, config).filter_map(move |event| {
        let decoded = match event {
            Ok(event) => decode_event::<K>(event, &skipped).map(Ok),
            Err(error) => Some(Err(error)),
        };
        futures::future::ready(decoded)
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::OAuthClient;

    fn dynamic(name: &str, spec: serde_json::Value) -> DynamicObject {
        serde_json::from_value(serde_json::json!({
            "apiVersion": "sigil.dev/v1alpha1",
            "kind": "OAuthClient",
            "metadata": { "name": name, "namespace": "a", "uid": name },
            "spec": spec,
        }))
        .expect("dynamic object")
    }

    #[test]
    fn an_undecodable_object_is_reported_and_skipped() {
        let good = dynamic("good", serde_json::json!({ "scopes": ["x"] }));
        let bad = dynamic("bad", serde_json::json!({ "scopes": "not a list" }));
        let mut reported = Vec::new();
        let decoded: Option<Event<OAuthClient>> =
            decode_event(Event::Apply(good), |u| reported.push(u));
        assert!(
            matches!(decoded, Some(Event::Apply(c)) if c.metadata.name.as_deref() == Some("good"))
        );
        let skipped: Option<Event<OAuthClient>> =
            decode_event(Event::InitApply(bad), |u| reported.push(u));
        assert!(skipped.is_none());
        assert_eq!(reported.len(), 1);
        assert_eq!(
            (reported[0].namespace.as_str(), reported[0].name.as_str()),
            ("a", "bad")
        );
        let done: Option<Event<OAuthClient>> = decode_event(Event::InitDone, |_| unreachable!());
        assert!(matches!(done, Some(Event::InitDone)));
    }
}
