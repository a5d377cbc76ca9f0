//! Watches that survive one bad object, for both binaries (linkerd2's
//! guarded watches: `DeserializeGuard`).
//!
//! A typed watcher fails a whole list or watch event when one object does
//! not deserialize, and retries forever: one bad OAuthClient would stall
//! every re-list. Here objects are watched as `DynamicObject`s and decoded
//! one by one; an object that does not decode is reported to the caller
//! (which logs and counts it) and skipped, and everything else flows.

use futures::{Stream, StreamExt};

use kube::runtime::utils::Backoff;

use crate::backoff::WatchBackoff;
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

/// Retries a watch with [`WatchBackoff`] (250 ms doubling to 4 s, so the
/// watches return within seconds of an API server outage), except once
/// after an expired resource version (410): the API server answered, and
/// after its restart every watch's resource version is too old, so the
/// watcher re-lists at once. With a pause per error, that expected 410 cost
/// a second full step (4-5 s) right after the outage.
pub fn with_watch_backoff<S, K>(
    stream: S,
) -> impl Stream<Item = Result<Event<K>, watcher::Error>> + Send + 'static
where
    S: Stream<Item = Result<Event<K>, watcher::Error>> + Send + 'static,
    K: Send + 'static,
{
    struct State<S> {
        stream: std::pin::Pin<Box<S>>,
        backoff: WatchBackoff,
        pause: Option<std::time::Duration>,
        /// A 410 may skip the pause once between successes.
        expired_once: bool,
    }
    let state = State {
        stream: Box::pin(stream),
        backoff: WatchBackoff::default(),
        pause: None,
        expired_once: false,
    };
    futures::stream::unfold(state, |mut state| async move {
        if let Some(pause) = state.pause.take() {
            tokio::time::sleep(pause).await;
        }
        let item = state.stream.next().await?;
        match &item {
            Ok(_) => {
                state.backoff.reset();
                state.expired_once = false;
            }
            Err(watcher::Error::WatchError(status))
                if status.code == 410 && !state.expired_once =>
            {
                state.expired_once = true;
            }
            Err(_) => state.pause = state.backoff.next(),
        }
        Some((item, state))
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

    fn error(code: u16) -> watcher::Error {
        watcher::Error::WatchError(
            kube::core::Status::failure("x", "Expired")
                .with_code(code)
                .boxed(),
        )
    }

    /// Time to get the item after `errors`, through [`with_watch_backoff`].
    async fn delay_after(errors: Vec<watcher::Error>) -> std::time::Duration {
        let count = errors.len();
        let items = errors.into_iter().map(Err).chain([Ok(Event::<()>::Init)]);
        let mut stream = std::pin::pin!(with_watch_backoff(futures::stream::iter(items)));
        for _ in 0..count {
            assert!(stream.next().await.expect("an error").is_err());
        }
        let started = std::time::Instant::now();
        assert!(stream.next().await.expect("the event").is_ok());
        started.elapsed()
    }

    #[tokio::test]
    async fn an_expired_resource_version_is_retried_at_once_but_only_once() {
        // After an API server restart every watch gets 410 once: no pause.
        assert!(delay_after(vec![error(410)]).await < std::time::Duration::from_millis(100));
        // Any other error, or a second 410 in a row: the backoff's pause.
        assert!(delay_after(vec![error(500)]).await >= std::time::Duration::from_millis(250));
        assert!(
            delay_after(vec![error(410), error(410)]).await
                >= std::time::Duration::from_millis(250)
        );
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
