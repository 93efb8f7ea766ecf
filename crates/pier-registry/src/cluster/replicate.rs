//! The replication loop every server of a cluster runs: level-triggered, it
//! compares the blob records in the store with this server's disk on every
//! pass and corrects what differs, so a lost copy, a missed fetch or a crash
//! between a fetch and its record heals within a pass.

use std::future::Future;
use std::sync::Arc;
use std::time::{Duration, Instant};

use pier_store::WatchKey;

use super::{BlobRecord, ClusterMeta, BLOBS};
use crate::digest::Digest;
use crate::{now_unix_ms, Registry, RegistryError};

#[derive(Clone, Debug)]
pub struct ReplicationConfig {
    /// Copies of every blob the cluster keeps (capped at the number of servers).
    pub replicas: usize,
    /// Longest wait between passes (a change to a blob record wakes it sooner).
    pub interval: Duration,
    /// How often every blob this server holds is re-hashed.
    pub scrub_every: Duration,
    /// A blob short of copies for this long may be fetched by any server, not
    /// only by those picked for it (a picked server may be down).
    pub anyone_after: Duration,
    /// The registry address (`host:port`) this server advertises to agents.
    pub advertise: Option<String>,
}

impl Default for ReplicationConfig {
    fn default() -> Self {
        ReplicationConfig {
            replicas: 2,
            interval: Duration::from_secs(2),
            scrub_every: Duration::from_secs(24 * 3600),
            anyone_after: Duration::from_secs(30),
            advertise: None,
        }
    }
}

/// Runs until `shutdown` completes.
pub async fn replicate(
    registry: Registry,
    meta: Arc<ClusterMeta>,
    cfg: ReplicationConfig,
    shutdown: impl Future<Output = ()> + Send,
) {
    tokio::pin!(shutdown);
    let mut last_scrub = Instant::now();
    loop {
        let mut watch = meta.store.watch(&[WatchKey::prefix(BLOBS, "")]);
        let scrub = last_scrub.elapsed() >= cfg.scrub_every;
        if scrub {
            last_scrub = Instant::now();
        }
        if let Err(e) = pass(&registry, &meta, &cfg, scrub).await {
            tracing::warn!(error = %e, "registry replication pass failed; retrying");
        }
        tokio::select! {
            _ = &mut shutdown => return,
            _ = watch.changed(cfg.interval) => {}
        }
    }
}

/// The servers picked to hold `digest` besides its holders: the first
/// `needed` non-holders in an order that depends on the digest (so copies
/// spread over the servers) and is the same on every server.
fn picked(digest: &str, rec: &BlobRecord, members: &[String], needed: usize, me: &str) -> bool {
    let mut others: Vec<(Digest, &String)> = members
        .iter()
        .filter(|m| !rec.holders.contains(*m))
        .map(|m| (Digest::sha256_of(format!("{digest}/{m}").as_bytes()), m))
        .collect();
    others.sort_by(|a, b| a.0.hex().cmp(b.0.hex()));
    others.iter().take(needed).any(|(_, m)| *m == me)
}

async fn pass(
    registry: &Registry,
    meta: &ClusterMeta,
    cfg: &ReplicationConfig,
    scrub: bool,
) -> Result<(), RegistryError> {
    if let Some(addr) = &cfg.advertise {
        meta.advertise(addr).await?;
    }
    let members = meta.members();
    let want = cfg.replicas.min(members.len()).max(1);
    let blobs = meta.all_blobs().await?;
    // Probed only when some blob may be short of copies: a copy on a server that does not
    // answer does not count, so a lost server's blobs get their second copy elsewhere.
    let answering = if blobs.iter().any(|(_, r)| r.holders.len() < members.len()) {
        meta.answering_members().await
    } else {
        members.clone()
    };
    let view = Members {
        all: &members,
        answering: &answering,
        want,
    };
    for (key, rec) in blobs {
        let Ok(digest) = Digest::parse(&key) else {
            continue;
        };
        if let Err(e) = reconcile(registry, meta, cfg, &view, &digest, &rec, scrub).await {
            tracing::warn!(%digest, error = %e, "cannot reconcile a blob's copies");
        }
    }
    Ok(())
}

/// The servers as one replication pass sees them.
struct Members<'a> {
    all: &'a [String],
    answering: &'a [String],
    /// Copies every blob should have.
    want: usize,
}

async fn reconcile(
    registry: &Registry,
    meta: &ClusterMeta,
    cfg: &ReplicationConfig,
    members: &Members<'_>,
    digest: &Digest,
    rec: &BlobRecord,
    scrub: bool,
) -> Result<(), RegistryError> {
    let key = digest.to_string();
    let listed = rec.holders.contains(&meta.node);
    match (listed, registry.local_size(digest).await?) {
        (true, Some(size)) if size == rec.size => {
            if scrub {
                registry.scrub(digest).await?;
            }
        }
        // Listed but lost (or cut short): no longer a holder; the copy comes back
        // below on a later pass if this server is still picked for it.
        (true, _) => {
            tracing::warn!(%digest, "a blob this server is listed as holding is missing; unlisting it");
            meta.set_holder(&key, false).await?;
        }
        // A verified copy here that the record does not list (a crash between
        // the fetch and its record): check it, then list it.
        (false, Some(_)) => {
            if registry.scrub(digest).await? == Some(true) {
                meta.set_holder(&key, true).await?;
            }
        }
        (false, None) => {
            let live = rec
                .holders
                .iter()
                .filter(|h| members.answering.contains(h))
                .count();
            if live == 0 || live >= members.want {
                return Ok(());
            }
            // Picked among the answering members (the same list on every server, give or
            // take a probe: the `anyone_after` fallback covers a disagreement).
            let candidates: Vec<String> = members
                .answering
                .iter()
                .filter(|m| members.all.contains(m))
                .cloned()
                .collect();
            let age = now_unix_ms().saturating_sub(rec.touched_unix_ms);
            let mine = picked(&key, rec, &candidates, members.want - live, &meta.node)
                || age >= cfg.anyone_after.as_millis() as u64;
            if mine && registry.fetch(digest).await? {
                tracing::debug!(%digest, "blob replicated to this server");
            }
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn exactly_the_needed_number_of_servers_is_picked() {
        let members: Vec<String> = ["s1", "s2", "s3", "s4"]
            .iter()
            .map(|s| s.to_string())
            .collect();
        let rec = BlobRecord {
            size: 1,
            touched_unix_ms: 0,
            holders: ["s1".to_string()].into_iter().collect(),
        };
        for d in ["sha256:aa", "sha256:bb", "sha256:cc"] {
            let picked_now: Vec<_> = members
                .iter()
                .filter(|m| picked(d, &rec, &members, 1, m))
                .collect();
            assert_eq!(picked_now.len(), 1, "{d}: {picked_now:?}");
            assert_ne!(picked_now[0], "s1");
            let two = members
                .iter()
                .filter(|m| picked(d, &rec, &members, 2, m))
                .count();
            assert_eq!(two, 2);
        }
    }
}
