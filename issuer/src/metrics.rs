//! Prometheus metrics (text format on the health port). Labels are fixed
//! words, never client ids or anything a caller sent.

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::Histogram;
use prometheus_client::registry::Registry;

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ResultLabel {
    pub result: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ResourceLabel {
    pub resource: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ReasonLabel {
    pub reason: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ListenerLabel {
    pub listener: &'static str,
}

/// Every `result` of `sigil_issuer_token_requests_total`: `success`,
/// `rate_limited` (429 for a source over its failed-authentication budget)
/// and the OAuth error codes (`http::error::ErrorCode`).
pub const TOKEN_RESULTS: [&str; 9] = [
    "success",
    "rate_limited",
    "invalid_request",
    "invalid_client",
    "unauthorized_client",
    "unsupported_grant_type",
    "invalid_scope",
    "invalid_target",
    "server_error",
];

pub struct Metrics {
    registry: Registry,
    pub token_requests: Family<ResultLabel, Counter>,
    pub token_latency: Histogram,
    pub introspection_requests: Family<ResultLabel, Counter>,
    pub clients: Gauge,
    pub published_keys: Gauge,
    /// 1 while /readyz answers 200 (caches synced, the default SigningKey
    /// has an active key, not stopping), else 0: what the IssuerNotReady
    /// alert reads, since a scrape of an unready replica still succeeds.
    pub ready: Gauge,
    /// 1 while every watch is connected to the API server; 0 while the
    /// issuer serves from its caches only. Always 1 in standalone mode.
    pub apiserver_connected: Gauge,
    pub watch_errors: Family<ResourceLabel, Counter>,
    /// Objects the watches skipped because they do not decode.
    pub undecodable_objects: Family<ResourceLabel, Counter>,
    /// Admission reviews of the pod webhook, by outcome.
    pub admission_reviews: Family<ResultLabel, Counter>,
    /// OAuthClients not loaded because their additionalClaims or jwks
    /// exceed the issuer's limits.
    pub clients_over_limits: Gauge,
    /// Unexpired assertion `jti`s remembered against replay.
    pub remembered_assertions: Gauge,
    /// Assertions refused because the replay cache (a client's share or
    /// the total) was full.
    pub assertions_refused_for_capacity: Counter,
    /// Source addresses whose failed authentications are being counted.
    pub failed_auth_tracked_sources: Gauge,
    /// Failed authentications not logged: `source_over_budget` (the
    /// source's failures get 429) or `lines_per_second` (over
    /// --failed-auth-log-lines-per-second).
    pub failed_auth_logs_suppressed: Family<ReasonLabel, Counter>,
    /// Connections per listener (api, webhook, health) and what the limits
    /// of `http::serve` did to them.
    pub connections_open: Family<ListenerLabel, Gauge>,
    pub connection_sources: Family<ListenerLabel, Gauge>,
    pub connections_refused: Family<ListenerLabel, Counter>,
    pub connections_refused_per_source: Family<ListenerLabel, Counter>,
    pub connections_evicted: Family<ListenerLabel, Counter>,
    pub connections_idle_closed: Family<ListenerLabel, Counter>,
    pub connections_header_timeout: Family<ListenerLabel, Counter>,
    pub requests_timed_out: Family<ListenerLabel, Counter>,
    /// `federated_jwt`: key fetches and TokenReviews.
    pub federation: crate::federation::FederationMetrics,
    /// TokenReview results cached (at most
    /// `federation::REVIEW_CACHE_MAX_ENTRIES`).
    pub token_review_cache_entries: Gauge,
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

impl Metrics {
    pub fn new() -> Self {
        let mut registry = Registry::with_prefix("sigil_issuer");
        let token_requests = Family::<ResultLabel, Counter>::default();
        // Every result exists from the start at 0: `rate()` sees a series'
        // first increase only if an earlier sample exists, so without this
        // the first burst of failures after a restart (often the one that
        // matters) would be invisible to the alerts.
        for result in TOKEN_RESULTS {
            let _ = token_requests.get_or_create(&ResultLabel { result });
        }
        registry.register(
            "token_requests",
            "Token endpoint requests by result (success or the OAuth error code)",
            token_requests.clone(),
        );
        // 50 µs .. ~100 ms.
        let token_latency = Histogram::new(
            prometheus_client::metrics::histogram::exponential_buckets(0.00005, 2.0, 12),
        );
        registry.register(
            "token_request_duration_seconds",
            "Time to answer a token request, in seconds",
            token_latency.clone(),
        );
        let introspection_requests = Family::<ResultLabel, Counter>::default();
        registry.register(
            "introspection_requests",
            "Introspection requests by result",
            introspection_requests.clone(),
        );
        let clients = Gauge::default();
        registry.register(
            "clients",
            "OAuth clients known to the issuer",
            clients.clone(),
        );
        let published_keys = Gauge::default();
        registry.register(
            "signing_keys",
            "Signing keys published in the JWKS (pending, active and retired)",
            published_keys.clone(),
        );
        let ready = Gauge::default();
        registry.register(
            "ready",
            "1 while /readyz answers 200 (caches synced, the default signing key has an active key, not stopping), else 0",
            ready.clone(),
        );
        let apiserver_connected = Gauge::default();
        registry.register(
            "apiserver_connected",
            "1 while the watches reach the API server, 0 while serving from caches",
            apiserver_connected.clone(),
        );
        let watch_errors = Family::<ResourceLabel, Counter>::default();
        registry.register(
            "watch_errors",
            "Errors of the API server watches, by resource",
            watch_errors.clone(),
        );
        let undecodable_objects = Family::<ResourceLabel, Counter>::default();
        registry.register(
            "undecodable_objects",
            "Objects skipped by the watches because they do not deserialize, by resource",
            undecodable_objects.clone(),
        );
        let admission_reviews = Family::<ResultLabel, Counter>::default();
        registry.register(
            "admission_reviews",
            "Pod admission reviews by result (patched, unchanged, refused, not_synced, ignored, invalid)",
            admission_reviews.clone(),
        );
        let clients_over_limits = Gauge::default();
        registry.register(
            "clients_over_limits",
            "OAuthClients not loaded for token issuance because additionalClaims or jwks exceed the issuer's limits",
            clients_over_limits.clone(),
        );
        let remembered_assertions = Gauge::default();
        registry.register(
            "remembered_assertions",
            "Unexpired client assertion jtis remembered against replay",
            remembered_assertions.clone(),
        );
        let assertions_refused_for_capacity = Counter::default();
        registry.register(
            "assertions_refused_for_capacity",
            "Client assertions refused because the replay cache (the client's share or the total) was full",
            assertions_refused_for_capacity.clone(),
        );
        let failed_auth_tracked_sources = Gauge::default();
        registry.register(
            "failed_auth_tracked_sources",
            "Source addresses whose failed client authentications are being counted",
            failed_auth_tracked_sources.clone(),
        );
        let failed_auth_logs_suppressed = Family::<ReasonLabel, Counter>::default();
        registry.register(
            "failed_auth_logs_suppressed",
            "Failed client authentications not logged, by reason: source_over_budget (after the first of a source's spell over its failure budget) or lines_per_second (over --failed-auth-log-lines-per-second)",
            failed_auth_logs_suppressed.clone(),
        );
        let connections_open = Family::<ListenerLabel, Gauge>::default();
        registry.register(
            "connections_open",
            "Open HTTP connections by listener (api, webhook, health)",
            connections_open.clone(),
        );
        let connection_sources = Family::<ListenerLabel, Gauge>::default();
        registry.register(
            "connection_sources",
            "Source addresses (IPv6: /64 prefixes) with open connections, by listener",
            connection_sources.clone(),
        );
        let connections_refused = Family::<ListenerLabel, Counter>::default();
        registry.register(
            "connections_refused",
            "Connections closed at accept because --max-connections were open, each with a request in flight, by listener",
            connections_refused.clone(),
        );
        let connections_refused_per_source = Family::<ListenerLabel, Counter>::default();
        registry.register(
            "connections_refused_per_source",
            "Connections closed at accept because --max-connections-per-source were open from their source, each with a request in flight, by listener",
            connections_refused_per_source.clone(),
        );
        let connections_evicted = Family::<ListenerLabel, Counter>::default();
        registry.register(
            "connections_evicted",
            "Connections without a request in flight closed to make room for a new one at --max-connections or --max-connections-per-source, by listener",
            connections_evicted.clone(),
        );
        let connections_idle_closed = Family::<ListenerLabel, Counter>::default();
        registry.register(
            "connections_idle_closed",
            "Connections closed by --idle-timeout, by listener",
            connections_idle_closed.clone(),
        );
        let connections_header_timeout = Family::<ListenerLabel, Counter>::default();
        registry.register(
            "connections_header_timeout",
            "Connections closed for sending no request headers within --header-read-timeout of their accept (plain) or TLS handshake, by listener",
            connections_header_timeout.clone(),
        );
        let requests_timed_out = Family::<ListenerLabel, Counter>::default();
        registry.register(
            "requests_timed_out",
            "Requests answered 408 after --request-timeout, by listener",
            requests_timed_out.clone(),
        );
        let federation = crate::federation::FederationMetrics::default();
        registry.register(
            "service_account_key_fetches",
            "Fetches of the cluster's service-account issuer discovery and JWKS (federated_jwt), by result",
            federation.key_fetches.clone(),
        );
        registry.register(
            "token_reviews",
            "TokenReviews of ServiceAccount tokens (federated_jwt, --service-account-token-review), by result: authenticated, rejected, error",
            federation.token_reviews.clone(),
        );
        let token_review_cache_entries = Gauge::default();
        registry.register(
            "token_review_cache_entries",
            "TokenReview results cached (at most 10000, each for at most 10 s)",
            token_review_cache_entries.clone(),
        );
        Metrics {
            registry,
            federation,
            token_review_cache_entries,
            clients_over_limits,
            remembered_assertions,
            assertions_refused_for_capacity,
            failed_auth_tracked_sources,
            failed_auth_logs_suppressed,
            token_requests,
            token_latency,
            introspection_requests,
            clients,
            published_keys,
            ready,
            apiserver_connected,
            watch_errors,
            undecodable_objects,
            admission_reviews,
            connections_open,
            connection_sources,
            connections_refused,
            connections_refused_per_source,
            connections_evicted,
            connections_idle_closed,
            connections_header_timeout,
            requests_timed_out,
        }
    }

    /// The connection metrics `http::serve` keeps for one listener.
    pub fn connection_metrics(
        &self,
        listener: &'static str,
    ) -> crate::http::serve::ConnectionMetrics {
        let label = ListenerLabel { listener };
        crate::http::serve::ConnectionMetrics {
            open: self.connections_open.get_or_create(&label).clone(),
            sources: self.connection_sources.get_or_create(&label).clone(),
            refused: self.connections_refused.get_or_create(&label).clone(),
            refused_per_source: self
                .connections_refused_per_source
                .get_or_create(&label)
                .clone(),
            evicted: self.connections_evicted.get_or_create(&label).clone(),
            idle_closed: self.connections_idle_closed.get_or_create(&label).clone(),
            header_timeouts: self
                .connections_header_timeout
                .get_or_create(&label)
                .clone(),
            request_timeouts: self.requests_timed_out.get_or_create(&label).clone(),
        }
    }

    pub fn count_token(&self, result: &'static str) {
        self.token_requests
            .get_or_create(&ResultLabel { result })
            .inc();
    }

    pub fn encode(&self) -> String {
        let mut out = String::new();
        // Encoding into a String cannot fail.
        let _ = prometheus_client::encoding::text::encode(&mut out, &self.registry);
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_token_result_is_exported_at_zero_before_any_request() {
        let text = Metrics::new().encode();
        for result in TOKEN_RESULTS {
            let line = format!("sigil_issuer_token_requests_total{{result=\"{result}\"}} 0");
            assert!(text.contains(&line), "missing {line}:\n{text}");
        }
    }

    #[test]
    fn token_results_name_every_oauth_error_code() {
        use crate::http::error::ErrorCode;
        for code in [
            ErrorCode::InvalidRequest,
            ErrorCode::InvalidClient,
            ErrorCode::UnauthorizedClient,
            ErrorCode::UnsupportedGrantType,
            ErrorCode::InvalidScope,
            ErrorCode::InvalidTarget,
            ErrorCode::ServerError,
        ] {
            assert!(TOKEN_RESULTS.contains(&code.as_str()), "{code:?}");
        }
    }
}
