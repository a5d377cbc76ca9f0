//! Command line (DESIGN.md §8b): every flag also reads `SIGIL_<FLAG>`.

use std::net::SocketAddr;
use std::time::Duration;

use clap::Parser;
use sigil_core::IssuerUrl;
use sigil_crds::grant::UnclaimedAudiences;
pub use sigil_crds::logging::LogFormat;

#[derive(Parser, Debug, Clone)]
#[command(
    name = "operator",
    version,
    about = "Sigil operator: OAuthClient → credentials Secret, SigningKey → rotated key ring"
)]
pub struct Args {
    /// Issuer URL (`iss`); one trailing slash is dropped. Client Secrets get
    /// it as `issuer` and `<URL>/oauth2/token` as `token_url`.
    #[arg(long, env = "SIGIL_ISSUER_URL")]
    pub issuer_url: IssuerUrl,

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

    /// Audiences no OAuthResource claims: `open` grants them (and scopes
    /// nobody defines) to any client; `closed`, recommended in production,
    /// grants them to nobody.
    #[arg(long, env = "SIGIL_UNCLAIMED_AUDIENCES", default_value_t = UnclaimedAudiences::Open)]
    pub unclaimed_audiences: UnclaimedAudiences,

    /// Reconciles running at once, per resource kind.
    #[arg(long, env = "SIGIL_CONCURRENCY", default_value_t = 32)]
    pub concurrency: u16,

    /// Log format: json (one object per line) or text; the issuer takes
    /// the same flag.
    #[arg(long, env = sigil_crds::logging::LOG_FORMAT_ENV, value_enum, default_value_t = LogFormat::Json)]
    pub log_format: LogFormat,

    /// Make the issuer's CA and serving certificate, renew and rotate them,
    /// and keep the webhook's caBundle current. false when the Secret is
    /// supplied (e.g. by cert-manager): then none of it is touched.
    #[arg(long, env = "SIGIL_MANAGE_WEBHOOK_TLS", default_value_t = true, action = clap::ArgAction::Set, num_args = 0..=1, default_missing_value = "true")]
    pub manage_webhook_tls: bool,

    /// MutatingWebhookConfiguration whose webhooks' caBundle is kept
    /// current; empty for none.
    #[arg(long, env = "SIGIL_WEBHOOK_CONFIG", default_value = "sigil")]
    pub webhook_config: String,

    /// The issuer's Service (in --namespace): its DNS names are the
    /// serving certificate's SANs.
    #[arg(long, env = "SIGIL_ISSUER_SERVICE", default_value = "sigil-issuer")]
    pub issuer_service: String,

    /// Secret (in --namespace) the issuer mounts: `tls.crt`, `tls.key` and
    /// `ca.crt` (every CA trusted now). The CA key lives in `<NAME>-ca`,
    /// which the issuer does not mount.
    #[arg(long, env = "SIGIL_TLS_SECRET", default_value = "sigil-issuer-tls")]
    pub tls_secret: String,

    /// More SANs for the serving certificate, comma-separated DNS names or
    /// IP addresses (e.g. `localhost,127.0.0.1`).
    #[arg(long, env = "SIGIL_TLS_EXTRA_SANS", value_delimiter = ',')]
    pub tls_extra_sans: Vec<String>,

    /// Lifetime of the serving certificate (Go duration, or days as `90d`);
    /// renewed at 2/3 of it.
    #[arg(long, env = "SIGIL_TLS_CERT_VALIDITY", default_value = "90d", value_parser = parse_lifetime)]
    pub tls_cert_validity: Duration,

    /// Lifetime of the CA. Its rotation starts at 2/3 of it, so with the
    /// default (a year) the rotation runs every ~8 months rather than never,
    /// and leaves 4 months to notice an operator that stopped working.
    #[arg(long, env = "SIGIL_TLS_CA_VALIDITY", default_value = "365d", value_parser = parse_lifetime)]
    pub tls_ca_validity: Duration,

    /// How long a CA rotation waits between its steps: new CA trusted →
    /// serving certificate from it → old CA untrusted. Must cover the
    /// kubelet's Secret sync (up to ~1 min) plus the issuer's reload (~10 s).
    #[arg(long, env = "SIGIL_TLS_OVERLAP", default_value = "2m", value_parser = parse_lifetime)]
    pub tls_overlap: Duration,
}

/// A Go duration (`90s`, `2m`, `1h30m`) or whole days (`90d`), not zero.
fn parse_lifetime(value: &str) -> Result<Duration, String> {
    let value = value.trim();
    let parsed = match value.strip_suffix('d').map(str::parse::<u64>) {
        Some(Ok(days)) => days
            .checked_mul(86_400)
            .map(Duration::from_secs)
            .ok_or_else(|| format!("{value:?} is too long"))?,
        _ => sigil_crds::parse_duration(value).map_err(|e| e.to_string())?,
    };
    if parsed.is_zero() {
        return Err(format!("{value:?} must be more than zero"));
    }
    Ok(parsed)
}

#[cfg(test)]
mod tests {
    use super::*;

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
        assert_eq!(args.issuer_url.as_str(), "https://sigil.example.com");
        assert_eq!(
            args.issuer_url.token_endpoint(),
            "https://sigil.example.com/oauth2/token"
        );
        // Required (from the flag or SIGIL_ISSUER_URL), whatever this
        // process's environment holds.
        let command = <Args as clap::CommandFactory>::command();
        let issuer_url = command
            .get_arguments()
            .find(|a| a.get_id() == "issuer_url")
            .expect("--issuer-url exists");
        assert!(issuer_url.is_required_set());
        assert_eq!(
            issuer_url.get_env(),
            Some(std::ffi::OsStr::new("SIGIL_ISSUER_URL"))
        );
        let err = Args::try_parse_from(["operator", "--issuer-url", "sigil.example.com"])
            .expect_err("not a URL");
        assert!(
            err.to_string().contains("not an http:// or https:// URL"),
            "{err}"
        );
    }

    #[test]
    fn webhook_tls_flags() {
        let defaults =
            Args::try_parse_from(["operator", "--issuer-url", "https://x"]).expect("parses");
        assert!(defaults.manage_webhook_tls);
        assert_eq!(defaults.webhook_config, "sigil");
        assert_eq!(defaults.issuer_service, "sigil-issuer");
        assert_eq!(defaults.tls_secret, "sigil-issuer-tls");
        assert!(defaults.tls_extra_sans.is_empty());
        assert_eq!(defaults.tls_cert_validity, Duration::from_secs(90 * 86_400));
        assert_eq!(defaults.tls_ca_validity, Duration::from_secs(365 * 86_400));
        assert_eq!(defaults.tls_overlap, Duration::from_secs(120));

        let set = Args::try_parse_from([
            "operator",
            "--issuer-url=https://x",
            "--manage-webhook-tls=false",
            "--webhook-config=",
            "--tls-extra-sans=localhost,127.0.0.1",
            "--tls-cert-validity=30s",
            "--tls-ca-validity=1h30m",
            "--tls-overlap=3s",
        ])
        .expect("parses");
        assert!(!set.manage_webhook_tls);
        assert_eq!(set.webhook_config, "");
        assert_eq!(set.tls_extra_sans, vec!["localhost", "127.0.0.1"]);
        assert_eq!(set.tls_cert_validity, Duration::from_secs(30));
        assert_eq!(set.tls_ca_validity, Duration::from_secs(5400));
        assert_eq!(set.tls_overlap, Duration::from_secs(3));

        let bare =
            Args::try_parse_from(["operator", "--issuer-url=https://x", "--manage-webhook-tls"])
                .expect("parses");
        assert!(bare.manage_webhook_tls);
        assert!(parse_lifetime("0s").is_err());
        assert!(parse_lifetime("1y").is_err());
        assert!(parse_lifetime("99999999999999999d").is_err());
    }
}
