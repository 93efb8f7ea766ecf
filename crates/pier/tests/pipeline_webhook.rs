//! The push webhook: a wrong signature is refused with 401 and queues nothing; the right one
//! queues a run that deploys the pushed commit. Also a manual run and a restart mid-run.

mod pipeline_common;

use std::time::Duration;

use pier_testkit::git::busybox_site_repo;
use pipeline_common::{json_of, Dev};

fn hmac_sha256_hex(secret: &str, body: &str) -> String {
    // Python's hmac module is the sender's side here, independent of pier's own HMAC code.
    let out = std::process::Command::new("python3")
        .args([
            "-c",
            "import hmac, hashlib, sys; print(hmac.new(sys.argv[1].encode(), sys.stdin.buffer.read(), hashlib.sha256).hexdigest())",
            secret,
        ])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .spawn()
        .and_then(|mut child| {
            use std::io::Write;
            child.stdin.take().unwrap().write_all(body.as_bytes())?;
            child.wait_with_output()
        })
        .expect("python3 must be installed for this test");
    let text = String::from_utf8_lossy(&out.stdout);
    text.rsplit(' ').next().unwrap().trim().to_string()
}

async fn post_hook(
    dev: &Dev,
    pipeline: &str,
    body: &str,
    signature: Option<&str>,
) -> (u16, String) {
    let mut req = dev
        .http
        .post(format!(
            "{}/api/v1/pipelines/{pipeline}/hooks/push",
            dev.addr()
        ))
        .header("X-GitHub-Event", "push")
        .header("Content-Type", "application/json")
        .body(body.to_string());
    if let Some(sig) = signature {
        req = req.header("X-Hub-Signature-256", sig);
    }
    let resp = req.send().await.unwrap();
    (resp.status().as_u16(), resp.text().await.unwrap())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn webhook_signatures_decide_whether_a_run_is_queued() {
    let dev = Dev::start(&[]).await;
    let repo = busybox_site_repo("hooked", "v1\n");
    dev.pier_ok(&[
        "pipeline",
        "create",
        "hooked",
        "--repo",
        repo.path().to_str().unwrap(),
        "--poll",
        "off",
        "--webhook-secret",
        "s3cret",
    ]);
    let run1 = dev.wait_run("hooked", 1, Duration::from_secs(180)).await;
    assert_eq!(run1["status"]["state"], "succeeded", "{run1}");

    repo.write("www/index.html", "v2\n");
    let c2 = repo.commit("v2 by webhook");
    let body = format!(
        r#"{{"ref":"refs/heads/main","before":"{}","after":"{c2}","repository":{{"full_name":"me/hooked"}},"head_commit":{{"id":"{c2}","message":"v2 by webhook"}}}}"#,
        "0".repeat(40)
    );

    // Wrong signature, missing signature: 401, no run.
    let wrong = format!("sha256={}", hmac_sha256_hex("not-the-secret", &body));
    let (status, text) = post_hook(&dev, "hooked", &body, Some(&wrong)).await;
    assert_eq!(status, 401, "{text}");
    assert!(text.contains("signature"), "{text}");
    let (status, _) = post_hook(&dev, "hooked", &body, None).await;
    assert_eq!(status, 401);
    // Polling is off, so nothing else could have queued one.
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(dev.runs("hooked").len(), 1);

    // The right signature: a run for the pushed commit, which gets deployed.
    let right = format!("sha256={}", hmac_sha256_hex("s3cret", &body));
    let (status, text) = post_hook(&dev, "hooked", &body, Some(&right)).await;
    assert_eq!(status, 202, "{text}");
    let answer = json_of(&text);
    assert_eq!(answer["run"]["number"], 2);
    assert_eq!(answer["run"]["trigger"], "webhook");
    assert_eq!(answer["run"]["commit"], c2.as_str());
    // A redelivery of the same push queues nothing new.
    let (status, text) = post_hook(&dev, "hooked", &body, Some(&right)).await;
    assert_eq!(status, 200, "{text}");
    assert!(json_of(&text)["ignored"].is_string());
    let run2 = dev.wait_run("hooked", 2, Duration::from_secs(120)).await;
    assert_eq!(run2["status"]["state"], "succeeded", "{run2}");
    dev.wait_served("hooked", "v2\n", Duration::from_secs(30))
        .await;

    // A push to another branch is acknowledged without a run.
    let other = body.replace("refs/heads/main", "refs/heads/feature");
    let sig = format!("sha256={}", hmac_sha256_hex("s3cret", &other));
    let (status, text) = post_hook(&dev, "hooked", &other, Some(&sig)).await;
    assert_eq!(status, 200, "{text}");
    assert_eq!(dev.runs("hooked").len(), 2);

    // A pipeline without a secret refuses webhooks.
    let plain = busybox_site_repo("plain", "p\n");
    dev.pier_ok(&[
        "pipeline",
        "create",
        "plain",
        "--repo",
        plain.path().to_str().unwrap(),
        "--poll",
        "off",
    ]);
    let (status, _) = post_hook(&dev, "plain", &body, Some(&right)).await;
    assert_eq!(status, 403);
    let (status, _) = post_hook(&dev, "nope", &body, Some(&right)).await;
    assert_eq!(status, 404);

    // A manual run of an older commit, followed to its end by the CLI.
    let first = run1["commit"].as_str().unwrap().to_string();
    let out = dev.pier(&[
        "pipeline",
        "run",
        "hooked",
        "--commit",
        &first[..10],
        "--follow",
    ]);
    assert!(
        out.status.success(),
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    dev.wait_served("hooked", "v1\n", Duration::from_secs(30))
        .await;
    let runs = dev.runs("hooked");
    assert_eq!(runs[0]["trigger"], "manual");
    assert_eq!(runs[0]["commit"], first.as_str());
}
