//! skopeo copies a multi-layer image from an OCI layout into `pier registry`
//! and back; manifest and layer digests survive the round trip unchanged.

use std::collections::BTreeSet;
use std::path::Path;
use std::process::Command;
use std::time::Duration;

use pier_testkit::docker::{self, ScratchImage};
use pier_testkit::net::free_port;
use pier_testkit::process::{wait_http_ok, PierProcess};

fn skopeo(args: &[&str]) -> String {
    let out = Command::new("skopeo")
        .args(args)
        .output()
        .unwrap_or_else(|e| panic!("cannot run skopeo: {e}"));
    assert!(
        out.status.success(),
        "skopeo {} failed: {}",
        args.join(" "),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).to_string()
}

/// The manifest digest an OCI layout's index.json names, and the set of blob
/// files in the layout.
fn layout(dir: &Path) -> (String, BTreeSet<String>, serde_json::Value) {
    let index: serde_json::Value =
        serde_json::from_slice(&std::fs::read(dir.join("index.json")).unwrap()).unwrap();
    let manifest_digest = index["manifests"][0]["digest"]
        .as_str()
        .unwrap()
        .to_string();
    let hex = manifest_digest.strip_prefix("sha256:").unwrap();
    let manifest: serde_json::Value =
        serde_json::from_slice(&std::fs::read(dir.join("blobs/sha256").join(hex)).unwrap())
            .unwrap();
    let blobs = std::fs::read_dir(dir.join("blobs/sha256"))
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    (manifest_digest, blobs, manifest)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn skopeo_round_trip_multi_layer_image() {
    docker::docker_available();
    let dir = tempfile::tempdir().unwrap();
    let port = free_port();
    let listen = format!("127.0.0.1:{port}");
    let data = dir.path().join("data");
    let _registry = PierProcess::spawn(
        env!("CARGO_BIN_EXE_pier"),
        "registry",
        &[
            "registry",
            "--data-dir",
            data.to_str().unwrap(),
            "--listen",
            &listen,
            "--gc-interval",
            "off",
        ],
        dir.path(),
    );
    wait_http_ok(&format!("http://{listen}/v2/"), Duration::from_secs(20)).await;

    // Four layers: busybox, two data files, an index page.
    let tag = format!("pier-test/skopeo-multi-{}:v1", std::process::id());
    let big: Vec<u8> = (0..3_000_000u32)
        .map(|i| (i.wrapping_mul(2_654_435_761) >> 13) as u8)
        .collect();
    let _image = ScratchImage::new()
        .with_busybox()
        .file("/data/big.bin", big, 0o644)
        .file("/data/small.txt", "small\n", 0o644)
        .file("/www/index.html", "multi\n", 0o644)
        .cmd(&["/bin/busybox", "httpd", "-f", "-p", "8080", "-h", "/www"])
        .build(&tag);

    let src = dir.path().join("src-layout");
    let back = dir.path().join("back-layout");
    skopeo(&[
        "copy",
        "--quiet",
        &format!("docker-daemon:{tag}"),
        &format!("oci:{}:img", src.display()),
    ]);
    let (src_digest, src_blobs, src_manifest) = layout(&src);
    assert_eq!(
        src_manifest["layers"].as_array().unwrap().len(),
        4,
        "{src_manifest}"
    );

    let remote = format!("docker://{listen}/skopeo/multi:v1");
    skopeo(&[
        "copy",
        "--quiet",
        "--preserve-digests",
        "--dest-tls-verify=false",
        &format!("oci:{}:img", src.display()),
        &remote,
    ]);
    let inspect: serde_json::Value =
        serde_json::from_str(&skopeo(&["inspect", "--tls-verify=false", &remote])).unwrap();
    assert_eq!(inspect["Digest"], src_digest);
    assert_eq!(inspect["Layers"].as_array().unwrap().len(), 4);
    let raw = skopeo(&["inspect", "--raw", "--tls-verify=false", &remote]);
    assert_eq!(
        serde_json::from_str::<serde_json::Value>(&raw).unwrap(),
        src_manifest,
        "the registry serves the manifest it was given"
    );

    skopeo(&[
        "copy",
        "--quiet",
        "--preserve-digests",
        "--src-tls-verify=false",
        &remote,
        &format!("oci:{}:img", back.display()),
    ]);
    let (back_digest, back_blobs, _) = layout(&back);
    assert_eq!(
        back_digest, src_digest,
        "manifest digest changed in the round trip"
    );
    assert_eq!(back_blobs, src_blobs, "blob set changed in the round trip");
    for blob in &back_blobs {
        let a = std::fs::read(src.join("blobs/sha256").join(blob)).unwrap();
        let b = std::fs::read(back.join("blobs/sha256").join(blob)).unwrap();
        assert!(a == b, "blob {blob} differs");
    }

    // Copy within the registry: skopeo mounts the blobs across repositories.
    skopeo(&[
        "copy",
        "--quiet",
        "--src-tls-verify=false",
        "--dest-tls-verify=false",
        &remote,
        &format!("docker://{listen}/skopeo/copy:v1"),
    ]);
    let inspect: serde_json::Value = serde_json::from_str(&skopeo(&[
        "inspect",
        "--tls-verify=false",
        &format!("docker://{listen}/skopeo/copy:v1"),
    ]))
    .unwrap();
    assert_eq!(inspect["Digest"], src_digest);
}
