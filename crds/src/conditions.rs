//! The `Ready` condition every Sigil resource reports, with its reasons as
//! one enum: the operator writes them, the issuer and the pod webhook read
//! them, `kubectl get -o wide` shows them. A reason is part of the API
//! contract (users alert on it), so each one is spelled here only.

use k8s_openapi::apimachinery::pkg::apis::meta::v1::Condition;

use crate::{OAuthClient, OAuthClientStatus, OAuthResourceStatus, SigningKeyStatus};

/// Condition type every Sigil resource reports.
pub const CONDITION_READY: &str = "Ready";

/// OAuthClient condition: whether everything it requests is granted.
pub const CONDITION_GRANTED: &str = "Granted";

/// Why a condition of a Sigil resource has its status.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Reason {
    /// OAuthClient: its Secret and verifiers are in place.
    CredentialsReady,
    /// OAuthClient: `spec.disabled` is true.
    Disabled,
    /// OAuthClient: an older OAuthClient holds the same client id.
    DuplicateClientId,
    /// OAuthClient or SigningKey: the Secret it names belongs to someone else.
    SecretConflict,
    /// OAuthClient: the spec cannot be acted on (e.g. a bad duration that
    /// slipped past the schema).
    InvalidSpec,
    /// SigningKey: an active key signs.
    KeysReady,
    /// SigningKey: no key can sign yet.
    NoActiveKey,
    /// OAuthClient: its client id is outside `*.<namespace>` and its
    /// namespace does not allow it.
    ClientIdNotAllowed,
    /// OAuthClient (`Granted`): everything requested is granted.
    Granted,
    /// OAuthClient (`Granted`): part of the request is not granted; the
    /// message says which and why.
    GrantDenied,
    /// OAuthResource (`Claimed`): it holds its audience.
    AudienceClaimed,
    /// OAuthResource (`Claimed`): an older OAuthResource holds the audience.
    AudienceConflict,
}

impl Reason {
    pub const fn as_str(self) -> &'static str {
        match self {
            Reason::CredentialsReady => "CredentialsReady",
            Reason::Disabled => "Disabled",
            Reason::DuplicateClientId => "DuplicateClientId",
            Reason::SecretConflict => "SecretConflict",
            Reason::InvalidSpec => "InvalidSpec",
            Reason::KeysReady => "KeysReady",
            Reason::NoActiveKey => "NoActiveKey",
            Reason::ClientIdNotAllowed => "ClientIdNotAllowed",
            Reason::Granted => "Granted",
            Reason::GrantDenied => "GrantDenied",
            Reason::AudienceClaimed => "AudienceClaimed",
            Reason::AudienceConflict => "AudienceConflict",
        }
    }
}

impl std::fmt::Display for Reason {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// The `Ready` condition of a list of conditions, if any.
pub fn ready_of(conditions: &[Condition]) -> Option<&Condition> {
    conditions.iter().find(|c| c.type_ == CONDITION_READY)
}

/// Whether the `Ready` condition currently carries `reason`.
pub fn ready_reason_is(conditions: &[Condition], reason: Reason) -> bool {
    ready_of(conditions).is_some_and(|c| c.reason == reason.as_str())
}

/// A status with conditions and an observed generation (both resources').
pub trait HasConditions {
    fn conditions(&self) -> &[Condition];
    /// Replaces the conditions and records the generation they describe.
    fn set_conditions(&mut self, conditions: Vec<Condition>, generation: Option<i64>);
}

impl HasConditions for OAuthClientStatus {
    fn conditions(&self) -> &[Condition] {
        &self.conditions
    }

    fn set_conditions(&mut self, conditions: Vec<Condition>, generation: Option<i64>) {
        self.conditions = conditions;
        self.observed_generation = generation;
    }
}

impl HasConditions for OAuthResourceStatus {
    fn conditions(&self) -> &[Condition] {
        &self.conditions
    }

    fn set_conditions(&mut self, conditions: Vec<Condition>, generation: Option<i64>) {
        self.conditions = conditions;
        self.observed_generation = generation;
    }
}

impl HasConditions for SigningKeyStatus {
    fn conditions(&self) -> &[Condition] {
        &self.conditions
    }

    fn set_conditions(&mut self, conditions: Vec<Condition>, generation: Option<i64>) {
        self.conditions = conditions;
        self.observed_generation = generation;
    }
}

impl OAuthClient {
    /// True when the operator refused this client's id as a duplicate: the
    /// issuer then serves no tokens for it and the id index skips it.
    pub fn is_marked_duplicate(&self) -> bool {
        self.status.as_ref().is_some_and(|status| {
            ready_of(&status.conditions).is_some_and(|c| {
                c.status == "False" && c.reason == Reason::DuplicateClientId.as_str()
            })
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn duplicate_marking_reads_the_ready_condition() {
        let mut client = OAuthClient::new(
            "a",
            serde_json::from_value(serde_json::json!({})).expect("spec"),
        );
        assert!(!client.is_marked_duplicate());
        let condition = |status: &str, reason: Reason| Condition {
            type_: CONDITION_READY.into(),
            status: status.into(),
            reason: reason.as_str().into(),
            message: String::new(),
            observed_generation: None,
            last_transition_time: k8s_openapi::apimachinery::pkg::apis::meta::v1::Time(
                jiff::Timestamp::UNIX_EPOCH,
            ),
        };
        client.status = Some(OAuthClientStatus {
            conditions: vec![condition("False", Reason::DuplicateClientId)],
            ..Default::default()
        });
        assert!(client.is_marked_duplicate());
        client.status = Some(OAuthClientStatus {
            conditions: vec![condition("False", Reason::SecretConflict)],
            ..Default::default()
        });
        assert!(!client.is_marked_duplicate());
    }
}
