//! The issuer's shared state: what every handler reads ([`App`]) and the
//! deployment-wide settings it is built from.

use std::num::NonZeroU32;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;

use sigil_core::IssuerUrl;

use crate::http::client_auth::ReplayCache;
use crate::http::discovery;
use crate::http::ratelimit::FailedAuthLimiter;
use crate::http::serve::ServeError;
use crate::index::{Store, TokenTyp};
use crate::metrics::Metrics;

/// Deployment-wide settings of the HTTP API.
#[derive(Clone, Debug)]
pub struct Settings {
    pub issuer_url: IssuerUrl,
    pub token_typ: TokenTyp,
    /// Failed client authentications allowed per minute, per source
    /// address and per client id.
    pub failed_auth_per_minute: NonZeroU32,
}

pub struct App {
    pub store: Arc<Store>,
    pub issuer: String,
    pub token_endpoint: String,
    pub introspection_endpoint: String,
    /// The path part of the issuer URL ("" or "/tenant"); endpoints live
    /// under it.
    pub base_path: String,
    pub token_typ: TokenTyp,
    pub limiter: FailedAuthLimiter,
    pub replay: ReplayCache,
    pub metrics: Arc<Metrics>,
    pub metadata: Bytes,
}

impl App {
    pub fn new(
        store: Arc<Store>,
        metrics: Arc<Metrics>,
        settings: &Settings,
    ) -> Result<Self, ServeError> {
        let url = &settings.issuer_url;
        Ok(App {
            store,
            token_endpoint: url.token_endpoint(),
            introspection_endpoint: url.introspection_endpoint(),
            metadata: discovery::metadata_json(url),
            issuer: url.to_string(),
            base_path: url.path().to_owned(),
            token_typ: settings.token_typ,
            limiter: FailedAuthLimiter::new(settings.failed_auth_per_minute),
            replay: ReplayCache::default(),
            metrics,
        })
    }

    /// Refreshes gauges from the store (called before each scrape).
    pub fn update_gauges(&self) {
        self.metrics.clients.set(self.store.client_count() as i64);
        self.metrics
            .published_keys
            .set(self.store.published_key_count() as i64);
    }
}

/// Periodic cleanup of rate-limit state.
pub fn spawn_housekeeping(app: Arc<App>) {
    tokio::spawn(async move {
        let mut tick = tokio::time::interval(Duration::from_secs(30));
        loop {
            tick.tick().await;
            app.limiter.housekeeping();
        }
    });
}
