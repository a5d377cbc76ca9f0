//! Which OAuthClients claim which `clientId`, kept up to date from the watch
//! events, so the uniqueness check and the re-check of conflicting peers do
//! not scan every client (thousands of clients created together would make
//! that quadratic).

use std::collections::{HashMap, HashSet};

use kube::runtime::reflector::ObjectRef;
use sigil_crds::OAuthClient;

type Ref = ObjectRef<OAuthClient>;

#[derive(Default, Debug)]
pub struct ClientIndex {
    by_id: HashMap<String, HashSet<Ref>>,
    id_of: HashMap<Ref, String>,
    /// Clients currently refused as duplicates.
    duplicates: HashSet<Ref>,
}

impl ClientIndex {
    /// Forgets everything (a re-list rebuilds the index).
    pub fn clear(&mut self) {
        *self = ClientIndex::default();
    }

    /// Records `client`; returns the id it claimed before, if different.
    pub fn upsert(&mut self, client: &OAuthClient) -> Option<String> {
        let key = ObjectRef::from_obj(client);
        let id = client.client_id();
        if client.is_marked_duplicate() {
            self.duplicates.insert(key.clone());
        } else {
            self.duplicates.remove(&key);
        }
        let previous = self.id_of.insert(key.clone(), id.clone());
        if let Some(old) = previous.as_ref().filter(|old| **old != id) {
            self.unlink(old, &key);
        }
        self.by_id.entry(id.clone()).or_default().insert(key);
        previous.filter(|old| *old != id)
    }

    /// Forgets `client`; returns the id it claimed.
    pub fn remove(&mut self, client: &OAuthClient) -> Option<String> {
        let key = ObjectRef::from_obj(client);
        self.duplicates.remove(&key);
        let id = self.id_of.remove(&key)?;
        self.unlink(&id, &key);
        Some(id)
    }

    fn unlink(&mut self, id: &str, key: &Ref) {
        if let Some(set) = self.by_id.get_mut(id) {
            set.remove(key);
            if set.is_empty() {
                self.by_id.remove(id);
            }
        }
    }

    /// The clients claiming `id`.
    pub fn claimants(&self, id: &str) -> Vec<Ref> {
        self.by_id
            .get(id)
            .map(|set| set.iter().cloned().collect())
            .unwrap_or_default()
    }

    /// Who to re-check after `changed` claimed `ids` (its id now and
    /// before): the other claimants of those ids and every client refused
    /// as a duplicate.
    pub fn peers(&self, changed: &Ref, ids: &[&str]) -> HashSet<Ref> {
        ids.iter()
            .filter_map(|id| self.by_id.get(*id))
            .flatten()
            .chain(self.duplicates.iter())
            .filter(|r| *r != changed)
            .cloned()
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use k8s_openapi::apimachinery::pkg::apis::meta::v1::{Condition, Time};

    fn client(ns: &str, name: &str, client_id: Option<&str>) -> OAuthClient {
        let spec =
            serde_json::from_value(serde_json::json!({ "clientId": client_id })).expect("spec");
        let mut c = OAuthClient::new(name, spec);
        c.metadata.namespace = Some(ns.into());
        c
    }

    #[test]
    fn tracks_claims_renames_deletions_and_duplicates() {
        let mut index = ClientIndex::default();
        let a = client("ns", "a", Some("shared"));
        let b = client("other", "b", Some("shared"));
        let c = client("ns", "c", None);
        assert_eq!(index.upsert(&a), None);
        assert_eq!(index.upsert(&b), None);
        assert_eq!(index.upsert(&c), None);
        assert_eq!(index.claimants("shared").len(), 2);
        assert_eq!(index.claimants("c.ns"), vec![ObjectRef::from_obj(&c)]);
        let peers = index.peers(&ObjectRef::from_obj(&a), &["shared"]);
        assert_eq!(peers, HashSet::from([ObjectRef::from_obj(&b)]));

        // b is refused as a duplicate, then renames its id.
        let mut refused = b.clone();
        refused.status = Some(sigil_crds::OAuthClientStatus {
            conditions: vec![Condition {
                type_: "Ready".into(),
                status: "False".into(),
                reason: sigil_crds::Reason::DuplicateClientId.as_str().into(),
                message: String::new(),
                observed_generation: None,
                last_transition_time: Time(jiff::Timestamp::UNIX_EPOCH),
            }],
            ..Default::default()
        });
        index.upsert(&refused);
        let peers = index.peers(&ObjectRef::from_obj(&c), &["c.ns"]);
        assert!(
            peers.contains(&ObjectRef::from_obj(&b)),
            "duplicates are always re-checked"
        );
        let mut renamed = refused.clone();
        renamed.spec.client_id = Some("unique".into());
        assert_eq!(index.upsert(&renamed).as_deref(), Some("shared"));
        assert_eq!(index.claimants("shared"), vec![ObjectRef::from_obj(&a)]);
        assert_eq!(index.claimants("unique").len(), 1);

        assert_eq!(index.remove(&a).as_deref(), Some("shared"));
        assert!(index.claimants("shared").is_empty());
        index.clear();
        assert!(index.claimants("unique").is_empty());
    }
}
