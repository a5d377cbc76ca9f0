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

/// Claims Sigil sets itself, that RFC 7519/9068 registers, or that speak
/// for the protocol (who authorised, delegated or authenticated how: RFC
/// 8693 `act`/`may_act`, OIDC `azp`/`acr`/`amr`/`auth_time`); a client's
/// `additionalClaims` may not set them, grant or no grant.
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
    "azp",
    "act",
    "may_act",
    "acr",
    "amr",
    "auth_time",
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

/// The bounds of a Go-duration field and the CEL rule enforcing them. One
/// value feeds both the schema (`duration_schema`) and `validate`, so the
/// API server and the standalone issuer print the same message.
#[derive(Clone, Copy, Debug)]
pub struct DurationBounds {
    /// The field's JSON name, as the message names it.
    pub field: &'static str,
    pub min: Option<&'static str>,
    pub max: Option<&'static str>,
}

impl DurationBounds {
    pub const fn unbounded(field: &'static str) -> Self {
        DurationBounds {
            field,
            min: None,
            max: None,
        }
    }

    /// The CEL rule, if the field has bounds.
    pub fn rule(&self) -> Option<String> {
        match (self.min, self.max) {
            (Some(lo), Some(hi)) => Some(format!(
                "duration(self) >= duration('{lo}') && duration(self) <= duration('{hi}')"
            )),
            (Some(lo), None) => Some(format!("duration(self) >= duration('{lo}')")),
            (None, Some(hi)) => Some(format!("duration(self) <= duration('{hi}')")),
            (None, None) => None,
        }
    }

    /// The rule's message, if the field has bounds.
    pub fn message(&self) -> Option<String> {
        let field = self.field;
        match (self.min, self.max) {
            (Some(lo), Some(hi)) => Some(format!("{field} must be between {lo} and {hi}")),
            (Some(lo), None) => Some(format!("{field} must be at least {lo}")),
            (None, Some(hi)) => Some(format!("{field} must be at most {hi}")),
            (None, None) => None,
        }
    }
}

/// Longest Go-duration string the schema accepts.
pub const DURATION_MAX_LENGTH: usize = 32;

/// A Go-duration string field, optionally bounded (CEL `duration()`).
pub fn duration_schema(schema: &mut schemars::Schema, bounds: &DurationBounds) {
    schema.insert("pattern".into(), DURATION_PATTERN.into());
    schema.insert("maxLength".into(), DURATION_MAX_LENGTH.into());
    if let (Some(rule), Some(message)) = (bounds.rule(), bounds.message()) {
        add_rule(schema, &rule, &message, None);
    }
}

/// A `pattern` of the schema next to a check of the same language in plain
/// Rust, so `validate` needs no regex engine. Each check mirrors its regex
/// (RE2 semantics as the API server uses them: `^`/`$` anchor the whole
/// string); `validation::tests` hold both to the same examples.
#[derive(Clone, Copy)]
pub struct Pattern {
    pub regex: &'static str,
    pub matches: fn(&str) -> bool,
}

impl std::fmt::Debug for Pattern {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.regex)
    }
}

pub const DURATION: Pattern = Pattern {
    regex: DURATION_PATTERN,
    matches: is_go_duration,
};
pub const SCOPE_TOKEN: Pattern = Pattern {
    regex: SCOPE_TOKEN_PATTERN,
    matches: is_scope_token,
};
pub const CLIENT_ID: Pattern = Pattern {
    regex: CLIENT_ID_PATTERN,
    matches: is_client_id,
};
pub const AUDIENCE: Pattern = Pattern {
    regex: AUDIENCE_PATTERN,
    matches: is_audience,
};
pub const DNS_SUBDOMAIN: Pattern = Pattern {
    regex: DNS_SUBDOMAIN_PATTERN,
    matches: is_dns_subdomain,
};
pub const DNS_LABEL: Pattern = Pattern {
    regex: DNS_LABEL_PATTERN,
    matches: is_dns_label,
};

/// `^([0-9]+(\.[0-9]+)?(ns|us|ms|s|m|h))+$`
fn is_go_duration(s: &str) -> bool {
    let bytes = s.as_bytes();
    let digits_from = |mut i: usize| {
        while i < bytes.len() && bytes[i].is_ascii_digit() {
            i += 1;
        }
        i
    };
    let mut i = 0;
    loop {
        let after_digits = digits_from(i);
        if after_digits == i {
            return false;
        }
        i = after_digits;
        if bytes.get(i) == Some(&b'.') {
            let after_fraction = digits_from(i + 1);
            if after_fraction == i + 1 {
                return false;
            }
            i = after_fraction;
        }
        // A two-letter unit first: after `m`, an `s` cannot start the next
        // group (groups start with a digit), so `ms` is never `m` + `s`.
        i += match (bytes.get(i), bytes.get(i + 1)) {
            (Some(b'n' | b'u' | b'm'), Some(b's')) => 2,
            (Some(b's' | b'm' | b'h'), _) => 1,
            _ => return false,
        };
        if i == bytes.len() {
            return true;
        }
    }
}

/// `^[\x21\x23-\x5B\x5D-\x7E]+$`: printable ASCII but space, `"` and `\`.
fn is_scope_token(s: &str) -> bool {
    !s.is_empty()
        && s.chars()
            .all(|c| matches!(c, '\x21' | '\x23'..='\x5B' | '\x5D'..='\x7E'))
}

/// `^[A-Za-z0-9._-]+$`
fn is_client_id(s: &str) -> bool {
    !s.is_empty()
        && s.chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-'))
}

/// `^[\x21-\x7E]+$`
fn is_audience(s: &str) -> bool {
    !s.is_empty() && s.chars().all(|c| matches!(c, '\x21'..='\x7E'))
}

/// `^[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*$`
fn is_dns_subdomain(s: &str) -> bool {
    s.split('.').all(is_dns_label)
}

/// `^[a-z0-9]([-a-z0-9]*[a-z0-9])?$`
fn is_dns_label(s: &str) -> bool {
    let lower_alphanumeric = |c: char| c.is_ascii_lowercase() || c.is_ascii_digit();
    s.starts_with(lower_alphanumeric)
        && s.ends_with(lower_alphanumeric)
        && s.chars().all(|c| lower_alphanumeric(c) || c == '-')
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Each pattern with strings its regex accepts and refuses; the
    /// comments say which part of the regex a string exercises.
    fn examples() -> Vec<(Pattern, &'static [&'static str], &'static [&'static str])> {
        vec![
            (
                DURATION,
                &[
                    "0s", "10s", "1h30m", "1.5h", "90ms", "100ns", "3us", "1m1s", "007h", "2h0.5m",
                ],
                &[
                    "", "s", "10", "1d", "1.h", ".5h", "1 h", "-5m", "+5m", "5µs", "1h ", "1hh",
                    "1sm", "1ms5", "1.5.5s", "5S",
                ],
            ),
            (
                SCOPE_TOKEN,
                &["a", "event.view", "!#[]~", "urn:x:y/z?q=1"],
                &["", "a b", "a\"b", "a\\b", "é", "a\tb", "\x7F"],
            ),
            (
                CLIENT_ID,
                &["a", "task-service.tasks", "A_b-9.x", "..."],
                &["", "tasks/service", "a b", "a:b", "é"],
            ),
            (
                AUDIENCE,
                &["event", "https://api.example/x", "\"\\!~"],
                &["", "a b", "é", "\x7F", "a\n"],
            ),
            (
                DNS_SUBDOMAIN,
                &["a", "a-b", "a.b", "task-service-oauth", "0", "a1.b-2.c"],
                &[
                    "",
                    "-a",
                    "a-",
                    "A",
                    "a..b",
                    ".a",
                    "a.",
                    "Not_A_Name",
                    "a_b",
                    "a.-b",
                ],
            ),
            (
                DNS_LABEL,
                &["a", "a-b", "default", "0a", "a--b"],
                &["", "-a", "a-", "a.b", "A", "a_b"],
            ),
        ]
    }

    #[test]
    fn pattern_checks_accept_and_refuse_what_their_regex_does() {
        for (pattern, accepted, refused) in examples() {
            for s in accepted {
                assert!((pattern.matches)(s), "{pattern:?} should match {s:?}");
            }
            for s in refused {
                assert!(!(pattern.matches)(s), "{pattern:?} should not match {s:?}");
            }
        }
    }

    #[test]
    fn duration_bounds_rule_and_message() {
        let ttl = DurationBounds {
            field: "tokenTTL",
            min: Some("1m"),
            max: Some("24h"),
        };
        assert_eq!(
            ttl.rule().as_deref(),
            Some("duration(self) >= duration('1m') && duration(self) <= duration('24h')")
        );
        assert_eq!(
            ttl.message().as_deref(),
            Some("tokenTTL must be between 1m and 24h")
        );
        assert_eq!(DurationBounds::unbounded("x").rule(), None);
    }
}
