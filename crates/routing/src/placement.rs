//! Where a new session or a stateless request goes, and the passive health that keeps failing
//! replicas out of the way.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};
use std::sync::{Arc, RwLock};
use std::time::Duration;

use mcp_gateway_core::{AdapterTarget, Replica};
use smallvec::SmallVec;
use tokio::time::Instant;

/// What this gateway process knows of one replica: requests in flight and passive ejection.
#[derive(Debug)]
pub struct ReplicaHealth {
    in_flight: AtomicU64,
    /// New sessions placed here whose record is not written yet: counted as live sessions so
    /// a burst of concurrent `initialize`s does not all land on the same replica.
    placing: AtomicU64,
    /// Ejected until `epoch + ejected_until_ms`; 0 when not ejected.
    ejected_until_ms: AtomicU64,
    /// Failures (5xx answers, connections refused or timed out) since the last success.
    consecutive_failures: AtomicU32,
    /// Ejections since the last success: each one lasts twice as long as the one before.
    ejections: AtomicU32,
    epoch: Instant,
}

/// When a replica leaves placement (outlier ejection) and for how long.
#[derive(Debug, Clone, Copy)]
pub struct Ejection {
    /// Consecutive 5xx answers that eject a replica (a refused or timed-out connection ejects
    /// at once).
    pub after_5xx: u32,
    /// The first ejection's length; each further one without a success in between doubles it.
    pub base: Duration,
    /// The longest ejection.
    pub max: Duration,
}

/// What one exchange with a replica tells about its health.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    /// An answer below 500.
    Success,
    /// A 5xx answer.
    ServerError,
    /// The connection was refused or timed out.
    ConnectFailure,
}

impl ReplicaHealth {
    fn new(epoch: Instant) -> Self {
        Self {
            in_flight: AtomicU64::new(0),
            placing: AtomicU64::new(0),
            ejected_until_ms: AtomicU64::new(0),
            consecutive_failures: AtomicU32::new(0),
            ejections: AtomicU32::new(0),
            epoch,
        }
    }

    pub fn in_flight(&self) -> u64 {
        self.in_flight.load(Ordering::Relaxed)
    }

    /// Counts a request until the returned guard is dropped.
    pub fn start(self: &Arc<Self>) -> InFlight {
        self.in_flight.fetch_add(1, Ordering::Relaxed);
        InFlight(self.clone())
    }

    pub fn placing(&self) -> u64 {
        self.placing.load(Ordering::Relaxed)
    }

    /// Counts a session being opened here until the returned guard is dropped.
    pub fn start_placing(self: &Arc<Self>) -> Placing {
        self.placing.fetch_add(1, Ordering::Relaxed);
        Placing(self.clone())
    }

    pub fn ejected(&self) -> bool {
        let until = self.ejected_until_ms.load(Ordering::Relaxed);
        until != 0 && (Instant::now() - self.epoch).as_millis() as u64 <= until
    }

    pub fn eject(&self, for_: Duration) {
        let until = (Instant::now() + for_ - self.epoch).as_millis() as u64;
        self.ejected_until_ms.store(until.max(1), Ordering::Relaxed);
    }

    /// A successful exchange brings an ejected replica back at once.
    pub fn restore(&self) {
        self.ejected_until_ms.store(0, Ordering::Relaxed);
    }

    /// Records the outcome of one exchange (outlier detection, as Envoy's consecutive-5xx and
    /// linkerd's failure accrual do). A success resets the failure count and the backoff and
    /// brings the replica back at once; a refused or timed-out connection ejects it; so do
    /// `after_5xx` 5xx answers in a row. An ejection lasts `base`, doubled for each ejection
    /// since the last success, up to `max`. Once it ends the replica is tried again (it then has
    /// the fewest sessions, so it gets the next new session: the probe); one more failure
    /// ejects it again, for longer. Returns the length of the ejection it started, if any.
    pub fn record(&self, outcome: Outcome, policy: &Ejection) -> Option<Duration> {
        let failures = match outcome {
            Outcome::Success => {
                // Written only when there is something to reset: nearly every exchange
                // succeeds, and a store would take the cache line from the other threads
                // that read this replica's health (a load leaves it shared).
                if self.consecutive_failures.load(Ordering::Relaxed) != 0 {
                    self.consecutive_failures.store(0, Ordering::Relaxed);
                }
                if self.ejections.load(Ordering::Relaxed) != 0 {
                    self.ejections.store(0, Ordering::Relaxed);
                }
                if self.ejected_until_ms.load(Ordering::Relaxed) != 0 {
                    self.restore();
                }
                return None;
            }
            Outcome::ServerError => self.consecutive_failures.fetch_add(1, Ordering::Relaxed) + 1,
            Outcome::ConnectFailure => {
                let n = self.consecutive_failures.fetch_add(1, Ordering::Relaxed) + 1;
                n.max(policy.after_5xx)
            }
        };
        if failures < policy.after_5xx.max(1) || self.ejected() {
            return None;
        }
        let n = self.ejections.fetch_add(1, Ordering::Relaxed).min(16);
        let for_ = policy.base.saturating_mul(1 << n).min(policy.max);
        self.eject(for_);
        Some(for_)
    }
}

/// Guard of one in-flight request.
#[derive(Debug)]
pub struct InFlight(Arc<ReplicaHealth>);

impl InFlight {
    /// The health of the replica the request is in flight to.
    pub fn health(&self) -> &ReplicaHealth {
        &self.0
    }
}

impl Drop for InFlight {
    fn drop(&mut self) {
        self.0.in_flight.fetch_sub(1, Ordering::Relaxed);
    }
}

/// Guard of one session being placed.
#[derive(Debug)]
pub struct Placing(Arc<ReplicaHealth>);

impl Drop for Placing {
    fn drop(&mut self) {
        self.0.placing.fetch_sub(1, Ordering::Relaxed);
    }
}

/// By replica id, or by adapter name; foldhash, as names come from the configuration or the
/// runtime, never from callers.
type ByName<V> = HashMap<Arc<str>, V, foldhash::fast::RandomState>;

/// Health of every replica this process has forwarded to, by adapter, then replica id: looked
/// up with borrowed names, so a request allocates nothing to find its replica's health.
#[derive(Debug)]
pub struct HealthTable {
    epoch: Instant,
    replicas: RwLock<ByName<ByName<Arc<ReplicaHealth>>>>,
}

impl Default for HealthTable {
    fn default() -> Self {
        Self {
            epoch: Instant::now(),
            replicas: RwLock::default(),
        }
    }
}

impl HealthTable {
    #[cfg(test)]
    pub fn get(&self, adapter: &str, replica: &Arc<str>) -> Arc<ReplicaHealth> {
        self.with(adapter, replica, Arc::clone)
    }

    /// `f` of the replica's health, borrowed: no reference count is touched (the count is
    /// shared by every thread's requests to that replica, so each increment would move its
    /// cache line between cores).
    pub fn with<R>(
        &self,
        adapter: &str,
        replica: &Arc<str>,
        f: impl FnOnce(&Arc<ReplicaHealth>) -> R,
    ) -> R {
        if let Some(h) = self
            .replicas
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .get(adapter)
            .and_then(|replicas| replicas.get(&**replica))
        {
            return f(h);
        }
        let mut map = self.replicas.write().unwrap_or_else(|e| e.into_inner());
        f(map
            .entry(Arc::from(adapter))
            .or_default()
            .entry(replica.clone())
            .or_insert_with(|| Arc::new(ReplicaHealth::new(self.epoch))))
    }
}

/// Replicas to try, best first; a few are held inline (most adapters have one or two
/// replicas), so choosing costs no allocation and no reference count.
pub type Candidates<'a> = SmallVec<[&'a Replica; 4]>;

/// Candidates for a new session, best first: placeable replicas that are not ejected, by fewest
/// live sessions, ties to the lowest ordinal. When every placeable replica is ejected they are
/// all tried anyway (better a likely failure than a certain one), in the same order.
/// `placing` adds sessions being opened whose records are not written yet.
pub fn for_new_session<'a>(
    target: &'a AdapterTarget,
    sessions: &HashMap<Arc<str>, u64>,
    placing: impl Fn(&Replica) -> u64,
    ejected: impl Fn(&Replica) -> bool,
) -> Candidates<'a> {
    order(
        target,
        |r| sessions.get(&r.id).copied().unwrap_or(0) + placing(r),
        ejected,
    )
}

/// Candidates for a stateless request, best first: fewest requests in flight, ties to the
/// lowest ordinal.
pub fn for_stateless(
    target: &AdapterTarget,
    in_flight: impl Fn(&Replica) -> u64,
    ejected: impl Fn(&Replica) -> bool,
) -> Candidates<'_> {
    order(target, in_flight, ejected)
}

fn order(
    target: &AdapterTarget,
    load: impl Fn(&Replica) -> u64,
    ejected: impl Fn(&Replica) -> bool,
) -> Candidates<'_> {
    let placeable = || target.replicas.iter().filter(|r| r.placeable());
    // One placeable replica is the only candidate whatever its load and health: neither is
    // looked up (most adapters have one replica, and each lookup is a map's).
    let mut first_two = placeable();
    if let (Some(only), None) = (first_two.next(), first_two.next()) {
        return smallvec::smallvec![only];
    }
    let mut healthy: Vec<(u64, u32, &Replica)> = Vec::with_capacity(target.replicas.len());
    let mut sick = Vec::new();
    for r in placeable() {
        let entry = (load(r), r.ordinal, r);
        if ejected(r) {
            sick.push(entry);
        } else {
            healthy.push(entry);
        }
    }
    let pool = if healthy.is_empty() {
        &mut sick
    } else {
        &mut healthy
    };
    pool.sort_by_key(|&(load, ordinal, _)| (load, ordinal));
    pool.iter().map(|&(_, _, r)| r).collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use mcp_gateway_core::AdapterName;

    fn target(replicas: &[(&str, bool, bool)]) -> AdapterTarget {
        AdapterTarget {
            name: AdapterName::new("a").unwrap(),
            replicas: replicas
                .iter()
                .enumerate()
                .map(|(i, (id, ready, draining))| Replica {
                    id: (*id).into(),
                    ordinal: i as u32,
                    base_url: format!("http://127.0.0.1:{}", 9000 + i).into(),
                    ready: *ready,
                    draining: *draining,
                })
                .collect(),
            mcp_path: "/mcp".into(),
            sse_path: "/sse".into(),
            access: Default::default(),
            upstream_headers: Vec::new(),
        }
    }

    fn ids(v: Candidates<'_>) -> Vec<&str> {
        v.into_iter().map(|r| &*r.id).collect()
    }

    #[test]
    fn new_sessions_go_to_the_fewest_sessions_ties_to_lowest_ordinal() {
        let t = target(&[("0", true, false), ("1", true, false), ("2", true, false)]);
        let none = HashMap::new();
        assert_eq!(
            ids(for_new_session(&t, &none, |_| 0, |_| false)),
            ["0", "1", "2"]
        );
        let counts = HashMap::from([("0".into(), 2), ("1".into(), 1), ("2".into(), 1)]);
        assert_eq!(
            ids(for_new_session(&t, &counts, |_| 0, |_| false)),
            ["1", "2", "0"]
        );
    }

    #[test]
    fn sessions_being_placed_count_as_live() {
        let t = target(&[("0", true, false), ("1", true, false)]);
        let placing = |r: &Replica| if &*r.id == "0" { 1 } else { 0 };
        assert_eq!(
            ids(for_new_session(&t, &HashMap::new(), placing, |_| false)),
            ["1", "0"]
        );
    }

    #[test]
    fn unready_draining_and_ejected_replicas_take_no_new_sessions() {
        let t = target(&[
            ("0", false, false),
            ("1", true, true),
            ("2", true, false),
            ("3", true, false),
        ]);
        let counts = HashMap::from([("3".into(), 5)]);
        assert_eq!(
            ids(for_new_session(&t, &counts, |_| 0, |_| false)),
            ["2", "3"]
        );
        assert_eq!(
            ids(for_new_session(&t, &counts, |_| 0, |r| &*r.id == "2")),
            ["3"]
        );
    }

    #[test]
    fn when_all_are_ejected_all_are_still_tried() {
        let t = target(&[("0", true, false), ("1", true, false)]);
        assert_eq!(
            ids(for_new_session(&t, &HashMap::new(), |_| 0, |_| true)),
            ["0", "1"]
        );
        let t = target(&[("0", false, false)]);
        assert!(for_new_session(&t, &HashMap::new(), |_| 0, |_| false).is_empty());
    }

    #[test]
    fn one_placeable_replica_is_chosen_without_looking_up_its_load_or_health() {
        let t = target(&[("0", false, false), ("1", true, false), ("2", true, true)]);
        let unasked = |_: &Replica| -> u64 { panic!("load looked up") };
        let unasked_health = |_: &Replica| -> bool { panic!("health looked up") };
        assert_eq!(ids(for_stateless(&t, unasked, unasked_health)), ["1"]);
        assert_eq!(
            ids(for_new_session(
                &t,
                &HashMap::new(),
                unasked,
                unasked_health
            )),
            ["1"]
        );
    }

    #[test]
    fn stateless_requests_go_to_the_least_busy() {
        let t = target(&[("0", true, false), ("1", true, false)]);
        assert_eq!(
            ids(for_stateless(
                &t,
                |r| if &*r.id == "0" { 3 } else { 1 },
                |_| false
            )),
            ["1", "0"]
        );
        assert_eq!(ids(for_stateless(&t, |_| 0, |_| false)), ["0", "1"]);
    }

    #[tokio::test(start_paused = true)]
    async fn ejection_lasts_for_its_period() {
        let table = HealthTable::default();
        let h = table.get("a", &"0".into());
        assert!(!h.ejected());
        h.eject(Duration::from_secs(10));
        assert!(table.get("a", &"0".into()).ejected(), "same entry");
        tokio::time::advance(Duration::from_secs(11)).await;
        assert!(!h.ejected());
        h.eject(Duration::from_secs(10));
        h.restore();
        assert!(!h.ejected());
    }

    #[tokio::test(start_paused = true)]
    async fn consecutive_5xx_eject_with_a_doubling_backoff_until_a_success() {
        let policy = Ejection {
            after_5xx: 3,
            base: Duration::from_secs(10),
            max: Duration::from_secs(35),
        };
        let h = HealthTable::default().get("a", &"0".into());
        assert_eq!(h.record(Outcome::ServerError, &policy), None);
        assert_eq!(h.record(Outcome::ServerError, &policy), None);
        assert_eq!(
            h.record(Outcome::Success, &policy),
            None,
            "a success resets the count"
        );
        assert_eq!(h.record(Outcome::ServerError, &policy), None);
        assert_eq!(h.record(Outcome::ServerError, &policy), None);
        assert_eq!(
            h.record(Outcome::ServerError, &policy),
            Some(Duration::from_secs(10))
        );
        assert!(h.ejected());
        // Failures while ejected (sessions it owns still reach it) do not extend it.
        assert_eq!(h.record(Outcome::ServerError, &policy), None);
        tokio::time::advance(Duration::from_secs(11)).await;
        assert!(!h.ejected(), "re-admitted once the ejection ends");
        // The probe fails: ejected again at once, for twice as long, then capped.
        assert_eq!(
            h.record(Outcome::ServerError, &policy),
            Some(Duration::from_secs(20))
        );
        tokio::time::advance(Duration::from_secs(21)).await;
        assert_eq!(
            h.record(Outcome::ServerError, &policy),
            Some(Duration::from_secs(35))
        );
        // A success brings it back at once, and the next ejection is short again.
        h.record(Outcome::Success, &policy);
        assert!(!h.ejected());
        assert_eq!(
            h.record(Outcome::ConnectFailure, &policy),
            Some(Duration::from_secs(10))
        );
    }

    #[tokio::test]
    async fn in_flight_is_counted_by_guards() {
        let table = HealthTable::default();
        let h = table.get("a", &"0".into());
        let g1 = h.start();
        let g2 = h.start();
        assert_eq!(h.in_flight(), 2);
        drop(g1);
        drop(g2);
        assert_eq!(h.in_flight(), 0);
    }
}
