//! What the issuer's serving TLS should look like now: a pure function of
//! what is stored, the time and the settings, so every case (first run,
//! renewal, each CA rotation phase, a restart mid-rotation, clock skew,
//! everything expired) is a unit test.
//!
//! A CA rotation never fails a TLS handshake of a client that refreshes its
//! trust bundle within `overlap`:
//! 1. a new CA is generated and trusted (bundle = old + new); the serving
//!    certificate still comes from the old CA;
//! 2. `overlap` after the bundle was seen published, the serving
//!    certificate is re-issued from the new CA (bundle unchanged);
//! 3. `overlap` after that, the old CA leaves the bundle.
//!
//! Each overlap is counted from a moment the whole bundle was seen
//! published (the issuer's Secret and every webhook's `caBundle`): if it is
//! found stale mid-phase, the clock of that phase starts again.

use std::time::Duration;

use jiff::Timestamp;

/// Identifies a CA certificate (hex SHA-256 of its DER).
pub type CaId = String;

/// A CA certificate's validity, as stored.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CaView {
    pub id: CaId,
    pub not_before: Timestamp,
    pub not_after: Timestamp,
}

impl CaView {
    /// Chains through this CA verify at `now`.
    fn usable_at(&self, now: Timestamp) -> bool {
        self.not_before <= now && now < self.not_after
    }

    /// When to start replacing it: 2/3 of its lifetime.
    fn rotate_at(&self) -> Timestamp {
        two_thirds(self.not_before, self.not_after)
    }
}

/// The serving certificate, as stored.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ServingView {
    /// The stored CA whose key signed it, if any.
    pub issuer: Option<CaId>,
    pub not_before: Timestamp,
    pub not_after: Timestamp,
    /// Its SANs are exactly the desired ones.
    pub names_match: bool,
    /// `tls.key` is its private key.
    pub key_matches: bool,
}

/// Everything the plan reads.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Observed {
    /// The signing CA (CA Secret `ca.crt` with a matching `ca.key`).
    pub active: Option<CaView>,
    /// Phase 1: the new CA (with its key), trusted but not signing yet,
    /// and since when.
    pub next: Option<CaView>,
    pub next_since: Option<Timestamp>,
    /// Phase 2: replaced CAs still trusted, and since when.
    pub retiring: Vec<CaView>,
    pub retiring_since: Option<Timestamp>,
    /// CA certificates in the published bundle that the CA Secret does
    /// not know (it was lost or broken): trusted for one more overlap.
    pub orphans: Vec<CaView>,
    pub serving: Option<ServingView>,
    /// The issuer's Secret `ca.crt` and every webhook's `caBundle` hold
    /// exactly the bundle of `active` + `next` + `retiring`.
    pub published: bool,
}

/// Lifetimes and the overlap.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Settings {
    pub cert_validity: Duration,
    pub ca_validity: Duration,
    pub overlap: Duration,
}

/// A CA in the desired state.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Ca {
    Existing(CaId),
    /// Generate one (at most one per plan).
    New,
}

/// Why the serving certificate is (re-)issued.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Reissue {
    Missing,
    KeyMismatch,
    NamesChanged,
    /// Not signed by the active CA (a CA switch, or edited by hand).
    WrongIssuer,
    NotYetValid,
    Expired,
    RenewalDue,
}

impl Reissue {
    pub fn as_str(self) -> &'static str {
        match self {
            Reissue::Missing => "missing",
            Reissue::KeyMismatch => "key-mismatch",
            Reissue::NamesChanged => "names-changed",
            Reissue::WrongIssuer => "wrong-issuer",
            Reissue::NotYetValid => "not-yet-valid",
            Reissue::Expired => "expired",
            Reissue::RenewalDue => "renewal-due",
        }
    }
}

/// A change of CA, for logs and events.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum CaChange {
    /// No usable CA (first run, lost or expired): a new one signs at once.
    Bootstrap,
    /// Phase 1 started: a new CA is trusted.
    RotationStarted,
    /// Phase 2 started: the new CA signs, the old one is still trusted.
    Switched,
    /// Phase 3: the old CA left the bundle.
    Retired,
    /// The signing CA was unusable; the trusted next CA took over at once.
    Promoted,
    /// A phase's clock started again: its bundle was not (yet) published,
    /// or its start was in the future.
    ClockRestarted,
}

/// The desired state, and when to look again.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Plan {
    pub active: Ca,
    pub next: Option<Ca>,
    pub next_since: Option<Timestamp>,
    pub retiring: Vec<CaId>,
    pub retiring_since: Option<Timestamp>,
    pub reissue: Option<Reissue>,
    pub changes: Vec<CaChange>,
    /// The next moment something is due (a reconcile also runs on every
    /// watched change).
    pub requeue_at: Timestamp,
}

/// Renewal point of a certificate: 2/3 of its lifetime, as cert-manager.
fn two_thirds(not_before: Timestamp, not_after: Timestamp) -> Timestamp {
    let life = not_after.duration_since(not_before);
    not_before.saturating_add(life / 3 * 2).unwrap_or(not_after)
}

fn after(t: Timestamp, d: Duration) -> Timestamp {
    t.saturating_add(d).unwrap_or(Timestamp::MAX)
}

/// A stored phase start further in the future than this is a clock gone
/// wrong (ours or a previous leader's): its clock starts again.
pub const MAX_CLOCK_SKEW: Duration = Duration::from_secs(60);

/// Looked at again at least this often, whatever is due.
pub const MAX_REQUEUE: Duration = Duration::from_secs(3600);

/// How far back a new certificate's `notBefore` is set, so a verifier whose
/// clock is a little behind ours accepts it: a tenth of its lifetime
/// (from now to its `notAfter`), at most 5 minutes. Relative to the real
/// lifetime, so 2/3 of the span always lies ahead.
pub fn backdate(lifetime: Duration) -> Duration {
    (lifetime / 10).min(Duration::from_secs(300))
}

/// The plan for `observed` at `now`.
pub fn plan(observed: &Observed, now: Timestamp, settings: &Settings) -> Plan {
    let mut changes = Vec::new();
    let usable = |ca: &Option<CaView>| ca.as_ref().filter(|c| c.usable_at(now)).cloned();
    let active = usable(&observed.active);
    let next = usable(&observed.next);
    let retiring_usable: Vec<CaView> = observed
        .retiring
        .iter()
        .filter(|c| c.usable_at(now))
        .cloned()
        .collect();

    // A phase start in the future beyond any plausible skew is not trusted.
    let sane = |since: Option<Timestamp>| since.filter(|s| *s <= after(now, MAX_CLOCK_SKEW));

    let desired_active: Ca;
    let mut desired_next: Option<Ca> = None;
    let mut next_since = None;
    let mut retiring: Vec<CaId> = retiring_usable.iter().map(|c| c.id.clone()).collect();
    let mut retiring_since = sane(observed.retiring_since);
    // Whether this pass changes the bundle (then it is published now and
    // the clock of the phase it enters starts now).
    let mut bundle_changes = false;

    match (&active, &next) {
        (None, Some(next_ca)) => {
            // The signing CA is unusable but the next one is already
            // trusted: it signs from now on, with no overlap to wait for.
            desired_active = Ca::Existing(next_ca.id.clone());
            changes.push(CaChange::Promoted);
            bundle_changes = true;
        }
        (None, None) => {
            // Nothing usable signs: a new CA signs at once. Still-valid
            // CAs from the old bundle stay trusted for one overlap, so a
            // serving certificate from them keeps verifying meanwhile.
            desired_active = Ca::New;
            changes.push(CaChange::Bootstrap);
            bundle_changes = true;
            for orphan in observed
                .orphans
                .iter()
                .chain(observed.active.iter())
                .filter(|c| c.usable_at(now))
            {
                if !retiring.contains(&orphan.id) {
                    retiring.push(orphan.id.clone());
                }
            }
        }
        (Some(active_ca), Some(next_ca)) => {
            // Phase 1: switch once the bundle with both has been out for
            // an overlap.
            let since = sane(observed.next_since);
            match since {
                Some(since) if observed.published && now >= after(since, settings.overlap) => {
                    desired_active = Ca::Existing(next_ca.id.clone());
                    retiring.retain(|id| *id != active_ca.id);
                    retiring.push(active_ca.id.clone());
                    changes.push(CaChange::Switched);
                    bundle_changes = true;
                }
                Some(since) if observed.published => {
                    desired_active = Ca::Existing(active_ca.id.clone());
                    desired_next = Some(Ca::Existing(next_ca.id.clone()));
                    next_since = Some(since);
                }
                _ => {
                    desired_active = Ca::Existing(active_ca.id.clone());
                    desired_next = Some(Ca::Existing(next_ca.id.clone()));
                    next_since = Some(now);
                    changes.push(CaChange::ClockRestarted);
                }
            }
        }
        (Some(active_ca), None) => {
            desired_active = Ca::Existing(active_ca.id.clone());
            // Start a rotation at 2/3 of the CA's life, once the previous
            // rotation has finished (its old CA left the bundle).
            if now >= active_ca.rotate_at() && retiring.is_empty() {
                desired_next = Some(Ca::New);
                next_since = Some(now);
                changes.push(CaChange::RotationStarted);
                bundle_changes = true;
            }
        }
    }

    // Phase 2 → 3: the old CAs leave once the bundle and the serving
    // certificate from the new CA have been out for an overlap.
    let dropped_expired = retiring.len() < observed.retiring.len();
    if !retiring.is_empty() {
        let entering = changes
            .iter()
            .any(|c| matches!(c, CaChange::Switched | CaChange::Bootstrap));
        if entering {
            retiring_since = Some(now);
        } else {
            match retiring_since {
                Some(since)
                    if observed.published
                        && !bundle_changes
                        && now >= after(since, settings.overlap) =>
                {
                    retiring.clear();
                    retiring_since = None;
                    changes.push(CaChange::Retired);
                }
                Some(_) if observed.published || bundle_changes => {}
                _ => {
                    retiring_since = Some(now);
                    changes.push(CaChange::ClockRestarted);
                }
            }
        }
    } else {
        retiring_since = None;
        if dropped_expired && !changes.contains(&CaChange::Retired) {
            changes.push(CaChange::Retired);
        }
    }

    // The serving certificate.
    let signing_ca = match &desired_active {
        Ca::Existing(id) => [&active, &next]
            .into_iter()
            .flatten()
            .find(|c| c.id == *id)
            .cloned(),
        Ca::New => None,
    };
    let signing_id = signing_ca.as_ref().map(|c| c.id.clone());
    // A certificate already ending with its CA gains nothing from renewal
    // (the new one would end there too): the CA rotation replaces it.
    let renewal_extends = |s: &ServingView| {
        signing_ca.as_ref().is_some_and(|ca| {
            serving_not_after(now, settings.cert_validity, ca.not_after) > s.not_after
        })
    };
    let reissue = match &observed.serving {
        None => Some(Reissue::Missing),
        Some(s) if !s.key_matches => Some(Reissue::KeyMismatch),
        Some(s) if signing_id.is_none() || s.issuer != signing_id => Some(Reissue::WrongIssuer),
        Some(s) if !s.names_match => Some(Reissue::NamesChanged),
        Some(s) if s.not_before > now => Some(Reissue::NotYetValid),
        Some(s) if s.not_after <= now => Some(Reissue::Expired),
        Some(s) if now >= two_thirds(s.not_before, s.not_after) && renewal_extends(s) => {
            Some(Reissue::RenewalDue)
        }
        Some(_) => None,
    };

    // When to look again: the earliest thing that falls due.
    let mut due = vec![after(now, MAX_REQUEUE)];
    if let Some(ca) = &signing_ca {
        due.push(ca.not_after);
    }
    match (&desired_next, next_since) {
        (Some(_), Some(since)) => due.push(after(since, settings.overlap)),
        // A rotation held back by a pending retirement is due with it.
        _ => due.extend(
            signing_ca
                .as_ref()
                .map(CaView::rotate_at)
                .filter(|at| *at > now),
        ),
    }
    if let Some(since) = retiring_since {
        due.push(after(since, settings.overlap));
    }
    for ca in observed
        .retiring
        .iter()
        .filter(|c| retiring.contains(&c.id))
    {
        due.push(ca.not_after);
    }
    if reissue.is_none()
        && let Some(s) = &observed.serving
    {
        // A renewal held back (it would not extend) is due at expiry,
        // which the CA's end above covers.
        due.extend(Some(two_thirds(s.not_before, s.not_after)).filter(|at| *at > now));
        due.push(s.not_after);
    }
    let requeue_at = due.into_iter().map(|t| t.max(now)).min().unwrap_or(now);

    Plan {
        active: desired_active,
        next: desired_next,
        next_since,
        retiring,
        retiring_since,
        reissue,
        changes,
        requeue_at,
    }
}

impl Plan {
    /// The CA that signs the serving certificate is generated now.
    pub fn generates_ca(&self) -> bool {
        self.active == Ca::New || self.next == Some(Ca::New)
    }
}

/// `notAfter` of a serving certificate issued at `now` by a CA valid until
/// `ca_not_after`: never beyond the CA.
pub fn serving_not_after(now: Timestamp, validity: Duration, ca_not_after: Timestamp) -> Timestamp {
    after(now, validity).min(ca_not_after)
}

#[cfg(test)]
mod tests;
