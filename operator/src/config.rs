//! Command line (DESIGN.md §8b): every flag also reads `SIGIL_<FLAG>`.

use std::net::SocketAddr;

use clap::{Parser, ValueEnum};

#[derive(Parser, Debug, Clone)]
#[command(
    name = "operator",
    version,
    about = "Sigil operator: OAuthClient → credentials Secret, SigningKey → rotated key ring"
)]
pub struct Args {
    /// Issuer URL (`iss`), without a trailing slash. Client Secrets get it
    /// as `issuer` and `<URL>/oauth2/token` as `token_url`.
    #[arg(long, env = "SIGIL_ISSUER_URL", value_parser = parse_issuer_url)]
    pub issuer_url: String,

    /// Namespace of the issuer: its SigningKeys are reconciled here, and the
    /// leader-election Lease lives here.
    #[arg(long, env = "SIGIL_NAMESPACE", default_value = "sigil-system")]
    pub namespace: String,

    /// Address of the /healthz, /readyz and /metrics endpoints.
    #[arg(long, env = "SIGIL_HEALTH_LISTEN", default_value = "0.0.0.0:8081")]
    pub health_listen: SocketAddr,

    /// Namespaces whose OAuthClients are reconciled, comma-separated; all
    /// namespaces when empty. One namespace is watched as such; several are
    /// watched cluster-wide and filtered (that needs cluster-wide list RBAC).
    #[arg(long, env = "SIGIL_WATCH_NAMESPACES", value_delimiter = ',')]
    pub watch_namespaces: Vec<String>,

    /// Name of the leader-election Lease (in --namespace).
    #[arg(long, env = "SIGIL_LEASE_NAME", default_value = "sigil-operator")]
    pub lease_name: String,

    /// This replica's identity in the Lease; default: host name, process id
    /// and a random suffix, so replicas on one host differ.
    #[arg(long, env = "SIGIL_LEASE_IDENTITY")]
    pub lease_identity: Option<String>,

    /// Seconds a Lease stays valid without renewal: a standby replica takes
    /// over at most this long (plus a second or two) after the leader died.
    #[arg(long, env = "SIGIL_LEASE_DURATION", default_value_t = 10, value_parser = clap::value_parser!(u64).range(3..=300))]
    pub lease_duration: u64,

    /// Reconciles running at once, per resource kind.
    #[arg(long, env = "SIGIL_CONCURRENCY", default_value_t = 32)]
    pub concurrency: u16,

    /// Log format.
    #[arg(long, env = "SIGIL_LOG_FORMAT", value_enum, default_value_t = LogFormat::Json)]
    pub log_format: LogFormat,
}

#[derive(ValueEnum, Debug, Clone, Copy, PartialEq, Eq)]
pub enum LogFormat {
    Json,
    Text,
}

fn parse_issuer_url(value: &str) -> Result<String, String> {
    let trimmed = value.trim().trim_end_matches('/');
    let rest = trimmed
        .strip_prefix("https://")
        .or_else(|| trimmed.strip_prefix("http://"))
        .ok_or_else(|| format!("{value:?} is not an http(s) URL"))?;
    if rest.is_empty() || rest.starts_with('/') {
        return Err(format!("{value:?} has no host"));
    }
    if trimmed.contains(['?', '#']) {
        return Err(format!("{value:?} must not have a query or fragment"));
    }
    Ok(trimmed.to_owned())
}

impl Args {
    /// The `token_url` written to client Secrets.
    pub fn token_url(&self) -> String {
        format!("{}/oauth2/token", self.issuer_url)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn issuer_url_is_normalized() {
        assert_eq!(
            parse_issuer_url("https://sigil.example.com/").as_deref(),
            Ok("https://sigil.example.com")
        );
        assert_eq!(
            parse_issuer_url("http://127.0.0.1:8080/auth").as_deref(),
            Ok("http://127.0.0.1:8080/auth")
        );
        assert!(parse_issuer_url("sigil.example.com").is_err());
        assert!(parse_issuer_url("https://").is_err());
        assert!(parse_issuer_url("https://x/?a=b").is_err());
    }

    #[test]
    fn flags_and_defaults() {
        let args = Args::try_parse_from([
            "operator",
            "--issuer-url",
            "https://sigil.example.com/",
            "--watch-namespaces",
            "a,b",
        ])
        .expect("parses");
        assert_eq!(args.namespace, "sigil-system");
        assert_eq!(args.health_listen.to_string(), "0.0.0.0:8081");
        assert_eq!(args.watch_namespaces, vec!["a", "b"]);
        assert_eq!(args.token_url(), "https://sigil.example.com/oauth2/token");
        assert!(
            Args::try_parse_from(["operator"]).is_err()
                || std::env::var("SIGIL_ISSUER_URL").is_ok()
        );
    }
}
