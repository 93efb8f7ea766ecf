//! Pipeline records and run logs in a real (one-server) raft store.

use std::time::Duration;

use pier_api::pipeline::{PipelineCreate, RunStatus, RunTrigger};
use pier_pipeline::definition::validate;
use pier_pipeline::log_sink::LogSink;
use pier_pipeline::records::{
    create_pipeline, delete_pipeline, delete_runs, enqueue, get_run, list_runs, update_run,
    Enqueued, PipelineRecord,
};
use pier_pipeline::run_log::{follow_log, read_log, write_log};
use pier_pipeline::PipelineError;
use pier_store::{Consistency, Store, StoreConfig};

async fn store() -> (Store, tempfile::TempDir) {
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(StoreConfig::single_node("test", dir.path()))
        .await
        .unwrap();
    store
        .wait_for_leader(Duration::from_secs(10))
        .await
        .unwrap();
    (store, dir)
}

fn record(name: &str) -> PipelineRecord {
    let def = validate(&PipelineCreate {
        name: name.into(),
        repo: "/srv/repo".into(),
        branch: None,
        file: None,
        dockerfile: None,
        poll: None,
        webhook_secret: Some("s".into()),
        build_args: Default::default(),
        keep_runs: None,
    })
    .unwrap();
    PipelineRecord::new(&def, 1)
}

const C1: &str = "1111111111111111111111111111111111111111";
const C2: &str = "2222222222222222222222222222222222222222";

#[tokio::test]
async fn runs_are_numbered_deduplicated_and_guarded() {
    let (store, _dir) = store().await;
    let first = create_pipeline(&store, record("web"), C1, Some("one".into()))
        .await
        .unwrap();
    assert_eq!(first.number, 1);
    assert!(matches!(
        create_pipeline(&store, record("web"), C1, None).await,
        Err(PipelineError::Exists(_))
    ));
    // A poll or webhook for the commit already queued adds nothing; a manual run does.
    assert_eq!(
        enqueue(&store, "web", C1, None, RunTrigger::Poll, true)
            .await
            .unwrap(),
        Enqueued::AlreadyQueued(C1.into())
    );
    let Enqueued::Run(r2) = enqueue(&store, "web", C2, None, RunTrigger::Webhook, true)
        .await
        .unwrap()
    else {
        panic!()
    };
    assert_eq!(r2.number, 2);
    let Enqueued::Run(r3) = enqueue(&store, "web", C2, None, RunTrigger::Manual, false)
        .await
        .unwrap()
    else {
        panic!()
    };
    assert_eq!(r3.number, 3);
    assert!(matches!(
        enqueue(&store, "nope", C2, None, RunTrigger::Manual, false).await,
        Err(PipelineError::NotFound(_))
    ));
    // Guarded updates: a declined update changes nothing.
    let r = update_run(&store, "web", 2, |r| {
        r.status = RunStatus::Building;
        true
    })
    .await
    .unwrap()
    .unwrap();
    assert_eq!(r.status, RunStatus::Building);
    update_run(&store, "web", 2, |_| false).await.unwrap();
    assert_eq!(
        get_run(&store, "web", 2, Consistency::Default)
            .await
            .unwrap()
            .unwrap()
            .value
            .status,
        RunStatus::Building
    );
    assert!(update_run(&store, "web", 99, |_| true)
        .await
        .unwrap()
        .is_none());
    let numbers: Vec<u64> = list_runs(&store, "web", Consistency::Default)
        .await
        .unwrap()
        .iter()
        .map(|v| v.value.number)
        .collect();
    assert_eq!(numbers, vec![1, 2, 3]);
    // A pipeline named as a prefix of another does not see its runs.
    create_pipeline(&store, record("we"), C1, None)
        .await
        .unwrap();
    assert_eq!(
        list_runs(&store, "we", Consistency::Default)
            .await
            .unwrap()
            .len(),
        1
    );
    delete_runs(&store, "web", &[1]).await.unwrap();
    assert!(get_run(&store, "web", 1, Consistency::Default)
        .await
        .unwrap()
        .is_none());
    assert!(delete_pipeline(&store, "web").await.unwrap());
    assert!(list_runs(&store, "web", Consistency::Default)
        .await
        .unwrap()
        .is_empty());
    assert_eq!(
        list_runs(&store, "we", Consistency::Default)
            .await
            .unwrap()
            .len(),
        1
    );
}

#[tokio::test]
async fn logs_are_chunked_and_followed_until_the_run_ends() {
    let (store, _dir) = store().await;
    create_pipeline(&store, record("web"), C1, None)
        .await
        .unwrap();
    update_run(&store, "web", 1, |r| {
        r.status = RunStatus::Building;
        true
    })
    .await
    .unwrap();

    // A follower started before any line is written.
    let follower = {
        let store = store.clone();
        tokio::spawn(async move {
            let mut seen = String::new();
            follow_log(&store, "web", 1, |t| {
                seen.push_str(&t);
                true
            })
            .await
            .unwrap();
            seen
        })
    };

    let (sink, rx) = LogSink::channel();
    let writer = tokio::spawn(write_log(store.clone(), "web".into(), 1, rx));
    sink.line("first line");
    tokio::time::sleep(Duration::from_millis(300)).await;
    // A burst larger than one chunk.
    let big = "x".repeat(100 * 1024);
    sink.raw(big.clone());
    sink.line("last line");
    drop(sink);
    let chunks = writer.await.unwrap();
    assert!(
        chunks >= 3,
        "expected the log in several chunks, got {chunks}"
    );
    let (next, text) = read_log(&store, "web", 1, 0, Consistency::Default)
        .await
        .unwrap();
    assert_eq!(next, chunks);
    assert_eq!(text, format!("first line\n{big}last line\n"));
    let (_, tail) = read_log(&store, "web", 1, chunks - 1, Consistency::Default)
        .await
        .unwrap();
    assert!(tail.ends_with("last line\n"));

    update_run(&store, "web", 1, |r| {
        r.status = RunStatus::Succeeded;
        true
    })
    .await
    .unwrap();
    let seen = tokio::time::timeout(Duration::from_secs(20), follower)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(seen, text);
}
