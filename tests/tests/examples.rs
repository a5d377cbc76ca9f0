//! The example resource servers against a real (standalone) issuer: 401
//! without a valid token, 403 with a valid token that lacks the route's
//! scope, 200 with the right one.

use std::time::Duration;

use sigil_tests::processes::{Process, free_addr};

const CLIENTS: &str = "apiVersion: sigil.dev/v1alpha1
kind: OAuthClient
metadata: {name: task-service, namespace: tasks}
spec:
  displayName: Task Service
  scopes: [event.view, event.create, file.view]
  audiences: [event, file]
";
const CLIENT_ID: &str = "task-service.tasks";
const CLIENT_SECRET: &str = "s3cr3t-for-the-examples-test-0123456789abcd";

struct Services {
    _issuer: Process,
    _calendar: Process,
    _file: Process,
    issuer_url: String,
    calendar_url: String,
    file_url: String,
    _dir: TempDir,
}

struct TempDir(std::path::PathBuf);

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

async fn start() -> Services {
    let dir = std::env::temp_dir().join(format!(
        "sigil-examples-{}-{:x}",
        std::process::id(),
        rand::random::<u32>()
    ));
    let manifests = dir.join("manifests");
    std::fs::create_dir_all(&manifests).expect("temp dir");
    std::fs::write(manifests.join("clients.yaml"), CLIENTS).expect("manifest");
    let secrets = dir.join("secrets.json");
    std::fs::write(
        &secrets,
        format!("{{\"{CLIENT_ID}\": \"{CLIENT_SECRET}\"}}"),
    )
    .expect("secrets");

    let issuer_addr = free_addr().expect("port");
    let issuer_health = free_addr().expect("port");
    let issuer_url = format!("http://{issuer_addr}");
    let mut issuer = Process::spawn(
        "issuer",
        &sigil_tests::binary("issuer"),
        &[
            format!("--manifests={}", manifests.display()),
            format!("--secrets={}", secrets.display()),
            format!("--listen={issuer_addr}"),
            format!("--health-listen={issuer_health}"),
            format!("--issuer-url={issuer_url}"),
        ],
        &[],
        &dir.join("issuer.log"),
    )
    .expect("starting the standalone issuer");
    issuer
        .wait_http_ok(issuer_health, "/readyz", Duration::from_secs(30))
        .await
        .expect("issuer ready");

    let service = |name: &str, audience: &str| {
        let addr = free_addr().expect("port");
        let process = Process::spawn(
            name,
            &sigil_tests::binary(name),
            &[
                format!("--listen={addr}"),
                format!("--issuer-url={issuer_url}"),
                format!("--audience={audience}"),
            ],
            &[],
            &dir.join(format!("{name}.log")),
        )
        .expect("starting an example service");
        (process, format!("http://{addr}"))
    };
    let (mut calendar, calendar_url) = service("calendar-service", "event");
    let (mut file, file_url) = service("file-service", "file");
    calendar
        .wait_http_status(&format!("{calendar_url}/events"), Duration::from_secs(20))
        .await
        .expect("calendar-service up");
    file.wait_http_status(&format!("{file_url}/files"), Duration::from_secs(20))
        .await
        .expect("file-service up");
    Services {
        _issuer: issuer,
        _calendar: calendar,
        _file: file,
        issuer_url,
        calendar_url,
        file_url,
        _dir: TempDir(dir),
    }
}

async fn token(services: &Services, scope: &str, audience: &str) -> String {
    let response = reqwest::Client::new()
        .post(format!("{}/oauth2/token", services.issuer_url))
        .basic_auth(CLIENT_ID, Some(CLIENT_SECRET))
        .form(&[
            ("grant_type", "client_credentials"),
            ("scope", scope),
            ("audience", audience),
        ])
        .send()
        .await
        .expect("token request");
    assert_eq!(response.status(), 200);
    let body: serde_json::Value = response.json().await.expect("JSON");
    body["access_token"]
        .as_str()
        .expect("access_token")
        .to_owned()
}

async fn call(method: reqwest::Method, url: &str, token: Option<&str>) -> (u16, String, String) {
    let mut request = reqwest::Client::new().request(method, url);
    if let Some(token) = token {
        request = request.bearer_auth(token);
    }
    let response = request.send().await.expect("request");
    let status = response.status().as_u16();
    let challenge = response
        .headers()
        .get("www-authenticate")
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default()
        .to_owned();
    (status, challenge, response.text().await.unwrap_or_default())
}

#[tokio::test]
async fn resource_servers_answer_401_403_and_200_by_token_and_scope() {
    let s = start().await;
    let events = format!("{}/events", s.calendar_url);
    let files = format!("{}/files", s.file_url);

    let (status, challenge, _) = call(reqwest::Method::GET, &events, None).await;
    assert_eq!(status, 401, "no token");
    assert!(challenge.starts_with("Bearer"), "{challenge}");

    let view = token(&s, "event.view", "event").await;
    let (status, _, body) = call(reqwest::Method::GET, &events, Some(&view)).await;
    assert_eq!(status, 200, "{body}");
    assert!(body.contains(CLIENT_ID), "{body}");

    let (status, challenge, _) = call(reqwest::Method::POST, &events, Some(&view)).await;
    assert_eq!(status, 403, "event.view token creating an event");
    assert!(
        challenge.contains("insufficient_scope") && challenge.contains("event.create"),
        "{challenge}"
    );

    let create = token(&s, "event.create", "event").await;
    let (status, _, body) = call(reqwest::Method::POST, &events, Some(&create)).await;
    assert_eq!(status, 200, "{body}");

    // A token for the File Service is no good at the Calendar Service.
    let file_token = token(&s, "file.view", "file").await;
    let (status, _, _) = call(reqwest::Method::GET, &events, Some(&file_token)).await;
    assert_eq!(status, 401, "wrong audience");
    let (status, _, body) = call(reqwest::Method::GET, &files, Some(&file_token)).await;
    assert_eq!(status, 200, "{body}");

    // A token whose signature does not match is refused.
    // (Flip a character well inside the signature: the last one of a
    // base64url string may only carry padding bits.)
    let signature_at = view.rfind('.').expect("JWS") + 10;
    let mut forged = view.clone();
    let flipped = if &view[signature_at..=signature_at] == "A" {
        "B"
    } else {
        "A"
    };
    forged.replace_range(signature_at..=signature_at, flipped);
    let (status, _, _) = call(reqwest::Method::GET, &events, Some(&forged)).await;
    assert_eq!(status, 401, "forged signature");
}
