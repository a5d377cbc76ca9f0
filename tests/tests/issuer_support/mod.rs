//! Helpers of the issuer end-to-end tests: start the `issuer` binary, talk
//! HTTP/1.1 to it on loopback, and run the Go, Node and Java interop
//! verifiers (tests/interop/), which install from the Go module proxy, npm
//! and Maven Central.

#![allow(dead_code)]

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::sync::OnceCell;

pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("a free loopback port")
}

/// A scratch folder removed on drop.
pub struct Scratch(pub PathBuf);

impl Scratch {
    pub fn new(prefix: &str) -> Scratch {
        let path = std::env::temp_dir().join(format!("{prefix}-{:08x}", rand::random::<u32>()));
        std::fs::create_dir_all(&path).expect("scratch folder");
        Scratch(path)
    }
}

impl Drop for Scratch {
    fn drop(&mut self) {
        // SIGIL_KEEP_SCRATCH=1 keeps logs for a post-mortem.
        if std::env::var_os("SIGIL_KEEP_SCRATCH").is_none() {
            let _ = std::fs::remove_dir_all(&self.0);
        } else {
            eprintln!("kept {}", self.0.display());
        }
    }
}

/// A running `issuer` process, killed on drop.
pub struct IssuerProcess {
    pub child: Child,
    pub base_url: String,
    pub health_url: String,
    pub log: PathBuf,
}

impl Drop for IssuerProcess {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl IssuerProcess {
    /// Starts `issuer` with `args` plus --listen/--health-listen/--issuer-url
    /// on free loopback ports; stdout+stderr go to `log`.
    pub fn start(args: &[&str], env: &[(&str, &str)], log: &Path) -> IssuerProcess {
        Self::start_with_scheme("http", args, env, log)
    }

    /// Like [`IssuerProcess::start`], with `https` when `args` carry
    /// `--tls-cert`/`--tls-key`.
    pub fn start_with_scheme(
        scheme: &str,
        args: &[&str],
        env: &[(&str, &str)],
        log: &Path,
    ) -> IssuerProcess {
        let port = free_port();
        let health_port = free_port();
        let base_url = format!("{scheme}://127.0.0.1:{port}");
        let log_file = std::fs::File::create(log).expect("log file");
        // SIGIL_ISSUER_BIN picks another build (e.g. target/release/issuer
        // for the operator benchmark), as SIGIL_OPERATOR_BIN does there.
        let binary = std::env::var_os("SIGIL_ISSUER_BIN")
            .map(PathBuf::from)
            .unwrap_or_else(|| sigil_tests::binary("issuer"));
        let mut command = Command::new(binary);
        command
            .args(args)
            .args(["--listen", &format!("127.0.0.1:{port}")])
            .args(["--health-listen", &format!("127.0.0.1:{health_port}")])
            .args(["--issuer-url", &base_url])
            .env("RUST_LOG", "info")
            .stdin(Stdio::null())
            .stdout(log_file.try_clone().expect("log file"))
            .stderr(log_file);
        for (key, value) in env {
            command.env(key, value);
        }
        IssuerProcess {
            child: command.spawn().expect("starting the issuer"),
            base_url,
            health_url: format!("http://127.0.0.1:{health_port}"),
            log: log.to_owned(),
        }
    }

    pub fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// Waits until /readyz answers 200.
    pub async fn wait_ready(&mut self, timeout: Duration) {
        let deadline = Instant::now() + timeout;
        loop {
            if let Ok(Some(status)) = self.child.try_wait() {
                panic!("the issuer exited with {status}:\n{}", self.log_text());
            }
            if let Ok(reply) = get(&format!("{}/readyz", self.health_url)).await
                && reply.status == 200
            {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "the issuer was not ready within {timeout:?}:\n{}",
                self.log_text()
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    pub fn token_url(&self) -> String {
        format!("{}/oauth2/token", self.base_url)
    }

    pub fn jwks_url(&self) -> String {
        format!("{}/.well-known/jwks.json", self.base_url)
    }
}

#[derive(Debug)]
pub struct Reply {
    pub status: u16,
    pub headers: Vec<(String, String)>,
    pub body: String,
}

impl Reply {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }

    pub fn json(&self) -> serde_json::Value {
        serde_json::from_str(&self.body).unwrap_or(serde_json::Value::Null)
    }
}

/// One HTTP/1.1 request over a fresh loopback connection.
pub async fn request(
    method: &str,
    url: &str,
    headers: &[(&str, &str)],
    body: &str,
) -> std::io::Result<Reply> {
    let rest = url.strip_prefix("http://").expect("an http:// URL");
    let (authority, path) = rest.split_at(rest.find('/').unwrap_or(rest.len()));
    let path = if path.is_empty() { "/" } else { path };
    let mut stream = tokio::net::TcpStream::connect(authority).await?;
    let mut text = format!(
        "{method} {path} HTTP/1.1\r\nhost: {authority}\r\nconnection: close\r\ncontent-length: {}\r\n",
        body.len()
    );
    for (name, value) in headers {
        text.push_str(&format!("{name}: {value}\r\n"));
    }
    text.push_str("\r\n");
    text.push_str(body);
    stream.write_all(text.as_bytes()).await?;
    let mut raw = Vec::new();
    tokio::time::timeout(Duration::from_secs(10), stream.read_to_end(&mut raw))
        .await
        .map_err(|_| std::io::Error::other("timed out"))??;
    let raw = String::from_utf8_lossy(&raw).into_owned();
    let (head, body) = raw.split_once("\r\n\r\n").unwrap_or((&raw, ""));
    let mut lines = head.lines();
    let status = lines
        .next()
        .and_then(|l| l.split(' ').nth(1))
        .and_then(|s| s.parse().ok())
        .unwrap_or(0);
    let headers = lines
        .filter_map(|l| l.split_once(':'))
        .map(|(k, v)| (k.trim().to_owned(), v.trim().to_owned()))
        .collect();
    Ok(Reply {
        status,
        headers,
        body: body.to_owned(),
    })
}

pub async fn get(url: &str) -> std::io::Result<Reply> {
    request("GET", url, &[], "").await
}

pub fn basic(id: &str, secret: &str) -> String {
    use base64::Engine;
    format!(
        "Basic {}",
        base64::engine::general_purpose::STANDARD.encode(format!("{id}:{secret}"))
    )
}

/// POSTs a token request with Basic credentials.
pub async fn token_basic(token_url: &str, id: &str, secret: &str, form: &str) -> Reply {
    request(
        "POST",
        token_url,
        &[
            ("content-type", "application/x-www-form-urlencoded"),
            ("authorization", &basic(id, secret)),
        ],
        form,
    )
    .await
    .expect("token request")
}

/// The access token of a client_secret_basic request that must succeed
/// (`what` names the request in the failure message).
pub async fn access_token_basic(
    token_url: &str,
    id: &str,
    secret: &str,
    form: &str,
    what: &str,
) -> String {
    let reply = token_basic(token_url, id, secret, form).await;
    assert_eq!(reply.status, 200, "{what}: {}", reply.body);
    reply.json()["access_token"]
        .as_str()
        .expect("an access token")
        .to_owned()
}

/// POSTs a token request with the credentials in the body.
pub async fn token_post(token_url: &str, id: &str, secret: &str, form: &str) -> Reply {
    request(
        "POST",
        token_url,
        &[("content-type", "application/x-www-form-urlencoded")],
        &format!("{form}&client_id={id}&client_secret={secret}"),
    )
    .await
    .expect("token request")
}

pub fn decode_jwt_claims(token: &str) -> serde_json::Value {
    use base64::Engine;
    let part = token.split('.').nth(1).expect("a JWT");
    let bytes = base64::engine::general_purpose::URL_SAFE_NO_PAD
        .decode(part)
        .expect("base64url claims");
    serde_json::from_slice(&bytes).expect("JSON claims")
}

fn interop_dir(language: &str) -> PathBuf {
    sigil_tests::cluster::workspace_root()
        .join("tests/interop")
        .join(language)
}

static GO_BINARY: OnceCell<PathBuf> = OnceCell::const_new();
static NODE_READY: OnceCell<()> = OnceCell::const_new();
static JAVA_CLASSPATH: OnceCell<String> = OnceCell::const_new();

/// Builds the Go verifier once (modules from the Go proxy).
pub async fn go_verifier() -> PathBuf {
    GO_BINARY
        .get_or_init(|| async {
            let out =
                sigil_tests::cluster::workspace_root().join("target/interop/sigil-interop-go");
            let status = tokio::process::Command::new("go")
                // -mod=readonly: go.mod and go.sum pin every module; never resolve.
                .args(["build", "-mod=readonly", "-o"])
                .arg(&out)
                .arg(".")
                .current_dir(interop_dir("go"))
                .status()
                .await
                .expect("running `go build` (is Go installed?)");
            assert!(status.success(), "building tests/interop/go failed");
            out
        })
        .await
        .clone()
}

/// Installs the Node verifier's dependencies once (`npm ci`, from npm).
pub async fn node_ready() {
    NODE_READY
        .get_or_init(|| async {
            let status = tokio::process::Command::new("npm")
                .args(["ci", "--no-audit", "--no-fund"])
                .current_dir(interop_dir("node"))
                .status()
                .await
                .expect("running `npm ci` (is Node installed?)");
            assert!(status.success(), "npm ci in tests/interop/node failed");
        })
        .await;
}

/// Builds the Java verifier once (tests/interop/java, a Maven project whose
/// pom pins every version) and returns the classpath that runs it: its jar
/// and its dependencies' jars. Maven's local repository is
/// `${SIGIL_CACHE:-~/.cache/sigil}/m2`, outside the repo: offline when that
/// already holds everything, else from Maven Central (the first time). The
/// jar goes under the Cargo target directory, as the Go verifier does.
pub async fn java_verifier() -> String {
    JAVA_CLASSPATH
        .get_or_init(|| async {
            let cache = std::env::var_os("SIGIL_CACHE")
                .map(PathBuf::from)
                .unwrap_or_else(|| {
                    PathBuf::from(std::env::var_os("HOME").expect("HOME")).join(".cache/sigil")
                });
            let out = std::env::var_os("CARGO_TARGET_DIR")
                .map(PathBuf::from)
                .unwrap_or_else(|| sigil_tests::cluster::workspace_root().join("target"))
                .join("interop/java");
            let maven = |offline: bool| {
                let mut command = tokio::process::Command::new("mvn");
                command
                    .args(["-B", "-q", "-Dstyle.color=never"])
                    .args(offline.then_some("-o"))
                    .arg(format!("-Dmaven.repo.local={}", cache.join("m2").display()))
                    .arg(format!("-Dsigil.build.dir={}", out.display()))
                    .arg("package")
                    .current_dir(interop_dir("java"))
                    .stdin(Stdio::null());
                command
            };
            // Offline first: quiet and fast when the cache is warm; its
            // complaints about missing artifacts are only a cold cache.
            let offline = maven(true)
                .output()
                .await
                .expect("running `mvn` (is Maven installed?)");
            if !offline.status.success() {
                let status = maven(false).status().await.expect("running `mvn`");
                assert!(status.success(), "building tests/interop/java failed");
            }
            let dependencies = std::fs::read_to_string(out.join("classpath.txt"))
                .expect("the Java verifier's classpath.txt");
            format!(
                "{}:{}",
                out.join("sigil-interop-java.jar").display(),
                dependencies.trim()
            )
        })
        .await
        .clone()
}

/// Runs a verifier command; returns its JSON report (and panics with its
/// output if it printed none).
pub async fn run_json(mut command: tokio::process::Command, what: &str) -> serde_json::Value {
    let output = command
        .stdin(Stdio::null())
        .output()
        .await
        .unwrap_or_else(|e| panic!("running the {what} verifier: {e}"));
    let stdout = String::from_utf8_lossy(&output.stdout);
    let line = stdout.lines().last().unwrap_or_default();
    serde_json::from_str(line).unwrap_or_else(|_| {
        panic!(
            "the {what} verifier printed no report (exit {}):\nstdout: {stdout}\nstderr: {}",
            output.status,
            String::from_utf8_lossy(&output.stderr)
        )
    })
}

/// `${SIGIL_CACHE:-~/.cache/sigil}`: tools installed for the tests.
pub fn cache_dir() -> PathBuf {
    std::env::var_os("SIGIL_CACHE")
        .map(PathBuf::from)
        .unwrap_or_else(|| {
            PathBuf::from(std::env::var_os("HOME").expect("HOME")).join(".cache/sigil")
        })
}

/// A virtualenv under the cache with `requirements` installed by hash
/// (`--require-hashes --only-binary=:all:`: nothing is resolved or built);
/// keyed by the file's content, so a changed pin gets a fresh one. Returns
/// its `bin` folder.
pub async fn python_venv(requirements: &Path) -> PathBuf {
    let pins = std::fs::read(requirements).expect("requirements file");
    // Any stable digest will do for a cache key.
    let key = {
        use std::hash::{Hash, Hasher};
        let mut hasher = std::hash::DefaultHasher::new();
        pins.hash(&mut hasher);
        hasher.finish()
    };
    let venv = cache_dir().join(format!("venv-{key:016x}"));
    let bin = venv.join("bin");
    if venv.join(".complete").exists() {
        return bin;
    }
    let _ = std::fs::remove_dir_all(&venv);
    let run = |command: &mut tokio::process::Command| {
        let shown = format!("{command:?}");
        let status = command.stdin(Stdio::null()).status();
        async move {
            let status = status
                .await
                .unwrap_or_else(|e| panic!("running {shown}: {e}"));
            assert!(status.success(), "{shown} failed");
        }
    };
    run(tokio::process::Command::new("python3")
        .args(["-m", "venv"])
        .arg(&venv))
    .await;
    run(tokio::process::Command::new(bin.join("python"))
        .args([
            "-m",
            "pip",
            "install",
            "--quiet",
            "--disable-pip-version-check",
        ])
        .args(["--require-hashes", "--only-binary=:all:", "-r"])
        .arg(requirements))
    .await;
    std::fs::write(venv.join(".complete"), b"").expect("venv marker");
    bin
}

/// What the interop verifiers are asked to do.
pub struct VerifyRun<'a> {
    pub token_url: &'a str,
    pub jwks_url: &'a str,
    pub issuer: &'a str,
    pub client_id: &'a str,
    pub secret_file: &'a Path,
    pub audience: &'a str,
    pub scope: &'a str,
    /// Go: header, params or auto; Node: basic or post.
    pub auth: &'a str,
    pub duration: Duration,
    pub interval: Duration,
    pub jwks_refresh: Duration,
}

pub async fn run_go(run: &VerifyRun<'_>) -> serde_json::Value {
    let mut command = tokio::process::Command::new(go_verifier().await);
    command
        .args(["-token-url", run.token_url, "-jwks-url", run.jwks_url])
        .args(["-issuer", run.issuer, "-client-id", run.client_id])
        .arg("-client-secret-file")
        .arg(run.secret_file)
        .args([
            "-audience",
            run.audience,
            "-scopes",
            run.scope,
            "-auth-style",
            run.auth,
        ])
        .arg(format!("-duration={}ms", run.duration.as_millis()))
        .arg(format!("-interval={}ms", run.interval.as_millis()))
        .arg(format!("-jwks-refresh={}ms", run.jwks_refresh.as_millis()));
    run_json(command, "Go").await
}

pub async fn run_node(run: &VerifyRun<'_>) -> serde_json::Value {
    node_ready().await;
    let mut command = tokio::process::Command::new("node");
    command
        .current_dir(interop_dir("node"))
        .arg("verify.mjs")
        .args(["--token-url", run.token_url, "--jwks-url", run.jwks_url])
        .args(["--issuer", run.issuer, "--client-id", run.client_id])
        .arg("--client-secret-file")
        .arg(run.secret_file)
        .args(["--audience", run.audience, "--auth", run.auth])
        .args(["--duration-ms", &run.duration.as_millis().to_string()])
        .args(["--interval-ms", &run.interval.as_millis().to_string()])
        .args(["--jwks-cache-ms", &run.jwks_refresh.as_millis().to_string()]);
    if !run.scope.is_empty() {
        command.args(["--scope", run.scope]);
    }
    run_json(command, "Node").await
}

/// What the Spring verifier is asked to check.
pub struct SpringRun<'a> {
    pub jwks_url: &'a str,
    pub issuer: &'a str,
    pub audience: &'a str,
    /// The issuer's signing algorithm: the builder expects RS256 unless told.
    pub jws_algorithm: &'a str,
    pub token: &'a str,
}

/// Decodes a token with Spring Security's `NimbusJwtDecoder` (JWKS URL and
/// algorithm, default validators for the issuer, plus an audience check);
/// returns `{ok, header, claims}` or `{ok: false, exception, error}`.
pub async fn run_spring(run: &SpringRun<'_>) -> serde_json::Value {
    let mut command = tokio::process::Command::new("java");
    command
        .arg("-cp")
        .arg(java_verifier().await)
        .arg("dev.sigil.interop.Verify")
        .args(["--jwks-url", run.jwks_url, "--issuer", run.issuer])
        .args(["--audience", run.audience, "--token", run.token])
        .args(["--jws-algorithm", run.jws_algorithm]);
    run_json(command, "Java").await
}

/// Validates `token` with oauth4webapi's `validateJwtAccessToken` against
/// `issuer`'s discovery document; returns `{ok, header, claims}` or
/// `{ok: false, code, error}`.
pub async fn run_oauth4webapi(issuer: &str, audience: &str, token: &str) -> serde_json::Value {
    node_ready().await;
    let mut command = tokio::process::Command::new("node");
    command
        .current_dir(interop_dir("node"))
        .arg("validate-at.mjs")
        .args(["--issuer", issuer, "--audience", audience, "--token", token]);
    run_json(command, "oauth4webapi").await
}

/// A standalone issuer over a manifests folder holding `manifests`, ready.
pub struct Standalone {
    pub issuer: IssuerProcess,
    pub scratch: Scratch,
    /// The secrets file the issuer wrote: client id → generated secret.
    pub secrets: serde_json::Value,
}

impl Standalone {
    pub async fn start(prefix: &str, manifests: &str) -> Standalone {
        let scratch = Scratch::new(prefix);
        let dir = scratch.0.join("manifests");
        std::fs::create_dir_all(&dir).expect("manifests dir");
        std::fs::write(dir.join("manifests.yaml"), manifests).expect("manifest");
        let secrets_file = scratch.0.join("secrets.json");
        let mut issuer = IssuerProcess::start(
            &[
                "--manifests",
                dir.to_str().expect("utf8 path"),
                "--secrets",
                secrets_file.to_str().expect("utf8 path"),
            ],
            &[],
            &scratch.0.join("issuer.log"),
        );
        issuer.wait_ready(Duration::from_secs(20)).await;
        let secrets =
            serde_json::from_str(&std::fs::read_to_string(&secrets_file).expect("secrets file"))
                .expect("secrets JSON");
        Standalone {
            issuer,
            scratch,
            secrets,
        }
    }

    /// The generated secret of `client_id`.
    pub fn secret(&self, client_id: &str) -> String {
        self.secrets[client_id]
            .as_str()
            .expect("a generated secret")
            .to_owned()
    }
}

/// An operator process against the test control plane, killed on drop.
pub struct OperatorProcess(std::process::Child);

impl Drop for OperatorProcess {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

impl OperatorProcess {
    /// `--namespace namespace` (its SigningKeys and Lease), reconciling the
    /// OAuthClients of `watch`, with `extra` flags; logs to `log`.
    pub fn start(
        kubeconfig: &Path,
        namespace: &str,
        watch: &[&str],
        issuer_url: &str,
        extra: &[&str],
        log: &Path,
    ) -> OperatorProcess {
        let log_file = std::fs::File::create(log).expect("operator log");
        let child = std::process::Command::new(sigil_tests::binary("operator"))
            .args(["--issuer-url", issuer_url, "--namespace", namespace])
            .args(["--watch-namespaces", &watch.join(",")])
            .args(["--health-listen", &format!("127.0.0.1:{}", free_port())])
            .args(["--lease-name", &format!("sigil-operator-{namespace}")])
            .args(extra)
            .env("KUBECONFIG", kubeconfig)
            .env("RUST_LOG", "info")
            .stdin(std::process::Stdio::null())
            .stdout(log_file.try_clone().expect("log"))
            .stderr(log_file)
            .spawn()
            .expect("starting the operator");
        OperatorProcess(child)
    }
}

/// Server-side applies a namespaced manifest (field manager `sigil-e2e`).
pub async fn apply<K>(client: &kube::Client, namespace: &str, manifest: serde_json::Value)
where
    K: kube::Resource<DynamicType = (), Scope = kube::core::NamespaceResourceScope>
        + Clone
        + serde::de::DeserializeOwned
        + std::fmt::Debug,
{
    let name = manifest["metadata"]["name"]
        .as_str()
        .expect("name")
        .to_owned();
    kube::Api::<K>::namespaced(client.clone(), namespace)
        .patch(
            &name,
            &kube::api::PatchParams::apply("sigil-e2e").force(),
            &kube::api::Patch::Apply(&manifest),
        )
        .await
        .unwrap_or_else(|e| panic!("applying {namespace}/{name}: {e}"));
}
