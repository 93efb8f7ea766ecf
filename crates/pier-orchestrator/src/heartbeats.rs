//! Agent heartbeats, kept in memory on the leader (no Raft write per beat): the controller
//! marks a node down once it has been silent for `node_down_after_ms`. A new leader gives
//! every node a fresh grace period, so a leader change never takes nodes down.

use std::collections::HashMap;
use std::sync::Mutex;

#[derive(Default)]
pub struct Heartbeats {
    last_ms: Mutex<HashMap<String, u64>>,
}

impl Heartbeats {
    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<String, u64>> {
        self.last_ms.lock().unwrap_or_else(|p| p.into_inner())
    }

    pub fn record(&self, node: &str, now_ms: u64) {
        self.lock().insert(node.to_string(), now_ms);
    }

    /// Last heartbeat of `node`; nodes never heard of by this leader get `grace_from_ms`.
    pub fn last(&self, node: &str, grace_from_ms: u64) -> u64 {
        *self.lock().entry(node.to_string()).or_insert(grace_from_ms)
    }

    pub fn get(&self, node: &str) -> Option<u64> {
        self.lock().get(node).copied()
    }

    /// Called when this server becomes leader.
    pub fn reset(&self, now_ms: u64) {
        let mut map = self.lock();
        for v in map.values_mut() {
            *v = (*v).max(now_ms);
        }
    }
}
