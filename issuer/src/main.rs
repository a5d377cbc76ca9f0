use clap::Parser;
use sigil_issuer::cli::{Cli, serve};

#[tokio::main]
async fn main() -> std::process::ExitCode {
    // kube and the HTTPS server both use rustls; pick the one provider.
    let _ = rustls::crypto::aws_lc_rs::default_provider().install_default();
    tracing_subscriber::fmt()
        .with_writer(std::io::stderr)
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info")),
        )
        .init();
    let cli = Cli::parse();
    let result = match cli.command {
        None => serve(cli.serve).await,
        Some(command) => match command {},
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
