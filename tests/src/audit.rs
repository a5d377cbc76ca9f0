//! The API server's audit log, as far as Secrets go: which ServiceAccount
//! asked for which Secrets, and whether the answer carried their data or
//! their metadata only. The control plane logs Secret requests of
//! ServiceAccounts at level `RequestResponse` (`cluster::AUDIT_POLICY`), so
//! the response is in the log: a read through `Api::get_metadata` (or a
//! `PartialObjectMeta` list) is answered with a `PartialObjectMetadata`
//! (`...List`), a read of the data with a `Secret` (`SecretList`). A watch
//! records no response; its selectors say what it could return.

use std::collections::HashSet;

use serde_json::Value;

/// One Secret request from the audit log.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SecretRequest {
    /// `system:serviceaccount:<namespace>:<name>`, or another user name.
    pub user: String,
    /// `get`, `list`, `watch`, `create`, `patch`, `update`, `delete`, ….
    pub verb: String,
    pub namespace: Option<String>,
    /// The Secret the request names; none for a list or a watch.
    pub name: Option<String>,
    /// `labelSelector` of the request, decoded.
    pub label_selector: Option<String>,
    /// `fieldSelector` of the request, decoded.
    pub field_selector: Option<String>,
    /// The HTTP status, when the request completed.
    pub code: Option<u16>,
    pub returned: Returned,
}

/// What a response carried.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Returned {
    /// Secret data: a `Secret` or a `SecretList`; the Secrets' names.
    Data(Vec<String>),
    /// Metadata only: `PartialObjectMetadata` or `...List`; the names.
    Metadata(Vec<String>),
    /// No object: a `Status` (404, 403, …), a watch, a delete.
    Nothing,
}

impl SecretRequest {
    /// The names of the Secrets whose data this request returned.
    pub fn data_of(&self) -> &[String] {
        match &self.returned {
            Returned::Data(names) => names,
            _ => &[],
        }
    }
}

/// Parses an audit log (JSON lines) into its Secret requests, one per
/// request: the `ResponseComplete` event, or for a watch still open the
/// `ResponseStarted` one. A last line cut short (being written) is skipped;
/// any other line that is not an audit event is an error.
pub fn secret_requests(log: &str) -> anyhow::Result<Vec<SecretRequest>> {
    let lines: Vec<&str> = log.lines().collect();
    let mut events = Vec::new();
    for (i, line) in lines.iter().enumerate() {
        if line.trim().is_empty() {
            continue;
        }
        match serde_json::from_str::<Value>(line) {
            Ok(event) => events.push(event),
            Err(_) if i + 1 == lines.len() && !log.ends_with('\n') => {}
            Err(e) => anyhow::bail!("audit log line {}: {e}: {line}", i + 1),
        }
    }
    // Completed requests first, so a watch's ResponseStarted only counts
    // when it never completed.
    let completed: HashSet<&str> = events
        .iter()
        .filter(|e| e["stage"] == "ResponseComplete")
        .filter_map(|e| e["auditID"].as_str())
        .collect();
    let mut out = Vec::new();
    for event in &events {
        let object = &event["objectRef"];
        if object["resource"] != "secrets" || !object["apiGroup"].as_str().unwrap_or("").is_empty()
        {
            continue;
        }
        let id = event["auditID"].as_str().unwrap_or_default();
        let take = match event["stage"].as_str() {
            Some("ResponseComplete") | Some("Panic") => true,
            Some("ResponseStarted") => !completed.contains(id),
            _ => false,
        };
        if !take {
            continue;
        }
        let text = |v: &Value| v.as_str().map(str::to_owned);
        let uri = event["requestURI"].as_str().unwrap_or_default();
        out.push(SecretRequest {
            user: text(&event["user"]["username"]).unwrap_or_default(),
            verb: text(&event["verb"]).unwrap_or_default(),
            namespace: text(&object["namespace"]),
            name: text(&object["name"]),
            label_selector: query_param(uri, "labelSelector"),
            field_selector: query_param(uri, "fieldSelector"),
            code: event["responseStatus"]["code"]
                .as_u64()
                .and_then(|c| u16::try_from(c).ok()),
            returned: returned(&event["responseObject"]),
        });
    }
    Ok(out)
}

fn returned(object: &Value) -> Returned {
    let name = |o: &Value| {
        o["metadata"]["name"]
            .as_str()
            .unwrap_or_default()
            .to_owned()
    };
    let names = || -> Vec<String> {
        object["items"]
            .as_array()
            .map(|items| items.iter().map(name).collect())
            .unwrap_or_default()
    };
    match object["kind"].as_str() {
        Some("Secret") => Returned::Data(vec![name(object)]),
        Some("SecretList") => Returned::Data(names()),
        Some("PartialObjectMetadata") => Returned::Metadata(vec![name(object)]),
        Some("PartialObjectMetadataList") => Returned::Metadata(names()),
        // A Table (kubectl get) has rows of data too: count it as data.
        Some("Table") => Returned::Data(
            object["rows"]
                .as_array()
                .map(|rows| rows.iter().map(|r| name(&r["object"])).collect())
                .unwrap_or_default(),
        ),
        _ => Returned::Nothing,
    }
}

/// The decoded value of `key` in the URI's query.
fn query_param(uri: &str, key: &str) -> Option<String> {
    let query = uri.split_once('?')?.1;
    query.split('&').find_map(|pair| {
        let (k, v) = pair.split_once('=')?;
        (k == key).then(|| percent_decode(v))
    })
}

fn percent_decode(s: &str) -> String {
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        match bytes[i] {
            b'%' if i + 2 < bytes.len() => {
                let hex = std::str::from_utf8(&bytes[i + 1..i + 3]).ok();
                match hex.and_then(|h| u8::from_str_radix(h, 16).ok()) {
                    Some(b) => {
                        out.push(b);
                        i += 3;
                        continue;
                    }
                    None => out.push(b'%'),
                }
            }
            b'+' => out.push(b' '),
            b => out.push(b),
        }
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

#[cfg(test)]
mod tests {
    use super::*;

    const OPERATOR: &str = "system:serviceaccount:sigil:sigil-operator";

    fn line(
        stage: &str,
        id: &str,
        verb: &str,
        uri: &str,
        name: Option<&str>,
        response: Value,
    ) -> String {
        let mut object = serde_json::json!({
            "resource": "secrets", "namespace": "app", "apiVersion": "v1",
        });
        if let Some(name) = name {
            object["name"] = name.into();
        }
        serde_json::json!({
            "kind": "Event", "apiVersion": "audit.k8s.io/v1", "level": "RequestResponse",
            "auditID": id, "stage": stage, "requestURI": uri, "verb": verb,
            "user": { "username": OPERATOR },
            "objectRef": object,
            "responseStatus": { "code": 200 },
            "responseObject": response,
        })
        .to_string()
    }

    #[test]
    fn tells_metadata_reads_from_data_reads() {
        let meta = serde_json::json!({
            "kind": "PartialObjectMetadata", "apiVersion": "meta.k8s.io/v1",
            "metadata": { "name": "taken" },
        });
        let full = serde_json::json!({
            "kind": "Secret", "apiVersion": "v1",
            "metadata": { "name": "orders-oauth" }, "data": { "client_secret": "eA==" },
        });
        let meta_list = serde_json::json!({
            "kind": "PartialObjectMetadataList", "apiVersion": "meta.k8s.io/v1",
            "items": [{ "metadata": { "name": "orders-oauth" } }, { "metadata": { "name": "taken" } }],
        });
        let not_found = serde_json::json!({ "kind": "Status", "code": 404 });
        let configmap = line(
            "ResponseComplete",
            "0",
            "get",
            "/api/v1/namespaces/app/configmaps/x",
            Some("x"),
            full.clone(),
        )
        .replace("\"secrets\"", "\"configmaps\"");
        let log = [
            line("ResponseComplete", "1", "get", "/api/v1/namespaces/app/secrets/taken", Some("taken"), meta),
            line("ResponseComplete", "2", "get", "/api/v1/namespaces/app/secrets/orders-oauth", Some("orders-oauth"), full),
            line(
                "ResponseComplete",
                "3",
                "list",
                "/api/v1/namespaces/app/secrets?labelSelector=app.kubernetes.io%2Fmanaged-by%3Dsigil&limit=500",
                None,
                meta_list,
            ),
            // A watch that ended: one request, not two.
            line("ResponseStarted", "4", "watch", "/api/v1/namespaces/app/secrets?fieldSelector=metadata.name%3Dtls&watch=true", None, Value::Null),
            line("ResponseComplete", "4", "watch", "/api/v1/namespaces/app/secrets?fieldSelector=metadata.name%3Dtls&watch=true", None, Value::Null),
            // A watch still open.
            line("ResponseStarted", "5", "watch", "/api/v1/namespaces/app/secrets?labelSelector=sigil.dev%2Fsigning-key&watch=true", None, Value::Null),
            line("ResponseComplete", "6", "get", "/api/v1/namespaces/app/secrets/gone", Some("gone"), not_found),
            configmap,
        ]
        .join("\n")
            + "\n{\"kind\":\"Event\",\"stage\":\"Resp"; // being written
        let requests = secret_requests(&log).expect("parses");
        assert_eq!(requests.len(), 6, "{requests:#?}");
        assert_eq!(
            requests[0].returned,
            Returned::Metadata(vec!["taken".into()])
        );
        assert_eq!(requests[0].name.as_deref(), Some("taken"));
        assert!(requests[0].data_of().is_empty());
        assert_eq!(requests[1].data_of(), ["orders-oauth".to_owned()]);
        assert_eq!(requests[2].verb, "list");
        assert_eq!(
            requests[2].label_selector.as_deref(),
            Some("app.kubernetes.io/managed-by=sigil")
        );
        assert_eq!(
            requests[2].returned,
            Returned::Metadata(vec!["orders-oauth".into(), "taken".into()])
        );
        assert_eq!(requests[3].verb, "watch");
        assert_eq!(
            requests[3].field_selector.as_deref(),
            Some("metadata.name=tls")
        );
        assert_eq!(
            requests[4].label_selector.as_deref(),
            Some("sigil.dev/signing-key")
        );
        assert_eq!(requests[4].returned, Returned::Nothing);
        assert_eq!(
            requests[5].returned,
            Returned::Nothing,
            "a 404 carries no Secret"
        );
        assert!(requests.iter().all(|r| r.user == OPERATOR));

        // A broken line elsewhere is an error, not silently skipped.
        assert!(secret_requests("not json\n{}\n").is_err());
    }
}
