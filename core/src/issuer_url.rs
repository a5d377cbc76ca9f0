//! The issuer URL (`iss`): parsed and normalised in one place, and the only
//! place that derives the endpoint URLs and paths from it. The operator
//! writes `issuer` and `token_url` into client Secrets from it; the issuer
//! mounts its routes under its path and publishes the same URLs in
//! discovery, so the two can never disagree.

use std::fmt;

/// Path of the token endpoint under the issuer URL (RFC 6749 §3.2).
pub const TOKEN_PATH: &str = "/oauth2/token";
/// Path of the introspection endpoint (RFC 7662).
pub const INTROSPECTION_PATH: &str = "/oauth2/introspect";
/// Path of the JWKS (RFC 7517).
pub const JWKS_PATH: &str = "/.well-known/jwks.json";
/// OIDC Discovery 1.0 §4 metadata, appended to the issuer URL.
pub const OPENID_CONFIGURATION_PATH: &str = "/.well-known/openid-configuration";
/// RFC 8414 §3 metadata. Per §3.1 the well-known segment goes *before* the
/// issuer's path; Sigil also serves it appended, as many clients expect.
pub const OAUTH_METADATA_PATH: &str = "/.well-known/oauth-authorization-server";

/// An absolute `http`/`https` URL without query, fragment or trailing `/`
/// (one trailing `/` given by a user is dropped: `https://x/` and
/// `https://x` are the same issuer).
#[derive(Clone, PartialEq, Eq, Hash)]
pub struct IssuerUrl {
    url: String,
    /// Where the path starts in `url` ("" path: `url.len()`).
    path_start: usize,
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum IssuerUrlError {
    #[error("issuer URL {0:?} is not an http:// or https:// URL")]
    Scheme(String),
    #[error("issuer URL {0:?} has no host")]
    NoHost(String),
    #[error("issuer URL {0:?} must not have a query or fragment")]
    QueryOrFragment(String),
    #[error("issuer URL {0:?} must not contain whitespace or an empty path segment")]
    Malformed(String),
}

impl IssuerUrl {
    pub fn parse(value: &str) -> Result<Self, IssuerUrlError> {
        let trimmed = value.trim();
        let scheme_len = ["https://", "http://"]
            .iter()
            .find(|scheme| trimmed.starts_with(**scheme))
            .map(|scheme| scheme.len())
            .ok_or_else(|| IssuerUrlError::Scheme(value.to_owned()))?;
        let rest = &trimmed[scheme_len..];
        let rest = rest.strip_suffix('/').unwrap_or(rest);
        let url = &trimmed[..scheme_len + rest.len()];
        if url.contains(['?', '#']) {
            return Err(IssuerUrlError::QueryOrFragment(value.to_owned()));
        }
        if url.chars().any(char::is_whitespace) || rest.ends_with('/') || rest.contains("//") {
            return Err(IssuerUrlError::Malformed(value.to_owned()));
        }
        let host_len = rest.find('/').unwrap_or(rest.len());
        if host_len == 0 {
            return Err(IssuerUrlError::NoHost(value.to_owned()));
        }
        Ok(IssuerUrl {
            path_start: url.len() - rest.len() + host_len,
            url: url.to_owned(),
        })
    }

    /// The issuer identifier, exactly as it appears in `iss`.
    pub fn as_str(&self) -> &str {
        &self.url
    }

    /// The path part ("" or e.g. "/tenant/a"); every endpoint lives under it.
    pub fn path(&self) -> &str {
        &self.url[self.path_start..]
    }

    /// The host name or IP address, without user info, port or the
    /// brackets of an IPv6 literal (`sigil.example.com`, `::1`): what a TLS
    /// client checks the server's certificate against.
    pub fn host(&self) -> &str {
        let start = self.url.find("://").map_or(0, |i| i + 3);
        let authority = &self.url[start..self.path_start];
        let authority = authority.rsplit_once('@').map_or(authority, |(_, h)| h);
        match authority.strip_prefix('[') {
            Some(v6) => v6.split_once(']').map_or(v6, |(ip, _)| ip),
            None => authority.split_once(':').map_or(authority, |(h, _)| h),
        }
    }

    pub fn token_endpoint(&self) -> String {
        format!("{}{TOKEN_PATH}", self.url)
    }

    pub fn introspection_endpoint(&self) -> String {
        format!("{}{INTROSPECTION_PATH}", self.url)
    }

    pub fn jwks_uri(&self) -> String {
        format!("{}{JWKS_PATH}", self.url)
    }
}

impl fmt::Display for IssuerUrl {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.url)
    }
}

impl fmt::Debug for IssuerUrl {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "IssuerUrl({:?})", self.url)
    }
}

impl std::str::FromStr for IssuerUrl {
    type Err = IssuerUrlError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        IssuerUrl::parse(s)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn one_trailing_slash_is_dropped_and_paths_are_derived() {
        let url = IssuerUrl::parse("https://sigil.example.com/").unwrap();
        assert_eq!(url.as_str(), "https://sigil.example.com");
        assert_eq!(url.path(), "");
        assert_eq!(
            url.token_endpoint(),
            "https://sigil.example.com/oauth2/token"
        );
        let url = IssuerUrl::parse("http://127.0.0.1:8080/tenant/a").unwrap();
        assert_eq!(url.path(), "/tenant/a");
        assert_eq!(
            url.jwks_uri(),
            "http://127.0.0.1:8080/tenant/a/.well-known/jwks.json"
        );
        assert_eq!(
            url.introspection_endpoint(),
            "http://127.0.0.1:8080/tenant/a/oauth2/introspect"
        );
        assert_eq!(IssuerUrl::parse("http://127.0.0.1:1/").unwrap().path(), "");
    }

    #[test]
    fn the_host_is_the_name_a_certificate_must_hold() {
        for (url, host) in [
            ("https://sigil.example.com", "sigil.example.com"),
            (
                "https://sigil-issuer.sigil-system.svc/",
                "sigil-issuer.sigil-system.svc",
            ),
            ("http://127.0.0.1:8080/tenant/a", "127.0.0.1"),
            ("https://[::1]:8443/x", "::1"),
            ("https://[::1]", "::1"),
            ("https://user@sigil.example.com:443", "sigil.example.com"),
        ] {
            assert_eq!(IssuerUrl::parse(url).unwrap().host(), host, "{url}");
        }
    }

    #[test]
    fn bad_urls_are_refused_naming_the_problem() {
        for (bad, want) in [
            (
                "sigil.example.com",
                IssuerUrlError::Scheme("sigil.example.com".into()),
            ),
            (
                "ftp://h.example",
                IssuerUrlError::Scheme("ftp://h.example".into()),
            ),
            ("https://", IssuerUrlError::NoHost("https://".into())),
            ("https:///x", IssuerUrlError::NoHost("https:///x".into())),
            (
                "https://x/?a=b",
                IssuerUrlError::QueryOrFragment("https://x/?a=b".into()),
            ),
            (
                "https://x#f",
                IssuerUrlError::QueryOrFragment("https://x#f".into()),
            ),
            (
                "https://x//",
                IssuerUrlError::Malformed("https://x//".into()),
            ),
            (
                "https://x y",
                IssuerUrlError::Malformed("https://x y".into()),
            ),
        ] {
            assert_eq!(IssuerUrl::parse(bad), Err(want), "{bad}");
        }
    }
}
