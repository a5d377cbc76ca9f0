//! `OAuthClient` (DESIGN.md §3): one machine-to-machine OAuth2 client.

use std::collections::BTreeMap;
use std::time::Duration;

use k8s_openapi::apimachinery::pkg::apis::meta::v1::{Condition, Time};
use kube::CustomResource;
use schemars::{JsonSchema, Schema};
use serde::{Deserialize, Serialize};

use crate::validation::{self, DurationBounds, add_rule, duration_schema, list_set};

/// Default access-token lifetime.
pub const DEFAULT_TOKEN_TTL: Duration = Duration::from_secs(3600);

// The limits and messages of the schema below, named once: the schema
// attributes and CEL rules use them, and so does `crate::validate`, so a
// manifest the API server refuses is refused the same way in standalone mode.

pub const DISPLAY_NAME_MAX_LENGTH: usize = 256;
pub const CLIENT_ID_MAX_LENGTH: usize = 253;
pub const SCOPES_MAX_ITEMS: usize = 256;
pub const SCOPE_MAX_LENGTH: usize = 256;
pub const AUDIENCES_MAX_ITEMS: usize = 64;
pub const AUDIENCE_MAX_LENGTH: usize = 256;
pub const SECRET_NAME_MAX_LENGTH: usize = 253;
pub const SIGNING_KEY_NAME_MAX_LENGTH: usize = 63;
pub const JWKS_MAX_KEYS: usize = 16;
pub const JWK_KID_MAX_LENGTH: usize = 256;
pub const JWK_ALG_MAX_LENGTH: usize = 32;
/// The `kty` values a client's JWK may have, in schema order.
pub const JWK_KEY_TYPES: &[&str] = &["EC", "RSA", "OKP"];
/// JWK members that only a private key has; their presence is refused.
pub const JWK_PRIVATE_MEMBERS: &[&str] = &["d", "p", "q"];
pub const ADDITIONAL_CLAIMS_MAX_PROPERTIES: usize = 32;
/// ServiceAccounts one client may list (`spec.serviceAccounts`).
pub const SERVICE_ACCOUNTS_MAX_ITEMS: usize = 16;
/// A ServiceAccount name here is a DNS label (what a projected token's
/// `kubernetes.io.serviceaccount.name` of a usual workload is).
pub const SERVICE_ACCOUNT_NAME_MAX_LENGTH: usize = 63;

pub const TOKEN_TTL_BOUNDS: DurationBounds = DurationBounds {
    field: "tokenTTL",
    min: Some("1m"),
    max: Some("24h"),
};
pub const ROTATION_INTERVAL_BOUNDS: DurationBounds = DurationBounds {
    field: "interval",
    min: Some("10s"),
    max: None,
};
pub const GRACE_PERIOD_BOUNDS: DurationBounds = DurationBounds::unbounded("gracePeriod");

pub const JWKS_REQUIRED_MESSAGE: &str =
    "jwks is required when authMethods contains private_key_jwt";
pub const JWKS_WITHOUT_PRIVATE_KEY_JWT_MESSAGE: &str =
    "jwks is only used with private_key_jwt: add it to authMethods";
pub const JWKS_PUBLIC_KEYS_ONLY_MESSAGE: &str =
    "jwks must hold public keys only: remove the private members (d, p, q, ...)";
pub const SERVICE_ACCOUNTS_REQUIRED_MESSAGE: &str =
    "serviceAccounts is required when authMethods contains federated_jwt";
pub const SERVICE_ACCOUNTS_WITHOUT_FEDERATED_JWT_MESSAGE: &str =
    "serviceAccounts is only used with federated_jwt: add it to authMethods";
pub const GRACE_PERIOD_MESSAGE: &str = "gracePeriod must be shorter than interval";

/// The message of the `additionalClaims` rule, listing the reserved claims.
pub fn reserved_claims_message() -> String {
    format!(
        "additionalClaims may not set registered or Sigil-owned claims ({})",
        validation::RESERVED_CLAIMS.join(", ")
    )
}

/// An OAuth2 client-credentials client. The operator writes its credentials
/// to a Secret in the same namespace; the issuer hands it access tokens.
#[derive(CustomResource, Serialize, Deserialize, Clone, Debug, PartialEq, JsonSchema)]
#[kube(
    group = "sigil.dev",
    version = "v1alpha1",
    kind = "OAuthClient",
    plural = "oauthclients",
    singular = "oauthclient",
    namespaced,
    shortname = "oac",
    category = "sigil",
    status = "OAuthClientStatus",
    derive = "PartialEq",
    doc = "An OAuth2 client-credentials client; the operator writes its credentials to a Secret and the issuer grants it access tokens.",
    printcolumn(name = "Client ID", type_ = "string", json_path = ".status.clientId"),
    printcolumn(name = "Scopes", type_ = "string", json_path = ".spec.scopes"),
    printcolumn(
        name = "Ready",
        type_ = "string",
        json_path = ".status.conditions[?(@.type==\"Ready\")].status"
    ),
    printcolumn(
        name = "Reason",
        type_ = "string",
        json_path = ".status.conditions[?(@.type==\"Ready\")].reason",
        priority = "1"
    ),
    printcolumn(
        name = "Age",
        type_ = "date",
        json_path = ".metadata.creationTimestamp"
    )
)]
#[serde(rename_all = "camelCase")]
#[schemars(transform = spec_rules)]
pub struct OAuthClientSpec {
    /// Free-text name shown to people.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(max = DISPLAY_NAME_MAX_LENGTH))]
    pub display_name: Option<String>,

    /// The OAuth2 client_id; default `<name>.<namespace>`. Must be unique in
    /// the cluster. Letters, digits, `.`, `_` and `-` only.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1, max = CLIENT_ID_MAX_LENGTH), pattern(validation::CLIENT_ID_PATTERN))]
    pub client_id: Option<String>,

    /// Scopes this client may be granted (RFC 6749 §3.3 scope-tokens).
    #[serde(default)]
    #[schemars(length(max = SCOPES_MAX_ITEMS), inner(length(max = SCOPE_MAX_LENGTH), pattern(validation::SCOPE_TOKEN_PATTERN)), transform = list_set)]
    pub scopes: Vec<String>,

    /// Audiences this client may ask tokens for.
    #[serde(default)]
    #[schemars(length(max = AUDIENCES_MAX_ITEMS), inner(length(min = 1, max = AUDIENCE_MAX_LENGTH), pattern(validation::AUDIENCE_PATTERN)), transform = list_set)]
    pub audiences: Vec<String>,

    /// Access-token lifetime, a duration such as `10m` or `1h` (1m to 24h;
    /// default 1h).
    #[serde(default, rename = "tokenTTL", skip_serializing_if = "Option::is_none")]
    #[schemars(transform = token_ttl_schema)]
    pub token_ttl: Option<String>,

    /// Client authentication methods accepted at the token endpoint;
    /// default `client_secret_basic` and `client_secret_post`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1), transform = list_set)]
    pub auth_methods: Option<Vec<AuthMethod>>,

    /// The client's public keys, for `private_key_jwt` (RFC 7523).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub jwks: Option<ClientJwks>,

    /// ServiceAccounts of this namespace whose projected tokens (audience:
    /// the issuer URL) authenticate this client, with `federated_jwt`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1, max = SERVICE_ACCOUNTS_MAX_ITEMS), inner(length(min = 1, max = SERVICE_ACCOUNT_NAME_MAX_LENGTH), pattern(validation::DNS_LABEL_PATTERN)), transform = list_set)]
    pub service_accounts: Option<Vec<String>>,

    /// Name of the Secret to write; default `<name>-oauth`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1, max = SECRET_NAME_MAX_LENGTH), pattern(validation::DNS_SUBDOMAIN_PATTERN))]
    pub secret_name: Option<String>,

    /// Rotate the generated client secret periodically.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub secret_rotation: Option<SecretRotation>,

    /// Name of the `SigningKey` (in the issuer's namespace) that signs this
    /// client's tokens; default the issuer's default key.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1, max = SIGNING_KEY_NAME_MAX_LENGTH), pattern(validation::DNS_LABEL_PATTERN))]
    pub signing_key: Option<String>,

    /// Static claims added to every token of this client. Registered and
    /// protocol claims (iss, sub, aud, exp, nbf, iat, jti, client_id, scope,
    /// scp, cnf, azp, act, may_act, acr, amr, auth_time) are refused; names
    /// other than `stt` go into tokens only when the OAuthResource of one of
    /// the client's audiences grants them.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(transform = additional_claims_schema)]
    pub additional_claims: Option<BTreeMap<String, serde_json::Value>>,

    /// No tokens are issued while true.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub disabled: bool,
}

/// A token-endpoint client authentication method (RFC 6749 §2.3, RFC 7523).
///
/// `federated_jwt`: the client assertion (RFC 7523 §2.2) is a Kubernetes
/// ServiceAccount token issued by the cluster's own service-account issuer,
/// for a ServiceAccount the client lists in `spec.serviceAccounts`. Named
/// after Keycloak's client authenticator for the same thing
/// ("federated-jwt"; Entra calls it federated identity credentials).
#[derive(Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq, Hash, JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum AuthMethod {
    ClientSecretBasic,
    ClientSecretPost,
    PrivateKeyJwt,
    FederatedJwt,
}

impl AuthMethod {
    pub fn as_str(self) -> &'static str {
        match self {
            AuthMethod::ClientSecretBasic => "client_secret_basic",
            AuthMethod::ClientSecretPost => "client_secret_post",
            AuthMethod::PrivateKeyJwt => "private_key_jwt",
            AuthMethod::FederatedJwt => "federated_jwt",
        }
    }
}

/// A JWK Set (RFC 7517) holding public keys only.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, JsonSchema)]
pub struct ClientJwks {
    #[schemars(length(min = 1, max = JWKS_MAX_KEYS))]
    pub keys: Vec<PublicJwk>,
}

/// One public JWK (RFC 7517), kept as JSON so every key type and member
/// survives; the schema requires `kty` and refuses private members.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq)]
#[serde(transparent)]
pub struct PublicJwk(pub serde_json::Map<String, serde_json::Value>);

impl JsonSchema for PublicJwk {
    fn schema_name() -> std::borrow::Cow<'static, str> {
        "PublicJwk".into()
    }

    fn inline_schema() -> bool {
        true
    }

    fn json_schema(_: &mut schemars::SchemaGenerator) -> Schema {
        let mut properties = serde_json::json!({
            "kty": { "type": "string", "enum": JWK_KEY_TYPES },
            "kid": { "type": "string", "maxLength": JWK_KID_MAX_LENGTH },
            "alg": { "type": "string", "maxLength": JWK_ALG_MAX_LENGTH },
        });
        // The private members are declared only so the CEL rule below can
        // see them: a JWK with any of them is a private key.
        for member in JWK_PRIVATE_MEMBERS {
            properties[*member] = serde_json::json!({ "type": "string" });
        }
        let absent: Vec<String> = JWK_PRIVATE_MEMBERS
            .iter()
            .map(|m| format!("!has(self.{m})"))
            .collect();
        schemars::json_schema!({
            "type": "object",
            "required": ["kty"],
            "properties": properties,
            "x-kubernetes-preserve-unknown-fields": true,
            "x-kubernetes-validations": [{
                "rule": absent.join(" && "),
                "message": JWKS_PUBLIC_KEYS_ONLY_MESSAGE
            }]
        })
    }
}

/// Periodic rotation of the generated client secret.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
#[schemars(transform = secret_rotation_rules)]
pub struct SecretRotation {
    /// How often a new secret is generated (at least 10s).
    #[schemars(transform = rotation_interval_schema)]
    pub interval: String,
    /// How long the previous secret keeps working after a rotation; shorter
    /// than `interval`.
    #[schemars(transform = grace_period_schema)]
    pub grace_period: String,
}

/// What the operator observed and did.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct OAuthClientStatus {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub client_id: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub secret_name: Option<String>,
    /// SHA-256 digests of the secrets that currently work (newest first);
    /// never the secrets themselves.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub secret_verifiers: Vec<SecretVerifier>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub secret_rotated_at: Option<Time>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub observed_generation: Option<i64>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub conditions: Vec<Condition>,
    /// What the OAuthResources of the requested audiences grant this client
    /// (`crate::grant`): the issuer issues nothing beyond it. Absent until
    /// the operator has admitted the client; the issuer then issues nothing.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub grant: Option<EffectiveGrant>,
}

/// The part of a client's request that its audiences' owners grant.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct EffectiveGrant {
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub audiences: Vec<String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub scopes: Vec<String>,
    /// `additionalClaims` names that go into tokens.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub claims: Vec<String>,
    /// What was requested and not granted, and why.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub denied: Vec<Denial>,
}

/// One requested audience, scope or claim that is not granted.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq, PartialOrd, Ord, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct Denial {
    pub kind: DeniedKind,
    pub name: String,
    pub reason: String,
}

/// What a [`Denial`] is about.
#[derive(
    Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, JsonSchema,
)]
#[serde(rename_all = "camelCase")]
pub enum DeniedKind {
    Audience,
    Scope,
    Claim,
}

/// One accepted client secret, as its digest.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct SecretVerifier {
    /// Lower-case hex SHA-256 of the secret's UTF-8 bytes.
    pub sha256: String,
    pub created_at: Time,
    /// Set on a rotated-out secret: it stops working at this time.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub expires_at: Option<Time>,
}

impl OAuthClientSpec {
    /// The effective token lifetime (the schema guarantees a valid value on
    /// objects that came through the API server).
    pub fn token_ttl(&self) -> Duration {
        self.token_ttl
            .as_deref()
            .and_then(|s| crate::parse_duration(s).ok())
            .unwrap_or(DEFAULT_TOKEN_TTL)
    }

    /// The effective client authentication methods.
    pub fn auth_methods(&self) -> Vec<AuthMethod> {
        match &self.auth_methods {
            Some(methods) if !methods.is_empty() => methods.clone(),
            _ => vec![AuthMethod::ClientSecretBasic, AuthMethod::ClientSecretPost],
        }
    }

    /// Whether the client authenticates only with ServiceAccount tokens
    /// (`federated_jwt` is its one method): the operator writes it no
    /// Secret and no secret verifiers.
    pub fn is_secretless(&self) -> bool {
        self.auth_methods() == [AuthMethod::FederatedJwt]
    }

    /// The ServiceAccounts whose tokens authenticate this client: none
    /// unless `federated_jwt` is one of its methods.
    pub fn federated_service_accounts(&self) -> &[String] {
        match &self.service_accounts {
            Some(names) if self.auth_methods().contains(&AuthMethod::FederatedJwt) => names,
            _ => &[],
        }
    }
}

impl OAuthClient {
    /// The effective client id: `spec.clientId`, else `<name>.<namespace>`.
    pub fn client_id(&self) -> String {
        if let Some(id) = &self.spec.client_id {
            return id.clone();
        }
        let name = self.metadata.name.as_deref().unwrap_or_default();
        let namespace = self.metadata.namespace.as_deref().unwrap_or_default();
        format!("{name}.{namespace}")
    }

    /// The Secret the operator writes: `spec.secretName`, else `<name>-oauth`.
    pub fn secret_name(&self) -> String {
        match &self.spec.secret_name {
            Some(name) => name.clone(),
            None => format!(
                "{}-oauth",
                self.metadata.name.as_deref().unwrap_or_default()
            ),
        }
    }
}

fn spec_rules(schema: &mut Schema) {
    add_rule(
        schema,
        "!has(self.authMethods) || !self.authMethods.exists(m, m == 'private_key_jwt') || has(self.jwks)",
        JWKS_REQUIRED_MESSAGE,
        Some(".jwks"),
    );
    add_rule(
        schema,
        "!has(self.jwks) || (has(self.authMethods) && self.authMethods.exists(m, m == 'private_key_jwt'))",
        JWKS_WITHOUT_PRIVATE_KEY_JWT_MESSAGE,
        Some(".authMethods"),
    );
    add_rule(
        schema,
        "!has(self.authMethods) || !self.authMethods.exists(m, m == 'federated_jwt') || has(self.serviceAccounts)",
        SERVICE_ACCOUNTS_REQUIRED_MESSAGE,
        Some(".serviceAccounts"),
    );
    add_rule(
        schema,
        "!has(self.serviceAccounts) || (has(self.authMethods) && self.authMethods.exists(m, m == 'federated_jwt'))",
        SERVICE_ACCOUNTS_WITHOUT_FEDERATED_JWT_MESSAGE,
        Some(".authMethods"),
    );
}

fn token_ttl_schema(schema: &mut Schema) {
    duration_schema(schema, &TOKEN_TTL_BOUNDS);
}

fn rotation_interval_schema(schema: &mut Schema) {
    duration_schema(schema, &ROTATION_INTERVAL_BOUNDS);
}

fn grace_period_schema(schema: &mut Schema) {
    duration_schema(schema, &GRACE_PERIOD_BOUNDS);
}

fn secret_rotation_rules(schema: &mut Schema) {
    add_rule(
        schema,
        "duration(self.gracePeriod) < duration(self.interval)",
        GRACE_PERIOD_MESSAGE,
        Some(".gracePeriod"),
    );
}

fn additional_claims_schema(schema: &mut Schema) {
    // Values are arbitrary JSON, so the object preserves unknown fields. CEL
    // cannot type a map of untyped values (nor a member declared untyped),
    // so the reserved claims are declared (as int-or-string, the shapes most
    // have in a JWT; an object such as `act` is refused by that type) and the
    // rule refuses any of them being present.
    let reserved: serde_json::Map<String, serde_json::Value> = validation::RESERVED_CLAIMS
        .iter()
        .map(|c| {
            (
                (*c).to_owned(),
                serde_json::json!({ "x-kubernetes-int-or-string": true }),
            )
        })
        .collect();
    let present: Vec<String> = validation::RESERVED_CLAIMS
        .iter()
        .map(|c| format!("!has(self.{c})"))
        .collect();
    *schema = schemars::json_schema!({
        "type": "object",
        "description": schema.get("description").cloned().unwrap_or_default(),
        "properties": reserved,
        "maxProperties": ADDITIONAL_CLAIMS_MAX_PROPERTIES,
        "x-kubernetes-preserve-unknown-fields": true,
    });
    add_rule(
        schema,
        &present.join(" && "),
        &reserved_claims_message(),
        None,
    );
}

#[cfg(test)]
mod tests {
    use super::*;

    fn client(name: &str, ns: &str, spec: OAuthClientSpec) -> OAuthClient {
        let mut c = OAuthClient::new(name, spec);
        c.metadata.namespace = Some(ns.into());
        c
    }

    fn empty_spec() -> OAuthClientSpec {
        serde_json::from_value(serde_json::json!({})).unwrap()
    }

    #[test]
    fn defaults_follow_the_contract() {
        let c = client("task-service", "tasks", empty_spec());
        assert_eq!(c.client_id(), "task-service.tasks");
        assert_eq!(c.secret_name(), "task-service-oauth");
        assert_eq!(c.spec.token_ttl(), Duration::from_secs(3600));
        assert_eq!(
            c.spec.auth_methods(),
            vec![AuthMethod::ClientSecretBasic, AuthMethod::ClientSecretPost]
        );
        assert!(!c.spec.disabled);
        assert!(!c.spec.is_secretless());
        assert!(c.spec.federated_service_accounts().is_empty());
    }

    #[test]
    fn federated_service_accounts_need_the_method() {
        let spec = |methods: serde_json::Value| -> OAuthClientSpec {
            serde_json::from_value(serde_json::json!({
                "authMethods": methods, "serviceAccounts": ["task-service"],
            }))
            .unwrap()
        };
        let only = spec(serde_json::json!(["federated_jwt"]));
        assert!(only.is_secretless());
        assert_eq!(only.federated_service_accounts(), ["task-service"]);
        let mixed = spec(serde_json::json!(["federated_jwt", "client_secret_basic"]));
        assert!(!mixed.is_secretless());
        assert_eq!(mixed.federated_service_accounts(), ["task-service"]);
        // serviceAccounts without the method (refused by the CRD) count for nothing.
        let without = spec(serde_json::json!(["client_secret_post"]));
        assert!(without.federated_service_accounts().is_empty());
    }

    #[test]
    fn explicit_values_win() {
        let spec: OAuthClientSpec = serde_json::from_value(serde_json::json!({
            "clientId": "task",
            "secretName": "creds",
            "tokenTTL": "10m",
            "authMethods": ["client_secret_post"],
        }))
        .unwrap();
        let c = client("task-service", "tasks", spec);
        assert_eq!(c.client_id(), "task");
        assert_eq!(c.secret_name(), "creds");
        assert_eq!(c.spec.token_ttl(), Duration::from_secs(600));
        assert_eq!(c.spec.auth_methods(), vec![AuthMethod::ClientSecretPost]);
    }
}
