use super::*;
use crate::oauth_client::DeniedKind;

fn resource(ns: &str, name: &str, created: i64, spec: serde_json::Value) -> OAuthResource {
    let mut r = OAuthResource::new(name, serde_json::from_value(spec).expect("resource spec"));
    r.metadata.namespace = Some(ns.into());
    r.metadata.creation_timestamp = Some(k8s_openapi::apimachinery::pkg::apis::meta::v1::Time(
        jiff::Timestamp::from_second(created).expect("time"),
    ));
    r
}

fn calendar() -> OAuthResource {
    resource(
        "calendar",
        "calendar-api",
        100,
        serde_json::json!({
            "audience": "event",
            "scopes": [{"name": "event.read"}, {"name": "event.create"}],
            "grants": [
                {"namespaces": ["tasks"], "scopes": ["event.read"]},
                {"namespaceSelector": {"matchLabels": {"team": "planning"}},
                 "scopes": ["event.read", "event.create"], "claims": ["roles"]},
            ],
        }),
    )
}

fn spec(v: serde_json::Value) -> OAuthClientSpec {
    serde_json::from_value(v).expect("client spec")
}

fn ns<'a>(name: &'a str, labels: &'a BTreeMap<String, String>) -> ClientNamespace<'a> {
    ClientNamespace { name, labels }
}

fn names(denied: &[Denial], kind: DeniedKind) -> Vec<&str> {
    denied
        .iter()
        .filter(|d| d.kind == kind)
        .map(|d| d.name.as_str())
        .collect()
}

#[test]
fn a_named_namespace_gets_only_the_scopes_granted_to_it() {
    let resources = [calendar()];
    let holders = holders(&resources);
    let labels = BTreeMap::new();
    let grant = effective_grant(
        &spec(serde_json::json!({
            "audiences": ["event"], "scopes": ["event.read", "event.create"],
        })),
        ns("tasks", &labels),
        &holders,
        UnclaimedAudiences::Open,
    );
    assert_eq!(grant.audiences, ["event"]);
    assert_eq!(grant.scopes, ["event.read"]);
    assert_eq!(names(&grant.denied, DeniedKind::Scope), ["event.create"]);
    assert!(
        grant.denied[0]
            .reason
            .contains("calendar/calendar-api which does not grant it to namespace tasks"),
        "{:?}",
        grant.denied
    );
}

#[test]
fn a_selected_namespace_gets_the_union_of_its_grants() {
    let resources = [calendar()];
    let holders = holders(&resources);
    let labels = BTreeMap::from([("team".to_owned(), "planning".to_owned())]);
    let grant = effective_grant(
        &spec(serde_json::json!({
            "audiences": ["event"], "scopes": ["event.read", "event.create"],
            "additionalClaims": {"roles": ["admin"], "stt": 1, "groups": ["x"]},
        })),
        ns("tasks", &labels),
        &holders,
        UnclaimedAudiences::Closed,
    );
    assert_eq!(grant.scopes, ["event.read", "event.create"]);
    assert_eq!(grant.claims, ["roles", "stt"]);
    assert_eq!(names(&grant.denied, DeniedKind::Claim), ["groups"]);
}

#[test]
fn a_namespace_outside_every_grant_gets_neither_audience_nor_scopes() {
    let resources = [calendar()];
    let holders = holders(&resources);
    let labels = BTreeMap::new();
    let grant = effective_grant(
        &spec(serde_json::json!({
            "audiences": ["event"], "scopes": ["event.read"],
            "additionalClaims": {"roles": ["admin"]},
        })),
        ns("sandbox", &labels),
        &holders,
        UnclaimedAudiences::Open,
    );
    assert!(grant.audiences.is_empty() && grant.scopes.is_empty() && grant.claims.is_empty());
    assert_eq!(names(&grant.denied, DeniedKind::Audience), ["event"]);
    assert_eq!(names(&grant.denied, DeniedKind::Scope), ["event.read"]);
    assert_eq!(names(&grant.denied, DeniedKind::Claim), ["roles"]);
}

#[test]
fn unclaimed_audiences_follow_the_policy() {
    let resources = [calendar()];
    let holders = holders(&resources);
    let labels = BTreeMap::new();
    let request = spec(serde_json::json!({
        "audiences": ["files"], "scopes": ["file.read", "event.read"],
    }));
    let open = effective_grant(
        &request,
        ns("tasks", &labels),
        &holders,
        UnclaimedAudiences::Open,
    );
    assert_eq!(open.audiences, ["files"]);
    // A scope someone defines stays theirs even when the policy is open.
    assert_eq!(open.scopes, ["file.read"]);
    assert!(
        open.denied[0]
            .reason
            .contains("for audience event, which this client does not request")
    );
    let closed = effective_grant(
        &request,
        ns("tasks", &labels),
        &holders,
        UnclaimedAudiences::Closed,
    );
    assert!(closed.audiences.is_empty() && closed.scopes.is_empty());
    assert_eq!(names(&closed.denied, DeniedKind::Audience), ["files"]);
    assert!(
        closed
            .denied
            .iter()
            .any(|d| d.reason.contains("unclaimed audiences are closed"))
    );
}

#[test]
fn the_oldest_claimant_holds_an_audience_ties_go_to_namespace_then_name() {
    let first = calendar();
    let later = resource(
        "sandbox",
        "fake",
        200,
        serde_json::json!({"audience": "event"}),
    );
    let tie_b = resource("b", "x", 50, serde_json::json!({"audience": "file"}));
    let tie_a = resource("a", "y", 50, serde_json::json!({"audience": "file"}));
    let all = [later.clone(), first.clone(), tie_b, tie_a];
    let h = holders(&all);
    assert_eq!(
        ResourceRef::of(h["event"]).to_string(),
        "calendar/calendar-api"
    );
    assert_eq!(ResourceRef::of(h["file"]).to_string(), "a/y");
    // Being deleted hands the audience on.
    let mut going = first;
    going.metadata.deletion_timestamp = going.metadata.creation_timestamp.clone();
    let all = [going, later];
    assert_eq!(
        ResourceRef::of(holders(&all)["event"]).to_string(),
        "sandbox/fake"
    );
}

#[test]
fn grants_name_only_declared_scopes() {
    let r = resource(
        "calendar",
        "c",
        1,
        serde_json::json!({
            "audience": "event", "scopes": [{"name": "event.read"}],
            "grants": [{"namespaces": ["tasks"], "scopes": ["event.read", "event.admin"]}],
        }),
    );
    let all = [r];
    let labels = BTreeMap::new();
    let grant = effective_grant(
        &spec(serde_json::json!({"audiences": ["event"], "scopes": ["event.admin"]})),
        ns("tasks", &labels),
        &holders(&all),
        UnclaimedAudiences::Open,
    );
    // Undeclared, so nobody defines it: open lets it through as any
    // undefined scope, closed would not.
    assert_eq!(grant.scopes, ["event.admin"]);
    let grant = effective_grant(
        &spec(serde_json::json!({"audiences": ["event"], "scopes": ["event.admin"]})),
        ns("tasks", &labels),
        &holders(&all),
        UnclaimedAudiences::Closed,
    );
    assert!(grant.scopes.is_empty());
}

#[test]
fn client_ids_stay_in_their_namespace_unless_the_namespace_allows_more() {
    assert!(check_client_id("task-service.tasks", "tasks", None).is_ok());
    assert!(check_client_id("a.b.tasks", "tasks", None).is_ok());
    let err = check_client_id("task-service.tasks", "sandbox", None).unwrap_err();
    assert!(
        err.contains("<name>.sandbox") && err.contains(CLIENT_IDS_ANNOTATION),
        "{err}"
    );
    assert!(check_client_id("tasks", "tasks", None).is_err());
    assert!(check_client_id(".tasks", "tasks", None).is_err());
    assert!(check_client_id("xtasks", "tasks", None).is_err());
    let allowed = Some("legacy-app, partner-*");
    assert!(check_client_id("legacy-app", "sandbox", allowed).is_ok());
    assert!(check_client_id("partner-1", "sandbox", allowed).is_ok());
    assert!(check_client_id("legacy-app2", "sandbox", allowed).is_err());
}

#[test]
fn the_recorded_grant_shrinks_with_the_spec_at_once() {
    let mut client = OAuthClient::new(
        "a",
        spec(serde_json::json!({"audiences": ["event"], "scopes": ["event.read"]})),
    );
    assert_eq!(client.recorded_grant(), None);
    client.status = Some(crate::OAuthClientStatus {
        grant: Some(EffectiveGrant {
            audiences: vec!["event".into(), "file".into()],
            scopes: vec!["event.read".into(), "event.create".into()],
            claims: vec!["roles".into()],
            denied: Vec::new(),
        }),
        ..Default::default()
    });
    let grant = client.recorded_grant().expect("grant");
    assert_eq!(grant.audiences, ["event"]);
    assert_eq!(grant.scopes, ["event.read"]);
    assert!(grant.claims.is_empty());
}
