//! The CRD schema's validation of `spec`, in Rust, for manifests that never
//! pass through an API server (the standalone issuer).
//!
//! Every constraint of the generated schema is checked here: patterns,
//! lengths, item and property counts, enums, list-sets, types of the
//! untyped parts (JWKs, reserved claims) and each CEL rule. Limits and CEL
//! messages are the constants the schema is generated from, and each error
//! is worded as the API server words it (`field: Invalid value: ...`), so
//! the standalone issuer refuses a manifest as `kubectl apply` would.
//! `cases` holds the table of manifests that proves it, against both this
//! module and a real API server.
//!
//! Enum-typed fields (`authMethods`, `algorithm`) and required members
//! (`secretRotation.interval`, `jwks.keys`) are enforced by the types:
//! serde refuses such a manifest before `validate` can see it.

pub mod cases;

use std::time::Duration;

use serde_json::Value;

use crate::oauth_client::{self as oac, OAuthClientSpec};
use crate::signing_key::{self as sk, SigningKeySpec};
use crate::validation::{self, DurationBounds, Pattern};
use crate::{OAuthClient, PublicJwk, SigningKey, parse_duration};

/// One refused field: `field` is the path the API server names
/// (`spec.scopes[0]`), `message` what it says about it.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("{field}: {message}")]
pub struct FieldError {
    pub field: String,
    pub message: String,
}

/// Checks an `OAuthClient`'s spec as its CRD schema does.
pub fn validate_oauth_client(client: &OAuthClient) -> Result<(), Vec<FieldError>> {
    let spec = &client.spec;
    let mut report = oauth_client_schema(spec);
    if !report.skips_rules {
        report.errors.extend(oauth_client_rules(spec));
    }
    report.finish()
}

/// Checks a `SigningKey`'s spec as its CRD schema does.
pub fn validate_signing_key(key: &SigningKey) -> Result<(), Vec<FieldError>> {
    let spec = &key.spec;
    let mut report = signing_key_schema(spec);
    if !report.skips_rules {
        report.errors.extend(signing_key_rules(spec));
    }
    report.finish()
}

/// Errors of the OpenAPI part of a schema. Like the API server, an enum or
/// type error means the CEL rules are not evaluated (their input would not
/// have the declared shape).
#[derive(Default)]
struct Report {
    errors: Vec<FieldError>,
    skips_rules: bool,
}

impl Report {
    fn finish(self) -> Result<(), Vec<FieldError>> {
        if self.errors.is_empty() {
            Ok(())
        } else {
            Err(self.errors)
        }
    }

    fn push(&mut self, field: &str, message: String) {
        self.errors.push(FieldError {
            field: field.to_owned(),
            message,
        });
    }

    /// A string's `maxLength`, `minLength` and `pattern`, in that order and
    /// only the first that fails, as the API server reports them. Lengths
    /// count characters, as the API server does.
    fn string(&mut self, field: &str, value: &str, rules: StringRules) {
        let length = value.chars().count();
        let message = match rules {
            StringRules {
                max_length: Some(max),
                ..
            } if length > max => too_long(max),
            StringRules {
                min_length: Some(min),
                ..
            } if length < min => invalid(
                &quote(value),
                &format!("{field} in body should be at least {min} chars long"),
            ),
            StringRules {
                pattern: Some(pattern),
                ..
            } if !(pattern.matches)(value) => invalid(
                &quote(value),
                &format!("{field} in body should match '{}'", pattern.regex),
            ),
            _ => return,
        };
        self.push(field, message);
    }

    /// A duration string's pattern and length (its bounds are a CEL rule).
    fn duration(&mut self, field: &str, value: &str) {
        self.string(
            field,
            value,
            StringRules {
                max_length: Some(validation::DURATION_MAX_LENGTH),
                pattern: Some(validation::DURATION),
                ..StringRules::default()
            },
        );
    }

    /// `maxItems` (or `maxProperties`) and `minItems`.
    fn count(&mut self, field: &str, count: usize, min: Option<usize>, max: Option<usize>) {
        if let Some(max) = max
            && count > max
        {
            self.push(
                field,
                format!("Too many: {count}: must have at most {max} items"),
            );
        }
        if let Some(min) = min
            && count < min
        {
            self.push(
                field,
                invalid(
                    &count.to_string(),
                    &format!("{field} in body should have at least {min} items"),
                ),
            );
        }
    }

    /// `x-kubernetes-list-type: set`: the second of two equal items.
    fn set<T: PartialEq>(&mut self, field: &str, items: &[T], quote_item: impl Fn(&T) -> String) {
        for (index, item) in items.iter().enumerate() {
            if items[..index].contains(item) {
                self.push(
                    &format!("{field}[{index}]"),
                    format!("Duplicate value: {}", quote_item(item)),
                );
            }
        }
    }

    fn unsupported(&mut self, field: &str, value: &str, supported: &[String]) {
        self.skips_rules = true;
        self.push(
            field,
            format!(
                "Unsupported value: {value}: supported values: {}",
                supported.join(", ")
            ),
        );
    }

    fn wrong_type(&mut self, field: &str, value: &Value, expected: &str) {
        self.skips_rules = true;
        let actual = json_type(value);
        self.push(
            field,
            invalid(
                &quote(actual),
                &format!(
                    "{field} in body must be of type {expected}: {}",
                    quote(actual)
                ),
            ),
        );
    }
}

#[derive(Clone, Copy, Default)]
struct StringRules {
    min_length: Option<usize>,
    max_length: Option<usize>,
    pattern: Option<Pattern>,
}

fn oauth_client_schema(spec: &OAuthClientSpec) -> Report {
    let mut report = Report::default();
    if let Some(name) = &spec.display_name {
        report.string(
            "spec.displayName",
            name,
            StringRules {
                max_length: Some(oac::DISPLAY_NAME_MAX_LENGTH),
                ..StringRules::default()
            },
        );
    }
    if let Some(id) = &spec.client_id {
        report.string(
            "spec.clientId",
            id,
            StringRules {
                min_length: Some(1),
                max_length: Some(oac::CLIENT_ID_MAX_LENGTH),
                pattern: Some(validation::CLIENT_ID),
            },
        );
    }

    report.count(
        "spec.scopes",
        spec.scopes.len(),
        None,
        Some(oac::SCOPES_MAX_ITEMS),
    );
    for (index, scope) in spec.scopes.iter().enumerate() {
        report.string(
            &format!("spec.scopes[{index}]"),
            scope,
            StringRules {
                max_length: Some(oac::SCOPE_MAX_LENGTH),
                pattern: Some(validation::SCOPE_TOKEN),
                ..StringRules::default()
            },
        );
    }
    report.set("spec.scopes", &spec.scopes, |s| quote(s));

    report.count(
        "spec.audiences",
        spec.audiences.len(),
        None,
        Some(oac::AUDIENCES_MAX_ITEMS),
    );
    for (index, audience) in spec.audiences.iter().enumerate() {
        report.string(
            &format!("spec.audiences[{index}]"),
            audience,
            StringRules {
                min_length: Some(1),
                max_length: Some(oac::AUDIENCE_MAX_LENGTH),
                pattern: Some(validation::AUDIENCE),
            },
        );
    }
    report.set("spec.audiences", &spec.audiences, |s| quote(s));

    if let Some(ttl) = &spec.token_ttl {
        report.duration("spec.tokenTTL", ttl);
    }
    if let Some(methods) = &spec.auth_methods {
        report.count("spec.authMethods", methods.len(), Some(1), None);
        report.set("spec.authMethods", methods, |m| quote(m.as_str()));
    }
    if let Some(jwks) = &spec.jwks {
        report.count(
            "spec.jwks.keys",
            jwks.keys.len(),
            Some(1),
            Some(oac::JWKS_MAX_KEYS),
        );
        for (index, key) in jwks.keys.iter().enumerate() {
            public_jwk_schema(&mut report, &format!("spec.jwks.keys[{index}]"), key);
        }
    }
    if let Some(names) = &spec.service_accounts {
        report.count(
            "spec.serviceAccounts",
            names.len(),
            Some(1),
            Some(oac::SERVICE_ACCOUNTS_MAX_ITEMS),
        );
        for (index, name) in names.iter().enumerate() {
            report.string(
                &format!("spec.serviceAccounts[{index}]"),
                name,
                StringRules {
                    min_length: Some(1),
                    max_length: Some(oac::SERVICE_ACCOUNT_NAME_MAX_LENGTH),
                    pattern: Some(validation::DNS_LABEL),
                },
            );
        }
        report.set("spec.serviceAccounts", names, |s| quote(s));
    }
    if let Some(name) = &spec.secret_name {
        report.string(
            "spec.secretName",
            name,
            StringRules {
                min_length: Some(1),
                max_length: Some(oac::SECRET_NAME_MAX_LENGTH),
                pattern: Some(validation::DNS_SUBDOMAIN),
            },
        );
    }
    if let Some(rotation) = &spec.secret_rotation {
        report.duration("spec.secretRotation.interval", &rotation.interval);
        report.duration("spec.secretRotation.gracePeriod", &rotation.grace_period);
    }
    if let Some(name) = &spec.signing_key {
        report.string(
            "spec.signingKey",
            name,
            StringRules {
                min_length: Some(1),
                max_length: Some(oac::SIGNING_KEY_NAME_MAX_LENGTH),
                pattern: Some(validation::DNS_LABEL),
            },
        );
    }
    if let Some(claims) = &spec.additional_claims {
        report.count(
            "spec.additionalClaims",
            claims.len(),
            None,
            Some(oac::ADDITIONAL_CLAIMS_MAX_PROPERTIES),
        );
        // The schema declares the reserved claims as int-or-string (so its
        // CEL rule can name them); other values are free JSON.
        for claim in validation::RESERVED_CLAIMS {
            if let Some(value) = claims.get(*claim)
                && !matches!(value, Value::String(_) | Value::Null)
                && !is_integer(value)
            {
                report.wrong_type(
                    &format!("spec.additionalClaims.{claim}"),
                    value,
                    "integer,string",
                );
            }
        }
    }
    report
}

/// One client JWK: `kty` required and one of `JWK_KEY_TYPES`, `kid`, `alg`
/// and the private members strings, `kid` and `alg` bounded.
fn public_jwk_schema(report: &mut Report, field: &str, key: &PublicJwk) {
    // A null member the schema does not mark nullable is dropped by the API
    // server before validation, so it counts as absent.
    let member = |name: &str| key.0.get(name).filter(|v| !v.is_null());
    match member("kty") {
        None => report.push(&format!("{field}.kty"), "Required value".to_owned()),
        Some(Value::String(kty)) => {
            if !oac::JWK_KEY_TYPES.contains(&kty.as_str()) {
                let supported: Vec<String> = oac::JWK_KEY_TYPES.iter().map(|t| quote(t)).collect();
                report.unsupported(&format!("{field}.kty"), &quote(kty), &supported);
            }
        }
        Some(other) => report.wrong_type(&format!("{field}.kty"), other, "string"),
    }
    for (name, max_length) in [
        ("kid", Some(oac::JWK_KID_MAX_LENGTH)),
        ("alg", Some(oac::JWK_ALG_MAX_LENGTH)),
    ]
    .into_iter()
    .chain(oac::JWK_PRIVATE_MEMBERS.iter().map(|m| (*m, None)))
    {
        match member(name) {
            None => {}
            Some(Value::String(value)) => report.string(
                &format!("{field}.{name}"),
                value,
                StringRules {
                    max_length,
                    ..StringRules::default()
                },
            ),
            Some(other) => report.wrong_type(&format!("{field}.{name}"), other, "string"),
        }
    }
}

/// The CEL rules of the OAuthClient schema.
fn oauth_client_rules(spec: &OAuthClientSpec) -> Vec<FieldError> {
    let mut errors = Vec::new();
    let uses_private_key_jwt = spec
        .auth_methods
        .as_ref()
        .is_some_and(|methods| methods.contains(&crate::AuthMethod::PrivateKeyJwt));
    if uses_private_key_jwt && spec.jwks.is_none() {
        errors.push(rule_error("spec.jwks", None, oac::JWKS_REQUIRED_MESSAGE));
    }
    if spec.jwks.is_some() && !uses_private_key_jwt {
        errors.push(rule_error(
            "spec.authMethods",
            None,
            oac::JWKS_WITHOUT_PRIVATE_KEY_JWT_MESSAGE,
        ));
    }
    let uses_federated_jwt = spec
        .auth_methods
        .as_ref()
        .is_some_and(|methods| methods.contains(&crate::AuthMethod::FederatedJwt));
    if uses_federated_jwt && spec.service_accounts.is_none() {
        errors.push(rule_error(
            "spec.serviceAccounts",
            None,
            oac::SERVICE_ACCOUNTS_REQUIRED_MESSAGE,
        ));
    }
    if spec.service_accounts.is_some() && !uses_federated_jwt {
        errors.push(rule_error(
            "spec.authMethods",
            None,
            oac::SERVICE_ACCOUNTS_WITHOUT_FEDERATED_JWT_MESSAGE,
        ));
    }
    if let Some(ttl) = &spec.token_ttl {
        errors.extend(duration_bounds_error(
            "spec.tokenTTL",
            ttl,
            &oac::TOKEN_TTL_BOUNDS,
        ));
    }
    if let Some(jwks) = &spec.jwks {
        for (index, key) in jwks.keys.iter().enumerate() {
            let private = oac::JWK_PRIVATE_MEMBERS
                .iter()
                .any(|m| key.0.get(*m).is_some_and(|v| !v.is_null()));
            if private {
                errors.push(rule_error(
                    &format!("spec.jwks.keys[{index}]"),
                    None,
                    oac::JWKS_PUBLIC_KEYS_ONLY_MESSAGE,
                ));
            }
        }
    }
    if let Some(rotation) = &spec.secret_rotation {
        errors.extend(duration_bounds_error(
            "spec.secretRotation.interval",
            &rotation.interval,
            &oac::ROTATION_INTERVAL_BOUNDS,
        ));
        if let (Some(grace), Some(interval)) = (
            parse_valid_duration(&rotation.grace_period),
            parse_valid_duration(&rotation.interval),
        ) && grace >= interval
        {
            errors.push(rule_error(
                "spec.secretRotation.gracePeriod",
                None,
                oac::GRACE_PERIOD_MESSAGE,
            ));
        }
    }
    if let Some(claims) = &spec.additional_claims {
        // Stricter than the schema on purpose: the API server accepts a
        // reserved claim set to null (CEL's `has()` is false for it), but the
        // issuer would still copy the member into tokens (`"exp": null` next
        // to its own `exp`). See `reserved-claim-null` in cases.yaml.
        let sets_reserved = validation::RESERVED_CLAIMS
            .iter()
            .any(|claim| claims.contains_key(*claim));
        if sets_reserved {
            errors.push(rule_error(
                "spec.additionalClaims",
                None,
                &oac::reserved_claims_message(),
            ));
        }
    }
    errors
}

fn signing_key_schema(spec: &SigningKeySpec) -> Report {
    let mut report = Report::default();
    if let Some(bits) = spec.rsa_bits
        && !sk::RSA_BITS_VALUES.contains(&bits)
    {
        let supported: Vec<String> = sk::RSA_BITS_VALUES
            .iter()
            .map(|b| quote(&b.to_string()))
            .collect();
        report.unsupported("spec.rsaBits", &bits.to_string(), &supported);
    }
    for (field, value) in [
        ("spec.rotationInterval", &spec.rotation_interval),
        ("spec.prePublish", &spec.pre_publish),
        ("spec.retireAfter", &spec.retire_after),
    ] {
        if let Some(value) = value {
            report.duration(field, value);
        }
    }
    report
}

/// The CEL rules of the SigningKey schema.
fn signing_key_rules(spec: &SigningKeySpec) -> Vec<FieldError> {
    let mut errors = Vec::new();
    if spec.rsa_bits.is_some() && !spec.algorithm.is_rsa() {
        errors.push(rule_error(
            "spec.rsaBits",
            None,
            sk::RSA_BITS_ONLY_FOR_RSA_MESSAGE,
        ));
    }
    if let Some(interval) = &spec.rotation_interval {
        errors.extend(duration_bounds_error(
            "spec.rotationInterval",
            interval,
            &sk::ROTATION_INTERVAL_BOUNDS,
        ));
    }
    let pre_publish = match &spec.pre_publish {
        Some(text) => parse_valid_duration(text),
        None => Some(sk::DEFAULT_PRE_PUBLISH),
    };
    let rotation_interval = match &spec.rotation_interval {
        Some(text) => parse_valid_duration(text),
        None => Some(sk::DEFAULT_ROTATION_INTERVAL),
    };
    if let (Some(pre_publish), Some(rotation_interval)) = (pre_publish, rotation_interval)
        && pre_publish >= rotation_interval
    {
        errors.push(rule_error(
            "spec.prePublish",
            None,
            sk::PRE_PUBLISH_SHORTER_MESSAGE,
        ));
    }
    errors
}

/// The bounds rule of a duration field, if its value is outside them. A
/// value that is not a duration was already refused by its pattern.
fn duration_bounds_error(field: &str, value: &str, bounds: &DurationBounds) -> Option<FieldError> {
    let duration = parse_valid_duration(value)?;
    let message = bounds.message()?;
    let bound = |text: Option<&str>| text.and_then(parse_valid_duration);
    let below = bound(bounds.min).is_some_and(|min| duration < min);
    let above = bound(bounds.max).is_some_and(|max| duration > max);
    (below || above).then(|| rule_error(field, Some(value), &message))
}

/// A duration the schema's pattern accepts, as CEL's `duration()` reads it.
fn parse_valid_duration(text: &str) -> Option<Duration> {
    if !(validation::DURATION.matches)(text) {
        return None;
    }
    parse_duration(text).ok()
}

/// A failed CEL rule, as the API server reports it: with the value when the
/// rule is declared on a string, without when on an object.
fn rule_error(field: &str, string_value: Option<&str>, message: &str) -> FieldError {
    let message = match string_value {
        Some(value) => invalid(&quote(value), message),
        None => format!("Invalid value: {message}"),
    };
    FieldError {
        field: field.to_owned(),
        message,
    }
}

fn invalid(value: &str, detail: &str) -> String {
    format!("Invalid value: {value}: {detail}")
}

fn too_long(max: usize) -> String {
    format!("Too long: may not be more than {max} bytes")
}

/// A string quoted as Go's `%q` quotes printable text.
fn quote(value: &str) -> String {
    format!("{value:?}")
}

fn is_integer(value: &Value) -> bool {
    value.as_i64().is_some() || value.as_u64().is_some()
}

/// The OpenAPI type name of a JSON value.
fn json_type(value: &Value) -> &'static str {
    match value {
        Value::Null => "null",
        Value::Bool(_) => "boolean",
        Value::Number(_) if is_integer(value) => "integer",
        Value::Number(_) => "number",
        Value::String(_) => "string",
        Value::Array(_) => "array",
        Value::Object(_) => "object",
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use cases::{Kind, RefusedBy};

    fn validate(manifest: &Value, kind: Kind) -> Result<Result<(), Vec<FieldError>>, String> {
        match kind {
            Kind::OAuthClient => serde_json::from_value::<OAuthClient>(manifest.clone())
                .map(|c| validate_oauth_client(&c)),
            Kind::SigningKey => serde_json::from_value::<SigningKey>(manifest.clone())
                .map(|k| validate_signing_key(&k)),
        }
        .map_err(|e| e.to_string())
    }

    #[test]
    fn every_refused_case_is_refused_naming_the_field() {
        let table = cases::table().expect("the case table parses");
        for case in &table.refused {
            let manifest = case.manifest.to_json();
            let result = validate(&manifest, case.manifest.kind);
            match case.refused_by {
                RefusedBy::Deserialization => {
                    let error = result.expect_err(&format!(
                        "{}: the Rust type accepted what the schema refuses",
                        case.manifest.name
                    ));
                    assert!(
                        error.contains(&case.deserialization_error),
                        "{}: serde's error does not say {:?}: {error}",
                        case.manifest.name,
                        case.deserialization_error
                    );
                }
                RefusedBy::Validation => {
                    let errors = result
                        .unwrap_or_else(|e| {
                            panic!("{}: does not deserialize: {e}", case.manifest.name)
                        })
                        .expect_err(&format!("{}: validate accepted it", case.manifest.name));
                    assert!(
                        errors
                            .iter()
                            .any(|e| e.field == case.field && e.message.contains(&case.message)),
                        "{}: no error on {} containing {:?}: {errors:#?}",
                        case.manifest.name,
                        case.field,
                        case.message
                    );
                }
            }
        }
    }

    #[test]
    fn every_accepted_case_passes() {
        let table = cases::table().expect("the case table parses");
        for manifest in &table.accepted {
            let result = validate(&manifest.to_json(), manifest.kind);
            assert_eq!(result, Ok(Ok(())), "{}", manifest.name);
        }
    }

    #[test]
    fn field_error_reads_like_the_api_server() {
        let error = FieldError {
            field: "spec.tokenTTL".into(),
            message: "Invalid value: \"30s\": tokenTTL must be between 1m and 24h".into(),
        };
        assert_eq!(
            error.to_string(),
            "spec.tokenTTL: Invalid value: \"30s\": tokenTTL must be between 1m and 24h"
        );
    }

    #[test]
    fn a_type_error_skips_the_rules_like_the_api_server() {
        let client: OAuthClient = serde_json::from_value(serde_json::json!({
            "apiVersion": "sigil.dev/v1alpha1", "kind": "OAuthClient",
            "metadata": { "name": "x" },
            "spec": { "additionalClaims": { "aud": ["a", "b"] } },
        }))
        .expect("deserializes");
        let errors = validate_oauth_client(&client).expect_err("refused");
        assert_eq!(errors.len(), 1, "{errors:#?}");
        assert_eq!(errors[0].field, "spec.additionalClaims.aud");
    }

    #[test]
    fn the_pre_publish_rule_defaults_are_the_rust_defaults() {
        assert_eq!(parse_duration("24h"), Ok(sk::DEFAULT_PRE_PUBLISH));
        assert_eq!(parse_duration("720h"), Ok(sk::DEFAULT_ROTATION_INTERVAL));
    }

    /// Every constraint keyword under `spec` in a generated schema, as
    /// `path keyword` (`[]` for the items of a list; one entry per CEL rule).
    fn schema_constraints(
        crd: &k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition,
    ) -> Vec<String> {
        fn walk(path: &str, schema: &Value, found: &mut Vec<String>) {
            for keyword in [
                "pattern",
                "minLength",
                "maxLength",
                "minItems",
                "maxItems",
                "maxProperties",
                "minimum",
                "enum",
                "required",
                "x-kubernetes-list-type",
                "x-kubernetes-int-or-string",
            ] {
                if schema.get(keyword).is_some() {
                    found.push(format!("{path} {keyword}"));
                }
            }
            for rule in schema["x-kubernetes-validations"]
                .as_array()
                .into_iter()
                .flatten()
            {
                found.push(format!(
                    "{path} rule: {}",
                    rule["message"].as_str().unwrap_or_default()
                ));
            }
            for (name, property) in schema["properties"].as_object().into_iter().flatten() {
                walk(&format!("{path}.{name}"), property, found);
            }
            if let Some(items) = schema.get("items") {
                walk(&format!("{path}[]"), items, found);
            }
        }
        let version = &crd.spec.versions[0];
        let root = serde_json::to_value(&version.schema).expect("schema serializes");
        let mut found = Vec::new();
        walk(
            "spec",
            &root["openAPIV3Schema"]["properties"]["spec"],
            &mut found,
        );
        found
    }

    /// Fails when the schema gains a constraint: check it in `validate`
    /// (and add a case to `cases.yaml`), then list it here.
    #[test]
    fn validate_knows_every_constraint_of_the_schema() {
        use kube::CustomResourceExt;
        let reserved = validation::RESERVED_CLAIMS
            .iter()
            .map(|c| format!("spec.additionalClaims.{c} x-kubernetes-int-or-string"));
        let mut oauth_client: Vec<String> = [
            "spec rule: jwks is required when authMethods contains private_key_jwt",
            "spec rule: jwks is only used with private_key_jwt: add it to authMethods",
            "spec rule: serviceAccounts is required when authMethods contains federated_jwt",
            "spec rule: serviceAccounts is only used with federated_jwt: add it to authMethods",
            "spec.additionalClaims maxProperties",
            "spec.additionalClaims rule: ",
            "spec.audiences maxItems",
            "spec.audiences x-kubernetes-list-type",
            "spec.audiences[] pattern",
            "spec.audiences[] minLength",
            "spec.audiences[] maxLength",
            // Items enum: the `AuthMethod` type.
            "spec.authMethods minItems",
            "spec.authMethods x-kubernetes-list-type",
            "spec.authMethods[] enum",
            "spec.clientId pattern",
            "spec.clientId minLength",
            "spec.clientId maxLength",
            "spec.displayName maxLength",
            // `keys` required: the `ClientJwks` type.
            "spec.jwks required",
            "spec.jwks.keys minItems",
            "spec.jwks.keys maxItems",
            "spec.jwks.keys[] required",
            "spec.jwks.keys[] rule: ",
            "spec.jwks.keys[].alg maxLength",
            "spec.jwks.keys[].kid maxLength",
            "spec.jwks.keys[].kty enum",
            "spec.scopes maxItems",
            "spec.scopes x-kubernetes-list-type",
            "spec.scopes[] pattern",
            "spec.scopes[] maxLength",
            "spec.secretName pattern",
            "spec.secretName minLength",
            "spec.secretName maxLength",
            // `interval` and `gracePeriod` required: the `SecretRotation` type.
            "spec.secretRotation required",
            "spec.secretRotation rule: ",
            "spec.secretRotation.gracePeriod pattern",
            "spec.secretRotation.gracePeriod maxLength",
            "spec.secretRotation.interval pattern",
            "spec.secretRotation.interval maxLength",
            "spec.secretRotation.interval rule: ",
            "spec.serviceAccounts minItems",
            "spec.serviceAccounts maxItems",
            "spec.serviceAccounts x-kubernetes-list-type",
            "spec.serviceAccounts[] pattern",
            "spec.serviceAccounts[] minLength",
            "spec.serviceAccounts[] maxLength",
            "spec.signingKey pattern",
            "spec.signingKey minLength",
            "spec.signingKey maxLength",
            "spec.tokenTTL pattern",
            "spec.tokenTTL maxLength",
            "spec.tokenTTL rule: ",
        ]
        .into_iter()
        .map(|c| match c.strip_suffix("rule: ") {
            Some(path) => format!("{path}rule: {}", rule_message_at(path.trim_end())),
            None => c.to_owned(),
        })
        .chain(reserved)
        .collect();
        let mut signing_key: Vec<String> = [
            "spec rule: rsaBits applies only to the RSA algorithms RS256, RS384, RS512 and PS256",
            "spec rule: prePublish must be shorter than rotationInterval (defaults: 24h and 720h)",
            // The `SigningAlgorithm` type.
            "spec.algorithm enum",
            "spec.prePublish pattern",
            "spec.prePublish maxLength",
            "spec.retireAfter pattern",
            "spec.retireAfter maxLength",
            "spec.rotationInterval pattern",
            "spec.rotationInterval maxLength",
            "spec.rotationInterval rule: rotationInterval must be at least 1s",
            // `minimum: 0`: the `u32` type.
            "spec.rsaBits minimum",
            "spec.rsaBits enum",
        ]
        .into_iter()
        .map(str::to_owned)
        .collect();
        for (crd, expected) in [
            (OAuthClient::crd(), &mut oauth_client),
            (SigningKey::crd(), &mut signing_key),
        ] {
            let mut found = schema_constraints(&crd);
            found.sort();
            expected.sort();
            assert_eq!(&found, expected, "{}", crd.spec.names.kind);
        }
    }

    /// The message of the one CEL rule `validate` checks at a path whose
    /// message is built from constants.
    fn rule_message_at(path: &str) -> String {
        match path {
            "spec.additionalClaims" => oac::reserved_claims_message(),
            "spec.jwks.keys[]" => oac::JWKS_PUBLIC_KEYS_ONLY_MESSAGE.to_owned(),
            "spec.secretRotation" => oac::GRACE_PERIOD_MESSAGE.to_owned(),
            "spec.secretRotation.interval" => {
                oac::ROTATION_INTERVAL_BOUNDS.message().unwrap_or_default()
            }
            "spec.tokenTTL" => oac::TOKEN_TTL_BOUNDS.message().unwrap_or_default(),
            other => panic!("no rule at {other}"),
        }
    }
}
