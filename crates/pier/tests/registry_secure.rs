//! The cluster registry in a secure cluster: a blob pushed to server 1 is served by server 2,
//! which fetches it from server 1 over the servers' mTLS (the peer endpoint of the HTTPS API),
//! and that endpoint answers servers only — not an anonymous caller, not a management token.

mod security_common;

use std::time::Duration;

use pier_testkit::net::free_port;
use security_common::SecureCluster;
use sha2::Digest as _;

fn sha256(bytes: &[u8]) -> String {
    format!("sha256:{}", hex::encode(sha2::Sha256::digest(bytes)))
}

/// Pushes `bytes` as a blob of `repo` (monolithic upload) and returns its digest.
async fn push_blob(http: &reqwest::Client, registry: &str, repo: &str, bytes: &[u8]) -> String {
    let digest = sha256(bytes);
    let resp = http
        .post(format!(
            "https://{registry}/v2/{repo}/blobs/uploads/?digest={digest}"
        ))
        .header("content-type", "application/octet-stream")
        .body(bytes.to_vec())
        .send()
        .await
        .expect("push a blob");
    assert_eq!(resp.status(), 201, "{:?}", resp.text().await);
    digest
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn blobs_move_between_servers_over_mtls_and_the_peer_endpoint_is_servers_only() {
    let tmp = tempfile::tempdir().unwrap();
    let ports: Vec<u16> = (0..3).map(|_| free_port()).collect();
    let c = SecureCluster::start_each(tmp.path(), 3, |i| {
        vec!["--registry-port".into(), ports[i].to_string()]
    })
    .await;
    // The registry speaks TLS and asks for a token (a pier API token works as a bearer).
    let (token, _) = c.create_token(&["registry:push:secure/*"]);
    let http = c.client(Some(&token));
    for p in &ports {
        let deadline = std::time::Instant::now() + Duration::from_secs(30);
        loop {
            let r = http.get(format!("https://127.0.0.1:{p}/v2/")).send().await;
            if r.as_ref().is_ok_and(|r| r.status() == 200) {
                break;
            }
            assert!(
                std::time::Instant::now() < deadline,
                "registry on {p} not ready: {r:?}"
            );
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }
    let (r1, r2) = (
        format!("127.0.0.1:{}", ports[0]),
        format!("127.0.0.1:{}", ports[1]),
    );
    let layer: Vec<u8> = (0..1_500_000u32)
        .map(|i| (i.wrapping_mul(2_654_435_761) >> 9) as u8)
        .collect();
    let layer_digest = push_blob(&http, &r1, "secure/app", &layer).await;
    let config =
        br#"{"architecture":"amd64","os":"linux","rootfs":{"type":"layers","diff_ids":[]}}"#;
    let config_digest = push_blob(&http, &r1, "secure/app", config).await;
    let manifest = serde_json::json!({
        "schemaVersion": 2,
        "mediaType": "application/vnd.oci.image.manifest.v1+json",
        "config": {"mediaType": "application/vnd.oci.image.config.v1+json", "digest": config_digest, "size": config.len()},
        "layers": [{"mediaType": "application/vnd.oci.image.layer.v1.tar", "digest": layer_digest, "size": layer.len()}],
    });
    let resp = http
        .put(format!("https://{r1}/v2/secure/app/manifests/v1"))
        .header("content-type", "application/vnd.oci.image.manifest.v1+json")
        .body(serde_json::to_vec(&manifest).unwrap())
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 201, "{:?}", resp.text().await);

    // Server 2 serves the tag and the layer, with the bytes that were pushed.
    let resp = http
        .get(format!("https://{r2}/v2/secure/app/manifests/v1"))
        .header("accept", "application/vnd.oci.image.manifest.v1+json")
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    let got = http
        .get(format!("https://{r2}/v2/secure/app/blobs/{layer_digest}"))
        .send()
        .await
        .unwrap();
    assert_eq!(got.status(), 200);
    let body = got.bytes().await.unwrap();
    assert_eq!(sha256(&body), layer_digest, "server 2 served other bytes");

    // The peer endpoint: servers only.
    let peer = format!(
        "{}/api/v1/registry/peer/blobs/{layer_digest}",
        c.servers[0].base()
    );
    let anonymous = c.client(None).get(&peer).send().await.unwrap();
    assert_eq!(anonymous.status(), 401, "anonymous caller");
    let mgmt = c
        .client(Some(&c.management_token()))
        .get(&peer)
        .send()
        .await
        .unwrap();
    assert_eq!(mgmt.status(), 403, "management token");
    // The registry addresses the servers advertise: readable with cluster read access.
    let endpoints: serde_json::Value = c
        .client(Some(&c.management_token()))
        .get(format!("{}/api/v1/registry/endpoints", c.servers[2].base()))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let addrs: Vec<&str> = endpoints
        .as_array()
        .map(|a| a.iter().filter_map(|e| e["addr"].as_str()).collect())
        .unwrap_or_default();
    assert!(addrs.contains(&r1.as_str()), "{endpoints}");
}
