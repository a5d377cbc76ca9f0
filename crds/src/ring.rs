//! The rotation schedule of a `SigningKey` ring (DESIGN.md §4) as a pure
//! function: given the spec's durations, the keys in `status.keys` and the
//! current time, [`plan`] says what the ring should look like *now*, whether
//! a new key must be generated, which keys to drop and when to look again.
//!
//! No I/O and no clock: the operator calls it from its reconciler, the
//! issuer's standalone mode calls it to rotate in-memory keys.
//!
//! Times are [`jiff::Timestamp`]s. Everything this module writes into a
//! [`KeyStatus`] is a whole second, because Kubernetes `Time` is serialized
//! with second precision: a plan must survive a round trip through status
//! unchanged.
//!
//! Rules:
//! - The first key of an empty ring is `Active` at once.
//! - While a key is `Active` and no successor exists, a successor is created
//!   at `activeSince + rotationInterval - prePublish` as `Pending`, to
//!   activate `prePublish` after its creation (so when the interval ends).
//! - A forced rotation creates a `Pending` successor now, activating
//!   `prePublish` later. If a successor is already pending, it activates no
//!   later than that anyway, so the request is satisfied by it.
//! - When a `Pending` key's `activatesAt` has come, it becomes `Active` and
//!   the previous `Active` becomes `Retired`; both record the actual moment
//!   of the switch (a late switch, e.g. after controller downtime, keeps the
//!   old key signing until then, so its retirement counts from then). A
//!   `Retired` key is dropped `retireAfter` after its `retiresAt`.
//! - Never a moment without an `Active` key: the `Active` key only changes
//!   by a `Pending` key replacing it. A key is never activated before it has
//!   been `Pending` for `prePublish`, however long the controller was down:
//!   an overdue successor is created now and still waits `prePublish`.
//! - Clock skew (`now` before a key's `createdAt`) only delays things: an
//!   `Active` key stays active, a `Pending` key waits for its `activatesAt`,
//!   a `Retired` key is kept until its removal time.
//! - If the ring has no `Active` key (its private key was lost), the
//!   longest-published `Pending` key is promoted at once, else a new key is
//!   made `Active` at once, as for a new ring: signing must go on.

use std::time::Duration;

use jiff::{SignedDuration, Timestamp};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;

use crate::{KeyState, KeyStatus, SigningKeySpec};

/// The durations of a ring, from its spec (defaults applied).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RingPolicy {
    pub rotation_interval: Duration,
    pub pre_publish: Duration,
    pub retire_after: Duration,
}

impl RingPolicy {
    pub fn from_spec(spec: &SigningKeySpec) -> Self {
        RingPolicy {
            rotation_interval: spec.rotation_interval(),
            pre_publish: spec.pre_publish(),
            retire_after: spec.retire_after(),
        }
    }
}

/// Why a new key is needed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum NewKeyReason {
    /// The ring is empty.
    FirstKey,
    /// The active key's interval is ending: its successor is due.
    Scheduled,
    /// A rotation was requested (`sigil.dev/rotate-requested-at`).
    Forced,
    /// No active key and no pending key to promote (keys were lost).
    NoActiveKey,
}

/// A key the caller must generate, persist, and then add with
/// [`Plan::with_new_key`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NewKey {
    pub state: KeyState,
    pub created_at: Timestamp,
    pub activates_at: Timestamp,
    pub reason: NewKeyReason,
}

/// A state change the plan made, for events and logs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Change {
    Activated { kid: String },
    Retired { kid: String },
    Dropped { kid: String },
}

/// What the ring should look like now.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Plan {
    /// The ring to record in status, oldest first (without [`Self::new_key`]).
    pub keys: Vec<KeyStatus>,
    /// The kid that signs; `None` only while the first key is to be made.
    pub active_kid: Option<String>,
    /// A key to generate now.
    pub new_key: Option<NewKey>,
    /// The next instant at which the plan changes by itself (a key
    /// activates, a successor is due, a retired key expires). `None` only
    /// if nothing is scheduled (cannot happen with an active key).
    pub requeue_at: Option<Timestamp>,
    pub changes: Vec<Change>,
}

impl Plan {
    /// Adds the key generated for [`Self::new_key`], after the caller has
    /// stored its private key, and returns the plan to record.
    pub fn with_new_key(mut self, kid: String) -> Plan {
        let Some(new_key) = self.new_key.take() else {
            return self;
        };
        if new_key.state == KeyState::Active {
            self.active_kid = Some(kid.clone());
            self.changes.push(Change::Activated { kid: kid.clone() });
        } else if let Some(active) = self.keys.iter_mut().find(|k| k.state == KeyState::Active) {
            active.retires_at = Some(Time(new_key.activates_at));
        }
        self.keys.push(KeyStatus {
            kid,
            state: new_key.state,
            created_at: Time(new_key.created_at),
            activates_at: Time(new_key.activates_at),
            retires_at: None,
        });
        let next = match new_key.state {
            KeyState::Pending => Some(new_key.activates_at),
            // A new active key's successor is due one interval minus
            // pre-publish later: recompute like `plan` does.
            _ => None,
        };
        self.requeue_at = earliest(self.requeue_at, next);
        self
    }
}

/// Computes the ring at `now`. `forced` is true when a rotation request
/// newer than the last one handled is present (see [`rotation_requested`]);
/// the caller records the request as handled once it has applied this plan.
pub fn plan(policy: &RingPolicy, current: &[KeyStatus], now: Timestamp, forced: bool) -> Plan {
    let pre_publish = signed(policy.pre_publish);
    let interval = signed(policy.rotation_interval);
    let retire_after = signed(policy.retire_after);
    let switch_time = ceil_second(now);

    let mut keys: Vec<KeyStatus> = current.to_vec();
    keys.sort_by(|a, b| {
        (a.activates_at.0, a.created_at.0, &a.kid).cmp(&(b.activates_at.0, b.created_at.0, &b.kid))
    });
    let mut changes = Vec::new();

    // 1. Which key signs now: the latest key that is Active, or Pending and
    //    due. Retired keys never come back.
    let candidate = keys
        .iter()
        .enumerate()
        .filter(|(_, k)| match k.state {
            KeyState::Active => true,
            KeyState::Pending => k.activates_at.0 <= now,
            KeyState::Retired => false,
        })
        .map(|(i, _)| i)
        .next_back();
    let active_index = match candidate {
        Some(i) => Some(i),
        // No active key (lost): promote the longest-published pending key.
        None => keys
            .iter()
            .enumerate()
            .filter(|(_, k)| k.state == KeyState::Pending)
            .min_by_key(|(_, k)| (k.created_at.0, k.activates_at.0))
            .map(|(i, _)| i),
    };

    if let Some(ai) = active_index {
        if keys[ai].state != KeyState::Active {
            // The switch happens now: record when it really happened.
            let since = keys[ai].activates_at.0.max(switch_time);
            keys[ai].state = KeyState::Active;
            keys[ai].activates_at = Time(since);
            keys[ai].retires_at = None;
            changes.push(Change::Activated {
                kid: keys[ai].kid.clone(),
            });
        }
        let since = keys[ai].activates_at.0;
        // Every other key that was signing, or was due before the new
        // active one, is retired from the moment the new one took over.
        for (i, key) in keys.iter_mut().enumerate() {
            if i == ai {
                continue;
            }
            let outranked = match key.state {
                KeyState::Active => true,
                KeyState::Pending => key.activates_at.0 <= now && i < ai,
                KeyState::Retired => false,
            };
            if outranked {
                // It signed (or could have) until the new key took over.
                key.retires_at = Some(Time(since));
                key.state = KeyState::Retired;
                changes.push(Change::Retired {
                    kid: key.kid.clone(),
                });
            }
        }
    }

    // 2. Retired keys leave the ring `retireAfter` after they stopped
    //    signing. A retired key without a time is kept from now on.
    keys.retain_mut(|key| {
        if key.state != KeyState::Retired {
            return true;
        }
        let retired = key.retires_at.get_or_insert(Time(switch_time)).0;
        if retired + retire_after <= now {
            changes.push(Change::Dropped {
                kid: key.kid.clone(),
            });
            false
        } else {
            true
        }
    });

    let active = keys.iter().position(|k| k.state == KeyState::Active);
    let created_at = floor_second(now);
    let mut requeue_at: Option<Timestamp> = None;
    let mut new_key = None;

    match active {
        None => {
            let reason = if keys.is_empty() {
                NewKeyReason::FirstKey
            } else {
                NewKeyReason::NoActiveKey
            };
            new_key = Some(NewKey {
                state: KeyState::Active,
                created_at,
                activates_at: created_at,
                reason,
            });
        }
        Some(ai) => {
            let since = keys[ai].activates_at.0;
            let successor = keys
                .iter()
                .filter(|k| k.state == KeyState::Pending && k.activates_at.0 > since)
                .map(|k| k.activates_at.0)
                .min();
            match successor {
                Some(activates_at) => {
                    keys[ai].retires_at = Some(Time(activates_at));
                }
                None => {
                    keys[ai].retires_at = None;
                    let due = since + interval - pre_publish;
                    if forced || due <= now {
                        // Never before the current key started (skew), and
                        // never before the interval ends unless forced.
                        let mut activates_at = ceil_second(now) + pre_publish;
                        if !forced {
                            activates_at = activates_at.max(since + interval);
                        }
                        activates_at = activates_at.max(since + SignedDuration::from_secs(1));
                        new_key = Some(NewKey {
                            state: KeyState::Pending,
                            created_at,
                            activates_at,
                            reason: if forced {
                                NewKeyReason::Forced
                            } else {
                                NewKeyReason::Scheduled
                            },
                        });
                    } else {
                        requeue_at = earliest(requeue_at, Some(due));
                    }
                }
            }
        }
    }

    // 3. The next moment something changes by itself.
    for key in &keys {
        let next = match key.state {
            KeyState::Pending => Some(key.activates_at.0),
            KeyState::Retired => key.retires_at.as_ref().map(|t| t.0 + retire_after),
            KeyState::Active => None,
        };
        requeue_at = earliest(requeue_at, next);
    }
    if let Some(NewKey {
        state: KeyState::Active,
        created_at,
        ..
    }) = &new_key
    {
        // After the first key, its successor is due one interval later.
        requeue_at = earliest(requeue_at, Some(*created_at + interval - pre_publish));
    }

    Plan {
        active_kid: active.map(|i| keys[i].kid.clone()),
        keys,
        new_key,
        requeue_at,
        changes,
    }
}

/// Whether the `sigil.dev/rotate-requested-at` annotation asks for a
/// rotation not yet handled: it must be an RFC 3339 time newer than
/// `last_handled` (a `last_handled` that does not parse counts as none).
pub fn rotation_requested(
    annotation: Option<&str>,
    last_handled: Option<&str>,
) -> Result<bool, jiff::Error> {
    let Some(annotation) = annotation else {
        return Ok(false);
    };
    let requested: Timestamp = annotation.trim().parse()?;
    let last = last_handled.and_then(|s| s.trim().parse::<Timestamp>().ok());
    Ok(last.is_none_or(|last| requested > last))
}

fn signed(duration: Duration) -> SignedDuration {
    SignedDuration::try_from(duration).unwrap_or(SignedDuration::MAX)
}

fn floor_second(t: Timestamp) -> Timestamp {
    Timestamp::from_second(t.as_second()).unwrap_or(t)
}

fn ceil_second(t: Timestamp) -> Timestamp {
    let floor = floor_second(t);
    if floor == t {
        t
    } else {
        floor + SignedDuration::from_secs(1)
    }
}

fn earliest(a: Option<Timestamp>, b: Option<Timestamp>) -> Option<Timestamp> {
    match (a, b) {
        (Some(a), Some(b)) => Some(a.min(b)),
        (a, None) => a,
        (None, b) => b,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The kids a plan dropped from the ring (its `Dropped` changes).
    fn dropped_kids(p: &Plan) -> Vec<String> {
        p.changes
            .iter()
            .filter_map(|c| match c {
                Change::Dropped { kid } => Some(kid.clone()),
                _ => None,
            })
            .collect()
    }
    use std::collections::HashMap;

    const HOUR: u64 = 3600;
    const DAY: u64 = 24 * HOUR;

    fn policy() -> RingPolicy {
        RingPolicy {
            rotation_interval: Duration::from_secs(30 * DAY),
            pre_publish: Duration::from_secs(DAY),
            retire_after: Duration::from_secs(2 * DAY),
        }
    }

    fn t0() -> Timestamp {
        "2026-01-01T00:00:00Z".parse().expect("valid time")
    }

    fn at(secs: i64) -> Timestamp {
        t0() + SignedDuration::from_secs(secs)
    }

    fn h(hours: i64) -> i64 {
        hours * 3600
    }

    fn d(days: i64) -> i64 {
        days * 86400
    }

    /// Applies a plan like the operator does: generate, persist, record.
    struct Driver {
        policy: RingPolicy,
        keys: Vec<KeyStatus>,
        active: Option<String>,
        counter: u32,
    }

    impl Driver {
        fn new(policy: RingPolicy) -> Self {
            Driver {
                policy,
                keys: Vec::new(),
                active: None,
                counter: 0,
            }
        }

        fn step(&mut self, now: Timestamp, forced: bool) -> Plan {
            let mut plan = plan(&self.policy, &self.keys, now, forced);
            if plan.new_key.is_some() {
                self.counter += 1;
                plan = plan.with_new_key(format!("k{}", self.counter));
            }
            self.keys = plan.keys.clone();
            self.active = plan.active_kid.clone();
            plan
        }

        fn key(&self, kid: &str) -> &KeyStatus {
            self.keys
                .iter()
                .find(|k| k.kid == kid)
                .unwrap_or_else(|| panic!("{kid} is in the ring: {:?}", self.keys))
        }

        fn states(&self) -> Vec<(&str, KeyState)> {
            self.keys
                .iter()
                .map(|k| (k.kid.as_str(), k.state))
                .collect()
        }
    }

    fn key(
        kid: &str,
        state: KeyState,
        created: i64,
        activates: i64,
        retires: Option<i64>,
    ) -> KeyStatus {
        KeyStatus {
            kid: kid.into(),
            state,
            created_at: Time(at(created)),
            activates_at: Time(at(activates)),
            retires_at: retires.map(|r| Time(at(r))),
        }
    }

    #[test]
    fn first_key_is_active_at_once() {
        let p = plan(
            &policy(),
            &[],
            at(0) + SignedDuration::from_millis(700),
            false,
        );
        let new_key = p.new_key.clone().expect("a first key is needed");
        assert_eq!(new_key.reason, NewKeyReason::FirstKey);
        assert_eq!(new_key.state, KeyState::Active);
        assert_eq!(new_key.created_at, at(0), "whole seconds");
        assert_eq!(new_key.activates_at, at(0));
        assert_eq!(p.active_kid, None);
        let p = p.with_new_key("a".into());
        assert_eq!(p.active_kid.as_deref(), Some("a"));
        assert_eq!(p.keys, vec![key("a", KeyState::Active, 0, 0, None)]);
        assert_eq!(p.requeue_at, Some(at(d(29))), "successor due at 30d - 1d");
        assert_eq!(p.changes, vec![Change::Activated { kid: "a".into() }]);
    }

    #[test]
    fn steady_state_changes_nothing_and_waits_for_the_successor() {
        let ring = vec![key("a", KeyState::Active, 0, 0, None)];
        let p = plan(&policy(), &ring, at(d(3)), false);
        assert_eq!(p.keys, ring);
        assert_eq!(p.new_key, None);
        assert!(p.changes.is_empty());
        assert_eq!(p.active_kid.as_deref(), Some("a"));
        assert_eq!(p.requeue_at, Some(at(d(29))));
        // One second early: still nothing.
        let p = plan(&policy(), &ring, at(d(29) - 1), false);
        assert_eq!(p.new_key, None);
    }

    #[test]
    fn successor_is_pending_for_pre_publish_and_activates_when_the_interval_ends() {
        let ring = vec![key("a", KeyState::Active, 0, 0, None)];
        let p = plan(&policy(), &ring, at(d(29)), false);
        let new_key = p.new_key.clone().expect("successor due");
        assert_eq!(new_key.reason, NewKeyReason::Scheduled);
        assert_eq!(new_key.state, KeyState::Pending);
        assert_eq!(new_key.created_at, at(d(29)));
        assert_eq!(new_key.activates_at, at(d(30)));
        let p = p.with_new_key("b".into());
        assert_eq!(
            p.keys,
            vec![
                key("a", KeyState::Active, 0, 0, Some(d(30))),
                key("b", KeyState::Pending, d(29), d(30), None),
            ]
        );
        assert_eq!(
            p.active_kid.as_deref(),
            Some("a"),
            "the old key signs meanwhile"
        );
        assert_eq!(p.requeue_at, Some(at(d(30))));

        // Just before: still pending.
        let before = plan(&policy(), &p.keys, at(d(30) - 1), false);
        assert_eq!(before.keys, p.keys);
        assert_eq!(before.active_kid.as_deref(), Some("a"));

        // At activation: b signs, a is retired from then on.
        let switched = plan(&policy(), &p.keys, at(d(30)), false);
        assert_eq!(
            switched.keys,
            vec![
                key("a", KeyState::Retired, 0, 0, Some(d(30))),
                key("b", KeyState::Active, d(29), d(30), None),
            ]
        );
        assert_eq!(switched.active_kid.as_deref(), Some("b"));
        assert_eq!(
            switched.changes,
            vec![
                Change::Activated { kid: "b".into() },
                Change::Retired { kid: "a".into() }
            ]
        );
        assert_eq!(
            switched.requeue_at,
            Some(at(d(32))),
            "a expires at 30d + 2d"
        );

        // a is published until retireAfter has passed, then dropped.
        let kept = plan(&policy(), &switched.keys, at(d(32) - 1), false);
        assert_eq!(kept.keys, switched.keys);
        let dropped = plan(&policy(), &switched.keys, at(d(32)), false);
        assert_eq!(dropped_kids(&dropped), vec!["a".to_string()]);
        assert_eq!(
            dropped.keys,
            vec![key("b", KeyState::Active, d(29), d(30), None)]
        );
        assert_eq!(
            dropped.requeue_at,
            Some(at(d(59))),
            "b's successor at 30d + 29d"
        );
    }

    #[test]
    fn plans_are_idempotent_and_stable_through_a_status_round_trip() {
        let mut driver = Driver::new(policy());
        let mut now = at(0);
        for _ in 0..40 {
            let p = driver.step(now, false);
            // Re-planning at the same instant changes nothing.
            let again = plan(&policy(), &driver.keys, now, false);
            assert_eq!(again.keys, driver.keys);
            assert_eq!(again.new_key, None);
            assert!(again.changes.is_empty());
            // Through JSON (second precision) the ring is unchanged.
            let json = serde_json::to_string(&driver.keys).expect("serialize");
            let back: Vec<KeyStatus> = serde_json::from_str(&json).expect("deserialize");
            assert_eq!(back, driver.keys);
            now = p.requeue_at.expect("something is always scheduled");
        }
    }

    #[test]
    fn exact_timeline_when_requeues_are_honored() {
        let policy = policy();
        let mut driver = Driver::new(policy);
        let mut now = at(0);
        let mut first_seen: HashMap<String, Timestamp> = HashMap::new();
        let mut activated: HashMap<String, Timestamp> = HashMap::new();
        let mut retired: HashMap<String, Timestamp> = HashMap::new();
        let mut removed: HashMap<String, Timestamp> = HashMap::new();
        while now < at(d(200)) {
            let p = driver.step(now, false);
            for k in &driver.keys {
                first_seen.entry(k.kid.clone()).or_insert(now);
                if k.state == KeyState::Active {
                    activated.entry(k.kid.clone()).or_insert(now);
                }
                if k.state == KeyState::Retired {
                    retired.entry(k.kid.clone()).or_insert(now);
                }
            }
            for kid in &dropped_kids(&p) {
                removed.insert(kid.clone(), now);
            }
            let next = p.requeue_at.expect("scheduled");
            assert!(next > now, "requeue {next} is after {now}");
            now = next;
        }
        // Key n (1-based) signs from (n-1)*30d to n*30d, is published from
        // 1d before, and is dropped 2d after it stopped signing.
        for n in 1..=6i64 {
            let kid = format!("k{n}");
            let start = at((n - 1) * d(30));
            let end = at(n * d(30));
            assert_eq!(activated[&kid], start, "{kid} activation");
            if n > 1 {
                assert_eq!(
                    first_seen[&kid],
                    start - SignedDuration::from_secs(d(1)),
                    "{kid} pre-published"
                );
            }
            assert_eq!(retired[&kid], end, "{kid} retirement");
            assert_eq!(
                removed[&kid],
                end + SignedDuration::from_secs(d(2)),
                "{kid} removal"
            );
        }
    }

    #[test]
    fn forced_rotation_pre_publishes_a_new_key_now() {
        let ring = vec![key("a", KeyState::Active, 0, 0, None)];
        let now = at(d(3) + 17) + SignedDuration::from_millis(200);
        let p = plan(&policy(), &ring, now, true);
        let new_key = p.new_key.clone().expect("forced");
        assert_eq!(new_key.reason, NewKeyReason::Forced);
        assert_eq!(new_key.state, KeyState::Pending);
        assert_eq!(new_key.created_at, at(d(3) + 17));
        // Pending for at least prePublish, counted from the next whole second.
        assert_eq!(new_key.activates_at, at(d(4) + 18));
        let p = p.with_new_key("b".into());
        assert_eq!(p.keys[0].retires_at, Some(Time(at(d(4) + 18))));
        assert_eq!(p.active_kid.as_deref(), Some("a"));

        // A second request while b is pending is satisfied by b.
        let again = plan(&policy(), &p.keys, at(d(3) + 100), true);
        assert_eq!(again.new_key, None);
        assert_eq!(again.keys, p.keys);

        // After the switch a new request rotates again.
        let switched = plan(&policy(), &p.keys, at(d(4) + 18), false);
        assert_eq!(switched.active_kid.as_deref(), Some("b"));
        let forced = plan(&policy(), &switched.keys, at(d(5)), true);
        assert_eq!(forced.new_key.map(|k| k.activates_at), Some(at(d(6))));
    }

    #[test]
    fn forced_rotation_of_a_brand_new_ring_just_makes_the_first_key() {
        let p = plan(&policy(), &[], at(0), true);
        let new_key = p.new_key.expect("first key");
        assert_eq!(new_key.state, KeyState::Active);
        assert_eq!(new_key.reason, NewKeyReason::FirstKey);
    }

    #[test]
    fn controller_down_for_several_intervals_still_pre_publishes() {
        // a has been active for 100 days; nobody created its successor.
        let ring = vec![key("a", KeyState::Active, 0, 0, None)];
        let now = at(d(100));
        let p = plan(&policy(), &ring, now, false);
        let new_key = p.new_key.clone().expect("successor overdue");
        assert_eq!(
            new_key.state,
            KeyState::Pending,
            "never activates an unpublished key"
        );
        assert_eq!(new_key.activates_at, at(d(101)));
        let p = p.with_new_key("b".into());
        assert_eq!(
            p.active_kid.as_deref(),
            Some("a"),
            "the old key keeps signing"
        );
        assert_eq!(p.requeue_at, Some(at(d(101))));
    }

    #[test]
    fn controller_down_past_an_activation_retires_from_the_actual_switch() {
        // b was due at 30d; the controller comes back at 95d. a signed
        // until now, so it must stay published retireAfter from now.
        let ring = vec![
            key("a", KeyState::Active, 0, 0, Some(d(30))),
            key("b", KeyState::Pending, d(29), d(30), None),
        ];
        let now = at(d(95)) + SignedDuration::from_millis(300);
        let p = plan(&policy(), &ring, now, false);
        assert_eq!(p.active_kid.as_deref(), Some("b"));
        assert!(
            dropped_kids(&p).is_empty(),
            "a is not dropped right after it stopped signing"
        );
        assert_eq!(
            p.keys,
            vec![
                key("a", KeyState::Retired, 0, 0, Some(d(95) + 1)),
                key("b", KeyState::Active, d(29), d(95) + 1, None),
            ]
        );
        // b's successor: one interval after b really started.
        assert_eq!(p.requeue_at, Some(at(d(95) + 1 + d(2))));
        let later = plan(&policy(), &p.keys, at(d(97) + 1), false);
        assert_eq!(dropped_kids(&later), vec!["a".to_string()]);
        assert_eq!(later.requeue_at, Some(at(d(95) + 1 + d(29))));
    }

    #[test]
    fn controller_down_past_a_removal_drops_expired_keys() {
        let ring = vec![
            key("a", KeyState::Retired, 0, 0, Some(d(30))),
            key("b", KeyState::Active, d(29), d(30), None),
        ];
        let p = plan(&policy(), &ring, at(d(40)), false);
        assert_eq!(dropped_kids(&p), vec!["a".to_string()]);
        assert_eq!(p.active_kid.as_deref(), Some("b"));
    }

    #[test]
    fn clock_skew_never_breaks_the_ring() {
        // The clock went back an hour before every time in status.
        let ring = vec![
            key("a", KeyState::Retired, 0, 0, Some(d(30))),
            key("b", KeyState::Active, d(29), d(30), Some(d(60))),
            key("c", KeyState::Pending, d(59), d(60), None),
        ];
        let skewed = at(d(29) - h(1));
        let p = plan(&policy(), &ring, skewed, false);
        assert_eq!(
            p.keys, ring,
            "an active key stays active, nothing is dropped early"
        );
        assert_eq!(p.active_kid.as_deref(), Some("b"));
        assert_eq!(p.new_key, None);
        assert!(p.requeue_at.expect("scheduled") > skewed);

        // A forced rotation under skew still orders after the active key.
        let ring = vec![key("a", KeyState::Active, d(10), d(10), None)];
        let p = plan(&policy(), &ring, at(d(5)), true);
        let new_key = p.new_key.clone().expect("forced");
        assert!(new_key.activates_at > at(d(10)));
        let p = p.with_new_key("b".into());
        // Once time reaches the new key's activation, it takes over.
        let switched = plan(&policy(), &p.keys, new_key.activates_at, false);
        assert_eq!(switched.active_kid.as_deref(), Some("b"));

        // A pending key created "in the future" waits for its activation.
        let ring = vec![
            key("a", KeyState::Active, 0, 0, Some(d(30))),
            key("b", KeyState::Pending, d(29), d(30), None),
        ];
        let p = plan(&policy(), &ring, at(d(28)), false);
        assert_eq!(p.keys, ring);
        assert_eq!(p.requeue_at, Some(at(d(30))));
    }

    #[test]
    fn a_lost_active_key_is_replaced_without_a_gap() {
        // Only a pending key is left: it is promoted at once.
        let ring = vec![key("b", KeyState::Pending, d(29), d(30), None)];
        let p = plan(&policy(), &ring, at(d(29) + h(1)), false);
        assert_eq!(p.active_kid.as_deref(), Some("b"));
        assert_eq!(p.keys[0].state, KeyState::Active);
        assert_eq!(p.new_key, None);

        // Only retired keys are left: a new active key is needed at once.
        let ring = vec![key("a", KeyState::Retired, 0, 0, Some(d(30)))];
        let p = plan(&policy(), &ring, at(d(31)), false);
        let new_key = p.new_key.clone().expect("a signing key is needed");
        assert_eq!(new_key.reason, NewKeyReason::NoActiveKey);
        assert_eq!(new_key.state, KeyState::Active);
        let p = p.with_new_key("c".into());
        assert_eq!(p.active_kid.as_deref(), Some("c"));
        assert_eq!(p.keys.len(), 2, "the retired key is still published");
    }

    #[test]
    fn two_active_keys_collapse_to_the_newest() {
        let ring = vec![
            key("a", KeyState::Active, 0, 0, None),
            key("b", KeyState::Active, d(29), d(30), None),
        ];
        let p = plan(&policy(), &ring, at(d(31)), false);
        assert_eq!(p.active_kid.as_deref(), Some("b"));
        assert_eq!(p.keys[0].state, KeyState::Retired);
        assert_eq!(p.keys[0].retires_at, Some(Time(at(d(30)))));
    }

    #[test]
    fn short_test_intervals_in_seconds() {
        let policy = RingPolicy {
            rotation_interval: Duration::from_secs(20),
            pre_publish: Duration::from_secs(5),
            retire_after: Duration::from_secs(8),
        };
        let mut driver = Driver::new(policy);
        driver.step(at(0), false);
        assert_eq!(driver.states(), vec![("k1", KeyState::Active)]);
        driver.step(at(15), false);
        assert_eq!(
            driver.states(),
            vec![("k1", KeyState::Active), ("k2", KeyState::Pending)]
        );
        assert_eq!(driver.key("k2").activates_at, Time(at(20)));
        driver.step(at(20), false);
        assert_eq!(
            driver.states(),
            vec![("k1", KeyState::Retired), ("k2", KeyState::Active)]
        );
        driver.step(at(28), false);
        assert_eq!(driver.states(), vec![("k2", KeyState::Active)]);
    }

    /// A random walk through time (monotonic, with gaps up to several
    /// intervals and random forced rotations) checking the invariants.
    #[test]
    fn random_walk_keeps_every_invariant() {
        let policy = RingPolicy {
            rotation_interval: Duration::from_secs(100),
            pre_publish: Duration::from_secs(10),
            retire_after: Duration::from_secs(30),
        };
        let mut rng: u64 = 0x9e37_79b9_7f4a_7c15;
        let mut next_random = move || {
            rng ^= rng << 13;
            rng ^= rng >> 7;
            rng ^= rng << 17;
            rng
        };
        for run in 0..200 {
            let mut driver = Driver::new(policy);
            let mut now = at(0);
            let mut first_seen: HashMap<String, Timestamp> = HashMap::new();
            let mut last_active: HashMap<String, Timestamp> = HashMap::new();
            let mut gone: Vec<String> = Vec::new();
            for _ in 0..300 {
                let forced = next_random() % 17 == 0;
                let before: Vec<KeyStatus> = driver.keys.clone();
                let p = driver.step(now, forced);
                // Exactly one active key once the ring exists.
                let active: Vec<&KeyStatus> = driver
                    .keys
                    .iter()
                    .filter(|k| k.state == KeyState::Active)
                    .collect();
                assert_eq!(active.len(), 1, "run {run} at {now}: {:?}", driver.keys);
                assert_eq!(driver.active.as_deref(), Some(active[0].kid.as_str()));
                for k in &driver.keys {
                    assert!(!gone.contains(&k.kid), "a dropped key never comes back");
                    first_seen.entry(k.kid.clone()).or_insert(now);
                    for t in [
                        Some(&k.created_at),
                        Some(&k.activates_at),
                        k.retires_at.as_ref(),
                    ]
                    .into_iter()
                    .flatten()
                    {
                        assert_eq!(t.0.subsec_nanosecond(), 0, "whole seconds");
                    }
                }
                // A key that starts signing was published prePublish before
                // (the first key of the ring excepted).
                let active_kid = active[0].kid.clone();
                let was_active_before = before
                    .iter()
                    .any(|k| k.kid == active_kid && k.state == KeyState::Active);
                if !was_active_before && !before.is_empty() {
                    let published = first_seen[&active_kid];
                    assert!(
                        now.duration_since(published)
                            >= SignedDuration::try_from(policy.pre_publish).expect("fits"),
                        "run {run}: {active_kid} activated at {now}, published at {published}"
                    );
                }
                for k in &driver.keys {
                    if k.state == KeyState::Active {
                        last_active.insert(k.kid.clone(), now);
                    }
                }
                // A dropped key stopped signing at least retireAfter ago.
                for kid in &dropped_kids(&p) {
                    let last = last_active.get(kid).copied().unwrap_or(first_seen[kid]);
                    assert!(
                        now.duration_since(last)
                            >= SignedDuration::try_from(policy.retire_after).expect("fits"),
                        "run {run}: {kid} dropped at {now}, last active at {last}"
                    );
                    gone.push(kid.clone());
                }
                // Retired keys are never re-activated; pending keys activate
                // in order; nothing is due in the past.
                let requeue = p.requeue_at.expect("always something scheduled");
                assert!(requeue > now, "run {run}: requeue {requeue} after {now}");
                // Step: usually to the requeue time or a little after, sometimes
                // a long gap (the controller was down).
                let step = match next_random() % 10 {
                    0 => (next_random() % 500) as i64,
                    1..=3 => (next_random() % 20) as i64,
                    _ => requeue.duration_since(now).as_secs() + (next_random() % 3) as i64,
                };
                now += SignedDuration::from_secs(step.max(1));
            }
        }
    }

    #[test]
    fn rotation_requests_are_compared_as_times() {
        assert!(!rotation_requested(None, None).expect("ok"));
        assert!(rotation_requested(Some("2026-01-01T00:00:00Z"), None).expect("ok"));
        assert!(
            rotation_requested(Some("2026-01-02T00:00:00Z"), Some("2026-01-01T00:00:00Z"))
                .expect("ok")
        );
        assert!(
            !rotation_requested(Some("2026-01-01T00:00:00Z"), Some("2026-01-01T00:00:00Z"))
                .expect("ok")
        );
        assert!(
            !rotation_requested(
                Some("2026-01-01T01:00:00+01:00"),
                Some("2026-01-01T00:00:00Z")
            )
            .expect("ok")
        );
        assert!(
            !rotation_requested(Some("2025-12-31T00:00:00Z"), Some("2026-01-01T00:00:00Z"))
                .expect("ok")
        );
        assert!(rotation_requested(Some("2026-01-01T00:00:00Z"), Some("garbage")).expect("ok"));
        assert!(rotation_requested(Some("yesterday"), None).is_err());
    }
}
