//! Connection slots of one listener: at most `max_total` open connections,
//! at most `max_per_source` from one source (an IPv4 address or an IPv6
//! /64, as in [`ratelimit`](super::ratelimit)).
//!
//! A connection with no request in flight — one that has not sent a
//! request yet, or an idle keep-alive connection — holds its slot only
//! until someone needs it: when a newcomer finds the limit reached, the
//! connection that has been idle longest is closed to make room (first
//! among the newcomer's own source's connections when the source is at its
//! cap, else among all). This is what nginx does with keep-alive
//! connections when `worker_connections` run out ("reusing connections"),
//! and what Envoy's overload manager does by scaling idle timeouts down to
//! zero under pressure. Only when every connection concerned has a request
//! in flight is the newcomer refused, like nginx's `limit_conn`, which
//! counts only connections with a request being processed. So a flood of
//! idle or slowloris connections cannot keep an honest client out: its
//! fresh connection is always the newest idle one, the last to go.
//!
//! Requests in flight are bounded in time by the request timeout, so a
//! refused newcomer only waits as long as the slowest request; one source
//! can hold at most `max_per_source` of them.

use std::collections::{BTreeSet, HashMap};
use std::net::IpAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::task::Waker;
use std::time::Instant;

use futures::task::AtomicWaker;
use prometheus_client::metrics::gauge::Gauge;

use super::ratelimit::SourceKey;

/// What one admitted connection shares with the registry: whether it was
/// evicted, and how to wake its task so it notices.
#[derive(Debug)]
pub(crate) struct Conn {
    id: u64,
    evicted: AtomicBool,
    /// Set by the first request: the connection is past its first headers.
    requested: AtomicBool,
    waker: AtomicWaker,
}

impl Conn {
    /// Whether the registry closed this connection to make room.
    pub(crate) fn is_evicted(&self) -> bool {
        self.evicted.load(Ordering::Acquire)
    }

    /// Whether any request has started on this connection.
    pub(crate) fn has_requested(&self) -> bool {
        self.requested.load(Ordering::Acquire)
    }

    /// The task to wake on eviction (call before returning `Pending`, then
    /// check [`Conn::is_evicted`] again).
    pub(crate) fn register(&self, waker: &Waker) {
        self.waker.register(waker);
    }

    fn evict(&self) {
        self.evicted.store(true, Ordering::Release);
        self.waker.wake();
    }
}

struct Entry {
    source: SourceKey,
    conn: Arc<Conn>,
    in_flight: usize,
    /// When `in_flight` last became 0 (or the accept).
    idle_since: Instant,
}

#[derive(Default)]
struct Source {
    open: usize,
    /// This source's idle connections, longest idle first.
    idle: BTreeSet<(Instant, u64)>,
}

#[derive(Default)]
struct Inner {
    next_id: u64,
    conns: HashMap<u64, Entry>,
    /// All idle connections, longest idle first.
    idle: BTreeSet<(Instant, u64)>,
    sources: HashMap<SourceKey, Source>,
}

impl Inner {
    fn set_busy(&mut self, id: u64) {
        let Some(entry) = self.conns.get_mut(&id) else {
            return;
        };
        entry.in_flight += 1;
        if entry.in_flight == 1 {
            let key = (entry.idle_since, id);
            self.idle.remove(&key);
            if let Some(source) = self.sources.get_mut(&entry.source) {
                source.idle.remove(&key);
            }
        }
    }

    fn set_done(&mut self, id: u64, now: Instant) {
        let Some(entry) = self.conns.get_mut(&id) else {
            return;
        };
        entry.in_flight = entry.in_flight.saturating_sub(1);
        if entry.in_flight == 0 {
            entry.idle_since = now;
            self.idle.insert((now, id));
            if let Some(source) = self.sources.get_mut(&entry.source) {
                source.idle.insert((now, id));
            }
        }
    }

    /// Forgets a connection; its slot is free.
    fn remove(&mut self, id: u64) -> Option<Arc<Conn>> {
        let entry = self.conns.remove(&id)?;
        let key = (entry.idle_since, id);
        if entry.in_flight == 0 {
            self.idle.remove(&key);
        }
        if let Some(source) = self.sources.get_mut(&entry.source) {
            source.open -= 1;
            if entry.in_flight == 0 {
                source.idle.remove(&key);
            }
            if source.open == 0 {
                self.sources.remove(&entry.source);
            }
        }
        Some(entry.conn)
    }
}

/// Why a connection was refused.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Refused {
    /// `max_total` connections open, each with a request in flight.
    Total,
    /// `max_per_source` connections open from this source, each with a
    /// request in flight.
    PerSource,
}

/// An admitted connection and the one closed to make room for it, if any.
pub(crate) struct Admitted {
    pub slot: Slot,
    pub evicted: Option<Arc<Conn>>,
}

/// The slots of one listener.
pub(crate) struct Slots {
    inner: Mutex<Inner>,
    max_total: usize,
    max_per_source: usize,
    /// Sources with at least one open connection.
    sources_gauge: Gauge,
}

impl Slots {
    pub(crate) fn new(max_total: usize, max_per_source: usize, sources_gauge: Gauge) -> Arc<Self> {
        let max_total = max_total.max(1);
        Arc::new(Slots {
            inner: Mutex::new(Inner::default()),
            max_total,
            max_per_source: max_per_source.clamp(1, max_total),
            sources_gauge,
        })
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Takes a slot for a connection from `source`, closing the longest
    /// idle connection if a limit is reached (the caller signals it with
    /// [`Slots::evict`] after this returns, outside the lock).
    pub(crate) fn admit(self: &Arc<Self>, source: IpAddr) -> Result<Admitted, Refused> {
        self.admit_at(source, Instant::now())
    }

    fn admit_at(self: &Arc<Self>, source: IpAddr, now: Instant) -> Result<Admitted, Refused> {
        let key = SourceKey::of(source);
        let mut inner = self.lock();
        let from_source = inner.sources.get(&key).map_or(0, |s| s.open);
        let victim = if from_source >= self.max_per_source {
            let oldest = inner
                .sources
                .get(&key)
                .and_then(|s| s.idle.first().copied());
            Some(oldest.ok_or(Refused::PerSource)?)
        } else if inner.conns.len() >= self.max_total {
            Some(inner.idle.first().copied().ok_or(Refused::Total)?)
        } else {
            None
        };
        let evicted = victim.and_then(|(_, id)| inner.remove(id));
        let id = inner.next_id;
        inner.next_id += 1;
        let conn = Arc::new(Conn {
            id,
            evicted: AtomicBool::new(false),
            requested: AtomicBool::new(false),
            waker: AtomicWaker::new(),
        });
        inner.conns.insert(
            id,
            Entry {
                source: key,
                conn: conn.clone(),
                in_flight: 0,
                idle_since: now,
            },
        );
        inner.idle.insert((now, id));
        let source = inner.sources.entry(key).or_default();
        source.open += 1;
        source.idle.insert((now, id));
        self.sources_gauge.set(inner.sources.len() as i64);
        drop(inner);
        Ok(Admitted {
            slot: Slot {
                slots: self.clone(),
                conn,
            },
            evicted,
        })
    }

    /// Tells an evicted connection to close.
    pub(crate) fn evict(conn: &Conn) {
        conn.evict();
    }

    fn release(&self, id: u64) {
        let mut inner = self.lock();
        inner.remove(id);
        self.sources_gauge.set(inner.sources.len() as i64);
    }

    #[cfg(test)]
    fn open(&self) -> usize {
        self.lock().conns.len()
    }
}

/// A connection's slot: freed when dropped (unless it was evicted, which
/// freed it already). Clones of [`Slot::conn`] mark requests in flight.
pub(crate) struct Slot {
    slots: Arc<Slots>,
    conn: Arc<Conn>,
}

impl Slot {
    pub(crate) fn conn(&self) -> &Arc<Conn> {
        &self.conn
    }

    /// A handle for the connection's service, to mark requests.
    pub(crate) fn requests(&self) -> Requests {
        Requests {
            slots: self.slots.clone(),
            conn: self.conn.clone(),
        }
    }
}

impl Drop for Slot {
    fn drop(&mut self) {
        self.slots.release(self.conn.id);
    }
}

/// Marks requests of one connection in flight: a connection with a request
/// in flight is never evicted.
#[derive(Clone)]
pub(crate) struct Requests {
    slots: Arc<Slots>,
    conn: Arc<Conn>,
}

impl Requests {
    /// A request's headers arrived; it is in flight until the guard drops
    /// (with the response body).
    pub(crate) fn start(&self) -> InFlight {
        self.conn.requested.store(true, Ordering::Release);
        self.slots.lock().set_busy(self.conn.id);
        InFlight {
            requests: self.clone(),
        }
    }
}

pub(crate) struct InFlight {
    requests: Requests,
}

impl Drop for InFlight {
    fn drop(&mut self) {
        let Requests { slots, conn } = &self.requests;
        slots.lock().set_done(conn.id, Instant::now());
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    fn ip(text: &str) -> IpAddr {
        text.parse().unwrap()
    }

    fn slots(total: usize, per_source: usize) -> Arc<Slots> {
        Slots::new(total, per_source, Gauge::default())
    }

    #[test]
    fn at_the_total_the_longest_idle_connection_makes_room() {
        let slots = slots(3, 3);
        // In the past, so that a request ending now ends after all of them.
        let t0 = Instant::now() - Duration::from_secs(100);
        let at = |s: u64| t0 + Duration::from_secs(s);
        let a = slots.admit_at(ip("10.0.0.1"), at(0)).unwrap().slot;
        let b = slots.admit_at(ip("10.0.0.2"), at(1)).unwrap().slot;
        let c = slots.admit_at(ip("10.0.0.3"), at(2)).unwrap().slot;
        // `a` is busy: `b` has been idle longest.
        let busy = a.requests().start();
        let d = slots.admit_at(ip("10.0.0.4"), at(3)).unwrap();
        let evicted = d.evicted.clone().expect("one connection closed");
        assert_eq!(evicted.id, b.conn().id);
        Slots::evict(&evicted);
        assert!(b.conn().is_evicted() && !a.conn().is_evicted());
        assert_eq!(slots.open(), 3);
        // Dropping the evicted connection later frees nothing more.
        drop(b);
        assert_eq!(slots.open(), 3);
        // `a` finishes its request: idle since now, so `c` (2) goes next.
        drop(busy);
        let e = slots.admit_at(ip("10.0.0.5"), at(5)).unwrap();
        assert_eq!(e.evicted.as_ref().unwrap().id, c.conn().id);
        drop((c, d, e));
        assert_eq!(slots.open(), 1);
    }

    #[test]
    fn a_newcomer_is_refused_only_when_every_connection_is_busy() {
        let slots = slots(2, 2);
        let a = slots.admit(ip("10.0.0.1")).unwrap().slot;
        let b = slots.admit(ip("10.0.0.2")).unwrap().slot;
        let (_busy_a, _busy_b) = (a.requests().start(), b.requests().start());
        assert_eq!(slots.admit(ip("10.0.0.3")).err(), Some(Refused::Total));
        drop(b);
        assert!(slots.admit(ip("10.0.0.3")).unwrap().evicted.is_none());
    }

    #[test]
    fn a_source_at_its_cap_gives_up_its_own_idle_connection() {
        let slots = slots(10, 2);
        let t0 = Instant::now();
        let at = |s: u64| t0 + Duration::from_secs(s);
        let other = slots.admit_at(ip("10.0.0.9"), at(0)).unwrap().slot;
        let a = slots.admit_at(ip("10.0.0.1"), at(1)).unwrap().slot;
        let b = slots.admit_at(ip("10.0.0.1"), at(2)).unwrap().slot;
        // The source's own longest idle, not the older one of another source.
        let c = slots.admit_at(ip("10.0.0.1"), at(3)).unwrap();
        assert_eq!(c.evicted.unwrap().id, a.conn().id);
        let (_busy_b, _busy_c) = (b.requests().start(), c.slot.requests().start());
        assert_eq!(
            slots.admit_at(ip("10.0.0.1"), at(4)).err(),
            Some(Refused::PerSource)
        );
        // Other sources are unaffected.
        assert!(slots.admit_at(ip("10.0.0.2"), at(4)).is_ok());
        assert!(!other.conn().is_evicted());
    }

    #[test]
    fn ipv6_sources_are_counted_per_64() {
        let slots = slots(10, 1);
        let a = slots.admit(ip("2001:db8::1")).unwrap().slot;
        let _busy = a.requests().start();
        assert_eq!(
            slots.admit(ip("2001:db8::2")).err(),
            Some(Refused::PerSource)
        );
        assert!(slots.admit(ip("2001:db8:0:1::1")).is_ok());
        // An IPv4-mapped address is its IPv4 address.
        let v4 = slots.admit(ip("10.0.0.1")).unwrap().slot;
        let _busy_v4 = v4.requests().start();
        assert_eq!(
            slots.admit(ip("::ffff:10.0.0.1")).err(),
            Some(Refused::PerSource)
        );
    }

    #[test]
    fn state_is_dropped_with_the_connections() {
        let gauge = Gauge::default();
        let slots = Slots::new(10, 10, gauge.clone());
        let held: Vec<Slot> = (0..5)
            .map(|i| slots.admit(ip(&format!("10.0.0.{i}"))).unwrap().slot)
            .collect();
        assert_eq!(gauge.get(), 5);
        let busy = held[0].requests().start();
        drop(held);
        drop(busy);
        let inner = slots.lock();
        assert!(inner.conns.is_empty() && inner.idle.is_empty() && inner.sources.is_empty());
        assert_eq!(gauge.get(), 0);
    }
}
