//! What the operator needs to apply the tenant boundary to a client
//! (`sigil_crds::grant`): every OAuthResource, every Namespace's labels and
//! annotations (metadata only), and the unclaimed-audience policy. Also
//! which clients a change of either concerns, so a grant takes effect
//! without anyone touching the client.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::sync::Mutex;
use std::time::Duration;

use k8s_openapi::api::core::v1::Namespace;
use kube::ResourceExt;
use kube::core::PartialObjectMeta;
use kube::runtime::reflector::{ObjectRef, Store};
use sigil_crds::grant::{
    self, CLIENT_IDS_ANNOTATION, ClientNamespace, UnclaimedAudiences, check_client_id,
};
use sigil_crds::{EffectiveGrant, OAuthClient, OAuthResource};

use crate::context::Error;

/// How long a reconcile waits for the first list of OAuthResources and
/// Namespaces before it fails and is retried with the usual backoff
/// (granting from a partial list would deny, then grant, and tell users so
/// in Events). Short: a waiting reconcile can hold up the watches it waits
/// for (a 10 s wait held the first reconciles after a leader change for
/// the full 10 s on a cold CI run); the retry finds the lists done.
const FIRST_LIST_TIMEOUT: Duration = Duration::from_secs(1);

pub struct GrantSources {
    pub resources: Store<OAuthResource>,
    pub namespaces: Store<PartialObjectMeta<Namespace>>,
    pub unclaimed: UnclaimedAudiences,
}

impl GrantSources {
    async fn ready(&self) -> Result<(), Error> {
        let both = async {
            self.resources.wait_until_ready().await.ok();
            self.namespaces.wait_until_ready().await.ok();
        };
        tokio::time::timeout(FIRST_LIST_TIMEOUT, both)
            .await
            .map_err(|_| Error::NotRead("OAuthResources and Namespaces are not listed yet".into()))
    }

    fn namespace(&self, name: &str) -> Result<std::sync::Arc<PartialObjectMeta<Namespace>>, Error> {
        self.namespaces
            .get(&ObjectRef::new(name))
            .ok_or_else(|| Error::NotRead(format!("namespace {name} is not in the cache yet")))
    }

    /// Whether the client may use its client id (`Err` names the rule).
    pub async fn check_client_id(&self, client: &OAuthClient) -> Result<Result<(), String>, Error> {
        self.ready().await?;
        Ok(self.id_allowed(client))
    }

    /// The same check on cached data only, for filtering claimants of an
    /// id: a client whose namespace is not cached yet counts as allowed.
    pub fn id_allowed(&self, client: &OAuthClient) -> Result<(), String> {
        let namespace = client.namespace().unwrap_or_default();
        let allowed = self
            .namespaces
            .get(&ObjectRef::new(&namespace))
            .and_then(|ns| ns.annotations().get(CLIENT_IDS_ANNOTATION).cloned());
        check_client_id(&client.client_id(), &namespace, allowed.as_deref())
    }

    /// Requested ∩ granted for `client` now.
    pub async fn effective(&self, client: &OAuthClient) -> Result<EffectiveGrant, Error> {
        self.ready().await?;
        let name = client.namespace().unwrap_or_default();
        let namespace = self.namespace(&name)?;
        let resources = self.resources.state();
        let holders = grant::holders(resources.iter().map(|r| r.as_ref()));
        Ok(grant::effective_grant(
            &client.spec,
            ClientNamespace {
                name: &name,
                labels: namespace.labels(),
            },
            &holders,
            self.unclaimed,
        ))
    }
}

/// The audiences and scopes an OAuthResource names.
fn names_of(resource: &OAuthResource) -> BTreeSet<String> {
    std::iter::once(resource.spec.audience.clone())
        .chain(resource.spec.scopes.iter().map(|s| s.name.clone()))
        .collect()
}

/// Maps an OAuthResource change to the clients it can concern: those
/// requesting its audience or one of its scopes, now or before the change
/// (it remembers what each resource named last).
#[derive(Default)]
pub struct ResourceFanout {
    last: Mutex<HashMap<String, BTreeSet<String>>>,
}

impl ResourceFanout {
    pub fn clients(
        &self,
        resource: &OAuthResource,
        clients: &Store<OAuthClient>,
    ) -> Vec<ObjectRef<OAuthClient>> {
        let uid = resource.uid().unwrap_or_default();
        let mut names = names_of(resource);
        {
            let mut last = self.last.lock().unwrap_or_else(|p| p.into_inner());
            if let Some(before) = last.get(&uid) {
                names.extend(before.iter().cloned());
            }
            if resource.metadata.deletion_timestamp.is_some() {
                last.remove(&uid);
            } else {
                last.insert(uid, names_of(resource));
            }
        }
        clients
            .state()
            .iter()
            .filter(|c| {
                c.spec.audiences.iter().any(|a| names.contains(a))
                    || c.spec.scopes.iter().any(|s| names.contains(s))
            })
            .map(|c| ObjectRef::from_obj(c.as_ref()))
            .collect()
    }
}

/// The clients of a namespace whose labels or annotations changed.
pub fn clients_in(
    namespace: &PartialObjectMeta<Namespace>,
    clients: &Store<OAuthClient>,
) -> Vec<ObjectRef<OAuthClient>> {
    let name = namespace.name_any();
    clients
        .state()
        .iter()
        .filter(|c| c.namespace().as_deref() == Some(name.as_str()))
        .map(|c| ObjectRef::from_obj(c.as_ref()))
        .collect()
}

/// What a namespace contributes to grants: a change of anything else (its
/// status, managed fields) reconciles nobody.
pub fn namespace_grant_inputs(
    namespace: &PartialObjectMeta<Namespace>,
) -> (BTreeMap<String, String>, Option<String>) {
    (
        namespace.labels().clone(),
        namespace.annotations().get(CLIENT_IDS_ANNOTATION).cloned(),
    )
}
