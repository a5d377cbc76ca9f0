//! Sigil installed the way its users install it: the chart, by `helm
//! install`, from the images `hack/images.sh` builds, into a cluster with a
//! node ([`crate::cluster::Options::node`]). Used by `sigil-dev` and the pod
//! tests, so both run exactly the same installation.

use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use k8s_openapi::api::core::v1::{ConfigMap, Pod, Secret};
use kube::api::{Api, ListParams, PostParams};

use crate::cluster::{ControlPlane, workspace_root};

/// The release and namespace `sigil-dev` and the pod tests install into.
pub const RELEASE: &str = "sigil";
pub const SIGIL_NAMESPACE: &str = "sigil-system";
/// The chart's default issuer URL for [`RELEASE`] in [`SIGIL_NAMESPACE`].
pub const ISSUER_URL: &str = "https://sigil-issuer.sigil-system.svc";
/// Where hack/images.sh tags the images it builds.
pub const IMAGE_PREFIX: &str = "sigil.local";
pub const IMAGE_TAG: &str = "dev";
/// The ConfigMap holding the issuer's CA for resource servers in a
/// namespace (examples/calendar-service.yaml mounts it).
pub const CA_CONFIGMAP: &str = "sigil-issuer-ca";

/// A local image's full name, e.g. `image("busybox")`.
pub fn image(name: &str) -> String {
    format!("{IMAGE_PREFIX}/{name}:{IMAGE_TAG}")
}

/// The image archives to import into the node: `$SIGIL_IMAGES_DIR`, else
/// whatever `hack/images.sh` prints (it builds them when their inputs
/// changed and is quick otherwise).
pub fn image_archives() -> anyhow::Result<Vec<PathBuf>> {
    let dir = match std::env::var_os("SIGIL_IMAGES_DIR") {
        Some(dir) => PathBuf::from(dir),
        None => {
            let script = workspace_root().join("hack/images.sh");
            let out = Command::new("bash")
                .arg(&script)
                .stderr(Stdio::inherit())
                .output()
                .with_context(|| format!("running {}", script.display()))?;
            if !out.status.success() {
                bail!("{} failed ({})", script.display(), out.status);
            }
            let stdout = String::from_utf8_lossy(&out.stdout);
            PathBuf::from(
                stdout
                    .lines()
                    .last()
                    .context("hack/images.sh printed no directory")?
                    .trim(),
            )
        }
    };
    let mut archives: Vec<PathBuf> = std::fs::read_dir(&dir)
        .with_context(|| format!("reading {}", dir.display()))?
        .flatten()
        .map(|e| e.path())
        .filter(|p| p.extension().is_some_and(|e| e == "tar"))
        .collect();
    archives.sort();
    if archives.is_empty() {
        bail!("no image archives (*.tar) in {}", dir.display());
    }
    Ok(archives)
}

/// `helm install` of charts/sigil from the local images, waiting until
/// every Deployment is available. `values` are extra `--set` arguments.
pub fn helm_install(cp: &ControlPlane, values: &[&str]) -> anyhow::Result<()> {
    let chart = workspace_root().join("charts/sigil");
    let mut args: Vec<String> = vec![
        "install".into(),
        RELEASE.into(),
        chart.display().to_string(),
        "--namespace".into(),
        SIGIL_NAMESPACE.into(),
        "--create-namespace".into(),
        "--wait".into(),
        "--timeout=4m".into(),
    ];
    for value in [
        format!("image.operatorRepository={IMAGE_PREFIX}/sigil-operator"),
        format!("image.issuerRepository={IMAGE_PREFIX}/sigil-issuer"),
        // The chart's default pull policy, IfNotPresent, finds the
        // imported images and never pulls.
        format!("image.tag={IMAGE_TAG}"),
    ] {
        args.push("--set".into());
        args.push(value);
    }
    for value in values {
        args.push("--set".into());
        args.push((*value).to_owned());
    }
    let out = cp.run_helm(&args)?;
    if !out.status.success() {
        bail!(
            "helm install failed: {}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
    }
    Ok(())
}

/// `helm test`: runs the chart's test pod; returns its output.
pub fn helm_test(cp: &ControlPlane) -> anyhow::Result<String> {
    let out = cp.run_helm(&[
        "test",
        RELEASE,
        "--namespace",
        SIGIL_NAMESPACE,
        "--logs",
        "--timeout=2m",
    ])?;
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    if !out.status.success() {
        bail!("helm test failed: {text}");
    }
    Ok(text)
}

/// Copies the issuer's CA bundle (the chart's TLS Secret) into a ConfigMap
/// of `namespace`, for resource servers there that fetch the JWKS.
pub async fn publish_ca(cp: &ControlPlane, namespace: &str) -> anyhow::Result<()> {
    let client = cp.client().await?;
    let secrets: Api<Secret> = Api::namespaced(client.clone(), SIGIL_NAMESPACE);
    let tls = secrets
        .get("sigil-issuer-tls")
        .await
        .context("reading the issuer's TLS Secret")?;
    let ca = tls
        .data
        .and_then(|d| d.get("ca.crt").cloned())
        .context("the issuer's TLS Secret has no ca.crt")?;
    let mut map = ConfigMap::default();
    map.metadata.name = Some(CA_CONFIGMAP.into());
    map.data = Some(
        [(
            "ca.crt".to_owned(),
            String::from_utf8_lossy(&ca.0).into_owned(),
        )]
        .into(),
    );
    let maps: Api<ConfigMap> = Api::namespaced(client, namespace);
    maps.create(&PostParams::default(), &map)
        .await
        .with_context(|| format!("creating ConfigMap {namespace}/{CA_CONFIGMAP}"))?;
    Ok(())
}

/// The running example's manifests (examples/*.yaml) for
/// `namespace`: their OAuthResources grant the namespace `tasks`, so for
/// another namespace a copy in `dir` grants that one instead.
pub fn example_manifests(namespace: &str, dir: &std::path::Path) -> anyhow::Result<Vec<PathBuf>> {
    let examples = crate::cluster::workspace_root().join("examples");
    let files = [
        "calendar-service.yaml",
        "file-service.yaml",
        "task-service.yaml",
        "calendar-reader.yaml",
    ];
    if namespace == "tasks" {
        return Ok(files.iter().map(|f| examples.join(f)).collect());
    }
    std::fs::create_dir_all(dir)?;
    files
        .iter()
        .map(|file| {
            let text = std::fs::read_to_string(examples.join(file))?;
            let path = dir.join(file);
            std::fs::write(
                &path,
                text.replace("namespaces: [tasks]", &format!("namespaces: [{namespace}]")),
            )?;
            Ok(path)
        })
        .collect()
}

/// Applies manifest files with the cluster's kubectl.
pub fn kubectl_apply(cp: &ControlPlane, namespace: &str, files: &[PathBuf]) -> anyhow::Result<()> {
    let mut args = vec!["apply".to_owned(), "-n".into(), namespace.into()];
    for file in files {
        args.push("-f".into());
        args.push(file.display().to_string());
    }
    let out = cp.run_kubectl(&args)?;
    if !out.status.success() {
        bail!("kubectl apply: {}", String::from_utf8_lossy(&out.stderr));
    }
    Ok(())
}

/// The log of the first running pod matching `selector` in `namespace`.
pub async fn pod_log(
    cp: &ControlPlane,
    namespace: &str,
    selector: &str,
    container: &str,
) -> anyhow::Result<String> {
    let pods: Api<Pod> = Api::namespaced(cp.client().await?, namespace);
    let list = pods.list(&ListParams::default().labels(selector)).await?;
    let name = list
        .items
        .iter()
        .find(|p| p.status.as_ref().and_then(|s| s.phase.as_deref()) == Some("Running"))
        .and_then(|p| p.metadata.name.clone())
        .with_context(|| format!("no running pod {selector} in {namespace}"))?;
    let params = kube::api::LogParams {
        container: Some(container.to_owned()),
        ..Default::default()
    };
    Ok(pods.logs(&name, &params).await?)
}

/// Waits until `check` finds what it wants in a pod's log.
pub async fn wait_for_log(
    cp: &ControlPlane,
    namespace: &str,
    selector: &str,
    container: &str,
    timeout: Duration,
    wanted: impl Fn(&str) -> bool,
) -> anyhow::Result<String> {
    let deadline = Instant::now() + timeout;
    loop {
        let last = match pod_log(cp, namespace, selector, container).await {
            Ok(log) if wanted(&log) => return Ok(log),
            Ok(log) => log,
            Err(e) => format!("{e:#}"),
        };
        if Instant::now() > deadline {
            bail!(
                "{namespace}/{selector} ({container}) did not log what was expected within {timeout:?}; last: {last}"
            );
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
}
