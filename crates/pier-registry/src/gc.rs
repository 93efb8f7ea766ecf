//! Online garbage collection.
//!
//! 1. Mark, on a read snapshot of the index (no lock that a push or pull
//!    could wait on): every manifest of every repository is a root, and marks
//!    itself, its config and layers, its index children and its subject.
//!    Untagged manifests are roots too: like distribution, a manifest stays
//!    until it is deleted by digest (`DELETE /v2/<name>/manifests/<digest>`).
//! 2. Sweep candidates: blobs not marked and last touched (published,
//!    re-uploaded or mounted) before `now - gc_grace`. The grace window covers
//!    "layer uploaded moments before its manifest".
//! 3. For each batch of candidates, under the candidates' digest stripe locks
//!    (which only a publish of the same digest also takes), one short write
//!    transaction re-checks each candidate against the reverse-reference table
//!    and its touch time, then removes its records; only then are the files
//!    deleted. A manifest committed after the snapshot is therefore seen by
//!    the re-check (redb serialises the two writers), and a manifest put that
//!    commits after the sweep finds the blob gone and answers
//!    MANIFEST_BLOB_UNKNOWN rather than pointing at a missing file.
//! 4. Files in the store without an index record (a crash between rename and
//!    commit, or a manifest put that was refused) older than the grace window,
//!    and upload sessions idle for longer than `upload_expiry`, are deleted.

use std::time::{Duration, Instant, SystemTime};

use serde::{Deserialize, Serialize};

use crate::digest::Digest;
use crate::{now_unix_ms, Inner, RegistryError};

/// Candidates handled per write transaction: bounds how long a push may wait
/// for the index writer while GC sweeps.
const SWEEP_BATCH: usize = 128;

/// The result of one GC run; also the JSON answer of `POST /_pier/gc`.
/// In a dry run the `*_deleted` fields count what would be deleted.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct GcReport {
    pub dry_run: bool,
    /// Manifests marked from (all of them: each one is a root).
    pub manifests: u64,
    pub blobs_total: u64,
    pub blobs_marked: u64,
    /// Unreferenced, but inside the grace window: kept this time.
    pub blobs_in_grace: u64,
    pub blobs_deleted: u64,
    pub bytes_deleted: u64,
    /// Files in the store that no index record knows about.
    pub orphan_files_deleted: u64,
    pub uploads_deleted: u64,
    pub duration_ms: u64,
}

fn unix_ms(t: SystemTime) -> u64 {
    t.duration_since(SystemTime::UNIX_EPOCH)
        .unwrap_or(Duration::ZERO)
        .as_millis() as u64
}

pub(crate) async fn run(inner: &Inner, dry_run: bool) -> Result<GcReport, RegistryError> {
    let _one_at_a_time = inner.gc_running.lock().await;
    let started = Instant::now();
    let now = now_unix_ms();
    let cutoff = now.saturating_sub(inner.cfg.gc_grace.as_millis() as u64);
    let mut report = GcReport {
        dry_run,
        ..GcReport::default()
    };

    let snap = inner.index.gc_snapshot(cutoff).await?;
    report.manifests = snap.manifests as u64;
    report.blobs_total = snap.blob_count as u64;
    report.blobs_marked = snap
        .marked
        .iter()
        .filter(|d| snap.known.contains(*d))
        .count() as u64;
    report.blobs_in_grace = snap.young as u64;

    if dry_run {
        report.blobs_deleted = snap.candidates.len() as u64;
        report.bytes_deleted = snap.candidates.iter().map(|c| c.size).sum();
    } else {
        for batch in snap.candidates.chunks(SWEEP_BATCH) {
            let _guards = inner
                .locks
                .lock_many(batch.iter().map(|c| c.digest.as_str()))
                .await;
            let removed = inner.index.gc_remove(batch.to_vec(), cutoff).await?;
            for c in removed {
                let Ok(digest) = Digest::parse(&c.digest) else {
                    continue;
                };
                match inner.store.delete(&digest).await {
                    Ok(_) => {
                        report.blobs_deleted += 1;
                        report.bytes_deleted += c.size;
                    }
                    // The record is gone already; the file is now an orphan
                    // that a later run removes.
                    Err(e) => {
                        tracing::warn!(digest = %digest, error = %e, "gc could not delete a blob file")
                    }
                }
            }
        }
    }

    for file in inner.store.list().await? {
        let key = file.digest.to_string();
        if snap.known.contains(&key) || unix_ms(file.modified) >= cutoff {
            continue;
        }
        let _guard = inner.locks.lock(&key).await;
        if inner.index.blob(key.clone()).await?.is_some() {
            continue;
        }
        if !dry_run {
            inner.store.delete(&file.digest).await?;
        }
        report.orphan_files_deleted += 1;
    }

    let upload_cutoff = now.saturating_sub(inner.cfg.upload_expiry.as_millis() as u64);
    for (id, modified) in inner.store.upload_list().await? {
        if unix_ms(modified) >= upload_cutoff {
            continue;
        }
        if dry_run {
            report.uploads_deleted += 1;
            continue;
        }
        if inner.uploads.try_close(&id) {
            inner.store.upload_delete(&id).await?;
            report.uploads_deleted += 1;
        }
    }

    report.duration_ms = started.elapsed().as_millis() as u64;
    if !dry_run {
        inner.metrics.gc_runs.inc();
        inner
            .metrics
            .gc_blobs_deleted
            .inc_by(report.blobs_deleted + report.orphan_files_deleted);
        inner.metrics.gc_bytes_deleted.inc_by(report.bytes_deleted);
        inner
            .metrics
            .gc_uploads_deleted
            .inc_by(report.uploads_deleted);
    }
    Ok(report)
}
