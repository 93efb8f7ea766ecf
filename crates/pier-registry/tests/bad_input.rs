//! Bad input gets the spec's error codes, stores nothing, and never a 5xx.

mod common;

use common::*;
use pier_registry::digest::Digest;
use reqwest::StatusCode;
use serde_json::{json, Value};

fn blob_files(r: &TestRegistry) -> Vec<std::path::PathBuf> {
    let mut out = Vec::new();
    let root = r.dir.path().join("data/blobs");
    let mut stack = vec![root];
    while let Some(dir) = stack.pop() {
        let Ok(entries) = std::fs::read_dir(&dir) else {
            continue;
        };
        for e in entries.flatten() {
            if e.file_type().unwrap().is_dir() {
                stack.push(e.path());
            } else {
                out.push(e.path());
            }
        }
    }
    out
}

#[tokio::test]
async fn digest_mismatch_stores_nothing() {
    let r = TestRegistry::start().await;
    let data = b"the real bytes".to_vec();
    let claimed = Digest::sha256_of(b"other bytes");

    // POST then PUT.
    let resp = r
        .http
        .post(r.url("/v2/bad/blobs/uploads/"))
        .send()
        .await
        .unwrap();
    let loc = r.abs(resp.headers()["location"].to_str().unwrap());
    let resp = r
        .http
        .put(format!("{loc}?digest={claimed}"))
        .body(data.clone())
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), StatusCode::BAD_REQUEST);
    assert_eq!(
        error_codes(&resp.json().await.unwrap()),
        vec!["DIGEST_INVALID"]
    );

    // Single POST.
    let resp = r
        .http
        .post(r.url(&format!("/v2/bad/blobs/uploads/?digest={claimed}")))
        .body(data.clone())
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), StatusCode::BAD_REQUEST);
    assert_eq!(
        error_codes(&resp.json().await.unwrap()),
        vec!["DIGEST_INVALID"]
    );

    // Chunked, with the mismatch found at the end.
    let resp = r
        .http
        .post(r.url("/v2/bad/blobs/uploads/"))
        .send()
        .await
        .unwrap();
    let loc = r.abs(resp.headers()["location"].to_str().unwrap());
    r.http
        .patch(&loc)
        .header("content-range", "0-4")
        .body(data[..5].to_vec())
        .send()
        .await
        .unwrap();
    let resp = r
        .http
        .put(format!("{loc}?digest={claimed}"))
        .body(data[5..].to_vec())
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), StatusCode::BAD_REQUEST);
    assert_eq!(
        error_codes(&resp.json().await.unwrap()),
        vec!["DIGEST_INVALID"]
    );

    for d in [claimed.clone(), Digest::sha256_of(&data)] {
        assert_eq!(r.head_blob("bad", &d).await, StatusCode::NOT_FOUND);
    }
    assert!(blob_files(&r).is_empty(), "{:?}", blob_files(&r));
    let uploads: Vec<_> = std::fs::read_dir(r.dir.path().join("data/uploads"))
        .unwrap()
        .flatten()
        .collect();
    assert!(
        uploads.is_empty(),
        "failed uploads leave nothing behind: {uploads:?}"
    );

    // Malformed digests.
    let resp = r
        .http
        .post(r.url("/v2/bad/blobs/uploads/"))
        .send()
        .await
        .unwrap();
    let loc = r.abs(resp.headers()["location"].to_str().unwrap());
    for bad in [
        "sha256:abc",
        "sha256:ZZZZ",
        "md5:d41d8cd98f00b204e9800998ecf8427e",
        "nonsense",
    ] {
        let resp = r
            .http
            .put(format!("{loc}?digest={bad}"))
            .body(data.clone())
            .send()
            .await
            .unwrap();
        assert_eq!(resp.status(), StatusCode::BAD_REQUEST, "{bad}");
        assert_eq!(
            error_codes(&resp.json().await.unwrap()),
            vec!["DIGEST_INVALID"],
            "{bad}"
        );
        let resp = r
            .http
            .get(r.url(&format!("/v2/bad/blobs/{bad}")))
            .send()
            .await
            .unwrap();
        assert_eq!(resp.status(), StatusCode::BAD_REQUEST, "{bad}");
    }
    let short512 = format!("sha512:{}", "a".repeat(64));
    let resp = r
        .http
        .head(r.url(&format!("/v2/bad/blobs/{short512}")))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), StatusCode::BAD_REQUEST);
    let resp = r.http.put(&loc).body(data.clone()).send().await.unwrap();
    assert_eq!(
        resp.status(),
        StatusCode::BAD_REQUEST,
        "closing without ?digest="
    );
    r.stop().await;
}

#[tokio::test]
async fn manifest_referencing_missing_content() {
    let r = TestRegistry::start().await;
    let config = r.push_blob("mbu", b"{}").await;
    let missing = Digest::sha256_of(b"never uploaded");
    let manifest = json!({"schemaVersion":2,"mediaType":OCI_MANIFEST,
        "config":{"mediaType":"application/vnd.oci.image.config.v1+json","digest":config.to_string(),"size":2},
        "layers":[{"mediaType":"application/vnd.oci.image.layer.v1.tar","digest":missing.to_string(),"size":14}]});
    let resp = r
        .put_manifest(
            "mbu",
            "v1",
            OCI_MANIFEST,
            &serde_json::to_vec(&manifest).unwrap(),
        )
        .await;
    assert_eq!(resp.status(), StatusCode::BAD_REQUEST);
    let body: Value = resp.json().await.unwrap();
    assert_eq!(error_codes(&body), vec!["MANIFEST_BLOB_UNKNOWN"]);
    assert_eq!(body["errors"][0]["detail"]["digest"], missing.to_string());
    assert_eq!(
        r.http
            .get(r.url("/v2/mbu/manifests/v1"))
            .send()
            .await
            .unwrap()
            .status(),
        StatusCode::NOT_FOUND
    );

    // A blob that exists in another repository only is unknown here.
    let elsewhere = r.push_blob("other", b"layer elsewhere").await;
    let manifest = json!({"schemaVersion":2,"mediaType":OCI_MANIFEST,
        "config":{"mediaType":"application/vnd.oci.image.config.v1+json","digest":config.to_string(),"size":2},
        "layers":[{"mediaType":"application/vnd.oci.image.layer.v1.tar","digest":elsewhere.to_string(),"size":15}]});
    let resp = r
        .put_manifest(
            "mbu",
            "v2",
            OCI_MANIFEST,
            &serde_json::to_vec(&manifest).unwrap(),
        )
        .await;
    assert_eq!(
        error_codes(&resp.json().await.unwrap()),
        vec!["MANIFEST_BLOB_UNKNOWN"]
    );

    // An index whose child manifest is missing.
    let index = json!({"schemaVersion":2,"mediaType":OCI_INDEX,"manifests":[{"mediaType":OCI_MANIFEST,"digest":missing.to_string(),"size":5}]});
    let resp = r
        .put_manifest(
            "mbu",
            "idx",
            OCI_INDEX,
            &serde_json::to_vec(&index).unwrap(),
        )
        .await;
    assert_eq!(resp.status(), StatusCode::BAD_REQUEST);
    assert_eq!(
        error_codes(&resp.json().await.unwrap()),
        vec!["MANIFEST_BLOB_UNKNOWN"]
    );
    r.stop().await;
}

#[tokio::test]
async fn invalid_names() {
    let r = TestRegistry::start().await;
    let long = vec!["a"; 128].join("/"); // 255 characters
    assert_eq!(long.len(), 255);
    let too_long = format!("{long}b");
    for (path, what) in [
        ("/v2/a/../b/manifests/latest", ".."),
        ("/v2/../manifests/latest", "bare .."),
        ("/v2/%2e%2e/manifests/latest", "%2e%2e"),
        ("/v2/a/%2E%2E/tags/list", "%2E%2E"),
        ("/v2/a%2Fb/tags/list", "encoded slash"),
        ("/v2/Upper/tags/list", "upper case"),
        ("/v2/a//b/tags/list", "empty component"),
        ("/v2/a-/tags/list", "trailing separator"),
    ] {
        let (status, text) = r.raw(path, "GET").await;
        assert_eq!(status, 400, "{what}: {text}");
        assert!(text.contains("NAME_INVALID"), "{what}: {text}");
    }
    let (status, text) = r.raw(&format!("/v2/{too_long}/tags/list"), "GET").await;
    assert_eq!(status, 400, "{text}");
    assert!(text.contains("NAME_INVALID"));
    let (status, text) = r.raw(&format!("/v2/{long}/tags/list"), "GET").await;
    assert_eq!(
        status, 404,
        "255 characters is a valid, unknown name: {text}"
    );
    assert!(text.contains("NAME_UNKNOWN"));
    // Pushing under an invalid name creates nothing.
    let (status, _) = r.raw("/v2/Bad/blobs/uploads/", "POST").await;
    assert_eq!(status, 400);
    let resp = r.http.get(r.url("/v2/_catalog")).send().await.unwrap();
    assert_eq!(
        resp.json::<Value>().await.unwrap()["repositories"],
        json!([])
    );
    r.stop().await;
}

#[tokio::test]
async fn manifest_size_limit_is_413() {
    let r = TestRegistry::start().await;
    let config = r.push_blob("big", b"{}").await;
    let build = |pad: usize| {
        let m = json!({"schemaVersion":2,"mediaType":OCI_MANIFEST,
            "config":{"mediaType":"application/vnd.oci.image.config.v1+json","digest":config.to_string(),"size":2},
            "layers":[],"annotations":{"pad":"x".repeat(pad)}});
        serde_json::to_vec(&m).unwrap()
    };
    let base = build(0).len();
    let limit = 4 * 1024 * 1024;
    let exact = build(limit - base);
    assert_eq!(exact.len(), limit);
    let resp = r.put_manifest("big", "exact", OCI_MANIFEST, &exact).await;
    assert_eq!(resp.status(), StatusCode::CREATED, "4 MiB must be accepted");
    let resp = r
        .http
        .get(r.url("/v2/big/manifests/exact"))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.bytes().await.unwrap().len(), limit);

    let over = build(limit - base + 1);
    let resp = r.put_manifest("big", "over", OCI_MANIFEST, &over).await;
    assert_eq!(resp.status(), StatusCode::PAYLOAD_TOO_LARGE);
    assert_eq!(
        error_codes(&resp.json().await.unwrap()),
        vec!["SIZE_INVALID"]
    );
    // Without a Content-Length (streamed body) the limit still holds.
    let frames: Vec<Result<Vec<u8>, std::io::Error>> =
        over.chunks(100_000).map(|c| Ok(c.to_vec())).collect();
    let resp = r
        .http
        .put(r.url("/v2/big/manifests/over"))
        .header("content-type", OCI_MANIFEST)
        .body(reqwest::Body::wrap_stream(futures::stream::iter(frames)))
        .send()
        .await;
    if let Ok(resp) = resp {
        assert_eq!(resp.status(), StatusCode::PAYLOAD_TOO_LARGE);
    }
    assert_eq!(
        r.http
            .get(r.url("/v2/big/manifests/over"))
            .send()
            .await
            .unwrap()
            .status(),
        StatusCode::NOT_FOUND
    );
    r.stop().await;
}

#[tokio::test]
async fn malformed_manifests_are_manifest_invalid() {
    let r = TestRegistry::start().await;
    let config = r.push_blob("mi", b"{}").await;
    let cfg = json!({"mediaType":"application/vnd.oci.image.config.v1+json","digest":config.to_string(),"size":2});
    let cases: Vec<(&str, Vec<u8>, &str)> = vec![
        ("not json", b"{\"schemaVersion\": 2,".to_vec(), OCI_MANIFEST),
        ("array", b"[]".to_vec(), OCI_MANIFEST),
        ("schema 1", serde_json::to_vec(&json!({"schemaVersion":1,"config":cfg,"layers":[]})).unwrap(), OCI_MANIFEST),
        ("no layers", serde_json::to_vec(&json!({"schemaVersion":2,"mediaType":OCI_MANIFEST,"config":cfg})).unwrap(), OCI_MANIFEST),
        ("layers not array", serde_json::to_vec(&json!({"schemaVersion":2,"config":cfg,"layers":"x"})).unwrap(), OCI_MANIFEST),
        ("type mismatch", serde_json::to_vec(&json!({"schemaVersion":2,"mediaType":OCI_INDEX,"manifests":[]})).unwrap(), OCI_MANIFEST),
        ("bad layer digest", serde_json::to_vec(&json!({"schemaVersion":2,"config":cfg,"layers":[{"mediaType":"x","digest":"sha256:1","size":1}]})).unwrap(), OCI_MANIFEST),
        ("negative size", serde_json::to_vec(&json!({"schemaVersion":2,"config":cfg,"layers":[{"mediaType":"x","digest":config.to_string(),"size":-1}]})).unwrap(), OCI_MANIFEST),
        ("unsupported type", serde_json::to_vec(&json!({"schemaVersion":2,"config":cfg,"layers":[]})).unwrap(), "application/vnd.docker.distribution.manifest.v1+prettyjws"),
    ];
    for (what, body, media_type) in cases {
        let resp = r.put_manifest("mi", "v1", media_type, &body).await;
        assert_eq!(resp.status(), StatusCode::BAD_REQUEST, "{what}");
        assert_eq!(
            error_codes(&resp.json().await.unwrap()),
            vec!["MANIFEST_INVALID"],
            "{what}"
        );
    }
    // Invalid tag on PUT.
    let ok = serde_json::to_vec(
        &json!({"schemaVersion":2,"mediaType":OCI_MANIFEST,"config":cfg,"layers":[]}),
    )
    .unwrap();
    let resp = r.put_manifest("mi", ".bad-tag", OCI_MANIFEST, &ok).await;
    assert_eq!(resp.status(), StatusCode::BAD_REQUEST);
    // Digest reference that does not match the body.
    let wrong = Digest::sha256_of(b"something else");
    let resp = r
        .put_manifest("mi", &wrong.to_string(), OCI_MANIFEST, &ok)
        .await;
    assert_eq!(resp.status(), StatusCode::BAD_REQUEST);
    assert_eq!(
        error_codes(&resp.json().await.unwrap()),
        vec!["DIGEST_INVALID"]
    );
    assert_eq!(
        r.put_manifest("mi", "good", OCI_MANIFEST, &ok)
            .await
            .status(),
        StatusCode::CREATED
    );
    r.stop().await;
}

#[tokio::test]
async fn odd_requests_never_fail_the_server() {
    let r = TestRegistry::start().await;
    let digest = r.push_blob("odd", b"odd").await;
    let cases: Vec<(&str, String)> = vec![
        ("PATCH", "/v2/odd/blobs/uploads/not-a-session".into()),
        ("PATCH", "/v2/odd/blobs/uploads/..%2F..%2Fetc".into()),
        (
            "GET",
            "/v2/odd/blobs/uploads/00000000-0000-0000-0000-000000000000".into(),
        ),
        ("DELETE", "/v2/odd/blobs/uploads/x".into()),
        ("PUT", format!("/v2/odd/blobs/{digest}")),
        ("POST", "/v2/odd/manifests/latest".into()),
        ("GET", "/v2/odd".into()),
        ("GET", "/v2/odd/nothing/here".into()),
        ("GET", "/v2/odd/tags/list?n=abc".into()),
        ("GET", "/v2/odd/tags/list?n=-1".into()),
        ("GET", "/v2/odd/manifests/%ff".into()),
        ("GET", "/v2/odd/manifests/sha256:".into()),
        ("GET", "/v2/odd/blobs/uploads/%zz".into()),
        (
            "POST",
            "/v2/odd/blobs/uploads/?mount=sha256:xyz&from=Bad".into(),
        ),
        ("POST", "/v2/odd/blobs/uploads/?digest-algorithm=md5".into()),
        ("GET", "/v2/_catalog?n=99999999999999999999999".into()),
    ];
    for (method, path) in cases {
        let (status, text) = r.raw(&path, method).await;
        assert!((400..500).contains(&status), "{method} {path}: {text}");
    }
    // A garbage Content-Range on a real session.
    let resp = r
        .http
        .post(r.url("/v2/odd/blobs/uploads/"))
        .send()
        .await
        .unwrap();
    let loc = r.abs(resp.headers()["location"].to_str().unwrap());
    let resp = r
        .http
        .patch(&loc)
        .header("content-range", "bytes=a-b")
        .body("x")
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), StatusCode::BAD_REQUEST);
    let resp = r
        .http
        .patch(&loc)
        .header("content-range", "0-9")
        .header("content-length", "3")
        .body("abc")
        .send()
        .await;
    if let Ok(resp) = resp {
        assert!(resp.status().is_client_error());
    }
    r.stop().await;
}
