//! Distribution-spec conformance over real HTTP against an in-process registry.

mod common;

use common::*;
use futures::stream;
use pier_registry::digest::Digest;
use reqwest::StatusCode;
use serde_json::{json, Value};

const DOCKER_MANIFEST: &str = "application/vnd.docker.distribution.manifest.v2+json";
const DOCKER_LIST: &str = "application/vnd.docker.distribution.manifest.list.v2+json";

fn header(resp: &reqwest::Response, name: &str) -> String {
    resp.headers()
        .get(name)
        .map(|v| v.to_str().unwrap().to_string())
        .unwrap_or_default()
}

#[tokio::test]
async fn api_version_check() {
    let r = TestRegistry::start().await;
    let resp = r.http.get(r.url("/v2/")).send().await.unwrap();
    assert_eq!(resp.status(), StatusCode::OK);
    assert_eq!(
        header(&resp, "docker-distribution-api-version"),
        "registry/2.0"
    );
    let resp = r.http.get(r.url("/v2")).send().await.unwrap();
    assert_eq!(resp.status(), StatusCode::OK);
    r.stop().await;
}

#[tokio::test]
async fn monolithic_push_then_pull_with_ranges() {
    let r = TestRegistry::start().await;
    let data = random_bytes(100_000, 1);
    let digest = r.push_blob("lib/blob", &data).await;

    let head = r
        .http
        .head(r.url(&format!("/v2/lib/blob/blobs/{digest}")))
        .send()
        .await
        .unwrap();
    assert_eq!(head.status(), StatusCode::OK);
    assert_eq!(header(&head, "content-length"), "100000");
    assert_eq!(header(&head, "docker-content-digest"), digest.to_string());

    let (status, body) = r.get_blob("lib/blob", &digest).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(body, data);

    let resp = r
        .http
        .get(r.url(&format!("/v2/lib/blob/blobs/{digest}")))
        .header("range", "bytes=10-19")
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), StatusCode::PARTIAL_CONTENT);
    assert_eq!(header(&resp, "content-range"), "bytes 10-19/100000");
    assert_eq!(resp.bytes().await.unwrap().as_ref(), &data[10..20]);

    let resp = r
        .http
        .get(r.url(&format!("/v2/lib/blob/blobs/{digest}")))
        .header("range", "bytes=-5")
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), StatusCode::PARTIAL_CONTENT);
    assert_eq!(resp.bytes().await.unwrap().as_ref(), &data[99_995..]);

    let resp = r
        .http
        .get(r.url(&format!("/v2/lib/blob/blobs/{digest}")))
        .header("range", "bytes=99990-")
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), StatusCode::PARTIAL_CONTENT);
    assert_eq!(resp.bytes().await.unwrap().as_ref(), &data[99_990..]);

    let resp = r
        .http
        .get(r.url(&format!("/v2/lib/blob/blobs/{digest}")))
        .header("range", "bytes=100000-")
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), StatusCode::RANGE_NOT_SATISFIABLE);
    assert_eq!(header(&resp, "content-range"), "bytes */100000");

    // Unknown blob in a known repository, and in an unknown one.
    let other = Digest::sha256_of(b"nope");
    let resp = r
        .http
        .get(r.url(&format!("/v2/lib/blob/blobs/{other}")))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), StatusCode::NOT_FOUND);
    assert_eq!(
        error_codes(&resp.json().await.unwrap()),
        vec!["BLOB_UNKNOWN"]
    );
    let resp = r
        .http
        .get(r.url(&format!("/v2/never/pushed/blobs/{other}")))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), StatusCode::NOT_FOUND);
    assert_eq!(
        error_codes(&resp.json().await.unwrap()),
        vec!["NAME_UNKNOWN"]
    );
    // The blob is not visible through another repository without a mount.
    r.push_blob("lib/other", b"x").await;
    assert_eq!(
        r.head_blob("lib/other", &digest).await,
        StatusCode::NOT_FOUND
    );
    r.stop().await;
}

#[tokio::test]
async fn single_request_post_push() {
    let r = TestRegistry::start().await;
    let data = random_bytes(5000, 2);
    let digest = Digest::sha256_of(&data);
    let resp = r
        .http
        .post(r.url(&format!("/v2/single/blobs/uploads/?digest={digest}")))
        .header("content-type", "application/octet-stream")
        .body(data.clone())
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), StatusCode::CREATED);
    assert_eq!(
        header(&resp, "location"),
        format!("/v2/single/blobs/{digest}")
    );
    assert_eq!(header(&resp, "docker-content-digest"), digest.to_string());
    assert_eq!(r.get_blob("single", &digest).await.1, data);
    r.stop().await;
}

#[tokio::test]
async fn chunked_upload_with_out_of_order_chunk_and_status() {
    let r = TestRegistry::start().await;
    let data = random_bytes(30, 3);
    let digest = Digest::sha256_of(&data);
    let resp = r
        .http
        .post(r.url("/v2/chunked/blobs/uploads/"))
        .header("content-length", "0")
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), StatusCode::ACCEPTED);
    assert_eq!(header(&resp, "range"), "0-0");
    assert!(!header(&resp, "docker-upload-uuid").is_empty());
    let loc = r.abs(&header(&resp, "location"));

    let resp = r
        .http
        .patch(&loc)
        .header("content-range", "0-9")
        .body(data[..10].to_vec())
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), StatusCode::ACCEPTED);
    assert_eq!(header(&resp, "range"), "0-9");
    let loc = r.abs(&header(&resp, "location"));

    // Skipping bytes 10..19 is out of order.
    let resp = r
        .http
        .patch(&loc)
        .header("content-range", "20-29")
        .body(data[20..].to_vec())
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), StatusCode::RANGE_NOT_SATISFIABLE);
    assert_eq!(header(&resp, "range"), "0-9");
    // Re-sending the first chunk is out of order too.
    let resp = r
        .http
        .patch(&loc)
        .header("content-range", "0-9")
        .body(data[..10].to_vec())
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), StatusCode::RANGE_NOT_SATISFIABLE);

    let resp = r.http.get(&loc).send().await.unwrap();
    assert_eq!(resp.status(), StatusCode::NO_CONTENT);
    assert_eq!(header(&resp, "range"), "0-9");
    assert!(!header(&resp, "location").is_empty());

    let resp = r
        .http
        .patch(&loc)
        .header("content-range", "10-19")
        .body(data[10..20].to_vec())
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), StatusCode::ACCEPTED);
    assert_eq!(header(&resp, "range"), "0-19");

    // The last chunk rides on the closing PUT.
    let resp = r
        .http
        .put(format!("{loc}?digest={digest}"))
        .header("content-range", "20-29")
        .body(data[20..].to_vec())
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), StatusCode::CREATED);
    assert_eq!(
        header(&resp, "location"),
        format!("/v2/chunked/blobs/{digest}")
    );
    assert_eq!(r.get_blob("chunked", &digest).await.1, data);

    // The session is gone once closed.
    let resp = r.http.get(&loc).send().await.unwrap();
    assert_eq!(resp.status(), StatusCode::NOT_FOUND);
    assert_eq!(
        error_codes(&resp.json().await.unwrap()),
        vec!["BLOB_UPLOAD_UNKNOWN"]
    );
    r.stop().await;
}

#[tokio::test]
async fn streamed_upload_without_content_range() {
    let r = TestRegistry::start().await;
    let data = random_bytes(3 * 1024 * 1024 + 17, 4);
    let digest = Digest::sha256_of(&data);
    let resp = r
        .http
        .post(r.url("/v2/streamed/blobs/uploads/"))
        .send()
        .await
        .unwrap();
    let loc = r.abs(&header(&resp, "location"));
    let half = data.len() / 2;
    for (i, part) in [&data[..half], &data[half..]].into_iter().enumerate() {
        let frames: Vec<Result<Vec<u8>, std::io::Error>> =
            part.chunks(64 * 1024).map(|c| Ok(c.to_vec())).collect();
        let resp = r
            .http
            .patch(&loc)
            .body(reqwest::Body::wrap_stream(stream::iter(frames)))
            .send()
            .await
            .unwrap();
        assert_eq!(resp.status(), StatusCode::ACCEPTED, "patch {i}");
        let end = if i == 0 { half } else { data.len() };
        assert_eq!(header(&resp, "range"), format!("0-{}", end - 1));
    }
    let resp = r
        .http
        .put(format!("{loc}?digest={digest}"))
        .header("content-length", "0")
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), StatusCode::CREATED);
    let (status, body) = r.get_blob("streamed", &digest).await;
    assert_eq!(status, StatusCode::OK);
    assert!(body == data);
    r.stop().await;
}

#[tokio::test]
async fn upload_cancel() {
    let r = TestRegistry::start().await;
    let resp = r
        .http
        .post(r.url("/v2/cancel/blobs/uploads/"))
        .send()
        .await
        .unwrap();
    let loc = r.abs(&header(&resp, "location"));
    let id = header(&resp, "docker-upload-uuid");
    r.http
        .patch(&loc)
        .body(vec![1u8; 1000])
        .send()
        .await
        .unwrap();
    let upload_file = r.dir.path().join(format!("data/uploads/{id}.data"));
    assert!(upload_file.exists());
    let resp = r.http.delete(&loc).send().await.unwrap();
    assert_eq!(resp.status(), StatusCode::NO_CONTENT);
    assert!(!upload_file.exists());
    let resp = r.http.get(&loc).send().await.unwrap();
    assert_eq!(resp.status(), StatusCode::NOT_FOUND);
    let resp = r.http.delete(&loc).send().await.unwrap();
    assert_eq!(resp.status(), StatusCode::NOT_FOUND);
    // A session is bound to its repository.
    let resp = r
        .http
        .post(r.url("/v2/cancel/blobs/uploads/"))
        .send()
        .await
        .unwrap();
    let id = header(&resp, "docker-upload-uuid");
    let resp = r
        .http
        .get(r.url(&format!("/v2/elsewhere/blobs/uploads/{id}")))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), StatusCode::NOT_FOUND);
    r.stop().await;
}

#[tokio::test]
async fn cross_repository_mount_both_outcomes() {
    let r = TestRegistry::start().await;
    let data = random_bytes(1000, 5);
    let digest = r.push_blob("src/repo", &data).await;

    let resp = r
        .http
        .post(r.url(&format!(
            "/v2/dst/repo/blobs/uploads/?mount={digest}&from=src/repo"
        )))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), StatusCode::CREATED);
    assert_eq!(
        header(&resp, "location"),
        format!("/v2/dst/repo/blobs/{digest}")
    );
    assert_eq!(header(&resp, "docker-content-digest"), digest.to_string());
    assert_eq!(r.get_blob("dst/repo", &digest).await.1, data);

    // Source without the blob: an ordinary upload session instead.
    let unknown = Digest::sha256_of(b"unknown");
    let resp = r
        .http
        .post(r.url(&format!(
            "/v2/dst/repo/blobs/uploads/?mount={unknown}&from=src/repo"
        )))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), StatusCode::ACCEPTED);
    let loc = r.abs(&header(&resp, "location"));
    assert!(loc.contains("/v2/dst/repo/blobs/uploads/"));
    let resp = r
        .http
        .put(format!("{loc}?digest={unknown}"))
        .body(b"unknown".to_vec())
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), StatusCode::CREATED);

    // A source repository that does not hold the digest, although another does.
    let resp = r
        .http
        .post(r.url(&format!(
            "/v2/third/blobs/uploads/?mount={digest}&from=nobody/here"
        )))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), StatusCode::ACCEPTED);
    r.stop().await;
}

#[tokio::test]
async fn tag_listing_paginates_with_link() {
    let r = TestRegistry::start().await;
    let (manifest, _) = r.push_image("paged", "t00", &[b"layer"]).await;
    for i in 1..25 {
        let resp = r
            .put_manifest("paged", &format!("t{i:02}"), OCI_MANIFEST, &manifest)
            .await;
        assert_eq!(resp.status(), StatusCode::CREATED);
    }
    let mut url = r.url("/v2/paged/tags/list?n=10");
    let mut seen = Vec::new();
    let mut pages = 0;
    loop {
        let resp = r.http.get(&url).send().await.unwrap();
        assert_eq!(resp.status(), StatusCode::OK);
        let link = header(&resp, "link");
        let body: Value = resp.json().await.unwrap();
        assert_eq!(body["name"], "paged");
        let tags: Vec<String> = serde_json::from_value(body["tags"].clone()).unwrap();
        assert!(tags.len() <= 10);
        seen.extend(tags);
        pages += 1;
        if link.is_empty() {
            break;
        }
        assert!(link.ends_with("rel=\"next\""), "{link}");
        let target = link.trim_start_matches('<').split('>').next().unwrap();
        url = r.url(target);
    }
    assert_eq!(pages, 3);
    let expected: Vec<String> = (0..25).map(|i| format!("t{i:02}")).collect();
    assert_eq!(seen, expected);

    let resp = r
        .http
        .get(r.url("/v2/paged/tags/list?n=0"))
        .send()
        .await
        .unwrap();
    assert!(resp.headers().get("link").is_none());
    assert_eq!(resp.json::<Value>().await.unwrap()["tags"], json!([]));
    let resp = r
        .http
        .get(r.url("/v2/paged/tags/list?last=t22"))
        .send()
        .await
        .unwrap();
    assert_eq!(
        resp.json::<Value>().await.unwrap()["tags"],
        json!(["t23", "t24"])
    );
    let resp = r
        .http
        .get(r.url("/v2/paged/tags/list"))
        .send()
        .await
        .unwrap();
    assert_eq!(
        resp.json::<Value>().await.unwrap()["tags"]
            .as_array()
            .unwrap()
            .len(),
        25
    );
    let resp = r
        .http
        .get(r.url("/v2/nothing/here/tags/list"))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), StatusCode::NOT_FOUND);
    assert_eq!(
        error_codes(&resp.json().await.unwrap()),
        vec!["NAME_UNKNOWN"]
    );
    r.stop().await;
}

#[tokio::test]
async fn catalog_paginates_with_link() {
    let r = TestRegistry::start().await;
    for name in ["c/e", "a", "d", "b/x"] {
        r.push_blob(name, name.as_bytes()).await;
    }
    let resp = r.http.get(r.url("/v2/_catalog?n=3")).send().await.unwrap();
    let link = header(&resp, "link");
    assert_eq!(link, "</v2/_catalog?n=3&last=c/e>; rel=\"next\"");
    assert_eq!(
        resp.json::<Value>().await.unwrap()["repositories"],
        json!(["a", "b/x", "c/e"])
    );
    let resp = r
        .http
        .get(r.url("/v2/_catalog?n=3&last=c/e"))
        .send()
        .await
        .unwrap();
    assert!(resp.headers().get("link").is_none());
    assert_eq!(
        resp.json::<Value>().await.unwrap()["repositories"],
        json!(["d"])
    );
    r.stop().await;
}

#[tokio::test]
async fn four_manifest_media_types_served_byte_exact() {
    let r = TestRegistry::start().await;
    let (oci_bytes, oci_digest) = r.push_image("types", "oci", &[b"l1", b"l2"]).await;

    // Docker schema 2, with odd whitespace that must survive byte for byte.
    let config = r.push_blob("types", b"{\"os\":\"linux\"}").await;
    let layer = r.push_blob("types", b"l1").await;
    let docker = format!(
        "{{\n   \"schemaVersion\": 2,\n   \"mediaType\": \"{DOCKER_MANIFEST}\",\n   \"config\": {{\"mediaType\": \"application/vnd.docker.container.image.v1+json\", \"size\": 14, \"digest\": \"{config}\"}},\n   \"layers\": [{{\"mediaType\": \"application/vnd.docker.image.rootfs.diff.tar.gzip\", \"size\": 2, \"digest\": \"{layer}\"}}]\n}}"
    );
    let resp = r
        .put_manifest("types", "docker", DOCKER_MANIFEST, docker.as_bytes())
        .await;
    assert_eq!(resp.status(), StatusCode::CREATED);
    let docker_digest = Digest::sha256_of(docker.as_bytes());
    assert_eq!(
        header(&resp, "docker-content-digest"),
        docker_digest.to_string()
    );
    assert_eq!(
        header(&resp, "location"),
        format!("/v2/types/manifests/{docker_digest}")
    );

    let index = json!({"schemaVersion":2,"mediaType":OCI_INDEX,"manifests":[
        {"mediaType":OCI_MANIFEST,"digest":oci_digest.to_string(),"size":oci_bytes.len(),"platform":{"os":"linux","architecture":"amd64"}}]});
    let index_bytes = serde_json::to_vec(&index).unwrap();
    assert_eq!(
        r.put_manifest("types", "index", OCI_INDEX, &index_bytes)
            .await
            .status(),
        StatusCode::CREATED
    );

    let list = json!({"schemaVersion":2,"mediaType":DOCKER_LIST,"manifests":[
        {"mediaType":DOCKER_MANIFEST,"digest":docker_digest.to_string(),"size":docker.len(),"platform":{"os":"linux","architecture":"amd64"}}]});
    let list_bytes = serde_json::to_vec(&list).unwrap();
    assert_eq!(
        r.put_manifest("types", "list", DOCKER_LIST, &list_bytes)
            .await
            .status(),
        StatusCode::CREATED
    );

    let all = [DOCKER_MANIFEST, DOCKER_LIST, OCI_MANIFEST, OCI_INDEX].join(", ");
    for (tag, media_type, bytes) in [
        ("oci", OCI_MANIFEST, oci_bytes.clone()),
        ("docker", DOCKER_MANIFEST, docker.clone().into_bytes()),
        ("index", OCI_INDEX, index_bytes.clone()),
        ("list", DOCKER_LIST, list_bytes.clone()),
    ] {
        let digest = Digest::sha256_of(&bytes);
        for reference in [tag.to_string(), digest.to_string()] {
            let resp = r
                .http
                .get(r.url(&format!("/v2/types/manifests/{reference}")))
                .header("accept", &all)
                .send()
                .await
                .unwrap();
            assert_eq!(resp.status(), StatusCode::OK, "{tag}");
            assert_eq!(header(&resp, "content-type"), media_type);
            assert_eq!(header(&resp, "docker-content-digest"), digest.to_string());
            assert_eq!(
                resp.bytes().await.unwrap().as_ref(),
                bytes.as_slice(),
                "{tag} byte-exact"
            );
            let resp = r
                .http
                .head(r.url(&format!("/v2/types/manifests/{reference}")))
                .header("accept", &all)
                .send()
                .await
                .unwrap();
            assert_eq!(resp.status(), StatusCode::OK);
            assert_eq!(header(&resp, "content-length"), bytes.len().to_string());
            assert_eq!(header(&resp, "docker-content-digest"), digest.to_string());
        }
    }
    // A client that only accepts Docker schema 2 does not get an OCI manifest.
    let resp = r
        .http
        .get(r.url("/v2/types/manifests/oci"))
        .header("accept", DOCKER_MANIFEST)
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), StatusCode::NOT_FOUND);
    assert_eq!(
        error_codes(&resp.json().await.unwrap()),
        vec!["MANIFEST_UNKNOWN"]
    );
    // No Accept at all: whatever is stored.
    let resp = r
        .http
        .get(r.url("/v2/types/manifests/oci"))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), StatusCode::OK);
    // Unknown tag in a known repository.
    let resp = r
        .http
        .get(r.url("/v2/types/manifests/missing"))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), StatusCode::NOT_FOUND);
    assert_eq!(
        error_codes(&resp.json().await.unwrap()),
        vec!["MANIFEST_UNKNOWN"]
    );
    r.stop().await;
}

#[tokio::test]
async fn push_by_digest_with_tag_parameters() {
    let r = TestRegistry::start().await;
    let (bytes, digest) = r.push_image("multi", "first", &[b"x"]).await;
    let resp = r
        .http
        .put(r.url(&format!(
            "/v2/multi/manifests/{digest}?tag=v1&tag=v1.2&tag=latest"
        )))
        .header("content-type", OCI_MANIFEST)
        .body(bytes)
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), StatusCode::CREATED);
    let tags: Vec<_> = resp
        .headers()
        .get_all("oci-tag")
        .iter()
        .map(|v| v.to_str().unwrap().to_string())
        .collect();
    assert_eq!(tags, vec!["v1", "v1.2", "latest"]);
    let resp = r
        .http
        .get(r.url("/v2/multi/tags/list"))
        .send()
        .await
        .unwrap();
    assert_eq!(
        resp.json::<Value>().await.unwrap()["tags"],
        json!(["first", "latest", "v1", "v1.2"])
    );
    r.stop().await;
}

#[tokio::test]
async fn referrers_with_and_without_artifact_type_filter() {
    let r = TestRegistry::start().await;
    let (subject_bytes, subject) = r.push_image("app", "v1", &[b"base"]).await;
    let empty = r.push_blob("app", b"{}").await;
    let subject_desc =
        json!({"mediaType":OCI_MANIFEST,"digest":subject.to_string(),"size":subject_bytes.len()});

    let sbom = json!({"schemaVersion":2,"mediaType":OCI_MANIFEST,"artifactType":"application/vnd.example.sbom",
        "config":{"mediaType":"application/vnd.oci.empty.v1+json","digest":empty.to_string(),"size":2},
        "layers":[],"subject":subject_desc,"annotations":{"org.example.kind":"sbom"}});
    let sbom_bytes = serde_json::to_vec(&sbom).unwrap();
    let sbom_digest = Digest::sha256_of(&sbom_bytes);
    let resp = r
        .put_manifest("app", &sbom_digest.to_string(), OCI_MANIFEST, &sbom_bytes)
        .await;
    assert_eq!(resp.status(), StatusCode::CREATED);
    assert_eq!(header(&resp, "oci-subject"), subject.to_string());

    // No artifactType: the config media type stands in.
    let sig_config = r.push_blob("app", b"sig-config").await;
    let sig = json!({"schemaVersion":2,"mediaType":OCI_MANIFEST,
        "config":{"mediaType":"application/vnd.example.signature","digest":sig_config.to_string(),"size":10},
        "layers":[],"subject":subject_desc});
    let sig_bytes = serde_json::to_vec(&sig).unwrap();
    let sig_digest = Digest::sha256_of(&sig_bytes);
    assert_eq!(
        r.put_manifest("app", &sig_digest.to_string(), OCI_MANIFEST, &sig_bytes)
            .await
            .status(),
        StatusCode::CREATED
    );

    // An index with a subject and no artifactType: reported without one.
    let idx =
        json!({"schemaVersion":2,"mediaType":OCI_INDEX,"manifests":[],"subject":subject_desc});
    let idx_bytes = serde_json::to_vec(&idx).unwrap();
    let idx_digest = Digest::sha256_of(&idx_bytes);
    assert_eq!(
        r.put_manifest("app", &idx_digest.to_string(), OCI_INDEX, &idx_bytes)
            .await
            .status(),
        StatusCode::CREATED
    );

    let resp = r
        .http
        .get(r.url(&format!("/v2/app/referrers/{subject}")))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), StatusCode::OK);
    assert_eq!(header(&resp, "content-type"), OCI_INDEX);
    assert!(resp.headers().get("oci-filters-applied").is_none());
    let body: Value = resp.json().await.unwrap();
    assert_eq!(body["schemaVersion"], 2);
    assert_eq!(body["mediaType"], OCI_INDEX);
    let manifests = body["manifests"].as_array().unwrap();
    assert_eq!(manifests.len(), 3);
    let by_digest = |d: &Digest| {
        manifests
            .iter()
            .find(|m| m["digest"] == d.to_string())
            .unwrap()
            .clone()
    };
    let s = by_digest(&sbom_digest);
    assert_eq!(s["artifactType"], "application/vnd.example.sbom");
    assert_eq!(s["annotations"]["org.example.kind"], "sbom");
    assert_eq!(s["size"], sbom_bytes.len());
    assert_eq!(s["mediaType"], OCI_MANIFEST);
    assert_eq!(
        by_digest(&sig_digest)["artifactType"],
        "application/vnd.example.signature"
    );
    assert!(by_digest(&idx_digest).get("artifactType").is_none());

    let resp = r
        .http
        .get(r.url(&format!(
            "/v2/app/referrers/{subject}?artifactType=application/vnd.example.signature"
        )))
        .send()
        .await
        .unwrap();
    assert_eq!(header(&resp, "oci-filters-applied"), "artifactType");
    let body: Value = resp.json().await.unwrap();
    let manifests = body["manifests"].as_array().unwrap();
    assert_eq!(manifests.len(), 1);
    assert_eq!(manifests[0]["digest"], sig_digest.to_string());

    // Referrers of something without any, and in an unknown repository: empty, never 404.
    for path in [
        format!("/v2/app/referrers/{sbom_digest}"),
        format!("/v2/nobody/referrers/{subject}"),
    ] {
        let resp = r.http.get(r.url(&path)).send().await.unwrap();
        assert_eq!(resp.status(), StatusCode::OK);
        assert_eq!(resp.json::<Value>().await.unwrap()["manifests"], json!([]));
    }
    let resp = r
        .http
        .get(r.url("/v2/app/referrers/sha256:1234"))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), StatusCode::BAD_REQUEST);

    // A referrer may arrive before its subject.
    let future_subject = Digest::sha256_of(b"not pushed yet");
    let early = json!({"schemaVersion":2,"mediaType":OCI_MANIFEST,"artifactType":"x/y",
        "config":{"mediaType":"application/vnd.oci.empty.v1+json","digest":empty.to_string(),"size":2},
        "layers":[],"subject":{"mediaType":OCI_MANIFEST,"digest":future_subject.to_string(),"size":1}});
    let early_bytes = serde_json::to_vec(&early).unwrap();
    let resp = r
        .put_manifest("app", "early", OCI_MANIFEST, &early_bytes)
        .await;
    assert_eq!(resp.status(), StatusCode::CREATED);
    let resp = r
        .http
        .get(r.url(&format!("/v2/app/referrers/{future_subject}")))
        .send()
        .await
        .unwrap();
    assert_eq!(
        resp.json::<Value>().await.unwrap()["manifests"]
            .as_array()
            .unwrap()
            .len(),
        1
    );

    // Deleting a referrer removes it from the list.
    let resp = r
        .http
        .delete(r.url(&format!("/v2/app/manifests/{sbom_digest}")))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), StatusCode::ACCEPTED);
    let resp = r
        .http
        .get(r.url(&format!("/v2/app/referrers/{subject}")))
        .send()
        .await
        .unwrap();
    assert_eq!(
        resp.json::<Value>().await.unwrap()["manifests"]
            .as_array()
            .unwrap()
            .len(),
        2
    );
    r.stop().await;
}

#[tokio::test]
async fn delete_by_tag_by_digest_and_blobs() {
    let r = TestRegistry::start().await;
    let (bytes, digest) = r.push_image("del", "a", &[b"layer-del"]).await;
    assert_eq!(
        r.put_manifest("del", "b", OCI_MANIFEST, &bytes)
            .await
            .status(),
        StatusCode::CREATED
    );

    let resp = r
        .http
        .delete(r.url("/v2/del/manifests/a"))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), StatusCode::ACCEPTED);
    assert_eq!(
        r.http
            .get(r.url("/v2/del/manifests/a"))
            .send()
            .await
            .unwrap()
            .status(),
        StatusCode::NOT_FOUND
    );
    // Deleting a tag leaves the manifest and the other tag alone.
    assert_eq!(
        r.http
            .get(r.url("/v2/del/manifests/b"))
            .send()
            .await
            .unwrap()
            .status(),
        StatusCode::OK
    );
    assert_eq!(
        r.http
            .get(r.url(&format!("/v2/del/manifests/{digest}")))
            .send()
            .await
            .unwrap()
            .status(),
        StatusCode::OK
    );
    let resp = r
        .http
        .delete(r.url("/v2/del/manifests/a"))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), StatusCode::NOT_FOUND);

    let resp = r
        .http
        .delete(r.url(&format!("/v2/del/manifests/{digest}")))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), StatusCode::ACCEPTED);
    assert_eq!(
        r.http
            .get(r.url(&format!("/v2/del/manifests/{digest}")))
            .send()
            .await
            .unwrap()
            .status(),
        StatusCode::NOT_FOUND
    );
    // ...and every tag pointing at it.
    assert_eq!(
        r.http
            .get(r.url("/v2/del/manifests/b"))
            .send()
            .await
            .unwrap()
            .status(),
        StatusCode::NOT_FOUND
    );
    let resp = r.http.get(r.url("/v2/del/tags/list")).send().await.unwrap();
    assert_eq!(resp.json::<Value>().await.unwrap()["tags"], json!([]));

    let layer = Digest::sha256_of(b"layer-del");
    let resp = r
        .http
        .delete(r.url(&format!("/v2/del/blobs/{layer}")))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), StatusCode::ACCEPTED);
    assert_eq!(r.head_blob("del", &layer).await, StatusCode::NOT_FOUND);
    let resp = r
        .http
        .delete(r.url(&format!("/v2/del/blobs/{layer}")))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), StatusCode::NOT_FOUND);
    assert_eq!(
        error_codes(&resp.json().await.unwrap()),
        vec!["BLOB_UNKNOWN"]
    );
    let resp = r
        .http
        .delete(r.url(&format!("/v2/ghost/manifests/{digest}")))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), StatusCode::NOT_FOUND);
    assert_eq!(
        error_codes(&resp.json().await.unwrap()),
        vec!["NAME_UNKNOWN"]
    );
    r.stop().await;
}

#[tokio::test]
async fn sha512_blobs_and_manifests() {
    let r = TestRegistry::start().await;
    // Chunked, announcing the algorithm up front.
    let data = random_bytes(200_000, 6);
    let digest = sha512(&data);
    let resp = r
        .http
        .post(r.url("/v2/five12/blobs/uploads/?digest-algorithm=sha512"))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), StatusCode::ACCEPTED);
    let loc = r.abs(&header(&resp, "location"));
    let resp = r
        .http
        .patch(&loc)
        .header("content-range", "0-99999")
        .body(data[..100_000].to_vec())
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), StatusCode::ACCEPTED);
    let resp = r
        .http
        .put(format!("{loc}?digest={digest}"))
        .body(data[100_000..].to_vec())
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), StatusCode::CREATED);
    let head = r
        .http
        .head(r.url(&format!("/v2/five12/blobs/{digest}")))
        .send()
        .await
        .unwrap();
    assert_eq!(head.status(), StatusCode::OK);
    assert_eq!(header(&head, "docker-content-digest"), digest.to_string());
    assert_eq!(r.get_blob("five12", &digest).await.1, data);

    // Without the hint: the upload is hashed as sha256 on the way, then
    // re-hashed once as sha512 at the end.
    let config = b"{\"os\":\"linux\"}".to_vec();
    let config_digest = sha512(&config);
    let resp = r
        .http
        .post(r.url("/v2/five12/blobs/uploads/"))
        .send()
        .await
        .unwrap();
    let loc = r.abs(&header(&resp, "location"));
    let resp = r
        .http
        .put(format!("{loc}?digest={config_digest}"))
        .body(config.clone())
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), StatusCode::CREATED);

    let manifest = json!({"schemaVersion":2,"mediaType":OCI_MANIFEST,
        "config":{"mediaType":"application/vnd.oci.image.config.v1+json","digest":config_digest.to_string(),"size":config.len()},
        "layers":[{"mediaType":"application/vnd.oci.image.layer.v1.tar","digest":digest.to_string(),"size":data.len()}]});
    let bytes = serde_json::to_vec(&manifest).unwrap();
    let manifest_digest = sha512(&bytes);
    let resp = r
        .put_manifest("five12", &manifest_digest.to_string(), OCI_MANIFEST, &bytes)
        .await;
    assert_eq!(
        resp.status(),
        StatusCode::CREATED,
        "{}",
        resp.text().await.unwrap()
    );
    let resp = r
        .http
        .get(r.url(&format!("/v2/five12/manifests/{manifest_digest}")))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), StatusCode::OK);
    assert_eq!(
        header(&resp, "docker-content-digest"),
        manifest_digest.to_string()
    );
    assert_eq!(resp.bytes().await.unwrap().as_ref(), bytes.as_slice());
    r.stop().await;
}

#[tokio::test]
async fn metrics_are_served() {
    let r = TestRegistry::start().await;
    r.push_image("m", "v1", &[b"metrics-layer"]).await;
    r.pull_image("m", "v1").await.unwrap();
    let text = r
        .http
        .get(r.url("/metrics"))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(
        text.contains(
            "pier_registry_http_requests_total{endpoint=\"blob\",method=\"GET\",status=\"200\"}"
        ),
        "{text}"
    );
    assert!(
        text.contains("pier_registry_upload_duration_seconds_count"),
        "{text}"
    );
    assert!(
        text.contains("pier_registry_received_bytes_total"),
        "{text}"
    );
    assert!(text.contains("pier_registry_sent_bytes_total"), "{text}");
    r.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reads_do_not_wait_for_pushes_or_gc() {
    let r = std::sync::Arc::new(TestRegistry::start().await);
    let (_, manifest) = r
        .push_image("busy", "v1", &[&random_bytes(200_000, 11)])
        .await;
    let layer = Digest::sha256_of(&random_bytes(200_000, 11));

    // A slow streamed upload holds its session for ~2 s, manifest pushes keep
    // the index writer busy, GC runs in a loop.
    let loc = {
        let resp = r
            .http
            .post(r.url("/v2/busy/blobs/uploads/"))
            .send()
            .await
            .unwrap();
        r.abs(&header(&resp, "location"))
    };
    let slow = {
        let r = r.clone();
        tokio::spawn(async move {
            let frames = stream::unfold(0u32, |i| async move {
                if i == 40 {
                    return None;
                }
                tokio::time::sleep(std::time::Duration::from_millis(50)).await;
                Some((Ok::<_, std::io::Error>(vec![i as u8; 64 * 1024]), i + 1))
            });
            r.http
                .patch(&loc)
                .body(reqwest::Body::wrap_stream(frames))
                .send()
                .await
                .unwrap()
                .status()
        })
    };
    let writers = {
        let r = r.clone();
        tokio::spawn(async move {
            let bytes = r
                .http
                .get(r.url("/v2/busy/manifests/v1"))
                .send()
                .await
                .unwrap()
                .bytes()
                .await
                .unwrap();
            for i in 0..100 {
                let resp = r
                    .put_manifest("busy", &format!("t{i}"), OCI_MANIFEST, &bytes)
                    .await;
                assert_eq!(resp.status(), StatusCode::CREATED);
                let _ = r.registry.gc(false).await.unwrap();
            }
        })
    };
    let mut worst = std::time::Duration::ZERO;
    for _ in 0..200 {
        let start = std::time::Instant::now();
        assert_eq!(r.head_blob("busy", &layer).await, StatusCode::OK);
        let resp = r
            .http
            .get(r.url(&format!("/v2/busy/manifests/{manifest}")))
            .send()
            .await
            .unwrap();
        assert_eq!(resp.status(), StatusCode::OK);
        worst = worst.max(start.elapsed());
    }
    assert_eq!(slow.await.unwrap(), StatusCode::ACCEPTED);
    writers.await.unwrap();
    // Generous: a debug build on a shared 2-core machine. Reads that queued
    // behind the 2 s upload or the writers would take far longer.
    assert!(
        worst < std::time::Duration::from_millis(500),
        "slowest read pair took {worst:?}"
    );
}
