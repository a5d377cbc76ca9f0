//! What the OAuthResources say about their audiences, as the request path
//! reads it: who owns each audience (introspection), how its tokens look
//! (`typ`, lifetime ceiling, scope claims), and every declared scope
//! (discovery's `scopes_supported`). Rebuilt whole on every change; the
//! holder of a contested audience is `sigil_crds::grant::holders`' choice,
//! the same as the operator's.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::OnceLock;
use std::time::Duration;

use bytes::Bytes;
use kube::ResourceExt;
use sigil_crds::{OAuthResource, ScopeClaim, TokenType};

use crate::index::TokenTyp;

/// One claimed audience's rules.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct AudiencePolicy {
    /// Namespace of the OAuthResource holding the audience: its clients may
    /// introspect the audience's tokens.
    pub owner_namespace: String,
    /// `typ` its tokens carry; `None` follows `--token-typ`.
    pub typ: Option<TokenTyp>,
    pub max_lifetime: Option<Duration>,
    pub scope_claim: bool,
    pub scp_claim: bool,
}

/// Every claimed audience's policy, and what discovery lists.
#[derive(Debug, Default)]
pub struct AudienceIndex {
    policies: BTreeMap<String, AudiencePolicy>,
    pub scopes_supported: Vec<String>,
    /// The discovery document with `scopes_supported`, made on first use.
    pub metadata: OnceLock<Bytes>,
}

impl AudienceIndex {
    pub fn build<'a>(resources: impl IntoIterator<Item = &'a OAuthResource>) -> Self {
        let holders = sigil_crds::grant::holders(resources);
        let mut scopes = BTreeSet::new();
        let policies = holders
            .iter()
            .map(|(audience, resource)| {
                scopes.extend(resource.spec.scopes.iter().map(|s| s.name.clone()));
                let format = resource.spec.token.clone().unwrap_or_default();
                let claims = format.scope_claims.clone();
                let wants = |c: ScopeClaim| claims.as_ref().is_none_or(|list| list.contains(&c));
                let policy = AudiencePolicy {
                    owner_namespace: resource.namespace().unwrap_or_default(),
                    typ: format.typ.map(|t| match t {
                        TokenType::AtJwt => TokenTyp::AtJwt,
                        TokenType::Jwt => TokenTyp::Jwt,
                    }),
                    max_lifetime: format.max_lifetime(),
                    scope_claim: wants(ScopeClaim::Scope),
                    scp_claim: wants(ScopeClaim::Scp),
                };
                (audience.clone(), policy)
            })
            .collect();
        AudienceIndex {
            policies,
            scopes_supported: scopes.into_iter().collect(),
            metadata: OnceLock::new(),
        }
    }

    pub fn get(&self, audience: &str) -> Option<&AudiencePolicy> {
        self.policies.get(audience)
    }

    /// Whether a client of `namespace` may introspect a token for
    /// `audiences`: it owns one of them.
    pub fn owns_any(&self, namespace: &str, audiences: &[&str]) -> bool {
        audiences
            .iter()
            .any(|a| self.get(a).is_some_and(|p| p.owner_namespace == namespace))
    }

    /// How one token for `audiences` looks. Audiences that want different
    /// `typ` values cannot share a token: the error says to ask separately.
    pub fn shape(
        &self,
        audiences: &[&str],
        default_typ: TokenTyp,
        client_ttl: Duration,
    ) -> Result<TokenShape, String> {
        let mut typ: Option<(TokenTyp, &str)> = None;
        let mut shape = TokenShape {
            scope_claim: false,
            scp_claim: false,
            ..TokenShape::unshaped(default_typ, client_ttl)
        };
        for audience in audiences {
            let policy = self.get(audience);
            let wanted = policy.and_then(|p| p.typ).unwrap_or(default_typ);
            match typ {
                Some((other, first)) if other != wanted => {
                    return Err(format!(
                        "audiences {first} and {audience} need different token types ({} and {}): request them in separate tokens",
                        other.as_str(),
                        wanted.as_str()
                    ));
                }
                _ => typ = Some((wanted, audience)),
            }
            if let Some(ceiling) = policy.and_then(|p| p.max_lifetime) {
                shape.lifetime = shape.lifetime.min(ceiling);
            }
            shape.scope_claim |= policy.is_none_or(|p| p.scope_claim);
            shape.scp_claim |= policy.is_none_or(|p| p.scp_claim);
        }
        if let Some((t, _)) = typ {
            shape.typ = t;
        }
        Ok(shape)
    }
}

/// The format of one access token.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct TokenShape {
    pub typ: TokenTyp,
    pub lifetime: Duration,
    pub scope_claim: bool,
    pub scp_claim: bool,
}

impl TokenShape {
    /// A token no OAuthResource shapes: `typ`, the client's lifetime, both
    /// scope claims.
    pub fn unshaped(typ: TokenTyp, lifetime: Duration) -> Self {
        TokenShape {
            typ,
            lifetime,
            scope_claim: true,
            scp_claim: true,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn resource(ns: &str, audience: &str, token: serde_json::Value) -> OAuthResource {
        let mut r = OAuthResource::new(
            audience,
            serde_json::from_value(serde_json::json!({
                "audience": audience,
                "scopes": [{"name": format!("{audience}.read")}],
                "token": token,
            }))
            .expect("spec"),
        );
        r.metadata.namespace = Some(ns.into());
        r
    }

    #[test]
    fn each_audience_shapes_its_tokens() {
        let resources = [
            resource(
                "calendar",
                "event",
                serde_json::json!({"type": "JWT", "maxLifetime": "5m"}),
            ),
            resource("files", "file", serde_json::json!({"scopeClaims": ["scp"]})),
        ];
        let index = AudienceIndex::build(&resources);
        assert_eq!(index.scopes_supported, ["event.read", "file.read"]);
        let hour = Duration::from_secs(3600);
        let event = index
            .shape(&["event"], TokenTyp::AtJwt, hour)
            .expect("shape");
        assert_eq!(
            event,
            TokenShape {
                typ: TokenTyp::Jwt,
                lifetime: Duration::from_secs(300),
                scope_claim: true,
                scp_claim: true
            }
        );
        let file = index
            .shape(&["file"], TokenTyp::AtJwt, hour)
            .expect("shape");
        assert_eq!((file.typ, file.lifetime), (TokenTyp::AtJwt, hour));
        assert!(!file.scope_claim && file.scp_claim);
        // An unclaimed audience follows the deployment.
        let other = index.shape(&["other"], TokenTyp::Jwt, hour).expect("shape");
        assert_eq!(other.typ, TokenTyp::Jwt);
        let err = index
            .shape(&["event", "file"], TokenTyp::AtJwt, hour)
            .expect_err("typ conflict");
        assert!(
            err.contains("event and file need different token types"),
            "{err}"
        );
        assert!(index.owns_any("calendar", &["file", "event"]));
        assert!(!index.owns_any("tasks", &["event"]));
    }
}
