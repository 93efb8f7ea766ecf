//! Node liveness from heartbeats.

/// Whether a node counts as up.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum NodeLiveness {
    /// Heard from within the timeout. `silent_ms` is how long since the last heartbeat, so a
    /// blip can be shown without acting on it.
    Alive { silent_ms: u64 },
    /// Silent for longer than the timeout since `since_ms` (= last heartbeat + timeout).
    Down { since_ms: u64 },
}

/// A node is down only once `now_ms` is strictly past `last_heartbeat_ms +
/// node_down_after_ms`. Anything shorter is a blip and moves nothing (the complaint against
/// Nomad and Swarm: a short network hiccup rescheduled everything). A heartbeat "from the
/// future" (clock skew between leader changes) counts as just heard.
pub fn node_liveness(last_heartbeat_ms: u64, now_ms: u64, node_down_after_ms: u64) -> NodeLiveness {
    let silent_ms = now_ms.saturating_sub(last_heartbeat_ms);
    if silent_ms > node_down_after_ms {
        NodeLiveness::Down {
            since_ms: last_heartbeat_ms.saturating_add(node_down_after_ms),
        }
    } else {
        NodeLiveness::Alive { silent_ms }
    }
}
