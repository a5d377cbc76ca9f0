//! The issuer's CA bundle in client Secrets (key `ca.crt`, DESIGN.md §3).
//!
//! The bundle is the `ca.crt` of the issuer's TLS Secret (`--tls-secret` in
//! `--namespace`), whoever writes it: this operator ([`crate::webhook_tls`])
//! or, with `--manage-webhook-tls=false`, cert-manager or a person. A CA
//! rotation publishes the next CA there before anything is signed by it;
//! client Secrets follow every change, so workloads and the token agent
//! trust the next CA in time.
//!
//! It is published only when the issuer URL's host is a name of the serving
//! certificate (`tls.crt`). A client that has `ca.crt` trusts only it (the
//! token agent does), so for an issuer URL served by something else (an
//! Ingress with a public certificate) the bundle could only break it.
//!
//! The Secret is watched by name (one object, data included); a change of
//! what would be published re-reconciles every OAuthClient.

use std::net::IpAddr;
use std::time::Duration;

use futures::{Stream, StreamExt};
use k8s_openapi::api::core::v1::Secret;
use kube::Client;
use kube::api::Api;
use kube::runtime::reflector::{self, ObjectRef, Store};
use kube::runtime::watcher::{self, Event};
use sigil_core::IssuerUrl;

use crate::context::Error;
use crate::watch::with_watch_backoff;
use crate::webhook_tls::{CA_BUNDLE, TLS_CERT, pki};

/// How long a reconcile waits for the first read of the TLS Secret before
/// it fails (and is retried with backoff).
const FIRST_READ_PATIENCE: Duration = Duration::from_secs(10);

/// Reads the bundle to publish from the watched TLS Secret.
#[derive(Clone)]
pub struct IssuerCa {
    store: Store<Secret>,
    key: ObjectRef<Secret>,
    issuer_host: String,
}

impl IssuerCa {
    pub fn new(
        store: Store<Secret>,
        namespace: &str,
        tls_secret: &str,
        issuer_url: &IssuerUrl,
    ) -> Self {
        IssuerCa {
            store,
            key: ObjectRef::new(tls_secret).within(namespace),
            issuer_host: issuer_url.host().to_owned(),
        }
    }

    /// The bundle for client Secrets, `None` when there is none to publish.
    /// Waits for the first read of the TLS Secret, so that a client Secret
    /// never loses its `ca.crt` only because the operator just started.
    pub async fn bundle(&self) -> Result<Option<Vec<u8>>, Error> {
        match tokio::time::timeout(FIRST_READ_PATIENCE, self.store.wait_until_ready()).await {
            Ok(Ok(())) => Ok(self.current()),
            _ => Err(Error::NotRead(format!(
                "the issuer's TLS Secret {}/{} has not been read yet",
                self.key.namespace.as_deref().unwrap_or_default(),
                self.key.name
            ))),
        }
    }

    fn current(&self) -> Option<Vec<u8>> {
        published_bundle(self.store.get(&self.key).as_deref(), &self.issuer_host)
    }
}

/// What client Secrets get as `ca.crt`: the TLS Secret's `ca.crt`, byte for
/// byte, when it is not empty and the serving certificate is for
/// `issuer_host`.
pub fn published_bundle(secret: Option<&Secret>, issuer_host: &str) -> Option<Vec<u8>> {
    let data = secret?.data.as_ref()?;
    let bundle = data
        .get(CA_BUNDLE)
        .filter(|b| !b.0.trim_ascii().is_empty())?;
    let serving = std::str::from_utf8(&data.get(TLS_CERT)?.0).ok()?;
    let cert = pki::read_certs(serving).into_iter().next()?;
    cert.names
        .iter()
        .any(|name| name_covers(name, issuer_host))
        .then(|| bundle.0.clone())
}

/// Whether a certificate name covers `host`: the same name (DNS names
/// case-insensitively, IP addresses as addresses), or a wildcard
/// `*.example.com` standing for the first label (RFC 6125 §6.4.3).
fn name_covers(name: &str, host: &str) -> bool {
    let host = host.trim_end_matches('.');
    if let Ok(ip) = host.parse::<IpAddr>() {
        return name.parse::<IpAddr>().is_ok_and(|n| n == ip);
    }
    let name = name.trim_end_matches('.');
    if name.eq_ignore_ascii_case(host) {
        return true;
    }
    match (name.strip_prefix("*."), host.split_once('.')) {
        (Some(parent), Some((label, rest))) => {
            !label.is_empty() && parent.eq_ignore_ascii_case(rest)
        }
        _ => false,
    }
}

/// Tells a change of the bundle to publish from the first read and from
/// changes of the TLS Secret that leave it as it was (a renewed serving
/// certificate).
#[derive(Default)]
struct Changes {
    /// The bundle after the last event; `None` until the first list is done.
    last: Option<Option<Vec<u8>>>,
}

impl Changes {
    /// After the store applied an event (`init_done`: the end of a list),
    /// with the bundle it now gives: whether it differs from before.
    fn observe(&mut self, init_done: bool, current: Option<Vec<u8>>) -> bool {
        match &self.last {
            None if !init_done => false,
            None => {
                self.last = Some(current);
                false
            }
            Some(last) => {
                let changed = *last != current;
                self.last = Some(current);
                changed
            }
        }
    }
}

/// Watches the TLS Secret: the reader of the bundle, and a stream with one
/// item per change of the bundle (for `Controller::reconcile_all_on`; it
/// also drives the watch).
pub fn watch(
    client: Client,
    namespace: &str,
    tls_secret: &str,
    issuer_url: &IssuerUrl,
) -> (IssuerCa, impl Stream<Item = ()> + Send + 'static) {
    let (store, writer) = reflector::store::<Secret>();
    let ca = IssuerCa::new(store, namespace, tls_secret, issuer_url);
    let api: Api<Secret> = Api::namespaced(client, namespace);
    let by_name = watcher::Config::default().fields(&format!("metadata.name={tls_secret}"));
    let reader = ca.clone();
    let mut changes = Changes::default();
    let stream = reflector::reflector(writer, with_watch_backoff(watcher::watcher(api, by_name)))
        .filter_map(move |event| {
            let changed = match event {
                Ok(event) => {
                    let current = reader.current();
                    let present = current.is_some();
                    let changed = changes.observe(matches!(event, Event::InitDone), current);
                    if changed {
                        tracing::info!(
                            secret = %reader.key.name,
                            present,
                            "the issuer's CA bundle changed; updating every client Secret"
                        );
                    }
                    changed
                }
                Err(error) => {
                    tracing::warn!(%error, "watching the issuer's TLS Secret failed; retrying");
                    false
                }
            };
            futures::future::ready(changed.then_some(()))
        });
    (ca, stream)
}

/// Test support: a TLS Secret as the operator makes it, and a reader that
/// has already read it.
#[cfg(test)]
pub(crate) mod testing {
    use super::*;
    use k8s_openapi::ByteString;
    use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;

    pub const NAMESPACE: &str = "sigil-system";
    pub const NAME: &str = "sigil-issuer-tls";

    /// A TLS Secret whose certificate is for `names`, and its `ca.crt`.
    pub fn tls_secret(names: &[&str]) -> (Secret, String) {
        let now = jiff::Timestamp::now();
        let ca = pki::generate_ca(now, Duration::from_secs(3600)).expect("CA");
        let names: Vec<String> = names.iter().map(|n| (*n).to_owned()).collect();
        let not_after = now + jiff::SignedDuration::from_secs(1800);
        let serving = pki::issue_serving(&ca, &names, now, not_after).expect("certificate");
        let data = [
            (TLS_CERT, &serving.cert_pem),
            ("tls.key", &serving.key_pem),
            (CA_BUNDLE, &ca.cert_pem),
        ]
        .into_iter()
        .map(|(k, v)| (k.to_owned(), ByteString(v.as_bytes().to_vec())))
        .collect();
        let secret = Secret {
            metadata: ObjectMeta {
                name: Some(NAME.to_owned()),
                namespace: Some(NAMESPACE.to_owned()),
                ..Default::default()
            },
            data: Some(data),
            ..Default::default()
        };
        (secret, ca.cert_pem)
    }

    /// A reader whose first list found `secret` (or nothing).
    pub fn read(secret: Option<Secret>, issuer_url: &str) -> IssuerCa {
        let (store, mut writer) = reflector::store::<Secret>();
        writer.apply_watcher_event(&Event::Init);
        if let Some(secret) = secret {
            writer.apply_watcher_event(&Event::InitApply(secret));
        }
        writer.apply_watcher_event(&Event::InitDone);
        let url = IssuerUrl::parse(issuer_url).expect("issuer URL");
        IssuerCa::new(store, NAMESPACE, NAME, &url)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use k8s_openapi::ByteString;

    /// A CA (PEM) and a serving certificate from it for `names`.
    fn pki(names: &[&str]) -> (String, String) {
        let (secret, ca) = testing::tls_secret(names);
        let cert = secret.data.expect("data")[TLS_CERT].0.clone();
        (ca, String::from_utf8(cert).expect("PEM"))
    }

    fn tls_secret(entries: &[(&str, &str)]) -> Secret {
        Secret {
            data: Some(
                entries
                    .iter()
                    .map(|(k, v)| ((*k).to_owned(), ByteString(v.as_bytes().to_vec())))
                    .collect(),
            ),
            ..Default::default()
        }
    }

    const HOST: &str = "sigil-issuer.sigil-system.svc";

    #[test]
    fn the_bundle_is_published_when_the_certificate_is_for_the_issuer_host() {
        let (ca, cert) = pki(&["sigil-issuer", HOST]);
        let secret = tls_secret(&[("tls.crt", &cert), ("tls.key", "k"), ("ca.crt", &ca)]);
        assert_eq!(
            published_bundle(Some(&secret), HOST),
            Some(ca.clone().into_bytes()),
            "the same bytes"
        );
        assert_eq!(
            published_bundle(Some(&secret), "sigil.example.com"),
            None,
            "an issuer URL served by another certificate (an Ingress) gets no bundle"
        );
    }

    #[test]
    fn no_secret_no_bundle_no_certificate_means_nothing_to_publish() {
        let (ca, cert) = pki(&[HOST]);
        assert_eq!(published_bundle(None, HOST), None);
        assert_eq!(published_bundle(Some(&Secret::default()), HOST), None);
        for entries in [
            vec![("tls.crt", cert.as_str())],
            vec![("tls.crt", cert.as_str()), ("ca.crt", " \n")],
            vec![("ca.crt", ca.as_str())],
            vec![("tls.crt", "not PEM"), ("ca.crt", ca.as_str())],
        ] {
            assert_eq!(
                published_bundle(Some(&tls_secret(&entries)), HOST),
                None,
                "{:?}",
                entries.iter().map(|(k, _)| k).collect::<Vec<_>>()
            );
        }
    }

    #[test]
    fn certificate_names_cover_hosts_as_tls_clients_check_them() {
        assert!(name_covers(HOST, HOST));
        assert!(name_covers("Sigil.Example.com", "sigil.example.COM"));
        assert!(name_covers("sigil.example.com.", "sigil.example.com"));
        assert!(name_covers("*.example.com", "sigil.example.com"));
        assert!(!name_covers("*.example.com", "a.sigil.example.com"));
        assert!(!name_covers("*.example.com", "example.com"));
        assert!(!name_covers("sigil.example.com", "sigil.example.org"));
        assert!(name_covers("127.0.0.1", "127.0.0.1"));
        assert!(name_covers("::1", "0:0:0:0:0:0:0:1"));
        assert!(!name_covers("127.0.0.1", "127.0.0.2"));
        assert!(
            !name_covers("*.0.0.1", "127.0.0.1"),
            "no wildcard for addresses"
        );
    }

    #[test]
    fn only_a_change_after_the_first_list_counts() {
        let mut changes = Changes::default();
        let a = Some(b"A".to_vec());
        let b = Some(b"B".to_vec());
        // Listing: nothing yet; the first complete read is no change.
        assert!(!changes.observe(false, a.clone()));
        assert!(!changes.observe(true, a.clone()));
        // A renewed serving certificate, or a relist: same bundle.
        assert!(!changes.observe(false, a.clone()));
        assert!(!changes.observe(true, a.clone()));
        // The next CA published, then the Secret gone, then back.
        assert!(changes.observe(false, b.clone()));
        assert!(changes.observe(false, None));
        assert!(!changes.observe(false, None));
        assert!(changes.observe(true, b));
    }

    #[tokio::test]
    async fn the_reader_gives_what_the_watch_read() {
        let (secret, ca) = testing::tls_secret(&["sigil-issuer.sigil-system.svc"]);
        let reader = testing::read(Some(secret), "https://sigil-issuer.sigil-system.svc");
        assert_eq!(reader.bundle().await.expect("read"), Some(ca.into_bytes()));
        let reader = testing::read(None, "https://sigil-issuer.sigil-system.svc");
        assert_eq!(reader.bundle().await.expect("read"), None);
        // Never read (the watch ended first): an error, not "no bundle".
        let (store, writer) = reflector::store::<Secret>();
        drop(writer);
        let url = IssuerUrl::parse("https://x").expect("URL");
        let reader = IssuerCa::new(store, "ns", "tls", &url);
        let error = reader.bundle().await.expect_err("not read");
        assert!(
            error.to_string().contains("ns/tls has not been read yet"),
            "{error}"
        );
    }
}
