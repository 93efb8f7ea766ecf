//! Online GC: runs while clients push and pull, never fails them, and
//! collects what was unreferenced before the grace window.

mod common;

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use common::*;
use pier_registry::digest::Digest;
use pier_registry::GcReport;
use reqwest::StatusCode;

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn gc_under_push_and_pull_load() {
    let r = Arc::new(TestRegistry::start_with(|c| c.gc_grace = Duration::from_millis(1500)).await);

    // Garbage made before the load starts: an image whose manifest is
    // deleted, and a blob that never had a manifest.
    let old_layers: Vec<Vec<u8>> = (0..3).map(|i| random_bytes(50_000, 100 + i)).collect();
    let layer_refs: Vec<&[u8]> = old_layers.iter().map(|l| l.as_slice()).collect();
    let (_, old_manifest) = r.push_image("gc/old", "doomed", &layer_refs).await;
    let resp = r
        .http
        .delete(r.url(&format!("/v2/gc/old/manifests/{old_manifest}")))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), StatusCode::ACCEPTED);
    let dangling = r.push_blob("gc/old", &random_bytes(10_000, 7)).await;
    let garbage: Vec<Digest> = old_layers
        .iter()
        .map(|l| Digest::sha256_of(l))
        .chain([dangling.clone()])
        .collect();
    // Kept: a tagged image, and an untagged manifest (kept until deleted).
    let (_, stable) = r
        .push_image("gc/stable", "v1", &[&random_bytes(40_000, 8), b"stable-2"])
        .await;
    let (untagged_bytes, untagged) = r
        .push_image("gc/untagged", "tmp", &[&random_bytes(1000, 9)])
        .await;
    assert_eq!(
        r.http
            .delete(r.url("/v2/gc/untagged/manifests/tmp"))
            .send()
            .await
            .unwrap()
            .status(),
        StatusCode::ACCEPTED
    );
    let _ = untagged_bytes;

    // Dry run first: reports, deletes nothing.
    let dry: GcReport = r
        .http
        .post(r.url("/_pier/gc?dry_run=true"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert!(dry.dry_run);
    assert_eq!(
        dry.blobs_deleted, 0,
        "everything is inside the grace window yet: {dry:?}"
    );
    assert!(dry.blobs_in_grace >= 4, "{dry:?}");

    tokio::time::sleep(Duration::from_millis(1700)).await;
    let dry: GcReport = r
        .http
        .post(r.url("/_pier/gc?dry_run=true"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    // Three layers, the config, the manifest's own bytes and the dangling blob.
    assert_eq!(dry.blobs_deleted, 6, "{dry:?}");
    for d in &garbage {
        assert_eq!(
            r.head_blob("gc/old", d).await,
            StatusCode::OK,
            "a dry run deletes nothing"
        );
    }

    let failures = Arc::new(AtomicU64::new(0));
    let ops = Arc::new(AtomicU64::new(0));
    let deadline = Instant::now() + Duration::from_secs(10);
    let mut workers = Vec::new();
    for w in 0..4u64 {
        let (r, failures, ops) = (r.clone(), failures.clone(), ops.clone());
        workers.push(tokio::spawn(async move {
            let mut pushed = Vec::new();
            let mut i = 0u64;
            while Instant::now() < deadline {
                let tag = format!("w{w}-{i}");
                let layer = random_bytes(20_000 + (i as usize % 7) * 1000, w * 1_000_000 + i);
                let (_, digest) = r
                    .push_image("gc/load", &tag, &[&layer, tag.as_bytes()])
                    .await;
                pushed.push((tag.clone(), digest.clone()));
                for (what, repo, reference) in [
                    ("own", "gc/load", tag.clone()),
                    ("stable", "gc/stable", "v1".to_string()),
                ] {
                    match r.pull_image(repo, &reference).await {
                        Ok(_) => {}
                        Err(e) => {
                            eprintln!("{what} pull failed: {e}");
                            failures.fetch_add(1, Ordering::Relaxed);
                        }
                    }
                }
                ops.fetch_add(3, Ordering::Relaxed);
                i += 1;
            }
            pushed
        }));
    }
    let gc_runs = {
        let r = r.clone();
        tokio::spawn(async move {
            let mut reports = Vec::new();
            while Instant::now() < deadline {
                // Alternate the library call and the HTTP admin endpoint.
                let report = if reports.len() % 2 == 0 {
                    r.registry.gc(false).await.unwrap()
                } else {
                    r.http
                        .post(r.url("/_pier/gc?dry_run=false"))
                        .send()
                        .await
                        .unwrap()
                        .json()
                        .await
                        .unwrap()
                };
                reports.push(report);
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
            reports
        })
    };
    let mut all_pushed = Vec::new();
    for w in workers {
        all_pushed.extend(w.await.unwrap());
    }
    let reports = gc_runs.await.unwrap();
    let deleted: u64 = reports.iter().map(|r| r.blobs_deleted).sum();
    eprintln!(
        "{} operations, {} GC runs, {deleted} blobs deleted",
        ops.load(Ordering::Relaxed),
        reports.len()
    );

    assert_eq!(
        failures.load(Ordering::Relaxed),
        0,
        "no push or pull may fail while GC runs"
    );
    assert!(reports.len() >= 10, "GC ran throughout: {}", reports.len());
    assert!(deleted >= 6, "{reports:?}");
    assert!(!r.blob_file(&old_manifest).exists());
    for d in &garbage {
        assert_eq!(
            r.head_blob("gc/old", d).await,
            StatusCode::NOT_FOUND,
            "{d} should be collected"
        );
        assert!(!r.blob_file(d).exists(), "{d} file should be gone");
    }
    // Every image pushed during the run still pulls completely, as do the
    // stable one and the untagged manifest (kept until deleted).
    for (tag, digest) in &all_pushed {
        assert_eq!(r.pull_image("gc/load", tag).await.unwrap(), *digest);
    }
    assert_eq!(r.pull_image("gc/stable", "v1").await.unwrap(), stable);
    assert_eq!(
        r.pull_image("gc/untagged", &untagged.to_string())
            .await
            .unwrap(),
        untagged
    );
    assert!(r.blob_file(&untagged).exists());

    // Once the untagged manifest is deleted its blobs go too (after grace).
    let layer = Digest::sha256_of(&random_bytes(1000, 9));
    r.http
        .delete(r.url(&format!("/v2/gc/untagged/manifests/{untagged}")))
        .send()
        .await
        .unwrap();
    tokio::time::sleep(Duration::from_millis(1600)).await;
    let report = r.registry.gc(false).await.unwrap();
    assert!(report.blobs_deleted >= 3, "{report:?}");
    assert!(!r.blob_file(&layer).exists());
    assert!(!r.blob_file(&untagged).exists());
    Arc::try_unwrap(r).ok().unwrap().stop().await;
}

#[tokio::test]
async fn gc_expires_abandoned_uploads_and_orphan_files() {
    let r = TestRegistry::start_with(|c| {
        c.gc_grace = Duration::from_millis(300);
        c.upload_expiry = Duration::from_millis(300);
    })
    .await;
    let resp = r
        .http
        .post(r.url("/v2/abandon/blobs/uploads/"))
        .send()
        .await
        .unwrap();
    let loc = r.abs(resp.headers()["location"].to_str().unwrap());
    r.http
        .patch(&loc)
        .body(vec![7u8; 5000])
        .send()
        .await
        .unwrap();
    // An orphan: a file in the store that no index record knows.
    let orphan = Digest::sha256_of(b"orphan");
    let path = r.blob_file(&orphan);
    std::fs::create_dir_all(path.parent().unwrap()).unwrap();
    std::fs::write(&path, b"orphan").unwrap();

    let report = r.registry.gc(false).await.unwrap();
    assert_eq!(
        (report.uploads_deleted, report.orphan_files_deleted),
        (0, 0),
        "too young: {report:?}"
    );
    tokio::time::sleep(Duration::from_millis(500)).await;
    let report = r.registry.gc(false).await.unwrap();
    assert_eq!(report.uploads_deleted, 1, "{report:?}");
    assert_eq!(report.orphan_files_deleted, 1, "{report:?}");
    assert!(!path.exists());
    let resp = r.http.get(&loc).send().await.unwrap();
    assert_eq!(resp.status(), StatusCode::NOT_FOUND);
    r.stop().await;
}

#[tokio::test]
async fn mount_restarts_the_grace_window() {
    let r = TestRegistry::start_with(|c| c.gc_grace = Duration::from_millis(500)).await;
    let d = r.push_blob("src", b"mounted later").await;
    tokio::time::sleep(Duration::from_millis(700)).await;
    // The mount counts as a use: the blob must survive a GC right after it.
    let resp = r
        .http
        .post(r.url(&format!("/v2/dst/blobs/uploads/?mount={d}&from=src")))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), StatusCode::CREATED);
    let report = r.registry.gc(false).await.unwrap();
    assert_eq!(report.blobs_deleted, 0, "{report:?}");
    assert_eq!(r.head_blob("dst", &d).await, StatusCode::OK);
    r.stop().await;
}
