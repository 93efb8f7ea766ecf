//! Whether the cluster's quorum still hears this agent.
//!
//! Servers acknowledge a heartbeat only on behalf of a leader that a quorum follows (a leader
//! cut off from its quorum, or a follower that lost its leader, refuses). So an agent whose
//! heartbeats go unacknowledged for a while knows the cluster may have marked its node down
//! and replaced its tasks elsewhere — even when the one server it talks to answers. It keeps
//! its containers running (the cluster stops them, as replacements pass, once it hears the
//! node again), says so once when it happens and once when it ends, and shows the state on
//! `GET /v1/agent/health`.
//!
//! [`Contact`] is the state machine, without clocks or IO: the heartbeat loop feeds it each
//! outcome with the wall-clock time and logs the [`Transition`]s it returns.

use pier_api::service::{AgentHealth, ClusterContact};

/// The cut-off time for a heartbeat interval: three missed beats, and at least 1.5 s so one
/// slow answer or a quick leader election is not reported.
pub fn cut_off_after_ms(heartbeat_interval_ms: u64) -> u64 {
    heartbeat_interval_ms.saturating_mul(3).max(1_500)
}

/// A change worth telling operators about.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Transition {
    /// No heartbeat acknowledged since `since_ms` (the last acknowledged one, or the start).
    CutOff { since_ms: u64, error: String },
    /// Acknowledged again after `cut_off_ms` without.
    Restored { cut_off_ms: u64 },
}

#[derive(Clone, Debug)]
pub struct Contact {
    cut_off_after_ms: u64,
    started_ms: u64,
    last_ack_ms: Option<u64>,
    cut_off: bool,
    last_error: Option<String>,
}

impl Contact {
    pub fn new(now_ms: u64, cut_off_after_ms: u64) -> Contact {
        Contact {
            cut_off_after_ms,
            started_ms: now_ms,
            last_ack_ms: None,
            cut_off: false,
            last_error: None,
        }
    }

    fn since_ms(&self) -> u64 {
        self.last_ack_ms.unwrap_or(self.started_ms)
    }

    /// A heartbeat was acknowledged at `now_ms`.
    pub fn acknowledged(&mut self, now_ms: u64) -> Option<Transition> {
        let was_cut_off = std::mem::replace(&mut self.cut_off, false);
        let since = self.since_ms();
        self.last_ack_ms = Some(now_ms);
        self.last_error = None;
        was_cut_off.then(|| Transition::Restored {
            cut_off_ms: now_ms.saturating_sub(since),
        })
    }

    /// A heartbeat (or the registration) was not acknowledged at `now_ms`.
    pub fn refused(&mut self, now_ms: u64, error: String) -> Option<Transition> {
        self.last_error = Some(error.clone());
        let since = self.since_ms();
        if self.cut_off || now_ms.saturating_sub(since) < self.cut_off_after_ms {
            return None;
        }
        self.cut_off = true;
        Some(Transition::CutOff {
            since_ms: since,
            error,
        })
    }

    pub fn health(&self, node: &str, server: &str) -> AgentHealth {
        let cluster = if self.cut_off {
            ClusterContact::CutOff
        } else if self.last_ack_ms.is_some() {
            ClusterContact::Connected
        } else {
            ClusterContact::Connecting
        };
        AgentHealth {
            node: node.to_string(),
            server: server.to_string(),
            cluster,
            last_ack_ms: self.last_ack_ms,
            cut_off_since_ms: self.cut_off.then(|| self.since_ms()),
            last_error: self.last_error.clone(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn one_transition_each_way_however_many_beats() {
        let mut c = Contact::new(1_000, 1_500);
        assert_eq!(c.health("n", "s").cluster, ClusterContact::Connecting);
        assert_eq!(c.acknowledged(1_500), None);
        assert_eq!(c.health("n", "s").cluster, ClusterContact::Connected);
        // Refusals within the cut-off time are a blip.
        assert_eq!(c.refused(2_000, "503".into()), None);
        assert_eq!(c.refused(2_999, "503".into()), None);
        assert_eq!(c.health("n", "s").cluster, ClusterContact::Connected);
        assert_eq!(
            c.refused(3_000, "no quorum".into()),
            Some(Transition::CutOff {
                since_ms: 1_500,
                error: "no quorum".into()
            })
        );
        // Reported once, not at every beat.
        for t in 0..20 {
            assert_eq!(c.refused(3_500 + t * 500, "no quorum".into()), None);
        }
        let h = c.health("n", "s");
        assert_eq!(h.cluster, ClusterContact::CutOff);
        assert_eq!(h.cut_off_since_ms, Some(1_500));
        assert_eq!(h.last_error.as_deref(), Some("no quorum"));
        assert_eq!(
            c.acknowledged(20_000),
            Some(Transition::Restored { cut_off_ms: 18_500 })
        );
        assert_eq!(c.acknowledged(20_500), None);
        let h = c.health("n", "s");
        assert_eq!(h.cluster, ClusterContact::Connected);
        assert_eq!(h.cut_off_since_ms, None);
        assert_eq!(h.last_error, None);
    }

    #[test]
    fn never_acknowledged_counts_from_the_start() {
        let mut c = Contact::new(1_000, 1_500);
        assert_eq!(c.refused(2_000, "unreachable".into()), None);
        assert_eq!(
            c.refused(2_500, "unreachable".into()),
            Some(Transition::CutOff {
                since_ms: 1_000,
                error: "unreachable".into()
            })
        );
    }

    #[test]
    fn cut_off_time_has_a_floor() {
        assert_eq!(cut_off_after_ms(100), 1_500);
        assert_eq!(cut_off_after_ms(500), 1_500);
        assert_eq!(cut_off_after_ms(2_000), 6_000);
    }
}
