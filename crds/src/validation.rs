//! Schema fragments shared by both resources. Each one ends up in the CRD
//! YAML, so the API server refuses bad values before any Sigil code runs.

/// A Go duration (`30s`, `10m`, `1h30m`), the syntax CEL's `duration()` and
/// `metav1.Duration` accept.
pub const DURATION_PATTERN: &str = r"^([0-9]+(\.[0-9]+)?(ns|us|ms|s|m|h))+$";

/// RFC 6749 §3.3: `scope-token = 1*( %x21 / %x23-5B / %x5D-7E )`.
pub const SCOPE_TOKEN_PATTERN: &str = r"^[\x21\x23-\x5B\x5D-\x7E]+$";

/// Client ids are kept to characters that need no form-urlencoding, so
/// clients that do or do not encode Basic credentials both work (DESIGN §6).
pub const CLIENT_ID_PATTERN: &str = r"^[A-Za-z0-9._-]+$";

/// An audience is one printable ASCII word: the Secret's `audience` key and
/// the `audience` request parameter separate them with spaces.
pub const AUDIENCE_PATTERN: &str = r"^[\x21-\x7E]+$";

/// RFC 1123 subdomain, what Kubernetes requires of a Secret name.
pub const DNS_SUBDOMAIN_PATTERN: &str =
    r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*$";

/// RFC 1123 label, what Kubernetes requires of most object names.
pub const DNS_LABEL_PATTERN: &str = r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$";

/// Claims Sigil sets itself or that RFC 7519/9068 registers; a client's
/// `additionalClaims` may not override them.
pub const RESERVED_CLAIMS: &[&str] = &[
    "iss",
    "sub",
    "aud",
    "exp",
    "nbf",
    "iat",
    "jti",
    "client_id",
    "scope",
    "scp",
    "cnf",
];

/// Appends a CEL rule (`x-kubernetes-validations`) to a schema. The message
/// is what the API server prints after the field path, so it names the
/// field and says what is allowed.
pub fn add_rule(
    schema: &mut schemars::Schema,
    rule: &str,
    message: &str,
    field_path: Option<&str>,
) {
    let mut entry = serde_json::json!({ "rule": rule, "message": message });
    if let Some(path) = field_path {
        entry["fieldPath"] = serde_json::Value::String(path.to_owned());
    }
    let obj = schema.ensure_object();
    let rules = obj
        .entry("x-kubernetes-validations")
        .or_insert_with(|| serde_json::Value::Array(Vec::new()));
    if let serde_json::Value::Array(list) = rules {
        list.push(entry);
    }
}

/// Marks a list as a set: the API server refuses duplicates and server-side
/// apply merges it by value.
pub fn list_set(schema: &mut schemars::Schema) {
    schema.insert("x-kubernetes-list-type".into(), "set".into());
}

/// A Go-duration string field, optionally bounded (CEL `duration()`).
pub fn duration_schema(
    schema: &mut schemars::Schema,
    field: &str,
    min: Option<&str>,
    max: Option<&str>,
) {
    schema.insert("pattern".into(), DURATION_PATTERN.into());
    schema.insert("maxLength".into(), 32.into());
    match (min, max) {
        (Some(lo), Some(hi)) => add_rule(
            schema,
            &format!("duration(self) >= duration('{lo}') && duration(self) <= duration('{hi}')"),
            &format!("{field} must be between {lo} and {hi}"),
            None,
        ),
        (Some(lo), None) => add_rule(
            schema,
            &format!("duration(self) >= duration('{lo}')"),
            &format!("{field} must be at least {lo}"),
            None,
        ),
        (None, Some(hi)) => add_rule(
            schema,
            &format!("duration(self) <= duration('{hi}')"),
            &format!("{field} must be at most {hi}"),
            None,
        ),
        (None, None) => {}
    }
}
