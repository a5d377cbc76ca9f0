//! `operator --issuer-url URL [--namespace NS] [--health-listen ADDR]`
//! (DESIGN.md §8b). See `sigil_operator` for the parts.

use std::sync::Arc;
use std::sync::atomic::Ordering;

use anyhow::Context as _;
use clap::Parser;
use futures::FutureExt;
use sigil_operator::config::Args;
use sigil_operator::health::{self, Health};
use sigil_operator::metrics::Metrics;
use sigil_operator::{controller, leader, webhook_tls};
use tokio::sync::watch;

/// How long reconciles in flight may take to finish after SIGTERM.
const SHUTDOWN_GRACE: std::time::Duration = std::time::Duration::from_secs(3);

#[tokio::main]
async fn main() -> std::process::ExitCode {
    let args = Args::parse();
    sigil_crds::logging::init(args.log_format);
    match run(args).await {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(error) => {
            tracing::error!(error = format!("{error:#}"), "operator stopped");
            std::process::ExitCode::FAILURE
        }
    }
}

async fn run(mut args: Args) -> anyhow::Result<()> {
    let identity = args
        .lease_identity
        .clone()
        .unwrap_or_else(leader::default_identity);
    args.lease_identity = Some(identity.clone());
    tracing::info!(
        issuer_url = %args.issuer_url,
        namespace = %args.namespace,
        watch_namespaces = ?args.watch_namespaces,
        %identity,
        "starting"
    );

    // Refuse bad TLS flags now, not once this replica leads.
    webhook_tls::TlsConfig::from_args(&args)?;

    let metrics = Arc::new(Metrics::new());
    let health = Arc::new(Health::default());
    let bound = health::serve(args.health_listen, health.clone(), metrics.clone()).await?;
    tracing::info!(address = %bound, "serving /healthz, /readyz and /metrics");

    let client = kube::Client::try_default().await.context(
        "cannot configure a Kubernetes client (in-cluster, KUBECONFIG or ~/.kube/config)",
    )?;

    let (stop_tx, stop_rx) = watch::channel(false);
    tokio::spawn(async move {
        sigil_crds::shutdown::shutdown_signal().await;
        tracing::info!("shutting down");
        let _ = stop_tx.send(true);
    });
    let stopped = {
        let mut rx = stop_rx.clone();
        async move {
            let _ = rx.wait_for(|stop| *stop).await;
        }
        .boxed()
        .shared()
    };

    let election = leader::start(
        client.clone(),
        &args.namespace,
        &args.lease_name,
        &identity,
        args.lease_duration,
    )
    .await?;
    let mut leading = election.leading.clone();

    tracing::info!(lease = %args.lease_name, "waiting to become the leader");
    let became_leader = tokio::select! {
        result = leading.wait_for(|l| *l) => {
            if result.is_err() {
                anyhow::bail!("leader election stopped");
            }
            true
        }
        _ = stopped.clone() => false,
    };
    if !became_leader {
        drop(leading);
        election.release().await;
        return Ok(());
    }
    tracing::info!("became the leader");
    health.leading.store(true, Ordering::Release);
    metrics.leader.set(1);

    let controllers = controller::run(
        client.clone(),
        &args,
        metrics.clone(),
        health.clone(),
        stopped.clone(),
    );
    // The issuer's serving TLS, written by the leader only.
    let webhook_tls = async {
        if let Err(error) = webhook_tls::run(client, &args, metrics.clone(), stopped.clone()).await
        {
            tracing::error!(%error, "webhook TLS management stopped");
        }
    };
    // After a stop signal, reconciles in flight get a grace period; then
    // the Lease is released regardless, so a standby takes over promptly.
    let grace_expired = {
        let stopped = stopped.clone();
        async move {
            stopped.await;
            tokio::time::sleep(SHUTDOWN_GRACE).await;
        }
    };
    let outcome = tokio::select! {
        ((), ()) = futures::future::join(controllers, webhook_tls) => Ok(()),
        () = grace_expired => {
            tracing::warn!(grace = ?SHUTDOWN_GRACE, "work still running after the shutdown grace period; stopping anyway");
            Ok(())
        }
        _ = leading.wait_for(|l| !*l) => {
            // Another replica may write from now on: stop at once, and let
            // the process restart as a standby.
            Err(anyhow::anyhow!("lost the leader Lease"))
        }
    };
    health.leading.store(false, Ordering::Release);
    metrics.leader.set(0);
    // Every receiver must be gone for the election task to release.
    drop(leading);
    election.release().await;
    outcome
}
