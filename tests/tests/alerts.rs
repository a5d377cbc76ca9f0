//! Sigil's alerts and dashboard (charts/sigil/files/): the rule unit tests
//! (`promtool test rules`), the chart shipping both files as they are, and
//! each alert firing in a real Prometheus (Debian's package, on loopback)
//! that scrapes a real issuer and operator on the test control plane when
//! its condition is made true.
//!
//! Prometheus comes from `$SIGIL_PROMETHEUS_BIN`, else from
//! hack/install-prometheus.sh; without it these tests fail, never skip.
//!
//! The e2e Prometheus evaluates the rules with every `for:` set to 0s (see
//! [`rules_without_for`]): the expressions are the chart's, only the wait is
//! not, so an alert fires at the first evaluation that finds its condition
//! true. The `for:` durations themselves are covered by the promtool tests.

mod issuer_support;

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use issuer_support::*;
use k8s_openapi::api::core::v1::Secret;
use kube::api::{Api, Patch, PatchParams, PostParams};
use serde_json::{Value, json};
use sigil_crds::SigningKey;
use sigil_tests::cluster::{TestCluster, control_plane_bin_dir, workspace_root};
use sigil_tests::processes::{Process, free_addr};

fn chart_file(path: &str) -> PathBuf {
    workspace_root().join("charts/sigil").join(path)
}

/// The directory holding `prometheus` and `promtool`.
fn prometheus_bin_dir() -> PathBuf {
    if let Some(dir) = std::env::var_os("SIGIL_PROMETHEUS_BIN") {
        return PathBuf::from(dir);
    }
    let script = workspace_root().join("hack/install-prometheus.sh");
    let out = Command::new("bash")
        .arg(&script)
        .stderr(std::process::Stdio::inherit())
        .output()
        .expect("running hack/install-prometheus.sh");
    assert!(
        out.status.success(),
        "hack/install-prometheus.sh failed ({}): the alert tests need Prometheus",
        out.status
    );
    let stdout = String::from_utf8_lossy(&out.stdout);
    PathBuf::from(stdout.lines().last().expect("a bin directory").trim())
}

/// The chart's rules with every `for:` set to 0s. Panics unless each of
/// the 7 alerts had one, so a rule cannot silently lose its `for`.
fn rules_without_for(text: &str) -> String {
    let mut replaced = 0;
    let lines: Vec<String> = text
        .lines()
        .map(|line| {
            let trimmed = line.trim_start();
            if trimmed.starts_with("for:") {
                replaced += 1;
                format!("{}for: 0s", &line[..line.len() - trimmed.len()])
            } else {
                line.to_owned()
            }
        })
        .collect();
    let alerts = text
        .lines()
        .filter(|l| l.trim_start().starts_with("- alert:"))
        .count();
    assert_eq!((replaced, alerts), (7, 7), "every alert has a `for`");
    lines.join("\n") + "\n"
}

#[test]
fn promtool_rule_unit_tests_pass() {
    let promtool = prometheus_bin_dir().join("promtool");
    let check = Command::new(&promtool)
        .args(["check", "rules"])
        .arg(chart_file("files/alerts.yaml"))
        .output()
        .expect("running promtool");
    assert!(
        check.status.success(),
        "promtool check rules: {}{}",
        String::from_utf8_lossy(&check.stdout),
        String::from_utf8_lossy(&check.stderr)
    );
    let test = Command::new(&promtool)
        .args(["test", "rules", "alerts_test.yaml"])
        .current_dir(chart_file("tests"))
        .output()
        .expect("running promtool");
    let output = format!(
        "{}{}",
        String::from_utf8_lossy(&test.stdout),
        String::from_utf8_lossy(&test.stderr)
    );
    assert!(test.status.success(), "promtool test rules:\n{output}");
    assert!(output.contains("SUCCESS"), "{output}");
    // Each alert has a firing case in the unit tests.
    let tests = std::fs::read_to_string(chart_file("tests/alerts_test.yaml")).expect("tests");
    for alert in alert_names() {
        assert!(
            tests.contains(&format!("alertname: {alert}")),
            "{alert} has no promtool test"
        );
    }
}

fn alert_names() -> Vec<String> {
    std::fs::read_to_string(chart_file("files/alerts.yaml"))
        .expect("alerts.yaml")
        .lines()
        .filter_map(|l| l.trim_start().strip_prefix("- alert:"))
        .map(|name| name.trim().to_owned())
        .collect()
}

/// `helm template` with monitoring on renders files/alerts.yaml as the
/// PrometheusRule's spec and files/dashboard.json into a ConfigMap Grafana's
/// sidecar loads; the ServiceMonitor names the jobs the rules select.
#[test]
fn chart_ships_the_tested_rules_and_the_dashboard() {
    let helm = control_plane_bin_dir()
        .expect("control plane binaries")
        .join("helm");
    let out = Command::new(helm)
        .args(["template", "sigil", &chart_file("").display().to_string()])
        .args(["--kube-version", "1.36.0"])
        .args(["--set", "monitoring.prometheusRule.enabled=true"])
        .args(["--set", "monitoring.prometheusRule.labels.release=prom"])
        .args(["--set", "monitoring.dashboard.enabled=true"])
        .args(["--set", "serviceMonitor.enabled=true"])
        .output()
        .expect("running helm");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let docs: Vec<Value> = String::from_utf8_lossy(&out.stdout)
        .split("\n---")
        .filter_map(|doc| serde_saphyr::from_str::<Value>(doc).ok())
        .filter(|doc| doc.is_object())
        .collect();
    let find = |kind: &str| {
        docs.iter()
            .find(|d| d["kind"] == kind)
            .unwrap_or_else(|| panic!("no {kind} rendered"))
    };

    let rule = find("PrometheusRule");
    let shipped: Value = serde_saphyr::from_str(
        &std::fs::read_to_string(chart_file("files/alerts.yaml")).expect("alerts.yaml"),
    )
    .expect("alerts.yaml is YAML");
    assert_eq!(
        rule["spec"], shipped,
        "the PrometheusRule is files/alerts.yaml"
    );
    assert_eq!(rule["metadata"]["labels"]["release"], "prom");

    let dashboard = docs
        .iter()
        .find(|d| d["kind"] == "ConfigMap" && d["metadata"]["labels"]["grafana_dashboard"] == "1")
        .expect("a ConfigMap labelled grafana_dashboard: \"1\"");
    let json: Value = serde_json::from_str(
        dashboard["data"]["sigil.json"]
            .as_str()
            .expect("sigil.json"),
    )
    .expect("the dashboard is JSON");
    let titles: Vec<&str> = json["panels"]
        .as_array()
        .expect("panels")
        .iter()
        .filter_map(|p| p["title"].as_str())
        .collect();
    for title in [
        "Token requests/s by result",
        "Token latency",
        "Signing keys by state",
        "OAuthClients by Ready condition",
    ] {
        assert!(titles.contains(&title), "no panel {title:?}: {titles:?}");
    }

    // Both metrics Services carry the `health` port the ServiceMonitor
    // scrapes, and its relabeling makes the jobs sigil-issuer and
    // sigil-operator out of their component labels.
    let components: Vec<&str> = docs
        .iter()
        .filter(|d| {
            d["kind"] == "Service"
                && d["spec"]["ports"]
                    .as_array()
                    .is_some_and(|ports| ports.iter().any(|p| p["name"] == "health"))
        })
        .filter_map(|d| d["metadata"]["labels"]["app.kubernetes.io/component"].as_str())
        .collect();
    assert_eq!(components, ["issuer", "operator"]);
    // .helmignore leaves the promtool tests (charts/sigil/tests/) out of
    // the package, but not the `helm test` hook in templates/tests/.
    assert!(
        docs.iter()
            .any(|d| d["metadata"]["annotations"]["helm.sh/hook"] == "test"),
        "the helm test hook is not rendered"
    );
    let relabel = &find("ServiceMonitor")["spec"]["endpoints"][0]["relabelings"][0];
    assert_eq!(relabel["targetLabel"], "job");
    assert_eq!(relabel["replacement"], "sigil-$1");
}

/// A Prometheus on loopback with its own config, rules and storage.
struct Prometheus {
    process: Process,
    addr: SocketAddr,
    http: reqwest::Client,
}

impl Prometheus {
    async fn start(dir: &Path, rules: &str, operator: SocketAddr) -> Prometheus {
        std::fs::write(dir.join("rules.yaml"), rules).expect("rules");
        // The issuer targets come from a file, so the test can add one.
        let config = format!(
            "global:\n  scrape_interval: 1s\n  scrape_timeout: 900ms\n  evaluation_interval: 1s\n\
             rule_files: [rules.yaml]\n\
             scrape_configs:\n\
             \x20 - job_name: sigil-issuer\n\
             \x20   file_sd_configs: [{{files: [issuer-targets.json], refresh_interval: 1s}}]\n\
             \x20 - job_name: sigil-operator\n\
             \x20   static_configs: [{{targets: ['{operator}']}}]\n"
        );
        std::fs::write(dir.join("prometheus.yml"), config).expect("config");
        let addr = free_addr().expect("a port");
        let process = Process::spawn(
            "prometheus",
            &prometheus_bin_dir().join("prometheus"),
            &[
                format!("--config.file={}", dir.join("prometheus.yml").display()),
                format!("--storage.tsdb.path={}", dir.join("data").display()),
                format!("--web.listen-address={addr}"),
                "--log.level=warn".to_owned(),
            ],
            &[],
            &dir.join("prometheus.log"),
        )
        .expect("starting prometheus");
        let mut prometheus = Prometheus {
            process,
            addr,
            http: reqwest::Client::new(),
        };
        prometheus
            .process
            .wait_http_ok(addr, "/-/ready", Duration::from_secs(30))
            .await
            .expect("Prometheus ready");
        prometheus
    }

    fn set_issuer_targets(dir: &Path, targets: &[SocketAddr]) {
        let targets: Vec<String> = targets.iter().map(|t| t.to_string()).collect();
        let tmp = dir.join("issuer-targets.json.tmp");
        std::fs::write(&tmp, json!([{"targets": targets}]).to_string()).expect("targets");
        std::fs::rename(tmp, dir.join("issuer-targets.json")).expect("targets");
    }

    async fn api(&self, path: &str, form: &[(&str, &str)]) -> Value {
        let reply: Value = self
            .http
            .post(format!("http://{}{path}", self.addr))
            .form(form)
            .timeout(Duration::from_secs(5))
            .send()
            .await
            .unwrap_or_else(|e| panic!("Prometheus {path}: {e}"))
            .json()
            .await
            .unwrap_or_else(|e| panic!("Prometheus {path}: {e}"));
        assert_eq!(
            reply["status"], "success",
            "Prometheus {path} {form:?}: {reply}"
        );
        reply["data"].clone()
    }

    /// The samples of an instant query.
    async fn query(&self, query: &str) -> Vec<Value> {
        let data = self.api("/api/v1/query", &[("query", query)]).await;
        data["result"].as_array().cloned().unwrap_or_default()
    }

    /// Every alert Prometheus holds now: (name, labels, state).
    async fn alerts(&self) -> Vec<(String, BTreeMap<String, String>, String)> {
        let reply: Value = self
            .http
            .get(format!("http://{}/api/v1/alerts", self.addr))
            .timeout(Duration::from_secs(5))
            .send()
            .await
            .expect("GET /api/v1/alerts")
            .json()
            .await
            .expect("alerts JSON");
        reply["data"]["alerts"]
            .as_array()
            .cloned()
            .unwrap_or_default()
            .into_iter()
            .map(|alert| {
                let labels: BTreeMap<String, String> =
                    serde_json::from_value(alert["labels"].clone()).expect("labels");
                let name = labels.get("alertname").cloned().unwrap_or_default();
                let state = alert["state"].as_str().unwrap_or_default().to_owned();
                (name, labels, state)
            })
            .collect()
    }

    /// Waits until `alert` fires with every label of `with`; returns the
    /// labels of all its firing instances.
    async fn wait_firing(
        &mut self,
        alert: &str,
        with: &[(&str, &str)],
        timeout: Duration,
    ) -> Vec<BTreeMap<String, String>> {
        let deadline = Instant::now() + timeout;
        loop {
            self.process.check_running().expect("Prometheus running");
            let firing: Vec<BTreeMap<String, String>> = self
                .alerts()
                .await
                .into_iter()
                .filter(|(name, _, state)| name == alert && state == "firing")
                .map(|(_, labels, _)| labels)
                .collect();
            if firing.iter().any(|labels| {
                with.iter()
                    .all(|(k, v)| labels.get(*k).map(String::as_str) == Some(*v))
            }) {
                return firing;
            }
            assert!(
                Instant::now() < deadline,
                "{alert} {with:?} did not fire within {timeout:?}; alerts: {:?}",
                self.alerts().await
            );
            tokio::time::sleep(Duration::from_millis(250)).await;
        }
    }

    async fn wait_resolved(&self, alert: &str, timeout: Duration) {
        let deadline = Instant::now() + timeout;
        loop {
            let alerts = self.alerts().await;
            if !alerts.iter().any(|(name, _, _)| name == alert) {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "{alert} still active after {timeout:?}: {alerts:?}"
            );
            tokio::time::sleep(Duration::from_millis(250)).await;
        }
    }

    /// Waits until `query` returns at least one sample.
    async fn wait_for(&self, query: &str, timeout: Duration) {
        let deadline = Instant::now() + timeout;
        while self.query(query).await.is_empty() {
            assert!(
                Instant::now() < deadline,
                "no result for {query} within {timeout:?}"
            );
            tokio::time::sleep(Duration::from_millis(250)).await;
        }
    }
}

/// Metric names a `/metrics` text declares (`# TYPE` lines, which
/// prometheus-client writes even for families without samples yet), with
/// the sample names of counters and histograms.
fn declared_metrics(text: &str) -> Vec<String> {
    let mut names = Vec::new();
    for line in text.lines() {
        let Some(rest) = line.strip_prefix("# TYPE ") else {
            continue;
        };
        let mut parts = rest.split_whitespace();
        let (Some(name), Some(kind)) = (parts.next(), parts.next()) else {
            continue;
        };
        match kind {
            "counter" => names.push(format!("{name}_total")),
            "histogram" => {
                for suffix in ["_bucket", "_sum", "_count"] {
                    names.push(format!("{name}{suffix}"));
                }
            }
            _ => names.push(name.to_owned()),
        }
    }
    names
}

/// The `sigil_…` metric names `text` mentions.
fn sigil_metric_names(text: &str) -> Vec<String> {
    let mut names: Vec<String> = text
        .split(|c: char| !(c.is_ascii_alphanumeric() || c == '_'))
        .filter(|word| word.starts_with("sigil_issuer_") || word.starts_with("sigil_operator_"))
        .map(str::to_owned)
        .collect();
    names.sort();
    names.dedup();
    names
}

async fn metrics_text(addr: SocketAddr) -> String {
    reqwest::get(format!("http://{addr}/metrics"))
        .await
        .expect("GET /metrics")
        .text()
        .await
        .expect("metrics text")
}

fn signing_key(name: &str, spec: Value) -> Value {
    json!({
        "apiVersion": "sigil.dev/v1alpha1",
        "kind": "SigningKey",
        "metadata": {"name": name},
        "spec": spec,
    })
}

fn start_operator(
    kubeconfig: &Path,
    namespace: &str,
    issuer_url: &str,
    health: SocketAddr,
    extra: &[&str],
    log: &Path,
) -> Process {
    let mut args = vec![
        format!("--issuer-url={issuer_url}"),
        format!("--namespace={namespace}"),
        format!("--watch-namespaces={namespace}"),
        format!("--health-listen={health}"),
        format!("--lease-name=sigil-operator-{namespace}"),
        // The cluster-scoped MutatingWebhookConfiguration is not this
        // test's to touch; the certificates are made all the same.
        "--webhook-config=".to_owned(),
        "--tls-secret=sigil-issuer-tls".to_owned(),
        "--log-format=text".to_owned(),
    ];
    args.extend(extra.iter().map(|a| a.to_string()));
    Process::spawn(
        "operator",
        &sigil_tests::binary("operator"),
        &args,
        &[
            ("KUBECONFIG", kubeconfig.display().to_string()),
            ("RUST_LOG", "info".to_owned()),
        ],
        log,
    )
    .expect("starting the operator")
}

fn issuer_health(issuer: &IssuerProcess) -> SocketAddr {
    issuer
        .health_url
        .trim_start_matches("http://")
        .parse()
        .expect("the issuer's health address")
}

/// Waits until SigningKey `name` has an active key; returns its status.
async fn wait_active(keys: &Api<SigningKey>, name: &str) -> sigil_crds::SigningKeyStatus {
    sigil_tests::eventually(Duration::from_secs(30), "an active key", || async {
        keys.get(name)
            .await
            .ok()
            .and_then(|k| k.status)
            .filter(|s| {
                s.keys
                    .iter()
                    .any(|k| k.state == sigil_crds::KeyState::Active)
            })
    })
    .await
}

#[tokio::test]
async fn each_alert_fires_in_a_real_prometheus_when_its_condition_is_made_true() {
    let started = Instant::now();
    let cluster = TestCluster::shared().await;
    let client = cluster.client().await;
    let kubeconfig = cluster.kubeconfig();
    let ns = cluster.namespace("alerts").await;
    let scratch = Scratch::new("sigil-alerts");
    let dir = &scratch.0;
    let keys: Api<SigningKey> = Api::namespaced(client.clone(), &ns);
    let secrets: Api<Secret> = Api::namespaced(client.clone(), &ns);

    // The issuer's default ring, and `stuck`, whose key is due to be
    // replaced 60 s after it activates (the healthy baseline below must be
    // over by then): once active, its Secret is made
    // someone else's (its owner reference removed), which the operator
    // refuses to write, so the rotation cannot happen.
    apply::<SigningKey>(&client, &ns, signing_key("default", json!({}))).await;
    apply::<SigningKey>(
        &client,
        &ns,
        signing_key(
            "stuck",
            json!({"rotationInterval": "60s", "prePublish": "5s", "retireAfter": "5s"}),
        ),
    )
    .await;
    let mut issuer = IssuerProcess::start(
        &["--namespace", &ns],
        &[("KUBECONFIG", kubeconfig.to_str().expect("utf8 path"))],
        &dir.join("issuer.log"),
    );
    let operator_health = free_addr().expect("a port");
    let mut operator = start_operator(
        kubeconfig,
        &ns,
        &issuer.base_url,
        operator_health,
        &[],
        &dir.join("operator.log"),
    );
    issuer.wait_ready(Duration::from_secs(60)).await;
    let stuck = wait_active(&keys, "stuck").await;
    secrets
        .patch(
            "stuck-keys",
            &PatchParams::default(),
            &Patch::Merge(json!({"metadata": {"ownerReferences": null}})),
        )
        .await
        .expect("removing the owner reference of stuck-keys");
    let stuck_active = stuck
        .keys
        .iter()
        .find(|k| k.state == sigil_crds::KeyState::Active)
        .expect("active");
    let stuck_due = stuck_active.activates_at.0 + jiff::SignedDuration::from_secs(60);
    let stuck_active = stuck_active.kid.clone();

    let rules = rules_without_for(
        &std::fs::read_to_string(chart_file("files/alerts.yaml")).expect("alerts.yaml"),
    );
    Prometheus::set_issuer_targets(dir, &[issuer_health(&issuer)]);
    let mut prometheus = Prometheus::start(dir, &rules, operator_health).await;

    // Healthy: both scraped, the operator leads, the issuer is ready, the
    // webhook certificates are written; then no alert is active at all.
    for query in [
        r#"up{job="sigil-issuer"} == 1"#,
        r#"up{job="sigil-operator"} == 1"#,
        "sigil_issuer_ready == 1",
        "sigil_operator_leader == 1",
        r#"sigil_operator_webhook_tls_expiry_timestamp_seconds{certificate="serving"}"#,
        r#"sigil_operator_signing_key_rotation_due_timestamp_seconds{signingkey="stuck"}"#,
    ] {
        prometheus.wait_for(query, Duration::from_secs(30)).await;
    }
    tokio::time::sleep(Duration::from_secs(3)).await;
    assert_eq!(
        prometheus.alerts().await,
        vec![],
        "alerts active while everything is healthy"
    );
    assert!(
        jiff::Timestamp::now() < stuck_due,
        "the healthy check ended after stuck's rotation was due ({stuck_due}): too slow to tell"
    );

    // Every metric the rules and the dashboard name is one the binaries
    // export: in their /metrics now, or (a family with no sample yet, which
    // the exposition omits, e.g. reconcile failures) registered under that
    // name in issuer/src/metrics.rs or operator/src/metrics.rs.
    let mut declared = declared_metrics(&metrics_text(issuer_health(&issuer)).await);
    declared.extend(declared_metrics(&metrics_text(operator_health).await));
    let registered = |name: &str| {
        let (file, rest) = match name.strip_prefix("sigil_issuer_") {
            Some(rest) => ("issuer/src/metrics.rs", rest),
            None => (
                "operator/src/metrics.rs",
                name.strip_prefix("sigil_operator_").unwrap_or(name),
            ),
        };
        let stem = ["_total", "_bucket", "_sum", "_count"]
            .iter()
            .find_map(|suffix| rest.strip_suffix(suffix))
            .unwrap_or(rest);
        std::fs::read_to_string(workspace_root().join(file))
            .expect("metrics source")
            .contains(&format!("\"{stem}\","))
    };
    let dashboard =
        std::fs::read_to_string(chart_file("files/dashboard.json")).expect("dashboard.json");
    for name in sigil_metric_names(&rules)
        .into_iter()
        .chain(sigil_metric_names(&dashboard))
    {
        assert!(
            declared.contains(&name) || registered(&name),
            "{name} is used by the alerts or dashboard but not exported"
        );
    }
    let dashboard: Value = serde_json::from_str(&dashboard).expect("dashboard JSON");
    for panel in dashboard["panels"].as_array().expect("panels") {
        for target in panel["targets"].as_array().expect("targets") {
            let expr = target["expr"]
                .as_str()
                .expect("expr")
                .replace("$__rate_interval", "1m")
                .replace("$namespace", ".*");
            prometheus.query(&expr).await;
        }
    }

    // Wrong client credentials, 600 times: 401 invalid_client, then 429
    // rate_limited once the source is over its budget of 60 a minute. Over
    // the rules' 5-minute window that is 2 failures a second, and every
    // token request failed.
    let mut statuses = BTreeMap::new();
    for _ in 0..600 {
        let reply = token_basic(
            &issuer.token_url(),
            "nobody",
            "not-the-secret",
            "grant_type=client_credentials",
        )
        .await;
        *statuses.entry(reply.status).or_insert(0) += 1;
    }
    assert_eq!(
        statuses.keys().copied().collect::<Vec<_>>(),
        [401, 429],
        "{statuses:?}"
    );
    prometheus
        .wait_firing("SigilFailedClientAuthSpike", &[], Duration::from_secs(30))
        .await;
    prometheus
        .wait_firing("SigilTokenErrorRatioHigh", &[], Duration::from_secs(30))
        .await;

    // A SigningKey whose Secret name is taken by someone else's Secret: the
    // operator refuses it, so it never gets a key.
    secrets
        .create(
            &PostParams::default(),
            &serde_json::from_value(json!({
                "apiVersion": "v1",
                "kind": "Secret",
                "metadata": {"name": "orphan-keys"},
                "stringData": {"note": "not Sigil's"},
            }))
            .expect("a Secret"),
        )
        .await
        .expect("creating orphan-keys");
    apply::<SigningKey>(&client, &ns, signing_key("orphan", json!({}))).await;
    let firing = prometheus
        .wait_firing(
            "SigilNoActiveSigningKey",
            &[("signingkey", "orphan")],
            Duration::from_secs(30),
        )
        .await;
    assert_eq!(firing.len(), 1, "only orphan has no active key: {firing:?}");

    // `stuck` keeps its key past the due time.
    let firing = prometheus
        .wait_firing(
            "SigilKeyRotationOverdue",
            &[("signingkey", "stuck")],
            Duration::from_secs(90),
        )
        .await;
    assert_eq!(firing.len(), 1, "only stuck is overdue: {firing:?}");
    let still = keys
        .get("stuck")
        .await
        .expect("stuck")
        .status
        .expect("status");
    assert_eq!(
        still.active_kid.as_deref(),
        Some(stuck_active.as_str()),
        "stuck's key was rotated after all"
    );

    // The operator stops, so no replica leads.
    operator.stop().await;
    prometheus
        .wait_firing("SigilOperatorNotLeading", &[], Duration::from_secs(30))
        .await;

    // It comes back making serving certificates valid for 1 hour, and has
    // to make one: its Secret is gone. Leading again resolves the alert;
    // the 1-hour certificate fires the expiry alert (14 days).
    secrets
        .delete("sigil-issuer-tls", &Default::default())
        .await
        .expect("deleting the serving certificate's Secret");
    let mut operator = start_operator(
        kubeconfig,
        &ns,
        &issuer.base_url,
        operator_health,
        &["--tls-cert-validity=1h"],
        &dir.join("operator-2.log"),
    );
    prometheus
        .wait_firing(
            "SigilWebhookCertificateExpiring",
            &[("certificate", "serving")],
            Duration::from_secs(30),
        )
        .await;
    prometheus
        .wait_resolved("SigilOperatorNotLeading", Duration::from_secs(30))
        .await;
    operator.check_running().expect("the operator runs");

    // A second issuer whose default SigningKey is `orphan` is scraped but
    // never ready; then the first one dies.
    let mut unready = IssuerProcess::start(
        &["--namespace", &ns, "--signing-key", "orphan"],
        &[("KUBECONFIG", kubeconfig.to_str().expect("utf8 path"))],
        &dir.join("issuer-unready.log"),
    );
    let unready_health = issuer_health(&unready);
    Prometheus::set_issuer_targets(dir, &[issuer_health(&issuer), unready_health]);
    let firing = prometheus
        .wait_firing(
            "SigilIssuerNotReady",
            &[("instance", &unready_health.to_string())],
            Duration::from_secs(30),
        )
        .await;
    assert_eq!(firing.len(), 1, "only the unready issuer: {firing:?}");
    assert!(
        unready.child.try_wait().expect("wait").is_none(),
        "the unready issuer exited: {}",
        unready.log_text()
    );
    let ready_health = issuer_health(&issuer).to_string();
    issuer.child.kill().expect("killing the issuer");
    prometheus
        .wait_firing(
            "SigilIssuerNotReady",
            &[("instance", &ready_health)],
            Duration::from_secs(30),
        )
        .await;

    // Every alert of the chart fired above.
    let fired: Vec<String> = prometheus
        .alerts()
        .await
        .into_iter()
        .map(|(name, _, _)| name)
        .collect();
    for alert in alert_names() {
        assert!(
            fired.contains(&alert) || alert == "SigilOperatorNotLeading",
            "{alert} is not active: {fired:?}"
        );
    }
    eprintln!("alerts e2e took {:?}", started.elapsed());
}
