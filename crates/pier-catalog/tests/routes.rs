//! Route ownership in the catalog: registrations racing for one host have exactly one winner,
//! a claim is released by the reconcile pass once its owner has no instance left, and a
//! conflict stored before claims existed is reported by `/api/v1/catalog/routes`.

mod common;

use common::{Options, TestServer};
use pier_catalog::{records, QueryOptions};
use pier_store::{Consistency, Op, Table, Txn};
use serde_json::{json, Value};

async fn register(c: &reqwest::Client, s: &TestServer, id: &str, name: &str, tag: &str) -> u16 {
    c.put(s.url("/v1/agent/service/register"))
        .json(&json!({"ID": id, "Name": name, "Address": "10.0.0.1", "Port": 80, "Tags": [tag]}))
        .send()
        .await
        .unwrap()
        .status()
        .as_u16()
}

async fn owners(s: &TestServer) -> std::collections::BTreeMap<String, String> {
    let opts = QueryOptions::now(Consistency::Default);
    s.catalog().route_claims(&opts).await.unwrap().value.owners
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn racing_claims_have_one_winner_and_are_released_with_their_owner() {
    common::init_tracing();
    let dir = tempfile::tempdir().unwrap();
    let s = TestServer::single(dir.path(), Options::default()).await;
    let c = reqwest::Client::new();
    let tag = "urlprefix-race.example.com";
    let attempts = (0..12).map(|i| {
        let (c, url) = (c.clone(), s.url("/v1/agent/service/register"));
        async move {
            let body = json!({"ID": format!("svc{i}-1"), "Name": format!("svc{i}"),
                "Address": "10.0.0.1", "Port": 80, "Tags": [tag]});
            let r = c.put(url).json(&body).send().await.unwrap();
            (i, r.status().as_u16(), r.text().await.unwrap_or_default())
        }
    });
    let results = futures::future::join_all(attempts).await;
    let winners: Vec<usize> = results.iter().filter(|r| r.1 == 200).map(|r| r.0).collect();
    assert_eq!(winners.len(), 1, "{results:?}");
    for (i, status, text) in &results {
        if *status != 200 {
            assert_eq!(*status, 409, "svc{i}: {text}");
            assert!(text.contains("belongs to service"), "svc{i}: {text}");
        }
    }
    let winner = format!("svc{}", winners[0]);
    assert_eq!(owners(&s).await.get("race.example.com"), Some(&winner));
    // The owner's second instance is welcome; a loser still is not.
    assert_eq!(
        register(&c, &s, &format!("{winner}-2"), &winner, tag).await,
        200
    );
    let loser = if winners[0] == 0 { "svc1" } else { "svc0" };
    assert_eq!(
        register(&c, &s, &format!("{loser}-1"), loser, tag).await,
        409
    );

    // A pass with the owner still present changes nothing.
    let conflicts = s.catalog().reconcile_route_claims(&[]).await.unwrap();
    assert!(conflicts.is_empty(), "{conflicts:?}");
    assert_eq!(owners(&s).await.get("race.example.com"), Some(&winner));

    // One instance left keeps the claim; none left releases it.
    for id in [format!("{winner}-1"), format!("{winner}-2")] {
        s.catalog().reconcile_route_claims(&[]).await.unwrap();
        assert_eq!(owners(&s).await.get("race.example.com"), Some(&winner));
        let r = c
            .put(s.url(&format!("/v1/agent/service/deregister/{id}")))
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 200);
    }
    s.catalog().reconcile_route_claims(&[]).await.unwrap();
    assert_eq!(owners(&s).await.get("race.example.com"), None);
    assert_eq!(
        register(&c, &s, &format!("{loser}-1"), loser, tag).await,
        200
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_conflict_stored_before_claims_is_reported_and_the_owner_keeps_the_host() {
    common::init_tracing();
    let dir = tempfile::tempdir().unwrap();
    let s = TestServer::single(dir.path(), Options::default()).await;
    let c = reqwest::Client::new();
    assert_eq!(
        register(&c, &s, "zed-1", "zed", "urlprefix-old.example.com").await,
        200
    );
    assert_eq!(
        register(&c, &s, "abc-1", "abc", "urlprefix-abc.example.com").await,
        200
    );
    // As data written before claims existed: abc's stored instance asks for zed's host.
    let key = records::instance_key("abc", &s.name, "abc-1");
    let store = s.catalog().store().clone();
    let entry = store
        .read(Consistency::Default, |v| {
            v.get(Table::SERVICES, &key).cloned()
        })
        .await
        .unwrap()
        .unwrap();
    let mut inst = records::decode_instance(&key, &entry).unwrap();
    inst.tags = vec!["urlprefix-old.example.com".to_string()];
    let bytes = records::encode(&records::instance_record(&inst));
    assert!(
        store
            .write(Txn::single(Op::put(Table::SERVICES, key, bytes)))
            .await
            .unwrap()
            .applied
    );

    let conflicts = s.catalog().reconcile_route_claims(&[]).await.unwrap();
    assert_eq!(conflicts.len(), 1, "{conflicts:?}");
    assert_eq!(
        conflicts[0].owner, "zed",
        "the first claim wins, not the name"
    );
    assert_eq!(conflicts[0].others, vec!["abc".to_string()]);
    let body: Value = common::get_json(&c, s.url("/api/v1/catalog/routes"))
        .await
        .unwrap();
    assert_eq!(body["Owners"]["old.example.com"], "zed", "{body}");
    // abc asks for its own host no more: the pass released it.
    assert_eq!(body["Owners"]["abc.example.com"], Value::Null, "{body}");
    assert_eq!(
        body["Conflicts"],
        json!([{"Route": "old.example.com", "Owner": "zed", "Refused": ["abc"]}]),
        "{body}"
    );
}
