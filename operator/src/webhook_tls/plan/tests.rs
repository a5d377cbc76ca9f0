use std::collections::BTreeMap;

use jiff::SignedDuration;

use super::*;

const MIN: Duration = Duration::from_secs(60);
const DAY: Duration = Duration::from_secs(86_400);

fn settings() -> Settings {
    Settings {
        cert_validity: 90 * DAY,
        ca_validity: 365 * DAY,
        overlap: 2 * MIN,
    }
}

fn t(secs: i64) -> Timestamp {
    Timestamp::from_second(1_800_000_000 + secs).expect("in range")
}

fn secs(d: Duration) -> i64 {
    d.as_secs() as i64
}

fn ca(id: &str, not_before: Timestamp, life: Duration) -> CaView {
    CaView {
        id: id.to_owned(),
        not_before,
        not_after: after(not_before, life),
    }
}

fn serving(issuer: &str, not_before: Timestamp, life: Duration) -> ServingView {
    ServingView {
        issuer: Some(issuer.to_owned()),
        not_before,
        not_after: after(not_before, life),
        names_match: true,
        key_matches: true,
    }
}

/// A steady state at `t(0)`: CA `a` and a certificate from it, both fresh.
fn steady() -> Observed {
    Observed {
        active: Some(ca("a", t(0), 365 * DAY)),
        serving: Some(serving("a", t(0), 90 * DAY)),
        published: true,
        ..Default::default()
    }
}

/// Phase 1 at its start `since`: `b` is trusted, `a` still signs.
fn phase1(since: Timestamp) -> Observed {
    Observed {
        active: Some(ca("a", t(0), 365 * DAY)),
        next: Some(ca("b", t(-60), 365 * DAY)),
        next_since: Some(since),
        serving: Some(serving("a", since, 90 * DAY)),
        published: true,
        ..Default::default()
    }
}

/// Phase 2 at its start `since`: `b` signs, `a` is still trusted.
fn phase2(since: Timestamp) -> Observed {
    Observed {
        active: Some(ca("b", t(0), 365 * DAY)),
        retiring: vec![ca("a", t(0) - 300 * DAY, 365 * DAY)],
        retiring_since: Some(since),
        serving: Some(serving("b", since, 90 * DAY)),
        published: true,
        ..Default::default()
    }
}

fn existing(id: &str) -> Ca {
    Ca::Existing(id.to_owned())
}

#[test]
fn first_run_makes_a_ca_and_a_certificate_at_once() {
    let p = plan(&Observed::default(), t(0), &settings());
    assert_eq!(p.active, Ca::New);
    assert_eq!(p.next, None);
    assert!(p.retiring.is_empty());
    assert_eq!(p.reissue, Some(Reissue::Missing));
    assert_eq!(p.changes, vec![CaChange::Bootstrap]);
    assert!(p.generates_ca());
}

#[test]
fn steady_state_changes_nothing_and_wakes_up_within_the_cap() {
    let p = plan(&steady(), t(3600 * 24), &settings());
    assert_eq!(p.active, existing("a"));
    assert_eq!(p.next, None);
    assert_eq!(p.reissue, None);
    assert!(p.changes.is_empty());
    assert!(!p.generates_ca());
    assert_eq!(p.requeue_at, t(3600 * 25), "capped at MAX_REQUEUE");
}

#[test]
fn wakes_up_exactly_at_the_renewal_point_when_it_is_near() {
    let renew = t(secs(90 * DAY) * 2 / 3);
    let p = plan(
        &steady(),
        renew - SignedDuration::from_secs(10),
        &settings(),
    );
    assert_eq!(p.reissue, None);
    assert_eq!(p.requeue_at, renew);
}

#[test]
fn serving_certificate_is_renewed_at_two_thirds_of_its_life() {
    let renew = t(secs(90 * DAY) * 2 / 3);
    let before = plan(&steady(), renew - SignedDuration::from_secs(1), &settings());
    assert_eq!(before.reissue, None);
    let at = plan(&steady(), renew, &settings());
    assert_eq!(at.reissue, Some(Reissue::RenewalDue));
    assert_eq!(at.active, existing("a"), "renewal keeps the CA");
    assert!(at.changes.is_empty());
}

#[test]
fn serving_certificate_is_reissued_for_every_defect() {
    type Edit = fn(&mut ServingView);
    let cases: [(Edit, Reissue); 5] = [
        (|s| s.key_matches = false, Reissue::KeyMismatch),
        (|s| s.names_match = false, Reissue::NamesChanged),
        (|s| s.issuer = None, Reissue::WrongIssuer),
        (
            |s| s.issuer = Some("someone-else".into()),
            Reissue::WrongIssuer,
        ),
        (|s| s.not_before = t(3600), Reissue::NotYetValid),
    ];
    for (edit, reason) in cases {
        let mut observed = steady();
        if let Some(s) = observed.serving.as_mut() {
            edit(s);
        }
        let p = plan(&observed, t(60), &settings());
        assert_eq!(p.reissue, Some(reason));
        assert_eq!(p.active, existing("a"), "{reason:?} keeps the CA");
    }
    let mut missing = steady();
    missing.serving = None;
    assert_eq!(
        plan(&missing, t(60), &settings()).reissue,
        Some(Reissue::Missing)
    );
}

#[test]
fn an_expired_serving_certificate_is_reissued_from_the_same_ca() {
    let p = plan(&steady(), t(secs(90 * DAY) + 1), &settings());
    assert_eq!(p.reissue, Some(Reissue::Expired));
    assert_eq!(p.active, existing("a"));
}

#[test]
fn ca_rotation_starts_at_two_thirds_of_the_ca_life_without_touching_the_certificate() {
    let rotate = t(secs(365 * DAY) * 2 / 3);
    let mut observed = steady();
    observed.serving = Some(serving(
        "a",
        rotate - SignedDuration::from_hours(24),
        90 * DAY,
    ));
    let before = plan(
        &observed,
        rotate - SignedDuration::from_secs(1),
        &settings(),
    );
    assert_eq!(before.next, None);
    assert_eq!(before.requeue_at, rotate);

    let p = plan(&observed, rotate, &settings());
    assert_eq!(p.active, existing("a"));
    assert_eq!(p.next, Some(Ca::New));
    assert_eq!(p.next_since, Some(rotate));
    assert_eq!(p.reissue, None, "phase 1 keeps serving from the old CA");
    assert_eq!(p.changes, vec![CaChange::RotationStarted]);
    assert_eq!(p.requeue_at, after(rotate, 2 * MIN));
    assert!(p.generates_ca());
}

#[test]
fn phase_one_waits_a_full_overlap_also_after_a_restart() {
    // A restarted operator (or a new leader) reads the phase start from
    // the CA Secret and keeps waiting for the rest of the overlap.
    let since = t(1000);
    let p = plan(&phase1(since), t(1000 + 119), &settings());
    assert_eq!(p.active, existing("a"));
    assert_eq!(p.next, Some(existing("b")));
    assert_eq!(p.next_since, Some(since));
    assert_eq!(p.reissue, None);
    assert!(p.changes.is_empty());
    assert_eq!(p.requeue_at, t(1000 + 120));
}

#[test]
fn phase_one_restarts_its_clock_while_the_bundle_is_not_published() {
    let mut observed = phase1(t(1000));
    observed.published = false;
    let p = plan(&observed, t(5000), &settings());
    assert_eq!(
        p.active,
        existing("a"),
        "no switch before everyone trusts b"
    );
    assert_eq!(p.next, Some(existing("b")));
    assert_eq!(p.next_since, Some(t(5000)));
    assert_eq!(p.changes, vec![CaChange::ClockRestarted]);
    assert_eq!(p.requeue_at, t(5000 + 120));
}

#[test]
fn a_phase_start_missing_from_the_annotations_starts_now() {
    let mut observed = phase1(t(1000));
    observed.next_since = None;
    let p = plan(&observed, t(5000), &settings());
    assert_eq!(p.next_since, Some(t(5000)));
    assert_eq!(p.active, existing("a"));
}

#[test]
fn phase_two_starts_after_the_overlap_and_reissues_from_the_new_ca() {
    let p = plan(&phase1(t(1000)), t(1000 + 120), &settings());
    assert_eq!(p.active, existing("b"));
    assert_eq!(p.next, None);
    assert_eq!(p.retiring, vec!["a".to_owned()], "the old CA stays trusted");
    assert_eq!(p.retiring_since, Some(t(1120)));
    assert_eq!(p.reissue, Some(Reissue::WrongIssuer));
    assert_eq!(p.changes, vec![CaChange::Switched]);
    assert!(!p.generates_ca());
}

#[test]
fn phase_three_drops_the_old_ca_after_another_overlap() {
    let since = t(2000);
    let waiting = plan(&phase2(since), t(2000 + 119), &settings());
    assert_eq!(waiting.retiring, vec!["a".to_owned()]);
    assert_eq!(waiting.retiring_since, Some(since));
    assert!(waiting.changes.is_empty());
    assert_eq!(waiting.requeue_at, t(2000 + 120));

    let p = plan(&phase2(since), t(2000 + 120), &settings());
    assert_eq!(p.active, existing("b"));
    assert!(p.retiring.is_empty());
    assert_eq!(p.retiring_since, None);
    assert_eq!(p.reissue, None);
    assert_eq!(p.changes, vec![CaChange::Retired]);
}

#[test]
fn phase_two_restarts_its_clock_while_the_bundle_is_not_published() {
    let mut observed = phase2(t(2000));
    observed.published = false;
    let p = plan(&observed, t(9000), &settings());
    assert_eq!(p.retiring, vec!["a".to_owned()]);
    assert_eq!(p.retiring_since, Some(t(9000)));
    assert_eq!(p.changes, vec![CaChange::ClockRestarted]);
}

#[test]
fn a_phase_start_far_in_the_future_is_a_clock_gone_wrong() {
    // Written by a leader whose clock ran a day ahead: start again now
    // rather than wait a day.
    let p = plan(&phase1(t(86_400)), t(0), &settings());
    assert_eq!(p.next_since, Some(t(0)));
    assert_eq!(p.changes, vec![CaChange::ClockRestarted]);
    assert_eq!(p.requeue_at, t(120));

    let p = plan(&phase2(t(86_400)), t(0), &settings());
    assert_eq!(p.retiring_since, Some(t(0)));
    assert_eq!(p.changes, vec![CaChange::ClockRestarted]);
}

#[test]
fn a_phase_start_slightly_in_the_future_is_ordinary_skew_and_waited_for() {
    let since = t(30);
    let p = plan(&phase1(since), t(0), &settings());
    assert_eq!(p.next_since, Some(since));
    assert!(p.changes.is_empty());
    assert_eq!(p.requeue_at, t(150));
}

#[test]
fn a_ca_from_a_clock_ahead_of_ours_is_not_used() {
    // Not yet valid for verifiers with our clock: as good as expired.
    let mut observed = steady();
    observed.active = Some(ca("a", t(3600), 365 * DAY));
    let p = plan(&observed, t(0), &settings());
    assert_eq!(p.active, Ca::New);
    assert_eq!(p.changes, vec![CaChange::Bootstrap]);
    assert_eq!(p.reissue, Some(Reissue::WrongIssuer));
}

#[test]
fn an_expired_signing_ca_hands_over_to_the_trusted_next_one_at_once() {
    let mut observed = phase1(t(1000));
    observed.active = Some(ca("a", t(0), 10 * DAY));
    let p = plan(&observed, t(secs(10 * DAY) + 1), &settings());
    assert_eq!(p.active, existing("b"));
    assert_eq!(p.next, None);
    assert!(p.retiring.is_empty(), "an expired CA is not worth trusting");
    assert_eq!(p.reissue, Some(Reissue::WrongIssuer));
    assert_eq!(p.changes, vec![CaChange::Promoted]);
}

#[test]
fn everything_expired_starts_over_without_waiting() {
    let now = t(secs(2 * 365 * DAY));
    let mut observed = phase2(t(2000));
    observed.active = Some(ca("b", t(0), 365 * DAY));
    let p = plan(&observed, now, &settings());
    assert_eq!(p.active, Ca::New);
    assert!(p.retiring.is_empty());
    assert_eq!(p.retiring_since, None);
    assert_eq!(p.reissue, Some(Reissue::WrongIssuer));
    assert_eq!(p.changes, vec![CaChange::Bootstrap, CaChange::Retired]);
}

#[test]
fn a_lost_ca_secret_keeps_the_published_cas_trusted_for_an_overlap() {
    // The CA Secret was deleted: its key is gone, but the old CA is still
    // in the bundle and the current certificate still verifies with it.
    let observed = Observed {
        orphans: vec![ca("a", t(0), 365 * DAY)],
        serving: Some(serving("a", t(0), 90 * DAY)),
        published: false,
        ..Default::default()
    };
    let p = plan(&observed, t(100), &settings());
    assert_eq!(p.active, Ca::New);
    assert_eq!(p.retiring, vec!["a".to_owned()]);
    assert_eq!(p.retiring_since, Some(t(100)));
    assert_eq!(p.reissue, Some(Reissue::WrongIssuer));
    assert_eq!(p.changes, vec![CaChange::Bootstrap]);
}

#[test]
fn no_new_rotation_while_the_previous_one_is_still_retiring() {
    let rotate = t(secs(365 * DAY) * 2 / 3);
    let mut observed = phase2(rotate - SignedDuration::from_secs(60));
    observed.retiring = vec![ca("a", t(0), 400 * DAY)];
    let p = plan(&observed, rotate, &settings());
    assert_eq!(p.next, None);
    assert_eq!(p.retiring, vec!["a".to_owned()]);
    assert!(
        p.requeue_at > rotate,
        "no busy loop on the held-back rotation"
    );
    assert_eq!(p.requeue_at, rotate + SignedDuration::from_secs(60));
}

#[test]
fn an_expired_retiring_ca_leaves_at_once() {
    let mut observed = phase2(t(2000));
    observed.retiring = vec![ca("a", t(0), 30 * MIN)];
    let p = plan(&observed, t(2000 + 10), &settings());
    assert!(p.retiring.is_empty());
    assert_eq!(p.changes, vec![CaChange::Retired]);
}

#[test]
fn requeue_is_never_in_the_past() {
    let mut observed = steady();
    observed.serving = Some(serving("a", t(0), 90 * DAY));
    for now in [t(0), t(100), t(secs(60 * DAY)), t(secs(400 * DAY))] {
        let p = plan(&observed, now, &settings());
        assert!(p.requeue_at >= now);
        assert!(p.requeue_at <= after(now, MAX_REQUEUE));
    }
}

#[test]
fn a_certificate_never_outlives_its_ca() {
    assert_eq!(serving_not_after(t(0), 90 * DAY, t(100)), t(100));
    assert_eq!(
        serving_not_after(t(0), 90 * DAY, t(secs(365 * DAY))),
        t(secs(90 * DAY))
    );
    assert_eq!(backdate(90 * DAY), Duration::from_secs(300));
    assert_eq!(backdate(Duration::from_secs(30)), Duration::from_secs(3));
}

/// Runs the plan against a simulated operator for hours of simulated time
/// with short lifetimes, so several CA rotations happen, and checks the
/// promise of the module: a client whose trust bundle lags up to (just
/// under) one overlap always verifies a serving certificate that lags as
/// much, and the certificate in use is never expired.
#[test]
fn simulated_rotations_never_fail_a_handshake() {
    let settings = Settings {
        cert_validity: 10 * MIN,
        ca_validity: 30 * MIN,
        overlap: MIN,
    };
    let lag = secs(settings.overlap) - 2;
    let mut cas: BTreeMap<CaId, CaView> = BTreeMap::new();
    let mut minted = 0;
    let mut state = Observed::default();
    // (time, bundle) and (time, issuer of the serving certificate).
    let mut bundles: Vec<(i64, Vec<CaId>)> = Vec::new();
    let mut certs: Vec<(i64, CaId)> = Vec::new();
    let mut counts: BTreeMap<&'static str, u32> = BTreeMap::new();

    let mut now_s = 0i64;
    let end = 4 * 3600;
    while now_s < end {
        let now = t(now_s);
        let p = plan(&state, now, &settings);
        assert!(p.requeue_at >= now);
        for change in &p.changes {
            let key = match change {
                CaChange::Bootstrap => "bootstrap",
                CaChange::RotationStarted => "started",
                CaChange::Switched => "switched",
                CaChange::Retired => "retired",
                CaChange::Promoted => "promoted",
                CaChange::ClockRestarted => "restarted",
            };
            *counts.entry(key).or_default() += 1;
        }
        let mut resolve = |c: &Ca| -> CaView {
            match c {
                Ca::Existing(id) => cas[id].clone(),
                Ca::New => {
                    minted += 1;
                    let nb = now
                        - SignedDuration::try_from(backdate(settings.ca_validity)).expect("small");
                    let view = ca(&format!("ca{minted}"), nb, settings.ca_validity);
                    cas.insert(view.id.clone(), view.clone());
                    view
                }
            }
        };
        let active = resolve(&p.active);
        let next = p.next.as_ref().map(&mut resolve);
        let retiring: Vec<CaView> = p.retiring.iter().map(|id| cas[id].clone()).collect();
        let mut bundle = vec![active.id.clone()];
        bundle.extend(next.iter().map(|c| c.id.clone()));
        bundle.extend(retiring.iter().map(|c| c.id.clone()));
        assert!(bundle.len() <= 2, "at most two CAs at a time: {bundle:?}");
        if p.reissue.is_some() {
            let na = serving_not_after(now, settings.cert_validity, active.not_after);
            let lifetime = Duration::try_from(na.duration_since(now)).expect("ahead");
            let nb = now - SignedDuration::try_from(backdate(lifetime)).expect("small");
            state.serving = Some(ServingView {
                issuer: Some(active.id.clone()),
                not_before: nb,
                not_after: na,
                names_match: true,
                key_matches: true,
            });
            certs.push((now_s, active.id.clone()));
        }
        if bundles.last().map(|(_, b)| b) != Some(&bundle) {
            bundles.push((now_s, bundle.clone()));
        }
        state.active = Some(active);
        state.next = next;
        state.next_since = p.next_since;
        state.retiring = retiring;
        state.retiring_since = p.retiring_since;
        state.published = true;

        let serving = state.serving.clone().expect("a serving certificate");
        assert!(serving.not_before <= now && now < serving.not_after);

        // Every bundle and every certificate in use within the last `lag`
        // seconds (as lagging clients and a lagging issuer see them) agree.
        let recent_bundles = in_effect_since(&bundles, now_s - lag);
        let recent_certs = in_effect_since(&certs, now_s - lag);
        for bundle in &recent_bundles {
            for issuer in &recent_certs {
                assert!(
                    bundle.contains(issuer),
                    "at {now_s}s a client trusting {bundle:?} meets a certificate from {issuer}"
                );
            }
        }

        // Step to the next due moment (or a few seconds, to also look in
        // between), like the real loop.
        let requeue = p.requeue_at.duration_since(now).as_secs().max(1);
        now_s += requeue.min(7);
    }
    assert_eq!(counts.get("bootstrap"), Some(&1));
    assert!(
        counts.get("started").copied().unwrap_or(0) >= 5,
        "{counts:?}"
    );
    assert_eq!(counts.get("started"), counts.get("switched"), "{counts:?}");
    assert!(
        counts.get("retired").copied().unwrap_or(0) >= 5,
        "{counts:?}"
    );
    assert_eq!(counts.get("promoted"), None, "{counts:?}");
    assert_eq!(counts.get("restarted"), None, "{counts:?}");
}

/// The entries of a time-ordered history in effect at some moment since
/// `from`: each lasts until the next one starts.
fn in_effect_since<T>(history: &[(i64, T)], from: i64) -> Vec<&T> {
    history
        .iter()
        .enumerate()
        .filter(|(i, _)| history.get(i + 1).is_none_or(|(next, _)| *next > from))
        .map(|(_, (_, item))| item)
        .collect()
}

/// A certificate issued now, as `pki::issue_serving` makes it.
fn fresh(issuer: &str, now: Timestamp, validity: Duration, ca_not_after: Timestamp) -> ServingView {
    let not_after = serving_not_after(now, validity, ca_not_after);
    let lifetime = Duration::try_from(not_after.duration_since(now)).expect("ahead");
    ServingView {
        issuer: Some(issuer.to_owned()),
        not_before: now - SignedDuration::try_from(backdate(lifetime)).expect("small"),
        not_after,
        names_match: true,
        key_matches: true,
    }
}

#[test]
fn a_fresh_certificate_is_never_due_again_at_once() {
    // Whatever the validity and whatever is left of the CA, a certificate
    // just issued is not renewed in the same moment (no write loop).
    for validity in [Duration::from_secs(10), MIN, 60 * MIN, 90 * DAY] {
        for ca_left in [2, 30, 90, 3600, 86_400 * 400] {
            let now = t(1000);
            let mut observed = steady();
            let ca_not_after = t(1000 + ca_left);
            observed.active = Some(CaView {
                id: "a".into(),
                not_before: t(0),
                not_after: ca_not_after,
            });
            observed.serving = Some(fresh("a", now, validity, ca_not_after));
            let settings = Settings {
                cert_validity: validity,
                ..settings()
            };
            let p = plan(&observed, now, &settings);
            assert_eq!(p.reissue, None, "validity {validity:?}, CA left {ca_left}s");
            assert!(
                p.requeue_at > now,
                "validity {validity:?}, CA left {ca_left}s: busy loop"
            );
        }
    }
}

#[test]
fn a_certificate_ending_with_its_ca_waits_for_the_ca_rotation() {
    // Capped at the CA's end: renewing from the same CA gains nothing.
    let mut observed = steady();
    observed.active = Some(ca("a", t(0), 60 * MIN));
    observed.serving = Some(serving("a", t(secs(40 * MIN)), 20 * MIN));
    let now = t(secs(55 * MIN));
    let p = plan(&observed, now, &settings());
    assert_eq!(p.reissue, None);
    // The CA rotation is what moves things on (started here, at 2/3).
    assert_eq!(p.next, Some(Ca::New));
    assert!(p.requeue_at > now);
}
