//! The tenant boundary, as pure functions: which `OAuthResource` holds an
//! audience, what an `OAuthClient` is granted (requested ∩ granted, with a
//! reason for every denied part), and which client ids a namespace may use.
//!
//! The operator computes the grant and writes it to the client's status;
//! the issuer reads the holders for token formats and introspection. Both
//! call these functions, so each rule exists once.

use std::collections::{BTreeMap, BTreeSet};

use kube::ResourceExt;
use kube::core::{Selector, SelectorExt};

use crate::oauth_client::{Denial, DeniedKind, EffectiveGrant};
use crate::oauth_resource::{Grant, OAuthResource};
use crate::{OAuthClient, OAuthClientSpec};

/// `additionalClaims` any client may set without a grant: they carry no
/// authority a resource server could act on. `stt` is what verifiers
/// written for SuperTokens require.
pub const SAFE_ADDITIONAL_CLAIMS: &[&str] = &["stt"];

/// Namespace annotation listing the client ids outside `*.<namespace>`
/// that OAuthClients of the namespace may use: comma-separated ids, each
/// exact or ending in `*` (a prefix). Namespaces are cluster-scoped, so only
/// whoever may edit namespaces (a cluster admin) can grant one.
pub const CLIENT_IDS_ANNOTATION: &str = "sigil.dev/client-ids";

/// What happens to an audience no OAuthResource claims (chart value
/// `policy.unclaimedAudiences`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub enum UnclaimedAudiences {
    /// Any client may get tokens for it, with any scope nobody defines (the
    /// quick start; Sigil before OAuthResources).
    #[default]
    Open,
    /// Nobody gets tokens for it (recommended in production).
    Closed,
}

impl std::str::FromStr for UnclaimedAudiences {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "open" => Ok(UnclaimedAudiences::Open),
            "closed" => Ok(UnclaimedAudiences::Closed),
            other => Err(format!("{other:?} is neither open nor closed")),
        }
    }
}

impl std::fmt::Display for UnclaimedAudiences {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            UnclaimedAudiences::Open => "open",
            UnclaimedAudiences::Closed => "closed",
        })
    }
}

/// The namespace and name of an OAuthResource, as messages print it.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct ResourceRef {
    pub namespace: String,
    pub name: String,
}

impl std::fmt::Display for ResourceRef {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}/{}", self.namespace, self.name)
    }
}

impl ResourceRef {
    pub fn of(resource: &OAuthResource) -> Self {
        ResourceRef {
            namespace: resource.namespace().unwrap_or_default(),
            name: resource.name_any(),
        }
    }
}

/// The order that decides who holds a contested audience: the oldest
/// (`metadata.creationTimestamp`), then namespace, then name, alphabetically.
/// A deleted holder passes the audience to the next in this order.
fn claim_order(resource: &OAuthResource) -> (Option<jiff::Timestamp>, ResourceRef) {
    (
        resource.metadata.creation_timestamp.as_ref().map(|t| t.0),
        ResourceRef::of(resource),
    )
}

/// The holder of every claimed audience.
pub fn holders<'a>(
    resources: impl IntoIterator<Item = &'a OAuthResource>,
) -> BTreeMap<String, &'a OAuthResource> {
    let mut out: BTreeMap<String, &'a OAuthResource> = BTreeMap::new();
    for resource in resources {
        if resource.metadata.deletion_timestamp.is_some() {
            continue;
        }
        match out.get(&resource.spec.audience) {
            Some(held) if claim_order(held) <= claim_order(resource) => {}
            _ => {
                out.insert(resource.spec.audience.clone(), resource);
            }
        }
    }
    out
}

/// A client's namespace as grants see it.
#[derive(Clone, Copy, Debug)]
pub struct ClientNamespace<'a> {
    pub name: &'a str,
    pub labels: &'a BTreeMap<String, String>,
}

impl Grant {
    /// Whether this grant covers `namespace` (named, or selected by labels).
    /// A selector the API server accepted but kube cannot parse selects
    /// nothing.
    pub fn covers(&self, namespace: ClientNamespace<'_>) -> bool {
        if self.namespaces.iter().any(|n| n == namespace.name) {
            return true;
        }
        self.namespace_selector
            .clone()
            .and_then(|s| Selector::try_from(s).ok())
            .is_some_and(|s| s.matches(namespace.labels))
    }
}

/// What the holder of an audience grants one namespace.
struct Granted<'a> {
    scopes: BTreeSet<&'a str>,
    claims: BTreeSet<&'a str>,
}

fn granted<'a>(holder: &'a OAuthResource, namespace: ClientNamespace<'_>) -> Option<Granted<'a>> {
    let grants: Vec<&Grant> = holder
        .spec
        .grants
        .iter()
        .filter(|g| g.covers(namespace))
        .collect();
    if grants.is_empty() {
        return None;
    }
    let declared: BTreeSet<&str> = holder.spec.scopes.iter().map(|s| s.name.as_str()).collect();
    Some(Granted {
        scopes: grants
            .iter()
            .flat_map(|g| g.scopes.iter().map(String::as_str))
            .filter(|s| declared.contains(s))
            .collect(),
        claims: grants
            .iter()
            .flat_map(|g| g.claims.iter().map(String::as_str))
            .collect(),
    })
}

/// Requested ∩ granted for a client in `namespace`, given the audience
/// holders ([`holders`]) and the unclaimed-audience policy:
/// - an audience is granted when its holder has a grant covering the
///   namespace, or nobody holds it and the policy is `open`;
/// - a scope is granted when the holder of a granted audience grants it; a
///   scope no holder defines is granted only under `open`;
/// - an `additionalClaims` name is granted when it is in
///   [`SAFE_ADDITIONAL_CLAIMS`] or the holder of a granted audience grants it.
pub fn effective_grant(
    spec: &OAuthClientSpec,
    namespace: ClientNamespace<'_>,
    holders: &BTreeMap<String, &OAuthResource>,
    unclaimed: UnclaimedAudiences,
) -> EffectiveGrant {
    let mut out = EffectiveGrant::default();
    let mut deny = |kind, name: &str, reason: String| {
        out.denied.push(Denial {
            kind,
            name: name.to_owned(),
            reason,
        })
    };
    let mut by_audience: Vec<Granted<'_>> = Vec::new();
    let mut audiences = Vec::new();
    for audience in &spec.audiences {
        match holders.get(audience) {
            Some(holder) => match granted(holder, namespace) {
                Some(g) => {
                    audiences.push(audience.clone());
                    by_audience.push(g);
                }
                None => deny(
                    DeniedKind::Audience,
                    audience,
                    format!(
                        "OAuthResource {} holds audience {audience} and grants it to no grant covering namespace {}",
                        ResourceRef::of(holder),
                        namespace.name
                    ),
                ),
            },
            None if unclaimed == UnclaimedAudiences::Open => audiences.push(audience.clone()),
            None => deny(
                DeniedKind::Audience,
                audience,
                format!(
                    "no OAuthResource claims audience {audience}, and unclaimed audiences are closed"
                ),
            ),
        }
    }

    let mut scopes = Vec::new();
    for scope in &spec.scopes {
        if by_audience
            .iter()
            .any(|g| g.scopes.contains(scope.as_str()))
        {
            scopes.push(scope.clone());
            continue;
        }
        let definers: Vec<&OAuthResource> = holders
            .values()
            .copied()
            .filter(|h| h.spec.scopes.iter().any(|d| &d.name == scope))
            .collect();
        match definers.first() {
            Some(definer) => {
                let requested = spec.audiences.contains(&definer.spec.audience);
                let why = if requested {
                    format!("which does not grant it to namespace {}", namespace.name)
                } else {
                    format!(
                        "for audience {}, which this client does not request",
                        definer.spec.audience
                    )
                };
                deny(
                    DeniedKind::Scope,
                    scope,
                    format!(
                        "scope {scope} is defined by OAuthResource {} {why}",
                        ResourceRef::of(definer)
                    ),
                );
            }
            None if unclaimed == UnclaimedAudiences::Open => scopes.push(scope.clone()),
            None => deny(
                DeniedKind::Scope,
                scope,
                format!(
                    "no OAuthResource defines scope {scope}, and unclaimed audiences are closed"
                ),
            ),
        }
    }

    let mut claims = Vec::new();
    for claim in spec.additional_claims.iter().flat_map(|c| c.keys()) {
        if SAFE_ADDITIONAL_CLAIMS.contains(&claim.as_str())
            || by_audience
                .iter()
                .any(|g| g.claims.contains(claim.as_str()))
        {
            claims.push(claim.clone());
        } else {
            deny(
                DeniedKind::Claim,
                claim,
                format!(
                    "additional claim {claim} needs a grant from the OAuthResource of one of this client's audiences (only {} need none)",
                    SAFE_ADDITIONAL_CLAIMS.join(", ")
                ),
            );
        }
    }
    out.audiences = audiences;
    out.scopes = scopes;
    out.claims = claims;
    out.denied.sort();
    out
}

/// Everything `spec` requests, granted: what a trusted configuration (the
/// standalone issuer's manifests) gets without OAuthResources.
pub fn as_requested(spec: &OAuthClientSpec) -> EffectiveGrant {
    EffectiveGrant {
        audiences: spec.audiences.clone(),
        scopes: spec.scopes.clone(),
        claims: spec
            .additional_claims
            .iter()
            .flat_map(|c| c.keys().cloned())
            .collect(),
        denied: Vec::new(),
    }
}

/// One line per denial, for the `Granted` condition and the Event.
pub fn denial_summary(denied: &[Denial]) -> String {
    denied
        .iter()
        .map(|d| d.reason.as_str())
        .collect::<Vec<_>>()
        .join("; ")
}

/// Whether a client of `namespace` may use `client_id`: ids of the form
/// `*.<namespace>` always (namespaces are DNS labels, so the last dot
/// names exactly one namespace), others only when the namespace's
/// [`CLIENT_IDS_ANNOTATION`] lists them. The error names the rule.
pub fn check_client_id(
    client_id: &str,
    namespace: &str,
    allowed: Option<&str>,
) -> Result<(), String> {
    if client_id
        .strip_suffix(namespace)
        .is_some_and(|head| head.len() > 1 && head.ends_with('.'))
    {
        return Ok(());
    }
    let listed = allowed
        .into_iter()
        .flat_map(|a| a.split(','))
        .map(str::trim)
        .filter(|p| !p.is_empty())
        .any(|pattern| match pattern.strip_suffix('*') {
            Some(prefix) => client_id.starts_with(prefix),
            None => client_id == pattern,
        });
    if listed {
        return Ok(());
    }
    Err(format!(
        "clientId {client_id} is not of the form <name>.{namespace}; a cluster admin may allow it with the annotation {CLIENT_IDS_ANNOTATION} on namespace {namespace}"
    ))
}

impl OAuthClient {
    /// Whether the operator admitted this client (a grant in its status,
    /// for the client id it has now): the issuer serves no other. Duplicate
    /// and squatted ids are refused with an empty status, so they never are.
    pub fn is_admitted(&self) -> bool {
        self.status.as_ref().is_some_and(|status| {
            status.grant.is_some() && status.client_id.as_deref() == Some(&self.client_id())
        }) && !self.is_marked_duplicate()
    }

    /// The effective grant the operator recorded, intersected with the
    /// current spec (a spec that shrank since takes effect at once; one that
    /// grew waits for the operator). `None` until the operator admits it.
    pub fn recorded_grant(&self) -> Option<EffectiveGrant> {
        let grant = self.status.as_ref()?.grant.as_ref()?;
        let keep = |granted: &[String], requested: &[String]| -> Vec<String> {
            granted
                .iter()
                .filter(|g| requested.contains(g))
                .cloned()
                .collect()
        };
        let requested_claims: Vec<String> = self
            .spec
            .additional_claims
            .iter()
            .flat_map(|c| c.keys().cloned())
            .collect();
        Some(EffectiveGrant {
            audiences: keep(&grant.audiences, &self.spec.audiences),
            scopes: keep(&grant.scopes, &self.spec.scopes),
            claims: keep(&grant.claims, &requested_claims),
            denied: Vec::new(),
        })
    }
}

#[cfg(test)]
mod tests;
