//! The Consul-compatible HTTP API over a real single-server store: registration, catalog and
//! health reads, KV, blocking-query rules, and bad input.

mod common;

use std::time::{Duration, Instant};

use common::{header_u64, Options, TestServer};
use serde_json::{json, Value};

async fn put_json(c: &reqwest::Client, url: String, body: Value) -> reqwest::Response {
    c.put(url).json(&body).send().await.unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn register_read_back_and_deregister() {
    common::init_tracing();
    let dir = tempfile::tempdir().unwrap();
    let s = TestServer::single(dir.path(), Options::default()).await;
    let c = reqwest::Client::new();

    // Consul's canonical field names, a TTL check with an initial status.
    let r = put_json(
        &c,
        s.url("/v1/agent/service/register"),
        json!({"ID":"web-1","Name":"web","Tags":["v1","primary"],"Address":"127.0.0.2","Port":8080,
               "Meta":{"version":"1"},"Check":{"TTL":"30s","Status":"passing"}}),
    )
    .await;
    assert_eq!(r.status(), 200, "{}", r.text().await.unwrap());
    // python-consul's lower-case spelling, no check.
    let r = put_json(
        &c,
        s.url("/v1/agent/service/register"),
        json!({"id":"web-2","name":"web","tags":["v2"],"port":8081}),
    )
    .await;
    assert_eq!(r.status(), 200);

    let r = c.get(s.url("/v1/catalog/services")).send().await.unwrap();
    assert_eq!(r.status(), 200);
    assert!(header_u64(&r, "x-consul-index") > 0);
    assert_eq!(r.headers()["x-consul-knownleader"], "true");
    assert!(r.headers().contains_key("x-consul-lastcontact"));
    let services: Value = r.json().await.unwrap();
    let mut tags: Vec<String> = serde_json::from_value(services["web"].clone()).unwrap();
    tags.sort();
    assert_eq!(tags, vec!["primary", "v1", "v2"]);

    let health: Vec<Value> = c
        .get(s.url("/v1/health/service/web"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(health.len(), 2);
    let web1 = health
        .iter()
        .find(|h| h["Service"]["ID"] == "web-1")
        .unwrap();
    assert_eq!(web1["Node"]["Node"], "server1");
    assert_eq!(web1["Node"]["Address"], "127.0.0.1");
    assert_eq!(web1["Service"]["Service"], "web");
    assert_eq!(web1["Service"]["Address"], "127.0.0.2");
    assert_eq!(web1["Service"]["Port"], 8080);
    assert_eq!(web1["Service"]["Meta"]["version"], "1");
    let checks = web1["Checks"].as_array().unwrap();
    assert!(checks
        .iter()
        .any(|c| c["CheckID"] == "serfHealth" && c["Status"] == "passing"));
    let svc_check = checks
        .iter()
        .find(|c| c["CheckID"] == "service:web-1")
        .unwrap();
    assert_eq!(svc_check["Status"], "passing");
    assert_eq!(svc_check["ServiceID"], "web-1");
    assert_eq!(svc_check["ServiceName"], "web");
    assert_eq!(svc_check["Node"], "server1");

    // Tag filters (repeated tag = all of them), passing filter.
    let only_v1: Vec<Value> = c
        .get(s.url("/v1/health/service/web?tag=v1&tag=primary"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(only_v1.len(), 1);
    let none: Vec<Value> = c
        .get(s.url("/v1/health/service/web?tag=v1&tag=v2"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert!(none.is_empty());
    let r = c
        .put(s.url("/v1/agent/check/fail/service:web-1?note=down"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let passing: Vec<Value> =
        common::eventually(Duration::from_secs(5), "web-1 leaves passing", || {
            let c = c.clone();
            let url = s.url("/v1/health/service/web?passing=1");
            async move {
                let v: Vec<Value> = common::get_json(&c, url).await?;
                (v.len() == 1).then_some(v)
            }
        })
        .await;
    assert_eq!(passing[0]["Service"]["ID"], "web-2");
    let critical: Vec<Value> = c
        .get(s.url("/v1/health/state/critical"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert!(critical
        .iter()
        .any(|c| c["CheckID"] == "service:web-1" && c["Output"] == "down"));
    let svc_checks: Vec<Value> = c
        .get(s.url("/v1/health/checks/web"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(svc_checks.len(), 1);
    let node_checks: Vec<Value> = c
        .get(s.url("/v1/health/node/server1"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(
        node_checks.len(),
        2,
        "serfHealth and the TTL check: {node_checks:?}"
    );

    // Catalog views.
    let cat: Vec<Value> = c
        .get(s.url("/v1/catalog/service/web?tag=v2"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(cat.len(), 1);
    assert_eq!(cat[0]["ServiceID"], "web-2");
    assert_eq!(cat[0]["ServicePort"], 8081);
    assert_eq!(cat[0]["ServiceAddress"], "");
    assert_eq!(cat[0]["Address"], "127.0.0.1");
    assert_eq!(cat[0]["Datacenter"], "dc1");
    let nodes: Vec<Value> = c
        .get(s.url("/v1/catalog/nodes"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(nodes.len(), 1);
    let node: Value = c
        .get(s.url("/v1/catalog/node/server1"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(node["Services"].as_object().unwrap().len(), 2);
    let dcs: Vec<String> = c
        .get(s.url("/v1/catalog/datacenters"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(dcs, vec!["dc1"]);
    let me: Value = c
        .get(s.url("/v1/agent/self"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(me["Config"]["Datacenter"], "dc1");
    assert_eq!(me["Config"]["NodeName"], "server1");
    let agent_services: Value = c
        .get(s.url("/v1/agent/services"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert!(agent_services["web-1"]["Port"] == 8080);
    let agent_checks: Value = c
        .get(s.url("/v1/agent/checks"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(agent_checks["service:web-1"]["Status"], "critical");
    let leader: String = c
        .get(s.url("/v1/status/leader"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(leader, s.raft_addr.to_string());
    let peers: Vec<String> = c
        .get(s.url("/v1/status/peers"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(peers, vec![s.raft_addr.to_string()]);

    // check/update with a body; pass and warn.
    let r = put_json(
        &c,
        s.url("/v1/agent/check/update/service:web-1"),
        json!({"Status":"warning","Output":"slow"}),
    )
    .await;
    assert_eq!(r.status(), 200);
    let r = c
        .put(s.url("/v1/agent/check/pass/service:web-1"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let r = c
        .put(s.url("/v1/agent/check/pass/nope"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 404);

    // Deregister.
    let r = c
        .put(s.url("/v1/agent/service/deregister/web-1"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let r = c
        .put(s.url("/v1/agent/service/deregister/web-1"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 404);
    let health: Vec<Value> = c
        .get(s.url("/v1/health/service/web"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(health.len(), 1);
    let checks: Vec<Value> = c
        .get(s.url("/v1/health/checks/web"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert!(
        checks.is_empty(),
        "checks of a deregistered instance are gone"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kv_get_put_delete_cas_recurse_keys() {
    common::init_tracing();
    let dir = tempfile::tempdir().unwrap();
    let s = TestServer::single(dir.path(), Options::default()).await;
    let c = reqwest::Client::new();

    let r = c.get(s.url("/v1/kv/app/missing")).send().await.unwrap();
    assert_eq!(r.status(), 404);
    assert!(
        header_u64(&r, "x-consul-index") >= 1,
        "404 carries an index"
    );

    let ok: bool = c
        .put(s.url("/v1/kv/app/config/a?flags=42"))
        .body("hello")
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert!(ok);
    let r = c.get(s.url("/v1/kv/app/config/a")).send().await.unwrap();
    let idx = header_u64(&r, "x-consul-index");
    let body: Vec<Value> = r.json().await.unwrap();
    assert_eq!(body[0]["Key"], "app/config/a");
    assert_eq!(body[0]["Value"], "aGVsbG8=");
    assert_eq!(body[0]["Flags"], 42);
    assert_eq!(body[0]["ModifyIndex"], idx);
    assert_eq!(body[0]["LockIndex"], 0);
    let raw = c
        .get(s.url("/v1/kv/app/config/a?raw"))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert_eq!(raw, "hello");

    // CAS: 0 = only if absent; a stale index fails; the right index succeeds.
    let put = |url: String, body: &'static str| {
        let c = c.clone();
        async move {
            c.put(url)
                .body(body)
                .send()
                .await
                .unwrap()
                .json::<bool>()
                .await
                .unwrap()
        }
    };
    assert!(!put(s.url("/v1/kv/app/config/a?cas=0"), "x").await);
    assert!(
        !put(
            s.url(&format!("/v1/kv/app/config/a?cas={}", idx + 1000)),
            "x"
        )
        .await
    );
    assert!(put(s.url(&format!("/v1/kv/app/config/a?cas={idx}")), "world").await);
    assert!(put(s.url("/v1/kv/app/config/b?cas=0"), "b").await);
    assert!(put(s.url("/v1/kv/app/other"), "o").await);
    assert!(put(s.url("/v1/kv/app/empty"), "").await);

    let all: Vec<Value> = c
        .get(s.url("/v1/kv/app/config?recurse=true"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(all.len(), 2);
    let empty: Vec<Value> = c
        .get(s.url("/v1/kv/app/empty"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(empty[0]["Value"], Value::Null);
    let keys: Vec<String> = c
        .get(s.url("/v1/kv/app/?keys"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(
        keys,
        vec!["app/config/a", "app/config/b", "app/empty", "app/other"]
    );
    let keys: Vec<String> = c
        .get(s.url("/v1/kv/app/?keys&separator=/"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(keys, vec!["app/config/", "app/empty", "app/other"]);
    let root: Vec<Value> = c
        .get(s.url("/v1/kv/?recurse"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(root.len(), 4);

    // Delete with cas, then recurse.
    let b_idx = {
        let v: Vec<Value> = c
            .get(s.url("/v1/kv/app/config/b"))
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        v[0]["ModifyIndex"].as_u64().unwrap()
    };
    let del = |url: String| {
        let c = c.clone();
        async move {
            c.delete(url)
                .send()
                .await
                .unwrap()
                .json::<bool>()
                .await
                .unwrap()
        }
    };
    assert!(!del(s.url(&format!("/v1/kv/app/config/b?cas={}", b_idx + 1))).await);
    assert!(del(s.url(&format!("/v1/kv/app/config/b?cas={b_idx}"))).await);
    assert!(del(s.url("/v1/kv/app?recurse")).await);
    let r = c.get(s.url("/v1/kv/app?recurse")).send().await.unwrap();
    assert_eq!(r.status(), 404);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn blocking_query_rules() {
    common::init_tracing();
    let dir = tempfile::tempdir().unwrap();
    let s = TestServer::single(dir.path(), Options::default()).await;
    let c = reqwest::Client::new();
    assert!(c
        .put(s.url("/v1/kv/watched"))
        .body("1")
        .send()
        .await
        .unwrap()
        .status()
        .is_success());
    let r = c.get(s.url("/v1/kv/watched")).send().await.unwrap();
    let idx = header_u64(&r, "x-consul-index");

    // Unrelated writes do not end the wait; the wait ends on time with the same index.
    let started = Instant::now();
    let blocked = {
        let c = c.clone();
        let url = s.url(&format!("/v1/kv/watched?index={idx}&wait=800ms"));
        tokio::spawn(async move { c.get(url).send().await.unwrap() })
    };
    for i in 0..5 {
        c.put(s.url(&format!("/v1/kv/unrelated/{i}")))
            .body("x")
            .send()
            .await
            .unwrap();
    }
    let r = blocked.await.unwrap();
    let waited = started.elapsed();
    assert!(
        waited >= Duration::from_millis(780),
        "returned after {waited:?}"
    );
    assert!(
        waited < Duration::from_millis(800 + 800 / 16 + 500),
        "jitter bound: {waited:?}"
    );
    assert_eq!(
        header_u64(&r, "x-consul-index"),
        idx,
        "unrelated writes do not move the index"
    );

    // A write to the key ends the wait at once.
    let started = Instant::now();
    let blocked = {
        let c = c.clone();
        let url = s.url(&format!("/v1/kv/watched?index={idx}&wait=30s"));
        tokio::spawn(async move { c.get(url).send().await.unwrap() })
    };
    tokio::time::sleep(Duration::from_millis(200)).await;
    c.put(s.url("/v1/kv/watched"))
        .body("2")
        .send()
        .await
        .unwrap();
    let r = blocked.await.unwrap();
    assert!(started.elapsed() < Duration::from_secs(5));
    assert!(header_u64(&r, "x-consul-index") > idx);

    // A client index ahead of the server's (after a restore) is answered at once.
    let started = Instant::now();
    let r = c
        .get(s.url("/v1/kv/watched?index=999999999&wait=30s"))
        .send()
        .await
        .unwrap();
    assert!(started.elapsed() < Duration::from_secs(2));
    assert!(header_u64(&r, "x-consul-index") < 999999999);

    // Blocking on a missing key: 404 with an index, then wakes when it is created.
    let r = c.get(s.url("/v1/kv/later")).send().await.unwrap();
    assert_eq!(r.status(), 404);
    let idx404 = header_u64(&r, "x-consul-index");
    let blocked = {
        let c = c.clone();
        let url = s.url(&format!("/v1/kv/later?index={idx404}&wait=30s"));
        tokio::spawn(async move { c.get(url).send().await.unwrap() })
    };
    tokio::time::sleep(Duration::from_millis(200)).await;
    c.put(s.url("/v1/kv/later"))
        .body("now")
        .send()
        .await
        .unwrap();
    let r = blocked.await.unwrap();
    assert_eq!(r.status(), 200);

    // stale and consistent modes answer; index never 0.
    for q in ["stale", "consistent", "stale=true", "consistent=1"] {
        let r = c
            .get(s.url(&format!("/v1/catalog/services?{q}")))
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 200, "{q}");
        assert!(header_u64(&r, "x-consul-index") >= 1);
    }
    let r = c
        .get(s.url("/v1/health/service/nothing-here"))
        .send()
        .await
        .unwrap();
    assert!(header_u64(&r, "x-consul-index") >= 1);
    // Tokens are accepted (and ignored).
    let r = c
        .get(s.url("/v1/catalog/services?token=abc"))
        .header("X-Consul-Token", "abc")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_input_is_refused_and_writes_nothing() {
    common::init_tracing();
    let dir = tempfile::tempdir().unwrap();
    let s = TestServer::single(dir.path(), Options::default()).await;
    let c = reqwest::Client::new();
    let before = s.catalog().store().status().last_applied_index;

    let cases: Vec<(&str, String, Option<String>)> = vec![
        (
            "PUT",
            "/v1/agent/service/register".into(),
            Some("{not json".into()),
        ),
        (
            "PUT",
            "/v1/agent/service/register".into(),
            Some("[1,2]".into()),
        ),
        (
            "PUT",
            "/v1/agent/service/register".into(),
            Some(r#"{"Name":"web","Port":"eighty"}"#.into()),
        ),
        (
            "PUT",
            "/v1/agent/service/register".into(),
            Some(r#"{"Port":80}"#.into()),
        ),
        (
            "PUT",
            "/v1/agent/service/register".into(),
            Some(r#"{"Name":"bad name!"}"#.into()),
        ),
        (
            "PUT",
            "/v1/agent/service/register".into(),
            Some(r#"{"Name":"_hidden"}"#.into()),
        ),
        (
            "PUT",
            "/v1/agent/service/register".into(),
            Some(r#"{"Name":"a/b"}"#.into()),
        ),
        (
            "PUT",
            "/v1/agent/service/register".into(),
            Some(format!(r#"{{"Name":"{}"}}"#, "x".repeat(200))),
        ),
        (
            "PUT",
            "/v1/agent/service/register".into(),
            Some(r#"{"Name":"web","Check":{"GRPC":"127.0.0.1:1","Interval":"1s"}}"#.into()),
        ),
        (
            "PUT",
            "/v1/agent/service/register".into(),
            Some(r#"{"Name":"web","Check":{"Interval":"1s"}}"#.into()),
        ),
        (
            "PUT",
            "/v1/agent/service/register".into(),
            Some(r#"{"Name":"web","Check":{"HTTP":"http://x/","Interval":"soon"}}"#.into()),
        ),
        (
            "PUT",
            "/v1/agent/service/register".into(),
            Some(r#"{"Name":"web","Check":{"HTTP":"http://x/"}}"#.into()),
        ),
        (
            "PUT",
            "/v1/agent/service/register".into(),
            Some(r#"{"Name":"web","Check":{"TCP":"nohostport","Interval":"1s"}}"#.into()),
        ),
        (
            "PUT",
            "/v1/agent/service/register".into(),
            Some(r#"{"Name":"web","Check":{"Args":["/bin/true"],"Interval":"1s"}}"#.into()),
        ),
        (
            "PUT",
            "/v1/agent/service/register".into(),
            Some(r#"{"Name":"web","Check":{"TTL":"10s","Status":"sideways"}}"#.into()),
        ),
        (
            "PUT",
            "/v1/agent/service/register".into(),
            Some(r#"{"Name":"web","Meta":{"bad key":"v"}}"#.into()),
        ),
        (
            "PUT",
            "/v1/agent/check/update/x".into(),
            Some(r#"{"Status":"meh"}"#.into()),
        ),
        (
            "PUT",
            format!("/v1/kv/{}", "k".repeat(513)),
            Some("v".into()),
        ),
        // reqwest would normalise a literal "/../"; percent-encoded slashes reach the key as "a/../b".
        ("PUT", "/v1/kv/a%2F..%2Fb".into(), Some("v".into())),
        ("PUT", "/v1/kv/x%2F..".into(), Some("v".into())),
        ("PUT", "/v1/kv/a?cas=notanumber".into(), Some("v".into())),
        ("PUT", "/v1/kv/a?flags=-1".into(), Some("v".into())),
        ("PUT", "/v1/kv/big".into(), Some("v".repeat(512 * 1024 + 1))),
        ("GET", "/v1/kv/a?index=1&wait=11m".into(), None),
        ("GET", "/v1/health/service/web?wait=forever".into(), None),
        ("GET", "/v1/catalog/services?stale&consistent".into(), None),
        ("GET", "/v1/health/state/sideways".into(), None),
        ("GET", "/v1/kv/a?recurse=maybe".into(), None),
        ("DELETE", "/v1/kv/a?recurse&cas=3".into(), None),
    ];
    for (method, path, body) in cases {
        let mut req = c.request(method.parse().unwrap(), s.url(&path));
        if let Some(b) = body {
            req = req.body(b);
        }
        let r = req.send().await.unwrap();
        let status = r.status();
        let ctype = r
            .headers()
            .get("content-type")
            .map(|v| v.to_str().unwrap().to_string())
            .unwrap_or_default();
        let text = r.text().await.unwrap();
        assert_eq!(
            status,
            400,
            "{method} {} answered {status}: {text}",
            &path[..path.len().min(80)]
        );
        assert!(
            ctype.starts_with("text/plain"),
            "plain-text error for {path}: {ctype}"
        );
        assert!(!text.is_empty());
    }
    // Nothing above reached the store (the agent's heartbeats are in memory, not Raft).
    let after = s.catalog().store().status().last_applied_index;
    assert_eq!(before, after, "a refused request wrote something");
    let services: Value = c
        .get(s.url("/v1/catalog/services"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(services, json!({}));
    // The limits themselves are accepted.
    let r = c
        .put(s.url(&format!("/v1/kv/{}", "k".repeat(512))))
        .body("v".repeat(512 * 1024))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let r = c
        .get(s.url("/v1/kv/a?wait=10m"))
        .timeout(Duration::from_secs(5))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 404, "10m is the maximum wait and is accepted");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn remote_agent_endpoints() {
    common::init_tracing();
    let dir = tempfile::tempdir().unwrap();
    let s = TestServer::single(dir.path(), Options::default()).await;
    let c = reqwest::Client::new();

    // A node not registered yet cannot heartbeat.
    let r = c
        .put(s.url("/api/v1/catalog/nodes/edge-1/heartbeat"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 404);
    let r = put_json(
        &c,
        s.url("/api/v1/catalog/nodes/edge-1"),
        json!({"Address":"127.0.0.8","Zone":"z1"}),
    )
    .await;
    assert_eq!(r.status(), 200);
    let r = c
        .put(s.url("/api/v1/catalog/nodes/edge-1/heartbeat"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let r = put_json(
        &c,
        s.url("/api/v1/catalog/nodes/edge-1/services"),
        json!({"id":"cache-1","name":"cache","port":6379,
               "checks":[{"CheckID":"cache-tcp","TCP":"127.0.0.8:6379","Interval":"1s"}]}),
    )
    .await;
    assert_eq!(r.status(), 200, "{}", r.text().await.unwrap());
    let passing: Vec<Value> = c
        .get(s.url("/v1/health/service/cache?passing"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert!(passing.is_empty(), "new check starts critical");
    // The remote agent evaluated its check and reports it.
    let r = put_json(
        &c,
        s.url("/api/v1/catalog/nodes/edge-1/checks/cache-tcp"),
        json!({"Status":"passing","Output":"TCP connect: Success"}),
    )
    .await;
    let body: Value = r.json().await.unwrap();
    assert_eq!(body["Changed"], true);
    let r = put_json(
        &c,
        s.url("/api/v1/catalog/nodes/edge-1/checks/cache-tcp"),
        json!({"Status":"passing","Output":"TCP connect: Success"}),
    )
    .await;
    let body: Value = r.json().await.unwrap();
    assert_eq!(body["Changed"], false, "same status and output: no write");
    let passing: Vec<Value> = c
        .get(s.url("/v1/health/service/cache?passing"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(passing.len(), 1);
    assert_eq!(passing[0]["Node"]["Address"], "127.0.0.8");
    assert_eq!(passing[0]["Node"]["Meta"]["zone"], "z1");
    // The server's own check runner does not run another node's checks.
    assert!(s.agent().runner().running_checks().is_empty());
    let r = put_json(
        &c,
        s.url("/api/v1/catalog/nodes/edge-1/checks/nope"),
        json!({"Status":"passing"}),
    )
    .await;
    assert_eq!(r.status(), 404);
    let r = put_json(
        &c,
        s.url("/api/v1/catalog/nodes/edge-1/checks/cache-tcp"),
        json!({"Status":"meh"}),
    )
    .await;
    assert_eq!(r.status(), 400);
    let r = c
        .delete(s.url("/api/v1/catalog/nodes/edge-1/services/cache-1"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let r = c
        .delete(s.url("/api/v1/catalog/nodes/edge-1/services/cache-1"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 404);
}
