//! The issuer's shared state: what every handler reads ([`App`]) and the
//! deployment-wide settings it is built from.

use std::num::NonZeroU32;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use bytes::Bytes;

use sigil_core::IssuerUrl;

use crate::http::client_auth::{ReplayCache, ReplayLimits, warm_up_dummy_keys};
use crate::http::discovery;
use crate::http::ratelimit::{FailedAuthLimiter, LineBudget};
use crate::http::serve::ServeError;
use crate::http::token::unix_now;
use crate::index::{Store, TokenTyp};
use crate::metrics::Metrics;

/// Deployment-wide settings of the HTTP API.
#[derive(Clone, Debug)]
pub struct Settings {
    pub issuer_url: IssuerUrl,
    pub token_typ: TokenTyp,
    /// Failed client authentications allowed per minute per source
    /// address before its failures get 429.
    pub failed_auth_per_minute: NonZeroU32,
    /// Source addresses the failure budget tracks at most.
    pub max_tracked_sources: usize,
    /// Failed authentications logged per second at most (that many at
    /// once), all sources together.
    pub failed_auth_log_lines_per_second: NonZeroU32,
    /// Bounds of the assertion replay cache.
    pub replay: ReplayLimits,
}

/// Default of `--max-tracked-sources`.
pub const DEFAULT_MAX_TRACKED_SOURCES: usize = 100_000;

/// Default of `--failed-auth-log-lines-per-second`.
pub const DEFAULT_FAILED_AUTH_LOG_LINES_PER_SECOND: u32 = 10;

impl Settings {
    /// The defaults of every flag, for `issuer_url`.
    pub fn new(issuer_url: IssuerUrl) -> Self {
        Settings {
            issuer_url,
            token_typ: TokenTyp::AtJwt,
            failed_auth_per_minute: NonZeroU32::new(60).unwrap_or(NonZeroU32::MIN),
            max_tracked_sources: DEFAULT_MAX_TRACKED_SOURCES,
            failed_auth_log_lines_per_second: NonZeroU32::new(
                DEFAULT_FAILED_AUTH_LOG_LINES_PER_SECOND,
            )
            .unwrap_or(NonZeroU32::MIN),
            replay: ReplayLimits::default(),
        }
    }
}

pub struct App {
    pub store: Arc<Store>,
    pub issuer: String,
    /// The path part of the issuer URL ("" or "/tenant"); endpoints live
    /// under it.
    pub base_path: String,
    pub token_typ: TokenTyp,
    pub limiter: FailedAuthLimiter,
    /// The log lines failed authentications may write.
    pub failure_log: LineBudget,
    /// Failed authentications not logged since the last summary line.
    pub unlogged_failures: AtomicU64,
    pub replay: ReplayCache,
    /// `federated_jwt` (cluster mode): ServiceAccount tokens as client
    /// assertions; `None` in standalone mode.
    pub federation: Option<Arc<crate::federation::Federation>>,
    pub metrics: Arc<Metrics>,
    /// The discovery document while no OAuthResource declares scopes.
    pub metadata: Bytes,
    /// `/openapi.json` (`crate::http::openapi`).
    pub openapi: Bytes,
    pub issuer_url: IssuerUrl,
    /// Set on the stop signal: /readyz fails from then on.
    draining: std::sync::atomic::AtomicBool,
}

impl App {
    /// From now on /readyz fails (the stop signal came).
    pub fn start_draining(&self) {
        self.draining
            .store(true, std::sync::atomic::Ordering::Release);
    }

    /// Ready to serve: caches synced, an active key, and not stopping.
    pub fn is_ready(&self) -> bool {
        self.store.is_ready() && !self.draining.load(std::sync::atomic::Ordering::Acquire)
    }

    pub fn new(
        store: Arc<Store>,
        metrics: Arc<Metrics>,
        settings: &Settings,
    ) -> Result<Self, ServeError> {
        let url = &settings.issuer_url;
        warm_up_dummy_keys();
        Ok(App {
            store,
            metadata: discovery::metadata_json(url, &[], false),
            openapi: crate::http::openapi::document_json(url),
            issuer_url: url.clone(),
            issuer: url.to_string(),
            base_path: url.path().to_owned(),
            token_typ: settings.token_typ,
            limiter: FailedAuthLimiter::new(
                settings.failed_auth_per_minute,
                settings.max_tracked_sources,
            ),
            failure_log: LineBudget::new(settings.failed_auth_log_lines_per_second),
            unlogged_failures: AtomicU64::new(0),
            replay: ReplayCache::new(
                settings.replay,
                metrics.assertions_refused_for_capacity.clone(),
            ),
            federation: None,
            metrics,
            draining: std::sync::atomic::AtomicBool::new(false),
        })
    }

    /// Turns `federated_jwt` on (cluster mode), and advertises it.
    pub fn enable_federation(&mut self, federation: Arc<crate::federation::Federation>) {
        self.federation = Some(federation);
        self.metadata = discovery::metadata_json(&self.issuer_url, &[], true);
    }

    /// Counts a failed authentication that is not logged.
    pub fn suppress_failure_log(&self, reason: &'static str) {
        self.metrics
            .failed_auth_logs_suppressed
            .get_or_create(&crate::metrics::ReasonLabel { reason })
            .inc();
        self.unlogged_failures.fetch_add(1, Ordering::Relaxed);
    }

    /// One line for the failed authentications not logged since the last
    /// call, if any.
    pub fn log_unlogged_failures(&self, period: Duration) {
        let unlogged = self.unlogged_failures.swap(0, Ordering::Relaxed);
        if unlogged > 0 {
            tracing::warn!(
                unlogged,
                seconds = period.as_secs(),
                "failed client authentications not logged (sources over their failure budget, or over --failed-auth-log-lines-per-second); see sigil_issuer_failed_auth_logs_suppressed_total"
            );
        }
    }

    /// Refreshes gauges from the store (called before each scrape).
    pub fn update_gauges(&self) {
        self.metrics.ready.set(i64::from(self.is_ready()));
        self.metrics.clients.set(self.store.client_count() as i64);
        self.metrics
            .published_keys
            .set(self.store.published_key_count() as i64);
        self.metrics
            .clients_over_limits
            .set(self.store.clients_over_limits() as i64);
        self.metrics
            .remembered_assertions
            .set(self.replay.len() as i64);
        if let Some(federation) = &self.federation {
            self.metrics
                .token_review_cache_entries
                .set(federation.cached_reviews() as i64);
        }
        self.metrics
            .failed_auth_tracked_sources
            .set(self.limiter.tracked_sources() as i64);
    }
}

/// Periodic cleanup of rate-limit and replay state, and the summary of
/// unlogged failures.
pub fn spawn_housekeeping(app: Arc<App>) {
    tokio::spawn(async move {
        let period = Duration::from_secs(30);
        let mut tick = tokio::time::interval(period);
        loop {
            tick.tick().await;
            app.log_unlogged_failures(period);
            app.limiter.housekeeping();
            app.replay.sweep(unix_now());
        }
    });
}
