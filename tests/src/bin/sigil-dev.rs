//! `sigil-dev`: runs Sigil on a local control plane for trying it out.
//!
//! Starts etcd, kube-apiserver and kube-controller-manager (the same ones the
//! tests use), installs Sigil's CRDs, writes a kubeconfig and stays in the
//! foreground until Ctrl-C, then stops everything.

use std::path::PathBuf;

use anyhow::Context;
use clap::Parser;
use sigil_tests::cluster::{ControlPlane, Options};

#[derive(Parser, Debug)]
#[command(about = "Run Sigil on a local control plane (no cluster, no containers)")]
struct Args {
    /// Directory for the control plane's data, certificates, logs and
    /// kubeconfig (wiped at start).
    #[arg(long, env = "SIGIL_DEV_DIR")]
    dir: Option<PathBuf>,
    /// API server port.
    #[arg(long, env = "SIGIL_DEV_API_PORT", default_value_t = 16443)]
    api_port: u16,
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    let dir = match args.dir {
        Some(dir) => dir,
        None => std::env::var_os("HOME")
            .map(PathBuf::from)
            .context("HOME is not set; pass --dir")?
            .join(".cache/sigil/dev"),
    };
    if dir.exists() {
        std::fs::remove_dir_all(&dir).with_context(|| format!("wiping {}", dir.display()))?;
    }

    step(
        1,
        "starting etcd, kube-apiserver and kube-controller-manager",
    );
    let control_plane = ControlPlane::start(Options {
        dir: Some(dir.clone()),
        api_port: Some(args.api_port),
    })
    .await?;
    step(2, "installing the OAuthClient and SigningKey CRDs");
    control_plane.install_crds().await?;

    let kubeconfig = control_plane.kubeconfig().display().to_string();
    let kubectl = control_plane.kubectl().display().to_string();
    println!();
    println!(
        "Sigil's local control plane is up at {}.",
        control_plane.api_url()
    );
    println!("In another terminal:");
    println!("  export KUBECONFIG={kubeconfig}");
    println!("  alias kubectl={kubectl}");
    println!("  kubectl get crds");
    println!("  kubectl create namespace tasks");
    println!("  kubectl apply -n tasks -f examples/task-service.yaml");
    println!("  kubectl get oac -n tasks");
    println!();
    println!(
        "Logs: {}. Press Ctrl-C to stop.",
        dir.join("logs").display()
    );

    wait_for_shutdown().await;
    println!("stopping...");
    control_plane.stop();
    Ok(())
}

fn step(n: u32, what: &str) {
    println!("[{n}] {what}");
}

async fn wait_for_shutdown() {
    let ctrl_c = tokio::signal::ctrl_c();
    match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
        Ok(mut term) => {
            tokio::select! {
                _ = ctrl_c => {}
                _ = term.recv() => {}
            }
        }
        Err(_) => {
            let _ = ctrl_c.await;
        }
    }
}
