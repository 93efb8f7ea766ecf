//! Per-backend state that outlives routing tables: outstanding requests,
//! consecutive failures and ejection. Kept in [`BackendStates`] keyed by
//! (instance id, address), so a table swap that keeps a backend keeps its
//! counters, and a request in flight holds its own `Arc` so its completion is
//! counted even after the backend left the table.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Instant;

use crate::config::OutlierConfig;
use crate::pool::{BackendPool, PoolConfig};

pub(crate) type BackendKey = (Arc<str>, SocketAddr);

/// Milliseconds on the gateway's own monotonic clock.
#[derive(Clone, Copy, Debug)]
pub(crate) struct Clock {
    epoch: Instant,
}

impl Clock {
    pub(crate) fn new() -> Self {
        Clock {
            epoch: Instant::now(),
        }
    }
    pub(crate) fn now_ms(&self) -> u64 {
        self.ms_at(Instant::now())
    }
    /// Starts at 1 so that 0 can mean "never".
    pub(crate) fn ms_at(&self, at: Instant) -> u64 {
        at.saturating_duration_since(self.epoch).as_millis() as u64 + 1
    }
}

#[derive(Debug)]
pub(crate) struct BackendState {
    pub(crate) pool: BackendPool,
    outstanding: AtomicU32,
    consecutive_failures: AtomicU32,
    /// Clock ms until which the backend gets no traffic; 0: not ejected.
    ejected_until_ms: AtomicU64,
    /// Ejections since the last success: the next one lasts 2^n times longer.
    ejections: AtomicU32,
}

/// What a recorded outcome did to the backend.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum Verdict {
    Failing,
    Ejected { for_ms: u64 },
}

impl BackendState {
    pub(crate) fn new(addr: SocketAddr, pool: PoolConfig) -> Self {
        BackendState {
            pool: BackendPool::new(addr, pool),
            outstanding: AtomicU32::new(0),
            consecutive_failures: AtomicU32::new(0),
            ejected_until_ms: AtomicU64::new(0),
            ejections: AtomicU32::new(0),
        }
    }

    pub(crate) fn outstanding(&self) -> u32 {
        self.outstanding.load(Ordering::Relaxed)
    }

    pub(crate) fn is_ejected(&self, now_ms: u64) -> bool {
        self.ejected_until_ms.load(Ordering::Relaxed) > now_ms
    }

    pub(crate) fn start(self: &Arc<Self>) -> InflightGuard {
        self.outstanding.fetch_add(1, Ordering::Relaxed);
        InflightGuard {
            state: Arc::clone(self),
        }
    }

    pub(crate) fn record_success(&self) {
        if self.consecutive_failures.load(Ordering::Relaxed) != 0 {
            self.consecutive_failures.store(0, Ordering::Relaxed);
        }
        if self.ejections.load(Ordering::Relaxed) != 0 {
            self.ejections.store(0, Ordering::Relaxed);
        }
    }

    pub(crate) fn record_failure(&self, cfg: &OutlierConfig, now_ms: u64) -> Verdict {
        if cfg.consecutive_failures == 0 {
            return Verdict::Failing;
        }
        let failures = self.consecutive_failures.fetch_add(1, Ordering::Relaxed) + 1;
        if failures < cfg.consecutive_failures {
            return Verdict::Failing;
        }
        // Only the request that crosses the threshold ejects; the counter
        // restarts so the backend gets a fresh count once it is retried.
        if self
            .consecutive_failures
            .compare_exchange(failures, 0, Ordering::Relaxed, Ordering::Relaxed)
            .is_err()
        {
            return Verdict::Failing;
        }
        let n = self.ejections.fetch_add(1, Ordering::Relaxed).min(20);
        let for_ms = cfg
            .base_ejection_ms
            .saturating_mul(1u64 << n)
            .min(cfg.max_ejection_ms.max(cfg.base_ejection_ms));
        self.ejected_until_ms
            .store(now_ms.saturating_add(for_ms), Ordering::Relaxed);
        Verdict::Ejected { for_ms }
    }
}

/// Counts one request as outstanding on a backend until dropped.
#[derive(Debug)]
pub(crate) struct InflightGuard {
    pub(crate) state: Arc<BackendState>,
}

impl Drop for InflightGuard {
    fn drop(&mut self) {
        self.state.outstanding.fetch_sub(1, Ordering::Relaxed);
    }
}

/// The registry of backend states across table swaps.
#[derive(Debug, Default)]
pub(crate) struct BackendStates {
    states: HashMap<BackendKey, Arc<BackendState>>,
    pool: PoolConfig,
}

impl BackendStates {
    pub(crate) fn new(pool: PoolConfig) -> Self {
        BackendStates {
            states: HashMap::new(),
            pool,
        }
    }

    /// Returns the state for every key of the new table, reusing existing
    /// ones, and forgets backends that left unless they are still ejected (so
    /// a flapping backend that comes straight back stays ejected).
    pub(crate) fn carry_over(
        &mut self,
        keys: impl IntoIterator<Item = BackendKey>,
        now_ms: u64,
    ) -> HashMap<BackendKey, Arc<BackendState>> {
        let mut next = HashMap::new();
        for key in keys {
            let state = match self.states.get(&key) {
                Some(s) => Arc::clone(s),
                None => Arc::new(BackendState::new(key.1, self.pool.clone())),
            };
            next.insert(key, state);
        }
        for (key, state) in self.states.drain() {
            if !next.contains_key(&key) && state.is_ejected(now_ms) {
                next.insert(key, state);
            }
        }
        self.states = next.clone();
        next
    }

    pub(crate) fn all(&self) -> impl Iterator<Item = &Arc<BackendState>> {
        self.states.values()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cfg() -> OutlierConfig {
        OutlierConfig {
            consecutive_failures: 3,
            base_ejection_ms: 100,
            max_ejection_ms: 350,
        }
    }

    #[test]
    fn ejects_after_consecutive_failures_and_grows() {
        let s = BackendState::new("127.0.0.1:1".parse().unwrap(), PoolConfig::default());
        assert_eq!(s.record_failure(&cfg(), 10), Verdict::Failing);
        assert_eq!(s.record_failure(&cfg(), 10), Verdict::Failing);
        assert_eq!(
            s.record_failure(&cfg(), 10),
            Verdict::Ejected { for_ms: 100 }
        );
        assert!(s.is_ejected(109));
        assert!(!s.is_ejected(110));
        for _ in 0..2 {
            s.record_failure(&cfg(), 200);
        }
        assert_eq!(
            s.record_failure(&cfg(), 200),
            Verdict::Ejected { for_ms: 200 }
        );
        for _ in 0..2 {
            s.record_failure(&cfg(), 500);
        }
        assert_eq!(
            s.record_failure(&cfg(), 500),
            Verdict::Ejected { for_ms: 350 }
        );
        s.record_success();
        for _ in 0..2 {
            s.record_failure(&cfg(), 1000);
        }
        assert_eq!(
            s.record_failure(&cfg(), 1000),
            Verdict::Ejected { for_ms: 100 }
        );
    }

    #[test]
    fn success_resets_the_count() {
        let s = BackendState::new("127.0.0.1:1".parse().unwrap(), PoolConfig::default());
        s.record_failure(&cfg(), 1);
        s.record_failure(&cfg(), 1);
        s.record_success();
        assert_eq!(s.record_failure(&cfg(), 1), Verdict::Failing);
        assert!(!s.is_ejected(1));
    }

    #[test]
    fn states_survive_swaps() {
        let mut reg = BackendStates::default();
        let a: BackendKey = (Arc::from("a"), "127.0.0.1:1".parse().unwrap());
        let b: BackendKey = (Arc::from("b"), "127.0.0.1:2".parse().unwrap());
        let first = reg.carry_over([a.clone(), b.clone()], 1);
        let guard = first[&a].start();
        for _ in 0..3 {
            first[&b].record_failure(&cfg(), 1);
        }
        let second = reg.carry_over([a.clone()], 2);
        assert!(Arc::ptr_eq(&first[&a], &second[&a]));
        assert_eq!(second[&a].outstanding(), 1);
        // b left but is still ejected: kept, and comes back ejected.
        let third = reg.carry_over([a.clone(), b.clone()], 3);
        assert!(third[&b].is_ejected(3));
        drop(guard);
        assert_eq!(third[&a].outstanding(), 0);
        let fourth = reg.carry_over([a.clone()], 1000);
        assert!(!fourth.contains_key(&b));
    }
}
