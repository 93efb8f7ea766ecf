//! Cluster formation: one-member bootstrap, N-server bootstrap (the server with the lowest raft
//! address initializes once N servers know each other), or joining a running cluster.
//! A server with existing Raft state never bootstraps again.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::Weak;
use std::time::Duration;

use crate::network::CallError;
use crate::store::Inner;
use crate::wire::{InfoReply, InfoRequest, LeaderReply, MemberWire, NodeInfo};

const POLL: Duration = Duration::from_millis(200);
const INFO_TIMEOUT: Duration = Duration::from_secs(2);
const JOIN_TIMEOUT: Duration = Duration::from_secs(60);
/// A member that has not heard from a leader for this long checks whether it was removed.
const REMOVED_CHECK_AFTER: Duration = Duration::from_secs(3);
/// How often an initialized server checks that it is still a member.
const MEMBERSHIP_CHECK_EVERY: Duration = Duration::from_secs(2);

fn node_info(m: &MemberWire) -> NodeInfo {
    NodeInfo {
        name: m.name.clone(),
        raft_addr: m.raft_addr.clone(),
        http_addr: m.http_addr.clone(),
    }
}

/// Orders servers for the "who initializes" rule: by socket address when parseable.
fn addr_key(addr: &str) -> (Option<SocketAddr>, String) {
    (addr.parse().ok(), addr.to_string())
}

pub(crate) async fn run(inner: Weak<Inner>) {
    let Some(me) = inner.upgrade() else { return };
    if me.is_initialized().await {
        drop(me);
        refresh_own_info(inner.clone()).await;
        stay_member(inner).await;
        return;
    }
    if me.bootstrap_expect() <= 1 && me.join_addrs().is_empty() {
        let mut members = BTreeMap::new();
        members.insert(me.node_id(), node_info(&me.self_member()));
        match me.initialize(members).await {
            Ok(()) => tracing::info!("initialized a one-member cluster"),
            Err(e) => tracing::error!(error = %e, "could not initialize a one-member cluster"),
        }
        return;
    }
    drop(me);
    loop {
        let Some(me) = inner.upgrade() else { return };
        if me.check_running().is_err() {
            return;
        }
        if me.is_initialized().await || step(&me).await {
            break;
        }
        drop(me);
        tokio::time::sleep(POLL).await;
    }
    stay_member(inner).await;
}

/// A server that was removed (or whose removal raced a restart) hears from no leader any more:
/// once silent for a while it asks the servers it knows, and if a leader's membership no
/// longer holds it, asks that leader to add it again. Runs for the life of the store.
async fn stay_member(inner: Weak<Inner>) {
    loop {
        tokio::time::sleep(MEMBERSHIP_CHECK_EVERY).await;
        let Some(me) = inner.upgrade() else { return };
        if me.check_running().is_err() {
            return;
        }
        let silent = me.leader_silence().is_none_or(|s| s > REMOVED_CHECK_AFTER);
        if me.is_leader_now() || !silent {
            continue;
        }
        if let Some(leader) = find_leader_without(&me).await {
            let self_member = me.self_member();
            tracing::warn!(leader = %leader.name, "this server is not in the leader's membership (it was removed); asking to join again");
            let res: Result<LeaderReply<()>, CallError> = me
                .client()
                .call(
                    &leader.raft_addr,
                    "/raft/join",
                    &self_member,
                    JOIN_TIMEOUT,
                    Some(leader.id),
                )
                .await;
            match res {
                Ok(LeaderReply::Ok(())) => {
                    tracing::info!(leader = %leader.name, "joined the cluster again")
                }
                Ok(other) => {
                    tracing::warn!(leader = %leader.name, reply = ?other, "rejoin refused; retrying")
                }
                Err(e) => {
                    tracing::info!(leader = %leader.name, error = %e, "rejoin not done yet; retrying")
                }
            }
        }
    }
}

/// A server that reports itself as leader with a membership that does not include this one.
async fn find_leader_without(me: &Inner) -> Option<MemberWire> {
    let mut targets: Vec<String> = me.join_addrs().to_vec();
    for m in me.membership_members().into_iter().chain(me.known_peers()) {
        if !targets.contains(&m.raft_addr) {
            targets.push(m.raft_addr);
        }
    }
    let own = me.self_member().raft_addr;
    targets.retain(|t| *t != own);
    let req = InfoRequest { caller: None };
    for t in &targets {
        let res: Result<InfoReply, CallError> = me
            .client()
            .call(t, "/raft/info", &req, INFO_TIMEOUT, None)
            .await;
        let Ok(info) = res else { continue };
        let Some(leader) = info.leader.clone() else {
            continue;
        };
        if leader.id == info.id && info.initialized && !info.members.contains(&me.node_id()) {
            return Some(leader);
        }
    }
    None
}

/// A restarted server may have new addresses (port 0, a changed `http_advertise`): once a
/// leader is known, have membership record the current ones.
async fn refresh_own_info(inner: Weak<Inner>) {
    loop {
        let Some(me) = inner.upgrade() else { return };
        if me.check_running().is_err() {
            return;
        }
        match me.recorded_self_info() {
            None => {}
            Some(recorded) if recorded == node_info(&me.self_member()) => return,
            Some(recorded) => {
                tracing::info!(old = %recorded, new = %node_info(&me.self_member()), "updating this server's addresses in membership");
                match me.add_self_to_membership().await {
                    Ok(()) => return,
                    Err(e) => tracing::info!(error = %e, "address update not done yet; retrying"),
                }
            }
        }
        drop(me);
        tokio::time::sleep(POLL).await;
    }
}

/// One discovery round; true when nothing more is to be done.
async fn step(me: &Inner) -> bool {
    let self_member = me.self_member();
    let mut targets: Vec<String> = me.join_addrs().to_vec();
    for addr in me
        .known_peers()
        .into_iter()
        .map(|p| p.raft_addr)
        .chain(me.hinted_addrs())
    {
        if !targets.contains(&addr) {
            targets.push(addr);
        }
    }
    targets.retain(|t| *t != self_member.raft_addr);

    let req = InfoRequest {
        caller: Some(self_member.clone()),
    };
    let mut existing: Option<InfoReply> = None;
    for t in &targets {
        let res: Result<InfoReply, CallError> = me
            .client()
            .call(t, "/raft/info", &req, INFO_TIMEOUT, None)
            .await;
        match res {
            Ok(info) => {
                if info.id == me.node_id() {
                    continue;
                }
                me.note_peer(MemberWire {
                    id: info.id,
                    name: info.name.clone(),
                    raft_addr: info.raft_addr.clone(),
                    http_addr: info.http_addr.clone(),
                });
                for k in &info.known {
                    me.note_peer(k.clone());
                }
                if info.initialized && existing.is_none() {
                    existing = Some(info);
                }
            }
            Err(e) => tracing::debug!(target = %t, error = %e, "peer not reachable yet"),
        }
    }

    if let Some(info) = existing {
        // A cluster exists: ask its leader to add us.
        let (leader_addr, leader_id) = info
            .leader
            .map(|l| (l.raft_addr, l.id))
            .unwrap_or((info.raft_addr, info.id));
        let res: Result<LeaderReply<()>, CallError> = me
            .client()
            .call(
                &leader_addr,
                "/raft/join",
                &self_member,
                JOIN_TIMEOUT,
                Some(leader_id),
            )
            .await;
        match res {
            Ok(LeaderReply::Ok(())) => {
                tracing::info!(leader = %leader_addr, "joined the cluster");
                return true;
            }
            Ok(LeaderReply::Invalid(m)) => {
                tracing::error!(leader = %leader_addr, error = %m, "the cluster refused to add this server");
            }
            Ok(other) => {
                tracing::info!(leader = %leader_addr, reply = ?other, "join not done yet; retrying")
            }
            Err(e) => {
                tracing::info!(leader = %leader_addr, error = %e, "join not done yet; retrying")
            }
        }
        return false;
    }

    let peers = me.known_peers();
    let expect = me.bootstrap_expect().max(1);
    if peers.len() + 1 < expect {
        tracing::debug!(known = peers.len() + 1, expect, "waiting for more servers");
        return false;
    }
    let lowest = peers
        .iter()
        .map(|p| addr_key(&p.raft_addr))
        .min()
        .is_some_and(|k| k < addr_key(&self_member.raft_addr));
    if lowest {
        // Another server has the lowest address; it initializes and replicates to us.
        return false;
    }
    let mut members = BTreeMap::new();
    members.insert(self_member.id, node_info(&self_member));
    for p in &peers {
        members.insert(p.id, node_info(p));
    }
    tracing::info!(members = members.len(), "initializing the cluster");
    match me.initialize(members).await {
        Ok(()) => true,
        Err(e) => {
            tracing::error!(error = %e, "initializing the cluster failed; retrying");
            false
        }
    }
}
