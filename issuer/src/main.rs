use clap::{CommandFactory, FromArgMatches};
use sigil_agent::{print_token, run_agent};
use sigil_issuer::cli::{Cli, Command, LogArgs, ServeArgs, serve};

#[tokio::main]
async fn main() -> std::process::ExitCode {
    // kube and the HTTPS server both use rustls; pick the one provider.
    let _ = rustls::crypto::aws_lc_rs::default_provider().install_default();
    let matches = Cli::command().get_matches();
    let log = LogArgs::from_arg_matches(&matches).unwrap_or_else(|e| e.exit());
    sigil_crds::logging::init(log.log_format);
    // Build only what was asked for: the derived `Cli` would demand the
    // server's required flags (--issuer-url) from `agent` and `token` too.
    let result = if matches.subcommand_name().is_some() {
        match Command::from_arg_matches(&matches).unwrap_or_else(|e| e.exit()) {
            Command::Agent(args) => run_agent(args).await.map_err(Into::into),
            Command::Token(args) => print_token(args).await.map_err(Into::into),
        }
    } else {
        serve(ServeArgs::from_arg_matches(&matches).unwrap_or_else(|e| e.exit())).await
    };
    match result {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(error) => {
            tracing::error!(%error, "issuer stopped");
            eprintln!("issuer: {error}");
            std::process::ExitCode::FAILURE
        }
    }
}
