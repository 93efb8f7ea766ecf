//! Who may act as leader, and when: the leader lease for local reads, quorum contact for
//! `KnownLeader`, and pre-vote so a server that cannot win never campaigns.
//!
//! * **Acks.** The peer network records, per follower, the send time of the last
//!   `AppendEntries` it accepted in the current term. A follower that accepted an append sent
//!   at `t` refuses every vote until `t + election_timeout_max` (openraft's own leader lease on
//!   the voter side), so no other leader can exist before then. The leader therefore holds a
//!   **lease** until `quorum_ack + lease_ms`, with `lease_ms = election_timeout_min` leaving
//!   a margin for clock-rate differences; within it a local read is linearizable.
//! * **Pre-vote.** Elections are off in openraft by default (`enable_elect = false`); a loop
//!   turns them on only while a quorum says it would vote for this server now (it has not
//!   heard from a leader for `election_timeout_min` and this server's log is at least as
//!   up to date). An isolated server's term therefore never rises, and when it comes back it
//!   cannot depose the leader with a higher term.
//! * **Restart.** A server that restarts with a log has forgotten when it last heard from a
//!   leader, so for `election_timeout_max` after start it grants no vote and no pre-vote: a
//!   lease it gave before the restart is still honoured.

use std::collections::{BTreeSet, HashMap};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Mutex, Weak};
use std::time::{Duration, Instant};

use openraft::ServerState;

use crate::store::Inner;
use crate::wire::{NodeId, PreVoteReply, PreVoteRequest};

/// Raft timings every liveness decision derives from.
#[derive(Clone, Copy, Debug)]
pub(crate) struct Timing {
    pub heartbeat_ms: u64,
    pub election_min_ms: u64,
    pub election_max_ms: u64,
}

impl Timing {
    /// How long a quorum ack lets the leader serve reads locally.
    pub fn lease(&self) -> Duration {
        Duration::from_millis(self.election_min_ms)
    }

    /// Silence after which a leader (or a leader's follower) no longer claims a known leader,
    /// and after which a forwarded call to that leader is abandoned.
    pub fn silence_limit(&self) -> Duration {
        Duration::from_millis(self.election_max_ms)
    }

    /// Silence from the leader after which a follower starts asking for pre-votes, and
    /// grants them to others.
    pub fn prevote_after(&self) -> Duration {
        Duration::from_millis(self.election_min_ms)
    }
}

#[derive(Clone, Copy, Debug)]
struct Ack {
    term: u64,
    sent: Instant,
}

/// Per follower: the send time of the last append it accepted, with the term it was sent in.
#[derive(Default)]
pub(crate) struct QuorumAcks {
    acks: Mutex<HashMap<NodeId, Ack>>,
    /// One more than the highest commit index this server (as leader) has told a follower
    /// about (0: none). A follower may apply and serve anything up to it, so a lease read
    /// here must not answer from an applied state below it.
    commit_sent_plus_one: AtomicU64,
}

impl QuorumAcks {
    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<NodeId, Ack>> {
        self.acks.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Called by the network before it tells a follower that everything up to `index` is
    /// committed (an append's `leader_commit`, or a snapshot's last entry).
    pub fn record_commit_sent(&self, index: Option<u64>) {
        if let Some(index) = index {
            self.commit_sent_plus_one
                .fetch_max(index.saturating_add(1), Ordering::AcqRel);
        }
    }

    /// The highest commit index sent to any follower so far.
    pub fn commit_sent(&self) -> Option<u64> {
        self.commit_sent_plus_one
            .load(Ordering::Acquire)
            .checked_sub(1)
    }

    /// Called by the network when `target` accepted an append sent at `sent` in `term`.
    pub fn record(&self, target: NodeId, term: u64, sent: Instant) {
        let mut acks = self.lock();
        let slot = acks.entry(target).or_insert(Ack { term, sent });
        // Replies can arrive out of order; keep the latest send time of the newest term.
        if (term, sent) > (slot.term, slot.sent) {
            *slot = Ack { term, sent };
        }
    }

    /// Followers that accepted an append of `term` sent within `within` before `now`.
    pub fn recent(&self, term: u64, within: Duration, now: Instant) -> BTreeSet<NodeId> {
        self.lock()
            .iter()
            .filter(|(_, a)| a.term == term && now.saturating_duration_since(a.sent) <= within)
            .map(|(id, _)| *id)
            .collect()
    }

    /// The latest instant by which a quorum of every configuration in `joint` had accepted
    /// this leader's appends in `term` (`me` counts as acknowledging `now`).
    pub fn quorum_instant(
        &self,
        me: NodeId,
        term: u64,
        joint: &[BTreeSet<NodeId>],
        now: Instant,
    ) -> Option<Instant> {
        let acks = self.lock();
        quorum_instant(joint, |id| {
            if id == me {
                Some(now)
            } else {
                acks.get(&id).filter(|a| a.term == term).map(|a| a.sent)
            }
        })
    }
}

/// For each configuration, the majority-th most recent ack; the earliest over all
/// configurations (a joint configuration needs a majority of each). None if any
/// configuration has no acked majority, or there is no configuration.
pub(crate) fn quorum_instant(
    joint: &[BTreeSet<NodeId>],
    ack_of: impl Fn(NodeId) -> Option<Instant>,
) -> Option<Instant> {
    let mut overall: Option<Instant> = None;
    for config in joint {
        if config.is_empty() {
            continue;
        }
        let mut times: Vec<Instant> = config.iter().filter_map(|id| ack_of(*id)).collect();
        let majority = config.len() / 2 + 1;
        if times.len() < majority {
            return None;
        }
        // Newest first: the majority-th newest is the instant a majority had acked by.
        times.sort_unstable_by(|a, b| b.cmp(a));
        let t = times[majority - 1];
        overall = Some(overall.map_or(t, |o| o.min(t)));
    }
    overall
}

/// True when `granted` (which includes the asking server) is a majority of every
/// configuration in `joint`.
pub(crate) fn is_quorum(joint: &[BTreeSet<NodeId>], granted: &BTreeSet<NodeId>) -> bool {
    !joint.is_empty()
        && joint
            .iter()
            .all(|c| c.iter().filter(|id| granted.contains(id)).count() > c.len() / 2)
}

/// Keeps openraft's elections switched on only while a pre-vote round would win.
pub(crate) async fn prevote_loop(inner: Weak<Inner>) {
    let mut elect_on = false;
    loop {
        let Some(me) = inner.upgrade() else { return };
        if me.check_running().is_err() {
            return;
        }
        let tick = Duration::from_millis(me.timing().heartbeat_ms);
        let want = should_campaign(&me).await;
        if want != elect_on {
            tracing::debug!(
                elect = want,
                "pre-vote: elections {}",
                if want { "on" } else { "off" }
            );
            me.raft.runtime_config().elect(want);
            elect_on = want;
        }
        drop(me);
        tokio::time::sleep(tick).await;
    }
}

/// One pre-vote decision: false while a leader is heard from; otherwise asks every other
/// voter and answers whether a quorum would vote for this server.
async fn should_campaign(me: &Inner) -> bool {
    let (state, term, joint, is_voter) = {
        let m = me.raft.metrics();
        let m = m.borrow();
        let membership = m.membership_config.membership();
        let joint = membership.get_joint_config().clone();
        let is_voter = membership.voter_ids().any(|id| id == me.node_id());
        (m.state, m.current_term, joint, is_voter)
    };
    if state == ServerState::Leader || !is_voter {
        return false;
    }
    if me.votes_refused_now() {
        return false;
    }
    if me
        .leader_silence()
        .is_some_and(|s| s < me.timing().prevote_after())
    {
        return false;
    }
    let voters: BTreeSet<NodeId> = joint.iter().flatten().copied().collect();
    if voters.len() == 1 {
        return true;
    }
    let req = PreVoteRequest {
        candidate: me.node_id(),
        term,
        last_log: me.last_log_id(),
    };
    let timeout = me.timing().prevote_after();
    let asks = voters
        .iter()
        .filter(|id| **id != me.node_id())
        .filter_map(|id| me.member_raft_addr(*id).map(|addr| (*id, addr)))
        .map(|(id, addr)| {
            let req = req.clone();
            async move {
                let reply: Result<PreVoteReply, _> = me
                    .client()
                    .call(&addr, "/raft/prevote", &req, timeout, Some(id))
                    .await;
                (id, reply.map(|r| r.granted).unwrap_or(false))
            }
        });
    let mut granted: BTreeSet<NodeId> = futures::future::join_all(asks)
        .await
        .into_iter()
        .filter(|(_, ok)| *ok)
        .map(|(id, _)| id)
        .collect();
    granted.insert(me.node_id());
    is_quorum(&joint, &granted)
}

/// The receiving side of a pre-vote: grant when this server has no leader it heard from
/// recently (and is not a leader holding its lease), and the candidate's log and term are at
/// least as new as its own.
pub(crate) fn grant_prevote(me: &Inner, req: &PreVoteRequest) -> PreVoteReply {
    let deny = PreVoteReply { granted: false };
    if me.votes_refused_now() {
        return deny;
    }
    let (is_leader, term) = {
        let m = me.raft.metrics();
        let m = m.borrow();
        (
            m.state == ServerState::Leader && m.current_leader == Some(me.node_id()),
            m.current_term,
        )
    };
    if is_leader && me.lease_valid() {
        return deny;
    }
    if !is_leader
        && me
            .leader_silence()
            .is_some_and(|s| s < me.timing().prevote_after())
    {
        return deny;
    }
    // The real election would be for term + 1.
    if req.term.saturating_add(1) <= term {
        return deny;
    }
    if req.last_log < me.last_log_id() {
        return deny;
    }
    PreVoteReply { granted: true }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn set(ids: &[u64]) -> BTreeSet<u64> {
        ids.iter().copied().collect()
    }

    #[test]
    fn quorum_instant_is_the_majority_th_newest_ack() {
        let t0 = Instant::now();
        let at = |ms: u64| t0 + Duration::from_millis(ms);
        let joint = vec![set(&[1, 2, 3])];
        // 1 is me at 100, 2 acked at 50, 3 at 10: a majority (2 of 3) had acked by 50.
        let got = quorum_instant(&joint, |id| match id {
            1 => Some(at(100)),
            2 => Some(at(50)),
            3 => Some(at(10)),
            _ => None,
        });
        assert_eq!(got, Some(at(50)));
        // Only me: no quorum.
        let got = quorum_instant(&joint, |id| (id == 1).then(|| at(100)));
        assert_eq!(got, None);
    }

    #[test]
    fn joint_configurations_need_a_majority_of_each() {
        let t0 = Instant::now();
        let at = |ms: u64| t0 + Duration::from_millis(ms);
        let joint = vec![set(&[1, 2, 3]), set(&[1, 4, 5])];
        let acks = |id: u64| match id {
            1 => Some(at(100)),
            2 => Some(at(90)),
            4 => Some(at(20)),
            _ => None,
        };
        // Old config by 90, new config by 20: the lease runs from 20.
        assert_eq!(quorum_instant(&joint, acks), Some(at(20)));
        assert!(is_quorum(&joint, &set(&[1, 2, 4])));
        assert!(!is_quorum(&joint, &set(&[1, 2, 3])));
        assert!(!is_quorum(&[], &set(&[1])));
        assert!(is_quorum(&[set(&[1])], &set(&[1])));
    }

    #[test]
    fn acks_keep_the_newest_term_and_time() {
        let acks = QuorumAcks::default();
        let t0 = Instant::now();
        let later = t0 + Duration::from_millis(10);
        acks.record(2, 5, later);
        acks.record(2, 5, t0); // a late reply to an older append
        let joint = vec![set(&[1, 2, 3])];
        assert_eq!(acks.quorum_instant(1, 5, &joint, later), Some(later));
        // Acks of another term do not count.
        assert_eq!(acks.quorum_instant(1, 6, &joint, later), None);
    }
}
