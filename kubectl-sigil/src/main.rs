//! `kubectl sigil`: status, check, token and rotate for Sigil, as a kubectl
//! plugin (any `kubectl-<name>` on the PATH is `kubectl <name>`).
//!
//! Exit codes, for scripts: 0 everything asked about is fine, 1 a check
//! failed or something is not ready (the output says what), 2 a usage
//! error or an error talking to the API server or the issuer.

mod check;
mod fetch;
mod status;
mod tls;
mod token;

use std::process::ExitCode;

use clap::{Args, Parser, Subcommand, ValueEnum};

/// Everything fine.
const EXIT_OK: u8 = 0;
/// A check failed or something is not ready.
const EXIT_NOT_OK: u8 = 1;
/// Usage error (clap exits with 2 too) or an API / HTTP error.
const EXIT_ERROR: u8 = 2;

#[derive(Parser, Debug)]
#[command(
    name = "kubectl-sigil",
    bin_name = "kubectl sigil",
    version,
    about = "Operate Sigil: status, check, token, rotate",
    after_help = "Exit codes: 0 ok, 1 a check failed or something is not ready, 2 usage or API error."
)]
struct Cli {
    #[command(flatten)]
    install: Install,
    #[command(subcommand)]
    command: Command,
}

/// Where and under which names Sigil is installed (the chart's names).
#[derive(Args, Debug, Clone)]
pub struct Install {
    /// Namespace of the issuer, the operator and the SigningKeys.
    #[arg(
        long,
        global = true,
        env = "SIGIL_NAMESPACE",
        default_value = "sigil-system"
    )]
    pub sigil_namespace: String,
    /// Helm release name; the Deployment, Service, Secret and webhook
    /// names derive from it as in the chart.
    #[arg(long, global = true, env = "SIGIL_RELEASE", default_value = "sigil")]
    pub release: String,
    /// The operator's leader-election Lease (its --lease-name).
    #[arg(
        long,
        global = true,
        env = "SIGIL_LEASE_NAME",
        default_value = "sigil-operator"
    )]
    pub lease_name: String,
}

impl Install {
    /// The chart's `sigil.fullname`.
    pub fn fullname(&self) -> String {
        let name = if self.release.contains("sigil") {
            self.release.clone()
        } else {
            format!("{}-sigil", self.release)
        };
        name.chars()
            .take(50)
            .collect::<String>()
            .trim_end_matches('-')
            .to_owned()
    }
    pub fn issuer_name(&self) -> String {
        format!("{}-issuer", self.fullname())
    }
    pub fn operator_name(&self) -> String {
        format!("{}-operator", self.fullname())
    }
    pub fn tls_secret(&self) -> String {
        format!("{}-tls", self.issuer_name())
    }
}

#[derive(ValueEnum, Debug, Clone, Copy, PartialEq, Eq)]
enum Output {
    Text,
    Json,
}

#[derive(Subcommand, Debug)]
enum Command {
    /// Issuer and operator health, signing keys, webhook TLS expiry and
    /// clients that are not Ready.
    Status {
        /// Only the OAuthClients of this namespace (default: all).
        #[arg(short, long)]
        namespace: Option<String>,
        #[arg(short, long, value_enum, env = "SIGIL_OUTPUT", default_value_t = Output::Text)]
        output: Output,
    },
    /// Can this namespace's pods get credentials? Webhook, its backend,
    /// the clients and their grants.
    Check {
        /// Default: the kubeconfig context's namespace.
        #[arg(short, long)]
        namespace: Option<String>,
        /// Only these OAuthClients (default: all of the namespace).
        #[arg(long = "client")]
        clients: Vec<String>,
        #[arg(short, long, value_enum, env = "SIGIL_OUTPUT", default_value_t = Output::Text)]
        output: Output,
    },
    /// Fetch an access token with an OAuthClient's Secret and print it (the
    /// client secret is never printed).
    Token {
        /// The OAuthClient's name.
        client: String,
        #[arg(short, long)]
        namespace: Option<String>,
        /// Audience to ask for (repeatable; default: all allowed).
        #[arg(long = "audience")]
        audiences: Vec<String>,
        /// Space-separated scopes to ask for (default: all allowed).
        #[arg(long)]
        scope: Option<String>,
        /// Use this token endpoint instead of the Secret's token_url (e.g.
        /// through `kubectl port-forward`).
        #[arg(long, env = "SIGIL_TOKEN_URL")]
        token_url: Option<String>,
        /// text: the access token only; json: the token response.
        #[arg(short, long, value_enum, env = "SIGIL_OUTPUT", default_value_t = Output::Text)]
        output: Output,
    },
    /// Force a rotation.
    #[command(subcommand)]
    Rotate(Rotate),
}

#[derive(Subcommand, Debug)]
enum Rotate {
    /// A new client secret now: the operator replaces the Secret's
    /// client_secret; the previous one keeps working for
    /// spec.secretRotation.gracePeriod (if set, else it stops at once).
    Client {
        name: String,
        #[arg(short, long)]
        namespace: Option<String>,
    },
    /// A new signing key: sets sigil.dev/rotate-requested-at; the key is
    /// published for prePublish before it signs.
    Key {
        name: String,
        /// Default: --sigil-namespace.
        #[arg(short, long)]
        namespace: Option<String>,
    },
}

#[tokio::main]
async fn main() -> ExitCode {
    let cli = Cli::parse();
    match run(cli).await {
        Ok(code) => ExitCode::from(code),
        Err(error) => {
            eprintln!("kubectl-sigil: {error:#}");
            ExitCode::from(EXIT_ERROR)
        }
    }
}

fn print<T: serde::Serialize>(output: Output, value: &T, text: impl FnOnce() -> String) {
    match output {
        Output::Json => println!(
            "{}",
            serde_json::to_string_pretty(value)
                .unwrap_or_else(|e| format!("{{\"error\":\"{e}\"}}"))
        ),
        Output::Text => print!("{}", text()),
    }
}

fn exit_for(ok: bool) -> u8 {
    if ok { EXIT_OK } else { EXIT_NOT_OK }
}

async fn run(cli: Cli) -> anyhow::Result<u8> {
    let client = fetch::client().await?;
    let default_ns = client.default_namespace().to_owned();
    match cli.command {
        Command::Status { namespace, output } => {
            let inputs = fetch::status_inputs(&client, &cli.install, namespace.as_deref()).await?;
            let report = status::status_report(&inputs);
            print(output, &report, || status::render_text(&report));
            Ok(exit_for(report.ok))
        }
        Command::Check {
            namespace,
            clients,
            output,
        } => {
            let ns = namespace.unwrap_or(default_ns);
            let inputs = fetch::check_inputs(&client, &cli.install, &ns, &clients).await?;
            let report = check::check_report(&inputs);
            print(output, &report, || check::render_text(&report));
            if output == Output::Json {
                // One line per failure on stderr too, for logs of scripts.
                for c in report
                    .checks
                    .iter()
                    .filter(|c| c.outcome == check::Outcome::Fail)
                {
                    eprintln!("FAIL {}: {}", c.check, c.message);
                }
            }
            Ok(exit_for(report.ok))
        }
        Command::Token {
            client: name,
            namespace,
            audiences,
            scope,
            token_url,
            output,
        } => {
            let ns = namespace.unwrap_or(default_ns);
            let credentials = fetch::client_credentials(&client, &ns, &name).await?;
            let url = token_url.unwrap_or_else(|| credentials.token_url.clone());
            let form = token::token_form(&audiences, scope.as_deref());
            let response = token::fetch_token(&credentials, &url, &form).await?;
            match output {
                Output::Json => println!("{}", serde_json::to_string_pretty(&response)?),
                Output::Text => {
                    println!("{}", response["access_token"].as_str().unwrap_or_default())
                }
            }
            Ok(EXIT_OK)
        }
        Command::Rotate(Rotate::Client { name, namespace }) => {
            let ns = namespace.unwrap_or(default_ns);
            let secret = fetch::rotate_client(&client, &ns, &name).await?;
            println!(
                "OAuthClient {ns}/{name}: client_secret removed from Secret {secret}; the operator writes a new one"
            );
            Ok(EXIT_OK)
        }
        Command::Rotate(Rotate::Key { name, namespace }) => {
            let ns = namespace.unwrap_or_else(|| cli.install.sigil_namespace.clone());
            let at = fetch::rotate_key(&client, &ns, &name).await?;
            println!(
                "SigningKey {ns}/{name}: rotation requested at {at}; the new key is pending for prePublish, then active"
            );
            Ok(EXIT_OK)
        }
    }
}

#[cfg(test)]
mod tests;
