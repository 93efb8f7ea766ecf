//! The live table: the catalog's [`RouteTable`] joined with per-backend state
//! and metric handles, swapped atomically.
//!
//! Every request asks [`Router::current`]. It compares the table in the
//! `watch` channel with the one the live table was built from (a pointer
//! comparison under the channel's read lock) and rebuilds on a change, so a
//! table sent before a request starts is the table that request sees: there
//! is no background task whose lag could route to a removed backend. Rebuilds
//! are serialised by a mutex and re-read the channel inside it, so a slow
//! rebuild never installs an older table over a newer one. Requests already
//! running keep the `Arc` of the table they started with; swapping never
//! touches connections.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

use arc_swap::ArcSwap;
use tokio::sync::watch;

use crate::backend::{BackendKey, BackendState, BackendStates, Clock};
use crate::config::Balancing;
use crate::metrics::{GatewayMetrics, ServiceMetrics};
use crate::pool::PoolConfig;
use crate::table::RouteTable;

pub(crate) struct LiveBackend {
    pub(crate) instance_id: Arc<str>,
    pub(crate) addr: SocketAddr,
    pub(crate) zone: Arc<str>,
    pub(crate) local: bool,
    pub(crate) state: Arc<BackendState>,
}

pub(crate) struct LiveService {
    /// Passing backends only: nothing else may get traffic.
    pub(crate) backends: Vec<LiveBackend>,
    rr: AtomicUsize,
    pub(crate) metrics: ServiceMetrics,
}

pub(crate) struct LiveTable {
    pub(crate) source: Arc<RouteTable>,
    /// Same order as `source.services()`.
    pub(crate) services: Vec<Arc<LiveService>>,
}

pub(crate) struct Router {
    rx: watch::Receiver<Arc<RouteTable>>,
    live: ArcSwap<LiveTable>,
    states: Mutex<BackendStates>,
    zone: String,
    clock: Clock,
    metrics: GatewayMetrics,
}

impl Router {
    pub(crate) fn new(
        rx: watch::Receiver<Arc<RouteTable>>,
        zone: String,
        clock: Clock,
        metrics: GatewayMetrics,
        pool: PoolConfig,
    ) -> Router {
        let mut states = BackendStates::new(pool);
        let source = rx.borrow().clone();
        let live = build_live(source, &mut states, &zone, clock.now_ms(), &metrics);
        Router {
            rx,
            live: ArcSwap::from_pointee(live),
            states: Mutex::new(states),
            zone,
            clock,
            metrics,
        }
    }

    pub(crate) fn current(&self) -> Arc<LiveTable> {
        let live = self.live.load_full();
        if Arc::ptr_eq(&*self.rx.borrow(), &live.source) {
            return live;
        }
        self.rebuild()
    }

    /// Closes pooled backend connections that idled too long.
    pub(crate) fn prune_pools(&self) {
        let states = match self.states.lock() {
            Ok(s) => s,
            Err(poisoned) => poisoned.into_inner(),
        };
        for state in states.all() {
            state.pool.prune();
        }
    }

    #[cold]
    fn rebuild(&self) -> Arc<LiveTable> {
        let mut states = match self.states.lock() {
            Ok(s) => s,
            Err(poisoned) => poisoned.into_inner(),
        };
        let source = self.rx.borrow().clone();
        let live = self.live.load_full();
        if Arc::ptr_eq(&source, &live.source) {
            return live;
        }
        let next = Arc::new(build_live(
            source,
            &mut states,
            &self.zone,
            self.clock.now_ms(),
            &self.metrics,
        ));
        self.live.store(Arc::clone(&next));
        tracing::debug!(
            services = next.services.len(),
            issues = next.source.issues().len(),
            "gateway route table swapped"
        );
        next
    }
}

fn build_live(
    source: Arc<RouteTable>,
    states: &mut BackendStates,
    zone: &str,
    now_ms: u64,
    metrics: &GatewayMetrics,
) -> LiveTable {
    // State is kept for non-passing backends too, so a health check that
    // flaps does not wipe a backend's outlier history.
    let keys: Vec<BackendKey> = source
        .services()
        .iter()
        .flat_map(|s| s.backends())
        .map(|b| (Arc::from(b.instance_id.as_str()), b.addr))
        .collect();
    let carried = states.carry_over(keys, now_ms);
    let services = source
        .services()
        .iter()
        .map(|s| {
            let backends = s
                .passing_backends()
                .filter_map(|b| {
                    let key: BackendKey = (Arc::from(b.instance_id.as_str()), b.addr);
                    let state = carried.get(&key)?.clone();
                    Some(LiveBackend {
                        instance_id: key.0,
                        addr: b.addr,
                        zone: Arc::from(b.zone.as_str()),
                        local: zone.is_empty() || b.zone == zone,
                        state,
                    })
                })
                .collect();
            Arc::new(LiveService {
                backends,
                rr: AtomicUsize::new(0),
                metrics: metrics.service(s.name()),
            })
        })
        .collect();
    LiveTable { source, services }
}

/// Backend choice: zone tiers first, then the balancing policy inside the
/// first non-empty tier.
///
/// Tiers: (1) local zone, not ejected; (2) any zone, not ejected; (3) any
/// backend even if ejected ("panic mode": when every passing backend is
/// ejected, sending to one beats a certain 503, and it doubles as the retry
/// that may reinstate it). Backends already tried by this request are never
/// chosen again.
impl LiveService {
    pub(crate) fn pick(&self, balancing: Balancing, now_ms: u64, tried: &[usize]) -> Option<usize> {
        let eligible_in = |tier: u8, i: usize, b: &LiveBackend| -> bool {
            !tried.contains(&i)
                && match tier {
                    0 => b.local && !b.state.is_ejected(now_ms),
                    1 => !b.state.is_ejected(now_ms),
                    _ => true,
                }
        };
        for tier in 0..3u8 {
            let n = self
                .backends
                .iter()
                .enumerate()
                .filter(|(i, b)| eligible_in(tier, *i, b))
                .count();
            if n == 0 {
                continue;
            }
            let nth = |k: usize| -> usize {
                self.backends
                    .iter()
                    .enumerate()
                    .filter(|(i, b)| eligible_in(tier, *i, b))
                    .nth(k)
                    .map(|(i, _)| i)
                    .unwrap_or(0)
            };
            if n == 1 {
                return Some(nth(0));
            }
            return Some(match balancing {
                Balancing::RoundRobin => nth(self.rr.fetch_add(1, Ordering::Relaxed) % n),
                Balancing::PowerOfTwoChoices => {
                    let a = rand::random_range(0..n);
                    let mut b = rand::random_range(0..n - 1);
                    if b >= a {
                        b += 1;
                    }
                    let (a, b) = (nth(a), nth(b));
                    if self.backends[b].state.outstanding() < self.backends[a].state.outstanding() {
                        b
                    } else {
                        a
                    }
                }
            });
        }
        None
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::OutlierConfig;
    use crate::table::{CatalogInstance, RouteDefaults};

    fn table(backends: &[(&str, u16, &str, bool)]) -> Arc<RouteTable> {
        let instances: Vec<CatalogInstance> = backends
            .iter()
            .map(|(id, port, zone, passing)| CatalogInstance {
                service: "web".into(),
                instance_id: (*id).into(),
                address: "127.0.0.1".into(),
                port: *port,
                zone: (*zone).into(),
                passing: *passing,
                ..Default::default()
            })
            .collect();
        Arc::new(RouteTable::build(&instances, &RouteDefaults::default()))
    }

    fn ids(svc: &LiveService, balancing: Balancing, tried: &[usize], n: usize) -> Vec<String> {
        let mut seen: Vec<String> = (0..n)
            .filter_map(|_| svc.pick(balancing, 1, tried))
            .map(|i| svc.backends[i].instance_id.to_string())
            .collect();
        seen.sort();
        seen.dedup();
        seen
    }

    #[test]
    fn swap_is_seen_by_the_next_call_and_keeps_state() {
        let (tx, rx) = watch::channel(table(&[("a", 1, "z1", true), ("b", 2, "z1", true)]));
        let router = Router::new(
            rx,
            "z1".into(),
            Clock::new(),
            GatewayMetrics::new(),
            PoolConfig::default(),
        );
        let first = router.current();
        let a_state = Arc::clone(&first.services[0].backends[0].state);
        let _guard = a_state.start();
        tx.send_replace(table(&[("a", 1, "z1", true), ("c", 3, "z1", true)]));
        let second = router.current();
        let names: Vec<_> = second.services[0]
            .backends
            .iter()
            .map(|b| b.instance_id.to_string())
            .collect();
        assert_eq!(names, ["a", "c"]);
        assert!(Arc::ptr_eq(&second.services[0].backends[0].state, &a_state));
        assert_eq!(second.services[0].backends[0].state.outstanding(), 1);
        assert!(Arc::ptr_eq(&router.current(), &second));
    }

    #[test]
    fn zone_tiers_and_exclusions() {
        let (_tx, rx) = watch::channel(table(&[
            ("a1", 1, "a", true),
            ("a2", 2, "a", true),
            ("b1", 3, "b", true),
            ("x", 4, "a", false),
        ]));
        let router = Router::new(
            rx,
            "a".into(),
            Clock::new(),
            GatewayMetrics::new(),
            PoolConfig::default(),
        );
        let live = router.current();
        let svc = &live.services[0];
        assert_eq!(svc.backends.len(), 3, "non-passing backends are not live");
        for balancing in [Balancing::PowerOfTwoChoices, Balancing::RoundRobin] {
            assert_eq!(ids(svc, balancing, &[], 200), ["a1", "a2"]);
            assert_eq!(ids(svc, balancing, &[0], 50), ["a2"]);
            assert_eq!(ids(svc, balancing, &[0, 1], 50), ["b1"]);
            assert_eq!(ids(svc, balancing, &[0, 1, 2], 50), Vec::<String>::new());
        }
        let cfg = OutlierConfig {
            consecutive_failures: 1,
            base_ejection_ms: 1_000_000,
            max_ejection_ms: 1_000_000,
        };
        svc.backends[0].state.record_failure(&cfg, 1);
        assert_eq!(ids(svc, Balancing::RoundRobin, &[], 50), ["a2"]);
        svc.backends[1].state.record_failure(&cfg, 1);
        assert_eq!(ids(svc, Balancing::RoundRobin, &[], 50), ["b1"]);
        svc.backends[2].state.record_failure(&cfg, 1);
        // Everything ejected: panic mode spreads over all of them.
        assert_eq!(ids(svc, Balancing::RoundRobin, &[], 50), ["a1", "a2", "b1"]);
    }

    #[test]
    fn p2c_prefers_less_outstanding() {
        let (_tx, rx) = watch::channel(table(&[("a", 1, "", true), ("b", 2, "", true)]));
        let router = Router::new(
            rx,
            String::new(),
            Clock::new(),
            GatewayMetrics::new(),
            PoolConfig::default(),
        );
        let live = router.current();
        let svc = &live.services[0];
        let _busy = svc.backends[0].state.start();
        assert_eq!(ids(svc, Balancing::PowerOfTwoChoices, &[], 100), ["b"]);
    }
}
