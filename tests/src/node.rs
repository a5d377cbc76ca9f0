//! The local cluster's one node: containerd and runc (Debian's), the CNI
//! bridge, kubelet, kube-proxy and CoreDNS, so pods really run.
//!
//! Everything stays inside this machine: pods live on the bridge
//! [`BRIDGE`] (198.18.0.0/24) and Services on 198.19.0.0/16, both in
//! 198.18.0.0/15, which RFC 2544 reserves for benchmarking and no real
//! network uses. There is no masquerade, the host forwards nothing from the
//! bridge to any other interface, and CoreDNS answers only for the cluster
//! (no upstream).
//!
//! One node per machine (the bridge and its address are fixed): its state
//! lives in [`node_dir`], guarded by the lock file `/run/sigil-node.lock`. [`cleanup`] undoes
//! everything a node leaves behind — container processes, mounts, cgroups,
//! iptables chains, the bridge, CNI and containerd state — and runs before a
//! node starts (a killed test cannot clean up after itself) and after it
//! stops. The pitfalls of this VM that shaped the configuration are listed in
//! the README ("The local node").
//!
//! The configuration files are built by pure functions (unit-tested below);
//! the host changes are made by the `ip`, `iptables` and `ctr` commands.

use std::net::Ipv4Addr;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};

/// The pod bridge; the host's address on it is [`NODE_IP`].
pub const BRIDGE: &str = "sigil0";
/// The node's address: the host side of the pod bridge. The API server,
/// kubelet and CoreDNS listen here so pods can reach them.
pub const NODE_IP: Ipv4Addr = Ipv4Addr::new(198, 18, 0, 1);
/// Pod addresses (the bridge's subnet).
pub const POD_CIDR: &str = "198.18.0.0/24";
/// Service ClusterIPs.
pub const SERVICE_CIDR: &str = "198.19.0.0/16";
/// The `kubernetes` Service's ClusterIP (the first of [`SERVICE_CIDR`]).
pub const KUBERNETES_SERVICE_IP: Ipv4Addr = Ipv4Addr::new(198, 19, 0, 1);
pub const NODE_NAME: &str = "sigil-node";
pub const CLUSTER_DOMAIN: &str = "cluster.local";
/// Ports on [`NODE_IP`] / loopback, away from the usual ones.
const KUBELET_PORT: u16 = 20250;
const KUBELET_HEALTHZ_PORT: u16 = 20248;
const KUBE_PROXY_METRICS_PORT: u16 = 20249;
const KUBE_PROXY_HEALTHZ_PORT: u16 = 20256;
const COREDNS_HEALTH_PORT: u16 = 20280;
const COREDNS_READY_PORT: u16 = 20281;
/// Every pod's cgroups live under this parent in each cgroup v1 hierarchy,
/// so cleanup finds exactly the node's and nothing else.
const CGROUP_ROOT: &str = "sigil-node";
/// Name of the CNI network (also the prefix of its state files).
const CNI_NETWORK: &str = "sigil";
/// Where the CNI plugins are (Debian's containernetworking-plugins).
const CNI_BIN_DIR: &str = "/usr/lib/cni";
const IP_FORWARD: &str = "/proc/sys/net/ipv4/ip_forward";
/// The sandbox (`pause`) image every pod starts with (hack/images.sh).
pub const PAUSE_IMAGE: &str = "sigil.local/pause:dev";

/// The node's state directory: containerd's root and state, kubelet's root,
/// pod logs, CNI state, configs.
pub fn node_dir() -> PathBuf {
    std::env::temp_dir().join("sigil-node")
}

/// Paths inside the node directory.
#[derive(Clone, Debug)]
pub struct NodePaths {
    pub dir: PathBuf,
}

impl NodePaths {
    pub fn new(dir: PathBuf) -> NodePaths {
        NodePaths { dir }
    }
    pub fn containerd_config(&self) -> PathBuf {
        self.dir.join("containerd.toml")
    }
    pub fn containerd_socket(&self) -> PathBuf {
        self.dir.join("containerd/containerd.sock")
    }
    pub fn cni_conf_dir(&self) -> PathBuf {
        self.dir.join("cni/net.d")
    }
    pub fn kubelet_config(&self) -> PathBuf {
        self.dir.join("kubelet.yaml")
    }
    pub fn kubelet_root(&self) -> PathBuf {
        self.dir.join("kubelet")
    }
    pub fn kube_proxy_config(&self) -> PathBuf {
        self.dir.join("kube-proxy.yaml")
    }
    pub fn corefile(&self) -> PathBuf {
        self.dir.join("Corefile")
    }
    /// One per machine, whatever the node directory: the bridge and its
    /// address are the machine's.
    pub fn lock_file(&self) -> PathBuf {
        PathBuf::from("/run/sigil-node.lock")
    }
    /// `ip_forward` as it was before the node (beside the directory, which
    /// cleanup removes before it restores the value).
    pub fn saved_ip_forward(&self) -> PathBuf {
        self.dir.with_extension("ip_forward")
    }
}

/// containerd 1.6's configuration: all state under the node directory, the
/// cgroupfs driver (cgroup v1), and no negative OOM scores (this VM's
/// bounding set lacks CAP_SYS_RESOURCE, and runc fails with "can't get final
/// child's PID from pipe" when CRI asks for -998).
pub fn containerd_config(paths: &NodePaths) -> String {
    let d = paths.dir.display();
    format!(
        r#"version = 2
root = "{d}/containerd/root"
state = "{d}/containerd/state"
# Snapshotters this machine cannot use would only log errors.
disabled_plugins = ["io.containerd.snapshotter.v1.aufs", "io.containerd.snapshotter.v1.btrfs", "io.containerd.snapshotter.v1.devmapper", "io.containerd.snapshotter.v1.zfs", "io.containerd.internal.v1.tracing"]

[grpc]
  address = "{socket}"

[ttrpc]
  address = "{socket}.ttrpc"

[plugins."io.containerd.internal.v1.opt"]
  path = "{d}/containerd/opt"

[plugins."io.containerd.grpc.v1.cri"]
  sandbox_image = "{PAUSE_IMAGE}"
  restrict_oom_score_adj = true
  netns_mounts_under_state_dir = true
  enable_selinux = false
  [plugins."io.containerd.grpc.v1.cri".containerd]
    snapshotter = "overlayfs"
    default_runtime_name = "runc"
    [plugins."io.containerd.grpc.v1.cri".containerd.runtimes.runc]
      runtime_type = "io.containerd.runc.v2"
      [plugins."io.containerd.grpc.v1.cri".containerd.runtimes.runc.options]
        SystemdCgroup = false
        Root = "{d}/runc"
  [plugins."io.containerd.grpc.v1.cri".cni]
    bin_dir = "{CNI_BIN_DIR}"
    conf_dir = "{conf}"
"#,
        socket = paths.containerd_socket().display(),
        conf = paths.cni_conf_dir().display(),
    )
}

/// The pod network: one bridge, addresses from host-local, no masquerade.
/// The host is the pods' gateway, but forwards nothing off the bridge
/// ([`setup_host`]).
pub fn cni_conflist(paths: &NodePaths) -> String {
    serde_json::json!({
        "cniVersion": "0.4.0",
        "name": CNI_NETWORK,
        "plugins": [
            {
                "type": "bridge",
                "bridge": BRIDGE,
                "isGateway": true,
                "ipMasq": false,
                "hairpinMode": true,
                "ipam": {
                    "type": "host-local",
                    "dataDir": paths.dir.join("cni/ipam").display().to_string(),
                    "ranges": [[{"subnet": POD_CIDR, "gateway": NODE_IP.to_string()}]],
                    "routes": [{"dst": "0.0.0.0/0"}]
                }
            },
            {"type": "loopback"}
        ]
    })
    .to_string()
}

/// kubelet's configuration for this VM: cgroup v1 with the cgroupfs driver,
/// no OOM score changes, no image garbage collection (imported images cannot
/// be pulled again), eviction only when the disk is truly full, and fast
/// Secret volume updates (the tests watch a rotated secret reach a pod).
pub fn kubelet_config(paths: &NodePaths, client_ca: &Path) -> String {
    let d = paths.dir.display();
    format!(
        r#"apiVersion: kubelet.config.k8s.io/v1beta1
kind: KubeletConfiguration
failCgroupV1: false
cgroupDriver: cgroupfs
cgroupRoot: /{CGROUP_ROOT}
cgroupsPerQOS: true
enforceNodeAllocatable: [pods]
oomScoreAdj: 0
failSwapOn: false
containerRuntimeEndpoint: unix://{socket}
address: {NODE_IP}
port: {KUBELET_PORT}
readOnlyPort: 0
healthzBindAddress: 127.0.0.1
healthzPort: {KUBELET_HEALTHZ_PORT}
authentication:
  anonymous: {{enabled: false}}
  webhook: {{enabled: true}}
  x509: {{clientCAFile: {ca}}}
authorization:
  mode: Webhook
clusterDNS: [{NODE_IP}]
clusterDomain: {CLUSTER_DOMAIN}
resolvConf: ""
podLogsDir: {d}/pod-logs
imageGCHighThresholdPercent: 100
imageGCLowThresholdPercent: 99
evictionHard:
  memory.available: 100Mi
  nodefs.available: 1%
  imagefs.available: 1%
  nodefs.inodesFree: 1%
syncFrequency: 10s
makeIPTablesUtilChains: false
serializeImagePulls: false
"#,
        socket = paths.containerd_socket().display(),
        ca = client_ca.display(),
    )
}

/// kube-proxy in iptables mode. It must not touch conntrack sysctls (0 =
/// leave as is) or route_localnet, and its config file must be written only
/// when it changes: kube-proxy exits when the file is rewritten.
pub fn kube_proxy_config(kubeconfig: &Path) -> String {
    format!(
        r#"apiVersion: kubeproxy.config.k8s.io/v1alpha1
kind: KubeProxyConfiguration
clientConnection:
  kubeconfig: {kubeconfig}
hostnameOverride: {NODE_NAME}
mode: iptables
clusterCIDR: {POD_CIDR}
oomScoreAdj: 0
metricsBindAddress: 127.0.0.1:{KUBE_PROXY_METRICS_PORT}
healthzBindAddress: 127.0.0.1:{KUBE_PROXY_HEALTHZ_PORT}
nodePortAddresses: ["{NODE_IP}/32"]
conntrack:
  maxPerCore: 0
  min: 0
  tcpEstablishedTimeout: 0s
  tcpCloseWaitTimeout: 0s
iptables:
  localhostNodePorts: false
  masqueradeAll: false
"#,
        kubeconfig = kubeconfig.display(),
    )
}

/// CoreDNS answers `*.cluster.local` (and reverse lookups) from the API
/// server on the node address; nothing else (no `forward`).
pub fn corefile(kubeconfig: &Path) -> String {
    format!(
        r#".:53 {{
    bind {NODE_IP}
    errors
    health 127.0.0.1:{COREDNS_HEALTH_PORT}
    ready 127.0.0.1:{COREDNS_READY_PORT}
    kubernetes {CLUSTER_DOMAIN} in-addr.arpa ip6.arpa {{
        kubeconfig {kubeconfig}
        pods insecure
    }}
    cache 5
}}
"#,
        kubeconfig = kubeconfig.display(),
    )
}

/// Writes `contents` to `path` unless it already holds exactly that.
pub fn write_if_changed(path: &Path, contents: &str) -> anyhow::Result<()> {
    if std::fs::read_to_string(path).ok().as_deref() == Some(contents) {
        return Ok(());
    }
    if let Some(parent) = path.parent() {
        std::fs::create_dir_all(parent)
            .with_context(|| format!("creating {}", parent.display()))?;
    }
    std::fs::write(path, contents).with_context(|| format!("writing {}", path.display()))
}

/// Holds the machine's one node: an exclusive `flock` on the lock file,
/// released when the process exits however it exits.
pub struct NodeLock {
    _file: std::fs::File,
}

impl NodeLock {
    pub fn acquire(paths: &NodePaths) -> anyhow::Result<NodeLock> {
        use std::os::fd::AsRawFd;
        let path = paths.lock_file();
        let file = std::fs::OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .open(&path)
            .with_context(|| format!("opening {}", path.display()))?;
        // SAFETY: flock on a file descriptor we own.
        if unsafe { libc::flock(file.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) } != 0 {
            bail!(
                "another local node is running on this machine (it holds {}); stop it first (`./hack/dev.sh --down`)",
                path.display()
            );
        }
        Ok(NodeLock { _file: file })
    }
}

/// Prepares the host for the node: directories and configs, the bridge with
/// the node address, forwarding on the bridge only, cgroup parents.
pub fn setup_host(paths: &NodePaths) -> anyhow::Result<()> {
    for sub in [
        "containerd",
        "cni/net.d",
        "cni/ipam",
        "kubelet",
        "pod-logs",
        "runc",
    ] {
        std::fs::create_dir_all(paths.dir.join(sub))
            .with_context(|| format!("creating {}", paths.dir.join(sub).display()))?;
    }
    write_if_changed(&paths.containerd_config(), &containerd_config(paths))?;
    write_if_changed(
        &paths.cni_conf_dir().join("10-sigil.conflist"),
        &cni_conflist(paths),
    )?;

    // The bridge exists before the first pod so the API server, kubelet and
    // CoreDNS can listen on the node address; the CNI plugin adopts it.
    if !link_exists(BRIDGE) {
        run("ip", &["link", "add", BRIDGE, "type", "bridge"])?;
    }
    let addr = format!("{NODE_IP}/24");
    if !run_output("ip", &["-4", "addr", "show", "dev", BRIDGE])?.contains(&addr) {
        run("ip", &["addr", "add", &addr, "dev", BRIDGE])?;
    }
    run("ip", &["link", "set", BRIDGE, "up"])?;
    // Host-to-Service traffic leaves by the bridge with the node address as
    // source (no default route, so no masquerade needed).
    run(
        "ip",
        &[
            "route",
            "replace",
            SERVICE_CIDR,
            "dev",
            BRIDGE,
            "src",
            &NODE_IP.to_string(),
        ],
    )?;
    // Routing between pods and Services needs forwarding; nothing may leave
    // the bridge for another interface.
    // The value before the node, restored by cleanup.
    let saved = paths.saved_ip_forward();
    if !saved.exists() {
        let before = std::fs::read_to_string(IP_FORWARD).context("reading ip_forward")?;
        std::fs::write(&saved, before).with_context(|| format!("writing {}", saved.display()))?;
    }
    std::fs::write(IP_FORWARD, "1").context("enabling IPv4 forwarding")?;
    let keep_inside = ["FORWARD", "-i", BRIDGE, "!", "-o", BRIDGE, "-j", "DROP"];
    if !iptables_rule_exists("filter", &keep_inside) {
        let mut args = vec!["-w", "-I"];
        args.extend_from_slice(&keep_inside);
        run("iptables", &args)?;
    }
    for hierarchy in cgroup_hierarchies() {
        let dir = hierarchy.join(CGROUP_ROOT);
        std::fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
    }
    Ok(())
}

/// Imports image archives (hack/images.sh) into containerd's `k8s.io`
/// namespace, where kubelet finds them.
pub fn import_images(paths: &NodePaths, archives: &[PathBuf]) -> anyhow::Result<()> {
    let socket = paths.containerd_socket().display().to_string();
    for archive in archives {
        let archive = archive.display().to_string();
        run(
            "ctr",
            &[
                "--address",
                &socket,
                "-n",
                "k8s.io",
                "images",
                "import",
                "--no-unpack",
                &archive,
            ],
        )
        .with_context(|| format!("importing {archive}"))?;
    }
    Ok(())
}

/// Waits for containerd's socket to answer.
pub fn wait_containerd(paths: &NodePaths, timeout: Duration) -> anyhow::Result<()> {
    let socket = paths.containerd_socket().display().to_string();
    let deadline = Instant::now() + timeout;
    loop {
        if Command::new("ctr")
            .args(["--address", &socket, "version"])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()
            .map(|s| s.success())
            .unwrap_or(false)
        {
            return Ok(());
        }
        if Instant::now() > deadline {
            bail!("containerd did not answer on {socket} within {timeout:?}");
        }
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// Undoes everything a node leaves on the host. Idempotent; safe when
/// nothing is there. Call it with every node process stopped (or dead).
pub fn cleanup(paths: &NodePaths) -> Vec<String> {
    let mut problems = Vec::new();
    let mut note = |what: &str, result: anyhow::Result<()>| {
        if let Err(e) = result {
            problems.push(format!("{what}: {e:#}"));
        }
    };
    // Shims outlive containerd, and containers outlive their shims: kill the
    // shims started for this node, then every process in the node's cgroups.
    note("killing containerd shims", kill_shims(paths));
    note("killing pod processes", kill_cgroup_processes());
    note("removing pod cgroups", remove_cgroups());
    note("unmounting", unmount_under(&paths.dir));
    note("removing iptables rules", remove_iptables());
    if link_exists(BRIDGE) {
        note("deleting the bridge", run("ip", &["link", "del", BRIDGE]));
    }
    note(
        "removing kubelet's log links",
        remove_container_log_links(&paths.dir),
    );
    note("removing CNI state", remove_cni_state());
    note("removing shim sockets", remove_stale_shim_sockets());
    if let Ok(before) = std::fs::read_to_string(paths.saved_ip_forward()) {
        note(
            "restoring ip_forward",
            std::fs::write(IP_FORWARD, before.trim())
                .context("restoring ip_forward")
                .and_then(|()| {
                    std::fs::remove_file(paths.saved_ip_forward())
                        .context("removing the saved value")
                }),
        );
    }
    if paths.dir.exists() {
        note(
            "removing the node directory",
            std::fs::remove_dir_all(&paths.dir)
                .with_context(|| format!("removing {}", paths.dir.display())),
        );
    }
    problems
}

/// What a node left behind, for the test script's leak check and for
/// asserting a clean stop: mounts, the bridge, iptables chains, cgroups.
pub fn leftovers(paths: &NodePaths) -> Vec<String> {
    let mut found = Vec::new();
    let dir = paths.dir.display().to_string();
    if let Ok(mounts) = std::fs::read_to_string("/proc/self/mountinfo") {
        for line in mounts.lines() {
            if let Some(point) = line.split(' ').nth(4)
                && point.starts_with(&dir)
            {
                found.push(format!("mount {point}"));
            }
        }
    }
    if link_exists(BRIDGE) {
        found.push(format!("bridge {BRIDGE}"));
    }
    for (table, chain) in kube_chains() {
        found.push(format!("iptables -t {table} chain {chain}"));
    }
    for hierarchy in cgroup_hierarchies() {
        if hierarchy.join(CGROUP_ROOT).exists() {
            found.push(format!("cgroup {}", hierarchy.join(CGROUP_ROOT).display()));
        }
    }
    found
}

fn kill_shims(paths: &NodePaths) -> anyhow::Result<()> {
    let socket = paths.containerd_socket().display().to_string();
    for pid in
        pids_matching(|cmdline| cmdline.contains("containerd-shim") && cmdline.contains(&socket))
    {
        // SAFETY: signalling a process by pid.
        unsafe {
            libc::kill(pid, libc::SIGKILL);
        }
    }
    Ok(())
}

fn pids_matching(pred: impl Fn(&str) -> bool) -> Vec<libc::pid_t> {
    let Ok(entries) = std::fs::read_dir("/proc") else {
        return Vec::new();
    };
    entries
        .flatten()
        .filter_map(|e| e.file_name().to_str()?.parse::<libc::pid_t>().ok())
        .filter(|pid| {
            std::fs::read(format!("/proc/{pid}/cmdline"))
                .map(|raw| pred(&String::from_utf8_lossy(&raw).replace('\0', " ")))
                .unwrap_or(false)
        })
        .collect()
}

fn cgroup_hierarchies() -> Vec<PathBuf> {
    let Ok(mounts) = std::fs::read_to_string("/proc/self/mounts") else {
        return Vec::new();
    };
    mounts
        .lines()
        .filter_map(|line| {
            let mut fields = line.split(' ');
            let (_, point, fstype) = (fields.next()?, fields.next()?, fields.next()?);
            (fstype == "cgroup" || fstype == "cgroup2").then(|| PathBuf::from(point))
        })
        .collect()
}

/// Every cgroup directory under the node's root, deepest first.
fn node_cgroups() -> Vec<PathBuf> {
    fn walk(dir: &Path, out: &mut Vec<PathBuf>) {
        if let Ok(entries) = std::fs::read_dir(dir) {
            for entry in entries.flatten() {
                if entry.file_type().map(|t| t.is_dir()).unwrap_or(false) {
                    walk(&entry.path(), out);
                }
            }
        }
        out.push(dir.to_path_buf());
    }
    let mut out = Vec::new();
    for hierarchy in cgroup_hierarchies() {
        let root = hierarchy.join(CGROUP_ROOT);
        if root.exists() {
            walk(&root, &mut out);
        }
    }
    out
}

fn kill_cgroup_processes() -> anyhow::Result<()> {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let mut alive = 0;
        for cgroup in node_cgroups() {
            let Ok(procs) = std::fs::read_to_string(cgroup.join("cgroup.procs")) else {
                continue;
            };
            for pid in procs
                .lines()
                .filter_map(|p| p.trim().parse::<libc::pid_t>().ok())
            {
                alive += 1;
                // SAFETY: signalling a process by pid.
                unsafe {
                    libc::kill(pid, libc::SIGKILL);
                }
            }
        }
        if alive == 0 {
            return Ok(());
        }
        if Instant::now() > deadline {
            bail!("{alive} pod processes still alive after SIGKILL");
        }
        std::thread::sleep(Duration::from_millis(100));
    }
}

fn remove_cgroups() -> anyhow::Result<()> {
    let mut failed = Vec::new();
    for cgroup in node_cgroups() {
        if std::fs::remove_dir(&cgroup).is_err() {
            failed.push(cgroup.display().to_string());
        }
    }
    if failed.is_empty() {
        Ok(())
    } else {
        bail!("cannot remove {}", failed.join(", "))
    }
}

/// Unmounts everything mounted at or under `dir` (overlay rootfs, Secret
/// tmpfs volumes, network namespaces, kubelet's bind mount of its root),
/// deepest first.
fn unmount_under(dir: &Path) -> anyhow::Result<()> {
    let dir = dir.display().to_string();
    for _ in 0..5 {
        let mounts =
            std::fs::read_to_string("/proc/self/mountinfo").context("reading mountinfo")?;
        let mut points: Vec<String> = mounts
            .lines()
            .filter_map(|line| line.split(' ').nth(4))
            .map(unescape_mount_point)
            .filter(|p| p == &dir || p.starts_with(&format!("{dir}/")))
            .collect();
        if points.is_empty() {
            return Ok(());
        }
        points.sort_by_key(|p| std::cmp::Reverse(p.len()));
        for point in points {
            let Ok(c) = std::ffi::CString::new(point) else {
                continue;
            };
            // SAFETY: umount2 with a valid NUL-terminated path.
            unsafe {
                libc::umount2(c.as_ptr(), libc::MNT_DETACH);
            }
        }
    }
    bail!("mounts under {dir} remain after five passes")
}

/// mountinfo escapes space, tab, newline and backslash as octal.
fn unescape_mount_point(raw: &str) -> String {
    raw.replace("\\040", " ")
        .replace("\\011", "\t")
        .replace("\\012", "\n")
        .replace("\\134", "\\")
}

/// The chains kube-proxy and kubelet create (KUBE-*), per table.
fn kube_chains() -> Vec<(&'static str, String)> {
    let mut chains = Vec::new();
    for table in ["filter", "nat", "mangle"] {
        let Ok(rules) = run_output("iptables", &["-w", "-t", table, "-S"]) else {
            continue;
        };
        for line in rules.lines() {
            if let Some(chain) = line.strip_prefix("-N ")
                && chain.starts_with("KUBE-")
            {
                chains.push((table, chain.to_owned()));
            }
        }
    }
    chains
}

/// Removes every KUBE-* chain and every rule jumping to one (kube-proxy's
/// own `--cleanup` leaves kubelet's canary chains), and the bridge rule.
fn remove_iptables() -> anyhow::Result<()> {
    for table in ["filter", "nat", "mangle"] {
        let Ok(rules) = run_output("iptables", &["-w", "-t", table, "-S"]) else {
            continue;
        };
        // Rules in built-in chains that jump to KUBE-* chains, or ours.
        for line in rules.lines() {
            let Some(rule) = line.strip_prefix("-A ") else {
                continue;
            };
            let chain = rule.split(' ').next().unwrap_or_default();
            let ours = rule.contains("-j KUBE-")
                || (rule.contains(&format!("-i {BRIDGE}")) && rule.contains("-j DROP"));
            if !chain.starts_with("KUBE-") && ours {
                let mut args = vec!["-w", "-t", table, "-D"];
                args.extend(shell_words(rule));
                let _ = run("iptables", &args);
            }
        }
        let chains: Vec<String> = kube_chains()
            .into_iter()
            .filter(|(t, _)| *t == table)
            .map(|(_, c)| c)
            .collect();
        for chain in &chains {
            let _ = run("iptables", &["-w", "-t", table, "-F", chain]);
        }
        for chain in &chains {
            let _ = run("iptables", &["-w", "-t", table, "-X", chain]);
        }
    }
    let left = kube_chains();
    if left.is_empty() {
        Ok(())
    } else {
        bail!("chains left: {left:?}")
    }
}

/// Splits an `iptables -S` rule into arguments (comments are quoted).
fn shell_words(rule: &str) -> Vec<&str> {
    let mut words = Vec::new();
    let mut rest = rule.trim();
    while !rest.is_empty() {
        if let Some(quoted) = rest.strip_prefix('"') {
            let end = quoted.find('"').unwrap_or(quoted.len());
            words.push(&quoted[..end]);
            rest = quoted.get(end + 1..).unwrap_or("").trim_start();
        } else {
            let end = rest.find(' ').unwrap_or(rest.len());
            words.push(&rest[..end]);
            rest = rest[end..].trim_start();
        }
    }
    words
}

/// kubelet links every container's log into /var/log/containers (a fixed
/// path); remove the links that point into the node directory.
fn remove_container_log_links(dir: &Path) -> anyhow::Result<()> {
    let Ok(entries) = std::fs::read_dir("/var/log/containers") else {
        return Ok(());
    };
    for entry in entries.flatten() {
        if let Ok(target) = std::fs::read_link(entry.path())
            && target.starts_with(dir)
        {
            let _ = std::fs::remove_file(entry.path());
        }
    }
    Ok(())
}

/// libcni caches results under /var/lib/cni (not configurable in
/// containerd 1.6): remove this network's entries and containerd's pod
/// loopback ones, then the directories if nothing else is in them.
fn remove_cni_state() -> anyhow::Result<()> {
    let results = Path::new("/var/lib/cni/results");
    if let Ok(entries) = std::fs::read_dir(results) {
        for entry in entries.flatten() {
            let name = entry.file_name().to_string_lossy().into_owned();
            if name.starts_with(&format!("{CNI_NETWORK}-")) || name.starts_with("cni-loopback-") {
                let _ = std::fs::remove_file(entry.path());
            }
        }
    }
    let _ = std::fs::remove_dir(results);
    let _ = std::fs::remove_dir("/var/lib/cni");
    Ok(())
}

/// containerd 1.6 puts shim sockets in /run/containerd/s whatever its
/// state directory: remove the ones nobody listens on any more (a live
/// socket is in /proc/net/unix), then the directories if empty.
fn remove_stale_shim_sockets() -> anyhow::Result<()> {
    let dir = Path::new("/run/containerd/s");
    let live = std::fs::read_to_string("/proc/net/unix").unwrap_or_default();
    if let Ok(entries) = std::fs::read_dir(dir) {
        for entry in entries.flatten() {
            let path = entry.path().display().to_string();
            if !live.contains(&path) {
                let _ = std::fs::remove_file(entry.path());
            }
        }
    }
    let _ = std::fs::remove_dir(dir);
    let _ = std::fs::remove_dir("/run/containerd");
    Ok(())
}

fn link_exists(name: &str) -> bool {
    Path::new("/sys/class/net").join(name).exists()
}

fn iptables_rule_exists(table: &str, rule: &[&str]) -> bool {
    let mut args = vec!["-w", "-t", table, "-C"];
    args.extend_from_slice(rule);
    Command::new("iptables")
        .args(&args)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .map(|s| s.success())
        .unwrap_or(false)
}

fn run(program: &str, args: &[&str]) -> anyhow::Result<()> {
    run_output(program, args).map(|_| ())
}

fn run_output(program: &str, args: &[&str]) -> anyhow::Result<String> {
    let out = Command::new(program)
        .args(args)
        .stdin(Stdio::null())
        .output()
        .with_context(|| format!("running {program} (is it installed? see the README)"))?;
    if !out.status.success() {
        bail!(
            "{program} {} failed: {}",
            args.join(" "),
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn paths() -> NodePaths {
        NodePaths::new(PathBuf::from("/tmp/sigil-node"))
    }

    #[test]
    fn every_node_path_stays_in_the_node_dir() {
        let p = paths();
        for config in [
            containerd_config(&p),
            cni_conflist(&p),
            kubelet_config(&p, Path::new("/tmp/ca.crt")),
        ] {
            for needle in ["/var/lib", "/run/containerd", "/var/log/pods"] {
                assert!(!config.contains(needle), "{needle} in\n{config}");
            }
        }
        assert!(containerd_config(&p).contains("root = \"/tmp/sigil-node/containerd/root\""));
    }

    #[test]
    fn the_pod_network_stays_inside_the_machine() {
        let conf: serde_json::Value = serde_json::from_str(&cni_conflist(&paths())).unwrap();
        let bridge = &conf["plugins"][0];
        assert_eq!(bridge["ipMasq"], false);
        assert_eq!(bridge["bridge"], BRIDGE);
        assert_eq!(bridge["ipam"]["ranges"][0][0]["subnet"], POD_CIDR);
        assert!(!corefile(Path::new("/k")).contains("forward"));
        let proxy = kube_proxy_config(Path::new("/k"));
        assert!(proxy.contains("masqueradeAll: false"));
        assert!(proxy.contains("localhostNodePorts: false"));
    }

    #[test]
    fn the_configs_fit_this_vm() {
        let kubelet = kubelet_config(&paths(), Path::new("/tmp/ca.crt"));
        for line in [
            "failCgroupV1: false",
            "cgroupDriver: cgroupfs",
            "oomScoreAdj: 0",
        ] {
            assert!(kubelet.contains(line), "{line}");
        }
        let containerd = containerd_config(&paths());
        assert!(containerd.contains("restrict_oom_score_adj = true"));
        assert!(containerd.contains("SystemdCgroup = false"));
        assert!(containerd.contains("netns_mounts_under_state_dir = true"));
    }

    #[test]
    fn iptables_rules_split_into_arguments() {
        assert_eq!(
            shell_words(
                r#"FORWARD -m comment --comment "kubernetes forwarding rules" -j KUBE-FORWARD"#
            ),
            vec![
                "FORWARD",
                "-m",
                "comment",
                "--comment",
                "kubernetes forwarding rules",
                "-j",
                "KUBE-FORWARD"
            ]
        );
    }

    #[test]
    fn mount_points_are_unescaped() {
        assert_eq!(unescape_mount_point("/a\\040b"), "/a b");
    }
}
