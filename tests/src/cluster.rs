//! A real local control plane: upstream etcd, kube-apiserver and
//! kube-controller-manager on free loopback ports, in the spirit of
//! controller-runtime's envtest. No kubelet runs, so pods stay Pending, but
//! everything Sigil talks to is the real API server: CRD validation,
//! server-side apply, watches, RBAC, admission webhooks and owner-reference
//! garbage collection.
//!
//! With [`Options::node`] it is a whole single-node cluster: kube-scheduler,
//! containerd, kubelet, kube-proxy and CoreDNS join (see [`crate::node`]),
//! and pods really run.
//!
//! Processes are started by one long-lived supervisor thread with
//! `PR_SET_PDEATHSIG`, so they die with the process that started them even if
//! it is killed; a normal exit (including after a failed test) stops them
//! gracefully and removes the temporary directory.

use std::collections::HashMap;
use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use k8s_openapi::api::core::v1::{Namespace, ServiceAccount};
use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;
use kube::api::{Api, Patch, PatchParams, PostParams};
use kube::config::{KubeConfigOptions, Kubeconfig};
use tokio::sync::OnceCell;

use crate::node::{self, NodeLock, NodePaths};
use crate::pki::{self, Pki};

/// The admin identity's user name (group `system:masters`).
pub const ADMIN_USER: &str = "sigil-admin";

/// The control-plane components, in start order.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Component {
    Etcd,
    ApiServer,
    ControllerManager,
    Scheduler,
    Containerd,
    CoreDns,
    Kubelet,
    KubeProxy,
}

impl Component {
    fn name(self) -> &'static str {
        match self {
            Component::Etcd => "etcd",
            Component::ApiServer => "kube-apiserver",
            Component::ControllerManager => "kube-controller-manager",
            Component::Scheduler => "kube-scheduler",
            Component::Containerd => "containerd",
            Component::CoreDns => "coredns",
            Component::Kubelet => "kubelet",
            Component::KubeProxy => "kube-proxy",
        }
    }
}

/// The API server's audit policy: Secret requests by ServiceAccounts
/// (outside kube-system), with request and response bodies, so a test can
/// tell a metadata-only read (`PartialObjectMetadata`) from a read of the
/// data. Nothing else is logged, which keeps the log small. The log holds
/// the Secrets' data those ServiceAccounts read: it lives in the control
/// plane's temp directory and goes with it.
pub const AUDIT_POLICY: &str = r#"apiVersion: audit.k8s.io/v1
kind: Policy
omitStages: [RequestReceived]
rules:
  - level: None
    userGroups: ["system:serviceaccounts:kube-system"]
  - level: RequestResponse
    userGroups: ["system:serviceaccounts"]
    resources:
      - group: ""
        resources: ["secrets"]
  - level: None
"#;

/// The audit log's path in the control plane's directory.
const AUDIT_LOG: &str = "logs/audit.log";

/// Options for [`ControlPlane::start`].
#[derive(Clone, Debug, Default)]
pub struct Options {
    /// Directory for data, certificates, logs and kubeconfigs. Removed on
    /// stop when it was created by us (`None`: a fresh temp directory).
    pub dir: Option<PathBuf>,
    /// Fixed API server port (`None`: any free port).
    pub api_port: Option<u16>,
    /// Also run the node (scheduler, containerd, kubelet, kube-proxy,
    /// CoreDNS) so pods start; the API server then listens on the node
    /// address instead of loopback, where pods can reach it.
    pub node: bool,
    /// Image archives (hack/images.sh) to import into the node's containerd.
    pub images: Vec<PathBuf>,
}

pub struct ControlPlane {
    bin: PathBuf,
    dir: PathBuf,
    remove_dir: bool,
    api_url: String,
    admin_kubeconfig: PathBuf,
    pki: Pki,
    commands: HashMap<Component, ProcessSpec>,
    supervisor: Supervisor,
    node: Option<(NodePaths, NodeLock)>,
}

impl ControlPlane {
    /// Starts etcd, kube-apiserver and kube-controller-manager and waits
    /// until the API server is ready.
    pub async fn start(options: Options) -> anyhow::Result<ControlPlane> {
        let bin = control_plane_bin_dir()?;
        let (dir, remove_dir) = match options.dir {
            Some(dir) => (dir, false),
            None => {
                clean_stale_temp_dirs();
                let dir = std::env::temp_dir().join(format!(
                    "sigil-cp-{}-{}",
                    std::process::id(),
                    rand::random::<u32>()
                ));
                (dir, true)
            }
        };
        // The node first: its lock says whether another one runs, and a
        // killed predecessor's leftovers must go before anything starts.
        let node = if options.node {
            let paths = NodePaths::new(node::node_dir());
            let lock = NodeLock::acquire(&paths)?;
            for problem in node::cleanup(&paths) {
                eprintln!("cleaning up a previous node: {problem}");
            }
            node::setup_host(&paths)?;
            Some((paths, lock))
        } else {
            None
        };
        for sub in ["etcd", "pki", "logs"] {
            std::fs::create_dir_all(dir.join(sub))
                .with_context(|| format!("creating {}", dir.join(sub).display()))?;
        }
        let pki_dir = dir.join("pki");
        let pki = Pki::new()?;
        std::fs::write(pki_dir.join("ca.crt"), &pki.ca_pem)?;
        pki::write_pair(&pki_dir, "apiserver", &pki.api_server_cert()?)?;
        let (sa_key, sa_pub) = pki::service_account_key()?;
        pki::write_private(&pki_dir.join("sa.key"), &sa_key)?;
        std::fs::write(pki_dir.join("sa.pub"), sa_pub)?;

        let etcd_port = free_port()?;
        let etcd_peer_port = free_port()?;
        let api_port = match options.api_port {
            Some(p) => p,
            None => free_port()?,
        };
        let api_ip = if node.is_some() {
            node::NODE_IP
        } else {
            std::net::Ipv4Addr::LOCALHOST
        };
        let api_url = format!("https://{api_ip}:{api_port}");

        let mut commands = HashMap::new();
        let p = |f: &str| pki_dir.join(f).display().to_string();
        commands.insert(
            Component::Etcd,
            ProcessSpec::new(bin.join("etcd"), &dir, "etcd").args([
                format!("--data-dir={}", dir.join("etcd").display()),
                format!("--listen-client-urls=http://127.0.0.1:{etcd_port}"),
                format!("--advertise-client-urls=http://127.0.0.1:{etcd_port}"),
                format!("--listen-peer-urls=http://127.0.0.1:{etcd_peer_port}"),
                format!("--initial-advertise-peer-urls=http://127.0.0.1:{etcd_peer_port}"),
                format!("--initial-cluster=default=http://127.0.0.1:{etcd_peer_port}"),
                // Test data is throwaway: skip fsync for speed.
                "--unsafe-no-fsync=true".into(),
                "--log-level=warn".into(),
            ]),
        );
        let audit_policy = dir.join("audit-policy.yaml");
        std::fs::write(&audit_policy, AUDIT_POLICY)
            .with_context(|| format!("writing {}", audit_policy.display()))?;
        let mut api_server = ProcessSpec::new(bin.join("kube-apiserver"), &dir, "kube-apiserver")
            .args([
                format!("--etcd-servers=http://127.0.0.1:{etcd_port}"),
                format!("--bind-address={api_ip}"),
                format!("--advertise-address={api_ip}"),
                format!("--secure-port={api_port}"),
                format!("--cert-dir={}", p("apiserver-certs")),
                format!("--tls-cert-file={}", p("apiserver.crt")),
                format!("--tls-private-key-file={}", p("apiserver.key")),
                format!("--client-ca-file={}", p("ca.crt")),
                format!(
                    "--authorization-mode={}",
                    if node.is_some() { "Node,RBAC" } else { "RBAC" }
                ),
                "--service-account-issuer=https://kubernetes.default.svc.cluster.local".into(),
                format!("--service-account-key-file={}", p("sa.pub")),
                format!("--service-account-signing-key-file={}", p("sa.key")),
                format!("--service-cluster-ip-range={}", node::SERVICE_CIDR),
                "--allow-privileged=true".into(),
                "--profiling=false".into(),
                format!("--audit-policy-file={}", audit_policy.display()),
                format!("--audit-log-path={}", dir.join(AUDIT_LOG).display()),
                "--audit-log-format=json".into(),
                // Written as each request completes, not batched: a test
                // reads the log right after the requests it checks.
                "--audit-log-mode=blocking".into(),
                "--v=0".into(),
            ]);
        if node.is_some() {
            pki::write_pair(
                &pki_dir,
                "apiserver-kubelet-client",
                &pki.client_cert("kube-apiserver-kubelet-client", &["system:masters"])?,
            )?;
            api_server = api_server.args([
                "--enable-admission-plugins=NodeRestriction".into(),
                format!(
                    "--kubelet-client-certificate={}",
                    p("apiserver-kubelet-client.crt")
                ),
                format!("--kubelet-client-key={}", p("apiserver-kubelet-client.key")),
                "--kubelet-preferred-address-types=InternalIP".into(),
            ]);
        }
        commands.insert(Component::ApiServer, api_server);
        let kcm_kubeconfig = dir.join("kube-controller-manager.kubeconfig");
        commands.insert(
            Component::ControllerManager,
            ProcessSpec::new(
                bin.join("kube-controller-manager"),
                &dir,
                "kube-controller-manager",
            )
            .args([
                format!("--kubeconfig={}", kcm_kubeconfig.display()),
                format!("--authentication-kubeconfig={}", kcm_kubeconfig.display()),
                format!("--authorization-kubeconfig={}", kcm_kubeconfig.display()),
                "--leader-elect=false".into(),
                "--controllers=*".into(),
                "--secure-port=0".into(),
                format!("--service-account-private-key-file={}", p("sa.key")),
                format!("--root-ca-file={}", p("ca.crt")),
                "--use-service-account-credentials=false".into(),
                // Garbage collection and ReplicaSets should react at once.
                "--concurrent-gc-syncs=10".into(),
                "--v=0".into(),
            ]),
        );

        // The node's processes, each with the least identity that works
        // (CoreDNS excepted: no built-in role fits it, and it only reads).
        let mut kubeconfigs: Vec<(PathBuf, &str, &[&str])> = Vec::new();
        if let Some((paths, _)) = &node {
            let kubeconfig = |name: &str| dir.join(format!("{name}.kubeconfig"));
            commands.insert(
                Component::Scheduler,
                ProcessSpec::new(bin.join("kube-scheduler"), &dir, "kube-scheduler").args([
                    format!("--kubeconfig={}", kubeconfig("kube-scheduler").display()),
                    "--leader-elect=false".into(),
                    "--secure-port=0".into(),
                    "--v=0".into(),
                ]),
            );
            kubeconfigs.push((kubeconfig("kube-scheduler"), "system:kube-scheduler", &[]));
            commands.insert(
                Component::Containerd,
                ProcessSpec::new(PathBuf::from("containerd"), &dir, "containerd")
                    .args([format!("--config={}", paths.containerd_config().display())]),
            );
            let kubelet_config = node::kubelet_config(paths, &pki_dir.join("ca.crt"));
            node::write_if_changed(&paths.kubelet_config(), &kubelet_config)?;
            commands.insert(
                Component::Kubelet,
                ProcessSpec::new(bin.join("kubelet"), &dir, "kubelet").args([
                    format!("--config={}", paths.kubelet_config().display()),
                    format!("--kubeconfig={}", kubeconfig("kubelet").display()),
                    format!("--root-dir={}", paths.kubelet_root().display()),
                    format!("--cert-dir={}", paths.dir.join("kubelet-pki").display()),
                    format!("--hostname-override={}", node::NODE_NAME),
                    format!("--node-ip={}", node::NODE_IP),
                    "--v=0".into(),
                ]),
            );
            kubeconfigs.push((
                kubeconfig("kubelet"),
                "system:node:sigil-node",
                &["system:nodes"],
            ));
            node::write_if_changed(
                &paths.kube_proxy_config(),
                &node::kube_proxy_config(&kubeconfig("kube-proxy")),
            )?;
            commands.insert(
                Component::KubeProxy,
                ProcessSpec::new(bin.join("kube-proxy"), &dir, "kube-proxy").args([
                    format!("--config={}", paths.kube_proxy_config().display()),
                    "--v=0".into(),
                ]),
            );
            kubeconfigs.push((kubeconfig("kube-proxy"), "system:kube-proxy", &[]));
            node::write_if_changed(&paths.corefile(), &node::corefile(&kubeconfig("coredns")))?;
            commands.insert(
                Component::CoreDns,
                ProcessSpec::new(bin.join("coredns"), &dir, "coredns")
                    .args([format!("-conf={}", paths.corefile().display())]),
            );
            kubeconfigs.push((kubeconfig("coredns"), "sigil-coredns", &["system:masters"]));
        }

        let cp = ControlPlane {
            bin,
            admin_kubeconfig: dir.join("admin.kubeconfig"),
            dir,
            remove_dir,
            api_url,
            pki,
            commands,
            supervisor: Supervisor::spawn(),
            node,
        };
        cp.write_kubeconfig(
            &cp.admin_kubeconfig.clone(),
            ADMIN_USER,
            &["system:masters"],
        )?;
        // kube-controller-manager runs every controller with its own
        // credentials, so it needs cluster-wide power in this setup.
        cp.write_kubeconfig(
            &kcm_kubeconfig,
            "system:kube-controller-manager",
            &["system:masters"],
        )?;

        cp.start_component(Component::Etcd)?;
        cp.start_component(Component::ApiServer)?;
        cp.wait_ready(Duration::from_secs(60)).await?;
        cp.start_component(Component::ControllerManager)?;
        for (path, user, groups) in &kubeconfigs {
            cp.write_kubeconfig(path, user, groups)?;
        }
        if let Some((paths, _)) = &cp.node {
            cp.start_component(Component::Scheduler)?;
            cp.start_component(Component::Containerd)?;
            node::wait_containerd(paths, Duration::from_secs(30))?;
            node::import_images(paths, &options.images)?;
            cp.start_component(Component::CoreDns)?;
            cp.start_component(Component::Kubelet)?;
            cp.start_component(Component::KubeProxy)?;
            cp.wait_node_ready(Duration::from_secs(120)).await?;
        }
        Ok(cp)
    }

    /// Waits until the node reports `Ready`.
    pub async fn wait_node_ready(&self, timeout: Duration) -> anyhow::Result<()> {
        use k8s_openapi::api::core::v1::Node;
        let nodes: Api<Node> = Api::all(self.client().await?);
        let deadline = Instant::now() + timeout;
        loop {
            let ready = nodes
                .get_opt(node::NODE_NAME)
                .await
                .ok()
                .flatten()
                .is_some_and(|n| {
                    n.status
                        .and_then(|s| s.conditions)
                        .unwrap_or_default()
                        .iter()
                        .any(|c| c.type_ == "Ready" && c.status == "True")
                });
            if ready {
                return Ok(());
            }
            if let Some(exit) = self.supervisor.exited()? {
                bail!(
                    "{exit} while waiting for the node; see the logs in {}",
                    self.dir.join("logs").display()
                );
            }
            if Instant::now() > deadline {
                bail!(
                    "node {} not Ready after {timeout:?}; logs in {}",
                    node::NODE_NAME,
                    self.dir.join("logs").display()
                );
            }
            tokio::time::sleep(Duration::from_millis(250)).await;
        }
    }

    /// The running node's paths (containerd socket, kubelet root, ...).
    pub fn node_paths(&self) -> Option<&NodePaths> {
        self.node.as_ref().map(|(paths, _)| paths)
    }

    pub fn api_url(&self) -> &str {
        &self.api_url
    }

    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// The API server's audit log (JSON lines, [`AUDIT_POLICY`]): every
    /// Secret request a ServiceAccount made, with the response; read it with
    /// [`crate::audit::secret_requests`].
    pub fn audit_log(&self) -> PathBuf {
        self.dir.join(AUDIT_LOG)
    }

    /// The `kubectl` built with the control plane.
    pub fn kubectl(&self) -> PathBuf {
        self.bin.join("kubectl")
    }

    /// The `helm` built with the control plane.
    pub fn helm(&self) -> PathBuf {
        self.bin.join("helm")
    }

    /// The admin (system:masters) kubeconfig file.
    pub fn kubeconfig(&self) -> &Path {
        &self.admin_kubeconfig
    }

    /// `kubectl` as the admin.
    pub fn kubectl_command(&self) -> Command {
        let mut cmd = Command::new(self.kubectl());
        cmd.env("KUBECONFIG", self.kubeconfig())
            .stdin(Stdio::null());
        cmd
    }

    /// `helm` as the admin, with its caches and config kept inside the
    /// control plane's directory.
    pub fn helm_command(&self) -> Command {
        let home = self.dir.join("helm");
        let mut cmd = Command::new(self.helm());
        cmd.env("KUBECONFIG", self.kubeconfig())
            .env("HELM_CACHE_HOME", home.join("cache"))
            .env("HELM_CONFIG_HOME", home.join("config"))
            .env("HELM_DATA_HOME", home.join("data"))
            .stdin(Stdio::null());
        cmd
    }

    pub fn run_kubectl<S: AsRef<std::ffi::OsStr>>(
        &self,
        args: &[S],
    ) -> anyhow::Result<std::process::Output> {
        self.kubectl_command()
            .args(args)
            .output()
            .context("running kubectl")
    }

    pub fn run_helm<S: AsRef<std::ffi::OsStr>>(
        &self,
        args: &[S],
    ) -> anyhow::Result<std::process::Output> {
        self.helm_command()
            .args(args)
            .output()
            .context("running helm")
    }

    /// The CA that signed the API server's certificate, PEM.
    pub fn ca_pem(&self) -> &str {
        &self.pki.ca_pem
    }

    /// Writes (once) and returns a kubeconfig authenticating as `user` in
    /// `groups` with a client certificate: an identity with no rights until
    /// RBAC grants them.
    pub fn user_kubeconfig(&self, user: &str, groups: &[&str]) -> anyhow::Result<PathBuf> {
        let safe: String = user
            .chars()
            .map(|c| if c.is_ascii_alphanumeric() { c } else { '-' })
            .collect();
        let path = self.dir.join(format!("user-{safe}.kubeconfig"));
        if !path.exists() {
            self.write_kubeconfig(&path, user, groups)?;
        }
        Ok(path)
    }

    fn write_kubeconfig(&self, path: &Path, user: &str, groups: &[&str]) -> anyhow::Result<()> {
        use base64::Engine;
        let b64 = |s: &str| base64::engine::general_purpose::STANDARD.encode(s.as_bytes());
        let pair = self.pki.client_cert(user, groups)?;
        let yaml = format!(
            "apiVersion: v1\nkind: Config\nclusters:\n- name: sigil-local\n  cluster:\n    server: {server}\n    certificate-authority-data: {ca}\nusers:\n- name: {user}\n  user:\n    client-certificate-data: {cert}\n    client-key-data: {key}\ncontexts:\n- name: sigil-local\n  context:\n    cluster: sigil-local\n    user: {user}\ncurrent-context: sigil-local\n",
            server = self.api_url,
            ca = b64(&self.pki.ca_pem),
            cert = b64(&pair.cert_pem),
            key = b64(&pair.key_pem),
        );
        pki::write_private(path, &yaml)
    }

    /// A kube client for the admin identity.
    pub async fn client(&self) -> anyhow::Result<kube::Client> {
        client_from_kubeconfig(&self.admin_kubeconfig).await
    }

    pub fn start_component(&self, component: Component) -> anyhow::Result<()> {
        let spec = self
            .commands
            .get(&component)
            .with_context(|| format!("no command for {}", component.name()))?
            .clone();
        self.supervisor
            .call(SupervisorCommand::Start(component, spec))
    }

    /// Stops one component (SIGTERM, then SIGKILL after 10 s), e.g. to prove
    /// that Sigil keeps serving while the API server is gone.
    pub fn stop_component(&self, component: Component) -> anyhow::Result<()> {
        self.supervisor.call(SupervisorCommand::Stop(component))
    }

    /// Waits until `/readyz` answers `ok`.
    pub async fn wait_ready(&self, timeout: Duration) -> anyhow::Result<()> {
        let deadline = Instant::now() + timeout;
        loop {
            let last_error = match self.readyz().await {
                Ok(()) => return Ok(()),
                Err(e) => format!("{e:#}"),
            };
            if let Some(exit) = self.supervisor.exited()? {
                bail!(
                    "{exit} while waiting for the API server; see the logs in {}",
                    self.dir.join("logs").display()
                );
            }
            if Instant::now() > deadline {
                bail!(
                    "kube-apiserver not ready after {timeout:?}: {last_error}; logs in {}",
                    self.dir.join("logs").display()
                );
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }

    async fn readyz(&self) -> anyhow::Result<()> {
        let client = self.client().await?;
        let req = http::Request::get("/readyz").body(Vec::new())?;
        let text = client.request_text(req).await?;
        if text.trim() == "ok" {
            Ok(())
        } else {
            bail!("readyz: {text}")
        }
    }

    /// Applies the CRDs generated from the Rust types and waits until they
    /// are established.
    pub async fn install_crds(&self) -> anyhow::Result<()> {
        let client = self.client().await?;
        install_crds(&client).await
    }

    /// Stops every component and removes the directory we created.
    pub fn stop(&self) {
        let _ = self.supervisor.call(SupervisorCommand::StopAll);
        if let Some((paths, _)) = &self.node {
            for problem in node::cleanup(paths) {
                eprintln!("cleaning up the node: {problem}");
            }
        }
        if self.remove_dir && std::env::var_os("SIGIL_KEEP_CONTROL_PLANE").is_none() {
            let _ = std::fs::remove_dir_all(&self.dir);
        }
    }
}

impl Drop for ControlPlane {
    fn drop(&mut self) {
        self.stop();
    }
}

/// Applies the generated CRDs with server-side apply and waits for
/// `Established`.
pub async fn install_crds(client: &kube::Client) -> anyhow::Result<()> {
    let api: Api<CustomResourceDefinition> = Api::all(client.clone());
    let params = PatchParams::apply("sigil-tests").force();
    let mut names = Vec::new();
    for (file, yaml) in sigil_crds::crd_manifests()? {
        let crd: CustomResourceDefinition =
            serde_saphyr::from_str(&yaml).with_context(|| format!("parsing {file}"))?;
        let name = crd.metadata.name.clone().context("CRD without a name")?;
        api.patch(&name, &params, &Patch::Apply(&crd))
            .await
            .with_context(|| format!("applying {file}"))?;
        names.push(name);
    }
    for name in names {
        let cond = kube::runtime::wait::conditions::is_crd_established();
        tokio::time::timeout(
            Duration::from_secs(30),
            kube::runtime::wait::await_condition(api.clone(), &name, cond),
        )
        .await
        .with_context(|| format!("CRD {name} not established after 30s"))??;
    }
    Ok(())
}

pub async fn client_from_kubeconfig(path: &Path) -> anyhow::Result<kube::Client> {
    let kubeconfig = Kubeconfig::read_from(path)
        .with_context(|| format!("reading kubeconfig {}", path.display()))?;
    let config = kube::Config::from_custom_kubeconfig(kubeconfig, &KubeConfigOptions::default())
        .await
        .context("building client config")?;
    kube::Client::try_from(config).context("building client")
}

/// The shared control plane of one test binary, with Sigil's CRDs
/// installed. Every test gets its own namespace from [`TestCluster::namespace`].
pub struct TestCluster {
    pub control_plane: ControlPlane,
}

static SHARED: OnceCell<TestCluster> = OnceCell::const_new();

impl TestCluster {
    /// Starts the control plane on first use; later calls (from any test of
    /// the same binary) get the same one. It stops when the process exits.
    pub async fn shared() -> &'static TestCluster {
        SHARED
            .get_or_init(|| async {
                let started = Instant::now();
                let control_plane = ControlPlane::start(Options::default())
                    .await
                    .expect("starting the local control plane");
                control_plane
                    .install_crds()
                    .await
                    .expect("installing Sigil's CRDs");
                register_exit_cleanup();
                eprintln!(
                    "local control plane ready at {} in {:.1}s (dir {})",
                    control_plane.api_url(),
                    started.elapsed().as_secs_f64(),
                    control_plane.dir().display()
                );
                TestCluster { control_plane }
            })
            .await
    }

    /// A new admin client, bound to the calling test's runtime (each
    /// `#[tokio::test]` has its own, so clients are never shared).
    pub async fn client(&self) -> kube::Client {
        self.control_plane
            .client()
            .await
            .expect("building an admin client")
    }

    pub fn kubeconfig(&self) -> &Path {
        self.control_plane.kubeconfig()
    }

    /// Runs the control plane's `kubectl` as the admin; panics if it cannot
    /// start. Returns (success, stdout, stderr).
    pub fn kubectl(&self, args: &[&str]) -> CommandOutput {
        let mut cmd = self.control_plane.kubectl_command();
        cmd.args(args);
        CommandOutput::run(cmd)
    }

    /// Runs the control plane's `helm` as the admin, with its caches and
    /// config kept inside the control plane's directory.
    pub fn helm(&self, args: &[&str]) -> CommandOutput {
        let mut cmd = self.control_plane.helm_command();
        cmd.args(args);
        CommandOutput::run(cmd)
    }

    /// A kubeconfig holding a real token of `namespace/account` (from the
    /// TokenRequest API): the ServiceAccount's own identity, so RBAC is what
    /// a pod of it would get.
    pub fn service_account_kubeconfig(&self, namespace: &str, account: &str) -> PathBuf {
        let token = self
            .kubectl(&["create", "token", account, "-n", namespace, "--duration=1h"])
            .expect_success("kubectl create token")
            .stdout;
        let admin = std::fs::read_to_string(self.kubeconfig()).expect("admin kubeconfig");
        // Same cluster entry, the ServiceAccount's bearer token as the user.
        let users_at = admin.find("users:").expect("users section");
        let contexts_at = admin.find("contexts:").expect("contexts section");
        let kubeconfig = format!(
            "{}users:\n- name: sa\n  user:\n    token: {}\n{}",
            &admin[..users_at],
            token.trim(),
            admin[contexts_at..].replace(&format!("user: {ADMIN_USER}"), "user: sa"),
        );
        let path = self
            .control_plane
            .dir()
            .join(format!("{namespace}-{account}.kubeconfig"));
        std::fs::write(&path, kubeconfig).expect("writing kubeconfig");
        path
    }

    /// Creates a fresh namespace `<prefix>-<random>` and waits for its
    /// `default` ServiceAccount, so Pods can be created in it at once.
    pub async fn namespace(&self, prefix: &str) -> String {
        let name = format!("{prefix}-{:08x}", rand::random::<u32>());
        let client = self.client().await;
        let namespaces: Api<Namespace> = Api::all(client.clone());
        let mut ns = Namespace::default();
        ns.metadata.name = Some(name.clone());
        namespaces
            .create(&PostParams::default(), &ns)
            .await
            .expect("creating a test namespace");
        let accounts: Api<ServiceAccount> = Api::namespaced(client, &name);
        let deadline = Instant::now() + Duration::from_secs(30);
        while accounts.get_opt("default").await.ok().flatten().is_none() {
            assert!(
                Instant::now() < deadline,
                "namespace {name}: default ServiceAccount not created within 30s (is kube-controller-manager running?)"
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        name
    }
}

/// What a finished command printed.
#[derive(Debug)]
pub struct CommandOutput {
    pub success: bool,
    pub stdout: String,
    pub stderr: String,
}

impl CommandOutput {
    fn run(mut cmd: Command) -> CommandOutput {
        let out = cmd
            .stdin(Stdio::null())
            .output()
            .unwrap_or_else(|e| panic!("running {cmd:?}: {e}"));
        CommandOutput {
            success: out.status.success(),
            stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
            stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
        }
    }

    /// Panics with both streams unless the command succeeded.
    pub fn expect_success(self, what: &str) -> CommandOutput {
        assert!(
            self.success,
            "{what} failed\nstdout:\n{}\nstderr:\n{}",
            self.stdout, self.stderr
        );
        self
    }
}

fn register_exit_cleanup() {
    extern "C" fn stop_shared() {
        if let Some(cluster) = SHARED.get() {
            cluster.control_plane.stop();
        }
    }
    // SAFETY: registers a plain extern "C" function with no captured state.
    unsafe {
        libc::atexit(stop_shared);
    }
}

/// Where the control-plane binaries are: `$SIGIL_CONTROL_PLANE_BIN`, else
/// whatever `hack/build-control-plane.sh` prints (it builds them on first use
/// and is instant once they are cached).
pub fn control_plane_bin_dir() -> anyhow::Result<PathBuf> {
    if let Some(dir) = std::env::var_os("SIGIL_CONTROL_PLANE_BIN") {
        return Ok(PathBuf::from(dir));
    }
    let script = workspace_root().join("hack/build-control-plane.sh");
    let out = Command::new("bash")
        .arg(&script)
        .stderr(Stdio::inherit())
        .output()
        .with_context(|| format!("running {}", script.display()))?;
    if !out.status.success() {
        bail!("{} failed ({})", script.display(), out.status);
    }
    let stdout = String::from_utf8_lossy(&out.stdout);
    let dir = stdout
        .lines()
        .last()
        .context("build-control-plane.sh printed no directory")?;
    Ok(PathBuf::from(dir.trim()))
}

pub fn workspace_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .map(Path::to_path_buf)
        .unwrap_or_else(|| PathBuf::from("."))
}

fn free_port() -> anyhow::Result<u16> {
    let listener = TcpListener::bind("127.0.0.1:0").context("finding a free port")?;
    Ok(listener.local_addr()?.port())
}

/// Removes temp dirs left by control planes whose process is gone (a test
/// binary killed with SIGKILL cannot clean up after itself).
fn clean_stale_temp_dirs() {
    let Ok(entries) = std::fs::read_dir(std::env::temp_dir()) else {
        return;
    };
    for entry in entries.flatten() {
        let name = entry.file_name().to_string_lossy().into_owned();
        let Some(rest) = name.strip_prefix("sigil-cp-") else {
            continue;
        };
        let Some(pid) = rest.split('-').next().and_then(|p| p.parse::<u32>().ok()) else {
            continue;
        };
        if !Path::new(&format!("/proc/{pid}")).exists() {
            let _ = std::fs::remove_dir_all(entry.path());
        }
    }
}

/// A process to run, with its log file.
#[derive(Clone, Debug)]
pub struct ProcessSpec {
    program: PathBuf,
    args: Vec<String>,
    log: PathBuf,
}

impl ProcessSpec {
    fn new(program: PathBuf, dir: &Path, name: &str) -> Self {
        ProcessSpec {
            program,
            args: Vec::new(),
            log: dir.join("logs").join(format!("{name}.log")),
        }
    }

    fn args<I: IntoIterator<Item = String>>(mut self, args: I) -> Self {
        self.args.extend(args);
        self
    }
}

enum SupervisorCommand {
    Start(Component, ProcessSpec),
    Stop(Component),
    StopAll,
    /// Reports a component that exited on its own.
    Exited,
}

type Reply = mpsc::Sender<anyhow::Result<Option<String>>>;

/// Owns the child processes on one thread that lives as long as the process,
/// because `PR_SET_PDEATHSIG` fires when the *thread* that forked exits.
struct Supervisor {
    tx: std::sync::Mutex<mpsc::Sender<(SupervisorCommand, Reply)>>,
}

impl Supervisor {
    fn spawn() -> Supervisor {
        let (tx, rx) = mpsc::channel::<(SupervisorCommand, Reply)>();
        std::thread::Builder::new()
            .name("control-plane-supervisor".into())
            .spawn(move || supervise(rx))
            .expect("spawning the supervisor thread");
        Supervisor {
            tx: std::sync::Mutex::new(tx),
        }
    }

    fn send(&self, cmd: SupervisorCommand) -> anyhow::Result<Option<String>> {
        let (reply_tx, reply_rx) = mpsc::channel();
        self.tx
            .lock()
            .map_err(|_| anyhow::anyhow!("supervisor lock poisoned"))?
            .send((cmd, reply_tx))
            .map_err(|_| anyhow::anyhow!("supervisor thread is gone"))?;
        reply_rx
            .recv()
            .map_err(|_| anyhow::anyhow!("supervisor thread is gone"))?
    }

    fn call(&self, cmd: SupervisorCommand) -> anyhow::Result<()> {
        self.send(cmd).map(|_| ())
    }

    fn exited(&self) -> anyhow::Result<Option<String>> {
        self.send(SupervisorCommand::Exited)
    }
}

fn supervise(rx: mpsc::Receiver<(SupervisorCommand, Reply)>) {
    let mut children: Vec<(Component, Child)> = Vec::new();
    while let Ok((cmd, reply)) = rx.recv() {
        let result = match cmd {
            SupervisorCommand::Start(component, spec) => spawn_child(&spec).map(|child| {
                children.push((component, child));
                None
            }),
            SupervisorCommand::Stop(component) => {
                if let Some(i) = children.iter().position(|(c, _)| *c == component) {
                    let (_, child) = children.remove(i);
                    terminate(child);
                }
                Ok(None)
            }
            SupervisorCommand::StopAll => {
                // Reverse start order: the node first, etcd last.
                while let Some((_, child)) = children.pop() {
                    terminate(child);
                }
                Ok(None)
            }
            SupervisorCommand::Exited => {
                let mut exited = None;
                for (component, child) in children.iter_mut() {
                    if let Ok(Some(status)) = child.try_wait() {
                        exited = Some(format!("{} exited ({status})", component.name()));
                    }
                }
                Ok(exited)
            }
        };
        let _ = reply.send(result);
    }
    // The owner went away without StopAll.
    for (_, child) in children {
        terminate(child);
    }
}

fn spawn_child(spec: &ProcessSpec) -> anyhow::Result<Child> {
    use std::os::unix::process::CommandExt;
    let log = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(&spec.log)
        .with_context(|| format!("opening {}", spec.log.display()))?;
    let log_err = log.try_clone()?;
    let mut cmd = Command::new(&spec.program);
    cmd.args(&spec.args)
        .stdin(Stdio::null())
        .stdout(log)
        .stderr(log_err);
    // SAFETY: prctl is async-signal-safe; nothing else runs between fork and exec.
    unsafe {
        cmd.pre_exec(|| {
            if libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL) != 0 {
                return Err(std::io::Error::last_os_error());
            }
            Ok(())
        });
    }
    cmd.spawn()
        .with_context(|| format!("starting {}", spec.program.display()))
}

fn terminate(mut child: Child) {
    let pid = child.id() as libc::pid_t;
    // SAFETY: signalling our own child by pid.
    unsafe {
        libc::kill(pid, libc::SIGTERM);
    }
    let deadline = Instant::now() + Duration::from_secs(10);
    while Instant::now() < deadline {
        if let Ok(Some(_)) = child.try_wait() {
            return;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    let _ = child.kill();
    let _ = child.wait();
}
