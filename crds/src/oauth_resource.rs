//! `OAuthResource`: the team that owns an API claims its audience, declares
//! its scopes and grants them to client namespaces. The operator turns the
//! grants into each `OAuthClient`'s effective grant (`crate::grant`); the
//! issuer issues nothing beyond it and formats tokens for the audience as
//! the resource says.

use k8s_openapi::apimachinery::pkg::apis::meta::v1::{Condition, LabelSelector};
use kube::CustomResource;
use schemars::{JsonSchema, Schema};
use serde::{Deserialize, Serialize};

use crate::validation::{self, DurationBounds, add_rule, duration_schema, list_set};

pub const RESOURCE_SCOPES_MAX_ITEMS: usize = 64;
pub const SCOPE_DESCRIPTION_MAX_LENGTH: usize = 256;
pub const GRANTS_MAX_ITEMS: usize = 16;
pub const GRANT_NAMESPACES_MAX_ITEMS: usize = 64;
pub const GRANT_SCOPES_MAX_ITEMS: usize = 32;
pub const GRANT_CLAIMS_MAX_ITEMS: usize = 32;
pub const CLAIM_NAME_MAX_LENGTH: usize = 64;

pub const MAX_LIFETIME_BOUNDS: DurationBounds = DurationBounds {
    field: "maxLifetime",
    min: Some("1m"),
    max: Some("24h"),
};

pub const GRANT_SCOPES_DECLARED_MESSAGE: &str =
    "every scope a grant names must be declared in spec.scopes";

/// Condition type of an `OAuthResource`: whether it holds its audience.
pub const CONDITION_CLAIMED: &str = "Claimed";

/// An API's claim on an audience, its scopes, and who may get them.
#[derive(CustomResource, Serialize, Deserialize, Clone, Debug, PartialEq, JsonSchema)]
#[kube(
    group = "sigil.dev",
    version = "v1alpha1",
    kind = "OAuthResource",
    plural = "oauthresources",
    singular = "oauthresource",
    namespaced,
    shortname = "oar",
    category = "sigil",
    status = "OAuthResourceStatus",
    derive = "PartialEq",
    doc = "An API's claim on a token audience: the scopes it defines and the client namespaces that may get them.",
    printcolumn(name = "Audience", type_ = "string", json_path = ".spec.audience"),
    printcolumn(name = "Scopes", type_ = "string", json_path = ".spec.scopes[*].name"),
    printcolumn(
        name = "Claimed",
        type_ = "string",
        json_path = ".status.conditions[?(@.type==\"Claimed\")].status"
    ),
    printcolumn(
        name = "Reason",
        type_ = "string",
        json_path = ".status.conditions[?(@.type==\"Claimed\")].message",
        priority = "1"
    ),
    printcolumn(
        name = "Age",
        type_ = "date",
        json_path = ".metadata.creationTimestamp"
    )
)]
#[serde(rename_all = "camelCase")]
#[schemars(transform = resource_rules)]
pub struct OAuthResourceSpec {
    /// The audience (`aud`) this API accepts, e.g. `event` or
    /// `https://calendar.example`. The oldest OAuthResource naming an
    /// audience holds it; later ones get `Claimed=False`.
    #[schemars(length(min = 1, max = crate::oauth_client::AUDIENCE_MAX_LENGTH), pattern(validation::AUDIENCE_PATTERN))]
    pub audience: String,

    /// The scopes this API defines (shown in discovery's
    /// `scopes_supported`). Name them after the API (`event.read`): a token
    /// for several audiences carries one `scope` list.
    #[serde(default)]
    #[schemars(length(max = RESOURCE_SCOPES_MAX_ITEMS), extend("x-kubernetes-list-type" = "map", "x-kubernetes-list-map-keys" = ["name"]))]
    pub scopes: Vec<ScopeDefinition>,

    /// Which client namespaces may get tokens for this audience, and with
    /// which scopes and claims. A client outside every grant gets neither.
    #[serde(default)]
    #[schemars(length(max = GRANTS_MAX_ITEMS))]
    pub grants: Vec<Grant>,

    /// How tokens for this audience look.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub token: Option<TokenFormat>,
}

/// One scope of the API.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq, JsonSchema)]
pub struct ScopeDefinition {
    #[schemars(length(min = 1, max = crate::oauth_client::SCOPE_MAX_LENGTH), pattern(validation::SCOPE_TOKEN_PATTERN))]
    pub name: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(max = SCOPE_DESCRIPTION_MAX_LENGTH))]
    pub description: Option<String>,
}

/// Client namespaces (by name and/or label selector) and what they get.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct Grant {
    /// Client namespaces by name.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = GRANT_NAMESPACES_MAX_ITEMS), inner(length(min = 1, max = 63), pattern(validation::DNS_LABEL_PATTERN)), transform = list_set)]
    pub namespaces: Vec<String>,

    /// Client namespaces by label; `{}` selects every namespace. A namespace
    /// is granted when it is named or selected.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub namespace_selector: Option<LabelSelector>,

    /// Scopes granted, each declared in `spec.scopes`. Empty grants the
    /// audience only.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = GRANT_SCOPES_MAX_ITEMS), inner(length(max = crate::oauth_client::SCOPE_MAX_LENGTH)), transform = list_set)]
    pub scopes: Vec<String>,

    /// `additionalClaims` names these clients may set (beyond the safe set,
    /// `crate::grant::SAFE_ADDITIONAL_CLAIMS`), e.g. `roles`.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = GRANT_CLAIMS_MAX_ITEMS), inner(length(min = 1, max = CLAIM_NAME_MAX_LENGTH)), transform = list_set)]
    pub claims: Vec<String>,
}

/// The token format an API wants.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct TokenFormat {
    /// JWT header `typ`: `at+jwt` (RFC 9068, the default) or `JWT` (what
    /// Spring Security's default validators accept).
    #[serde(default, rename = "type", skip_serializing_if = "Option::is_none")]
    pub typ: Option<TokenType>,

    /// The longest lifetime of a token for this audience (1m to 24h); a
    /// client's longer `tokenTTL` is cut to it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(transform = max_lifetime_schema)]
    pub max_lifetime: Option<String>,

    /// Which scope claims tokens carry: `scope` (space-separated string) and
    /// `scp` (array); default both.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1), transform = list_set)]
    pub scope_claims: Option<Vec<ScopeClaim>>,
}

/// JWT header `typ` of an access token.
#[derive(Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq, Hash, JsonSchema)]
pub enum TokenType {
    #[serde(rename = "at+jwt")]
    AtJwt,
    #[serde(rename = "JWT")]
    Jwt,
}

impl TokenType {
    pub fn as_str(self) -> &'static str {
        match self {
            TokenType::AtJwt => "at+jwt",
            TokenType::Jwt => "JWT",
        }
    }
}

/// A claim carrying the granted scopes.
#[derive(Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq, Hash, JsonSchema)]
#[serde(rename_all = "lowercase")]
pub enum ScopeClaim {
    Scope,
    Scp,
}

/// What the operator observed.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct OAuthResourceStatus {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub observed_generation: Option<i64>,
    /// `Claimed`: whether this resource holds its audience; when not, the
    /// message names the holder.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub conditions: Vec<Condition>,
}

impl TokenFormat {
    /// `maxLifetime` as a duration (the schema guarantees a valid value).
    pub fn max_lifetime(&self) -> Option<std::time::Duration> {
        self.max_lifetime
            .as_deref()
            .and_then(|s| crate::parse_duration(s).ok())
    }
}

fn max_lifetime_schema(schema: &mut Schema) {
    duration_schema(schema, &MAX_LIFETIME_BOUNDS);
}

fn resource_rules(schema: &mut Schema) {
    add_rule(
        schema,
        "!has(self.grants) || self.grants.all(g, !has(g.scopes) || g.scopes.all(s, has(self.scopes) && self.scopes.exists(d, d.name == s)))",
        GRANT_SCOPES_DECLARED_MESSAGE,
        Some(".grants"),
    );
}
