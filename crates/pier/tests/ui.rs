//! The web console at `/ui/`: every page answers with its Content-Security-Policy, user data
//! is shown as text, POSTs need a same-origin request, a secure cluster asks for a token and a
//! read token's actions are refused on the page; and, in a real browser (Debian's chromium
//! driven through chromedriver), the overview shows a deployed service and the deployment page
//! follows a rollout to "succeeded" without a reload. Screenshots of every page are saved in
//! `$CARGO_TARGET_TMPDIR/ui-screenshots/`.

mod orchestrator_common;
mod pipeline_common;
mod security_common;

use std::time::{Duration, Instant};

use pier_testkit::dev::DevProcess;
use pier_testkit::docker::RunGuard;
use pier_testkit::git::{busybox_service_file, busybox_site_repo, TestRepo};
use reqwest::redirect::Policy;
use serde_json::json;

const CSP: &str = "default-src 'self'";
const SCRIPT: &str = "<script>alert(1)</script>";
const ESCAPED: &str = "&lt;script&gt;alert(1)&lt;/script&gt;";

fn client() -> reqwest::Client {
    reqwest::Client::builder()
        .redirect(Policy::none())
        .timeout(Duration::from_secs(20))
        .build()
        .unwrap()
}

/// GET `url`: status, CSP header and body.
async fn page(c: &reqwest::Client, url: &str, cookie: Option<&str>) -> (u16, String, String) {
    let mut req = c.get(url);
    if let Some(ck) = cookie {
        req = req.header("cookie", ck);
    }
    let resp = req
        .send()
        .await
        .unwrap_or_else(|e| panic!("GET {url}: {e}"));
    let status = resp.status().as_u16();
    let csp = resp
        .headers()
        .get("content-security-policy")
        .and_then(|v| v.to_str().ok())
        .unwrap_or("")
        .to_string();
    (status, csp, resp.text().await.unwrap())
}

/// `application/x-www-form-urlencoded`, as a browser encodes a form.
fn form_body(form: &[(&str, &str)]) -> String {
    let enc = |v: &str| {
        v.bytes()
            .map(|b| match b {
                b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' => {
                    (b as char).to_string()
                }
                _ => format!("%{b:02X}"),
            })
            .collect::<String>()
    };
    form.iter()
        .map(|(k, v)| format!("{}={}", enc(k), enc(v)))
        .collect::<Vec<_>>()
        .join("&")
}

/// A form POST as a browser on `origin` sends it.
async fn post_form(
    c: &reqwest::Client,
    url: &str,
    origin: Option<&str>,
    cookie: Option<&str>,
    form: &[(&str, &str)],
) -> reqwest::Response {
    let mut req = c
        .post(url)
        .header("content-type", "application/x-www-form-urlencoded")
        .body(form_body(form));
    if let Some(o) = origin {
        req = req.header("origin", o);
    }
    if let Some(ck) = cookie {
        req = req.header("cookie", ck);
    }
    req.send()
        .await
        .unwrap_or_else(|e| panic!("POST {url}: {e}"))
}

async fn wait_run_ended(c: &reqwest::Client, base: &str, pipeline: &str) {
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let run: serde_json::Value = c
            .get(format!("{base}/api/v1/pipelines/{pipeline}/runs/1"))
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap_or_default();
        let state = run["status"]["state"].as_str().unwrap_or("");
        if ["failed", "succeeded", "rolled_back", "interrupted"].contains(&state) {
            return;
        }
        assert!(Instant::now() < deadline, "run 1 never ended: {run}");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn every_page_has_its_csp_and_shows_user_data_as_text() {
    let dir = tempfile::tempdir().unwrap();
    let guard = RunGuard::new_run();
    let dev = DevProcess::start(
        orchestrator_common::BIN,
        dir.path(),
        &guard,
        &["--no-agent"],
    )
    .await;
    let base = format!("http://127.0.0.1:{}", dev.http_port);
    let c = client();

    // A KV key and value, a Consul service and a pipeline log line, each with a script tag.
    let key = "ui/%3Cscript%3Ealert(1)%3C%2Fscript%3E";
    let put = c
        .put(format!("{base}/api/v1/kv/{key}"))
        .body(SCRIPT)
        .send()
        .await
        .unwrap();
    assert!(put.status().is_success(), "{}", put.status());
    let reg = c
        .put(format!("{base}/v1/agent/service/register"))
        .json(
            &json!({"Name": "web", "Tags": ["<script>alert(1)"], "Port": 8080,
            "Check": {"TTL": "30s", "Notes": SCRIPT}}),
        )
        .send()
        .await
        .unwrap();
    assert!(reg.status().is_success(), "{}", reg.text().await.unwrap());
    // A build that fails at once (nothing to run in an empty image), after the run has logged
    // the commit message.
    let repo = TestRepo::new();
    repo.write("Dockerfile", "FROM scratch\nRUN /bin/false\n");
    repo.write("pier.toml", busybox_service_file("esc", "/"));
    repo.commit(SCRIPT);
    let created = c
        .post(format!("{base}/api/v1/pipelines"))
        .json(&json!({"name": "esc", "repo": repo.path().display().to_string()}))
        .send()
        .await
        .unwrap();
    assert!(
        created.status().is_success(),
        "{}",
        created.text().await.unwrap()
    );
    wait_run_ended(&c, &base, "esc").await;

    for path in [
        "/ui/",
        "/ui/services",
        "/ui/nodes",
        "/ui/pipelines",
        "/ui/pipelines/esc",
        "/ui/pipelines/esc/runs/1",
        "/ui/catalog",
        "/ui/registry",
        "/ui/kv",
        "/ui/kv?prefix=ui/",
        "/ui/login",
    ] {
        let (status, csp, body) = page(&c, &format!("{base}{path}"), None).await;
        assert_eq!(status, 200, "{path}: {body}");
        assert_eq!(csp, CSP, "{path}");
        assert!(body.starts_with("<!DOCTYPE html>"), "{path}");
        assert!(
            !body.contains("<script>alert"),
            "{path} shows a script tag as markup: {body}"
        );
    }
    for static_file in ["/ui/static/style.css", "/ui/static/live.js"] {
        let (status, csp, _) = page(&c, &format!("{base}{static_file}"), None).await;
        assert_eq!((status, csp.as_str()), (200, CSP), "{static_file}");
    }
    let (_, _, kv) = page(&c, &format!("{base}/ui/kv?prefix=ui/"), None).await;
    assert_eq!(
        kv.matches(ESCAPED).count(),
        2,
        "key and value as text: {kv}"
    );
    let (_, _, catalog) = page(&c, &format!("{base}/ui/catalog"), None).await;
    assert!(
        catalog.contains("&lt;script&gt;alert(1)"),
        "tag as text: {catalog}"
    );
    let (_, _, run) = page(&c, &format!("{base}/ui/pipelines/esc/runs/1"), None).await;
    // Once in the run's commit line, once in its log.
    assert!(run.matches(ESCAPED).count() >= 2, "log line as text: {run}");
    // Nothing but the server's own files: no inline script or style anywhere.
    assert!(!run.contains("<style") && !run.contains("style=") && !run.contains("<script>"));

    // A missing thing is the API's 404 and message, on the page.
    let (status, csp, body) = page(&c, &format!("{base}/ui/services/nope"), None).await;
    assert_eq!((status, csp.as_str()), (404, CSP));
    assert!(body.contains("no service named"), "{body}");
    drop(dev);
}

#[tokio::test(flavor = "multi_thread")]
async fn actions_need_a_same_origin_post_and_show_the_api_error() {
    let dir = tempfile::tempdir().unwrap();
    let guard = RunGuard::new_run();
    let dev = DevProcess::start(
        orchestrator_common::BIN,
        dir.path(),
        &guard,
        &["--no-agent"],
    )
    .await;
    let base = format!("http://127.0.0.1:{}", dev.http_port);
    let c = client();
    let form = [("count", "2"), ("confirm", "yes")];
    let url = format!("{base}/ui/services/web/scale");

    let none = post_form(&c, &url, None, None, &form).await;
    assert_eq!(none.status().as_u16(), 403, "no Origin");
    let evil = post_form(&c, &url, Some("http://evil.example"), None, &form).await;
    assert_eq!(evil.status().as_u16(), 403, "another origin");
    let cross = c
        .post(&url)
        .header("sec-fetch-site", "cross-site")
        .header("content-type", "application/x-www-form-urlencoded")
        .body(form_body(&form))
        .send()
        .await
        .unwrap();
    assert_eq!(cross.status().as_u16(), 403, "cross-site fetch");

    // Same origin: the API's own answer (no such service) is shown with its status.
    let same = post_form(&c, &url, Some(&base), None, &form).await;
    assert_eq!(same.status().as_u16(), 404);
    let body = same.text().await.unwrap();
    assert!(body.contains("no service named"), "{body}");
    // Unconfirmed: refused before any call.
    let unconfirmed = post_form(&c, &url, Some(&base), None, &[("count", "2")]).await;
    assert_eq!(unconfirmed.status().as_u16(), 400);
    drop(dev);
}

#[tokio::test(flavor = "multi_thread")]
async fn a_secure_cluster_asks_for_a_token_and_a_read_token_cannot_act() {
    let root = tempfile::tempdir().unwrap();
    let registry_port = pier_testkit::net::free_port().to_string();
    let cluster =
        security_common::SecureCluster::start(root.path(), 1, &["--registry-port", &registry_port])
            .await;
    cluster.wait_voters(1, Duration::from_secs(30)).await;
    let base = cluster.servers[0].base();
    let tls = pier_security::tls::client_config(&[&cluster.ca_pem()], None).unwrap();
    let c = reqwest::Client::builder()
        .tls_backend_preconfigured(tls)
        .redirect(Policy::none())
        .timeout(Duration::from_secs(20))
        .build()
        .unwrap();

    // No token: the login form and no data, on every page.
    for path in [
        "/ui/",
        "/ui/services",
        "/ui/nodes",
        "/ui/kv",
        "/ui/catalog",
        "/ui/registry",
        "/ui/registry?last=app",
        "/ui/registry?repo=app&tag=v1",
        "/ui/services/web",
    ] {
        let (status, csp, body) = page(&c, &format!("{base}{path}"), None).await;
        assert_eq!((status, csp.as_str()), (401, CSP), "{path}");
        assert!(body.contains("name=\"token\""), "{path}: {body}");
        assert!(
            !body.contains("raft state") && !body.contains("s1"),
            "{path}: {body}"
        );
    }
    let bogus = post_form(
        &c,
        &format!("{base}/ui/login"),
        Some(&base),
        None,
        &[("token", "nope")],
    )
    .await;
    assert_eq!(bogus.status().as_u16(), 403);

    let (read, _) = cluster.create_token(&["read"]);
    let login = post_form(
        &c,
        &format!("{base}/ui/login"),
        Some(&base),
        None,
        &[("token", &read)],
    )
    .await;
    assert_eq!(login.status().as_u16(), 303);
    let set = login.headers()["set-cookie"].to_str().unwrap().to_string();
    for attr in ["HttpOnly", "SameSite=Strict", "Secure", "Path=/ui"] {
        assert!(set.contains(attr), "{attr} missing: {set}");
    }
    let cookie = set.split(';').next().unwrap().to_string();

    // The deployment history's endpoint: a token is needed, a read token may read it (no
    // service `web` here, so the handler's 404 shows the auth layer let it through).
    let history = format!("{base}/api/v1/services/web/deployments");
    let anonymous = c.get(&history).send().await.unwrap().status().as_u16();
    assert!([401, 403].contains(&anonymous), "{anonymous}");
    let read_history = c
        .get(&history)
        .bearer_auth(&read)
        .send()
        .await
        .unwrap()
        .status()
        .as_u16();
    assert_eq!(read_history, 404);
    let (status, _, body) = page(&c, &format!("{base}/ui/"), Some(&cookie)).await;
    assert_eq!(status, 200, "{body}");
    assert!(
        body.contains("raft state") && body.contains("leader"),
        "{body}"
    );
    for path in ["/ui/nodes", "/ui/services", "/ui/registry", "/ui/catalog"] {
        let (status, _, body) = page(&c, &format!("{base}{path}"), Some(&cookie)).await;
        assert_eq!(status, 200, "{path}: {body}");
    }
    // The registry's own door refuses the read token a delete; the page says so.
    let resp = post_form(
        &c,
        &format!("{base}/ui/registry/delete"),
        Some(&base),
        Some(&cookie),
        &[("repo", "app"), ("tag", "v1"), ("confirm", "yes")],
    )
    .await;
    assert_eq!(resp.status().as_u16(), 403);

    // The read token's actions: the API's 403, shown on the page.
    for (path, form) in [
        (
            "/ui/services/web/scale",
            vec![("count", "2"), ("confirm", "yes")],
        ),
        ("/ui/services/web/rollback", vec![("confirm", "yes")]),
        ("/ui/nodes/n1/drain", vec![("draining", "true")]),
        ("/ui/pipelines/p/run", vec![]),
    ] {
        let resp = post_form(
            &c,
            &format!("{base}{path}"),
            Some(&base),
            Some(&cookie),
            &form,
        )
        .await;
        assert_eq!(resp.status().as_u16(), 403, "{path}");
        let body = resp.text().await.unwrap();
        assert!(
            body.contains("403") && body.contains("does not allow"),
            "{path}: {body}"
        );
    }
    // The refusals are audited once, under the token, at the API route they hit (the audit
    // sink writes in the background).
    let admin = cluster.client(Some(&cluster.management_token()));
    let deadline = Instant::now() + Duration::from_secs(15);
    let audit = loop {
        let audit = admin
            .get(format!("{base}/api/v1/audit"))
            .send()
            .await
            .unwrap()
            .text()
            .await
            .unwrap();
        if audit.contains("/api/v1/pipelines/p/runs") {
            break audit;
        }
        assert!(Instant::now() < deadline, "refusals never audited: {audit}");
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    assert!(audit.contains("/api/v1/services/web/scale"), "{audit}");
    assert!(!audit.contains("\"/ui/services"), "{audit}");
    // A refused sign-in is recorded.
    assert!(audit.contains("\"/ui/login\""), "{audit}");
}

// ------------------------------------------------------------------ in a real browser

/// chromedriver (Debian's `chromium-driver`) on a free port, in its own process group so the
/// browser it starts dies with it; killed when dropped, also when the test panics.
struct Driver {
    child: std::process::Child,
    port: u16,
    _dir: tempfile::TempDir,
}

impl Driver {
    async fn start() -> Driver {
        use std::os::unix::process::CommandExt;
        let dir = tempfile::tempdir().unwrap();
        let port = pier_testkit::net::free_port();
        let log = std::fs::File::create(dir.path().join("chromedriver.log")).unwrap();
        let child = std::process::Command::new("chromedriver")
            .arg(format!("--port={port}"))
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .process_group(0)
            .spawn()
            .unwrap_or_else(|e| {
                panic!("chromedriver not found ({e}): apt-get install -y chromium chromium-driver (scripts/test does)")
            });
        let d = Driver {
            child,
            port,
            _dir: dir,
        };
        let deadline = Instant::now() + Duration::from_secs(15);
        while reqwest::get(format!("http://127.0.0.1:{port}/status"))
            .await
            .is_err()
        {
            assert!(Instant::now() < deadline, "chromedriver never answered");
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        d
    }

    /// A headless chromium session, 1280 px wide, its profile in the driver's temp dir.
    async fn session(&self) -> fantoccini::Client {
        let mut caps = serde_json::Map::new();
        caps.insert(
            "goog:chromeOptions".into(),
            json!({"args": ["--headless=new", "--no-sandbox", "--disable-gpu",
                "--window-size=1280,900",
                format!("--user-data-dir={}", self._dir.path().join("profile").display())]}),
        );
        fantoccini::ClientBuilder::new(hyper_util::client::legacy::connect::HttpConnector::new())
            .capabilities(caps)
            .connect(&format!("http://127.0.0.1:{}", self.port))
            .await
            .expect("a chromium session through chromedriver")
    }
}

impl Drop for Driver {
    fn drop(&mut self) {
        // The whole group: chromedriver and the chromium processes it started.
        let _ = std::process::Command::new("kill")
            .args(["-KILL", "--", &format!("-{}", self.child.id())])
            .status();
        let _ = self.child.wait();
    }
}

fn shot_dir() -> std::path::PathBuf {
    let d = std::path::Path::new(env!("CARGO_TARGET_TMPDIR")).join("ui-screenshots");
    std::fs::create_dir_all(&d).unwrap();
    d
}

/// A screenshot of the whole page (up to 3,000 px tall) at `width`; the window is a little
/// taller than the page, as its own frame takes some of it.
async fn save_png(b: &fantoccini::Client, name: &str, width: u32) {
    let height = b
        .execute("return document.documentElement.scrollHeight;", vec![])
        .await
        .expect("page height")
        .as_u64()
        .unwrap_or(900)
        .saturating_add(64)
        .clamp(600, 3000);
    b.set_window_size(width, height as u32)
        .await
        .expect("window size");
    let png = b.screenshot().await.expect("screenshot");
    assert!(png.len() > 1000, "{name}: empty screenshot");
    std::fs::write(shot_dir().join(format!("{name}.png")), png).unwrap();
}

/// Screenshots of the open page at 1280 px (`NAME.png`) and on a 390 px phone
/// (`NAME-phone.png`), where the page itself must not be wider than the screen (tables
/// scroll inside their box instead).
async fn shot(b: &fantoccini::Client, name: &str) {
    save_png(b, name, 1280).await;
    b.set_window_size(390, 844).await.expect("phone width");
    let deadline = Instant::now() + Duration::from_secs(5);
    let widths = loop {
        let v = b
            .execute(
                "return [document.documentElement.scrollWidth, window.innerWidth];",
                vec![],
            )
            .await
            .expect("page widths");
        let w: Vec<u64> = v
            .as_array()
            .map(|a| a.iter().filter_map(|x| x.as_u64()).collect())
            .unwrap_or_default();
        // The resize has reached the layout once the viewport is the phone's.
        if w.len() == 2 && w[1] <= 400 || Instant::now() > deadline {
            break w;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    assert!(
        widths.len() == 2 && widths[1] <= 400 && widths[0] <= widths[1],
        "{name}: on a phone the page is [scrollWidth, innerWidth] = {widths:?} px wide"
    );
    save_png(b, &format!("{name}-phone"), 390).await;
    b.set_window_size(1280, 900).await.expect("desktop width");
}

/// The text of the first element matching `css`, once it contains `want` (bounded wait).
async fn wait_text(b: &fantoccini::Client, css: &str, want: &str, timeout: Duration) -> String {
    let deadline = Instant::now() + timeout;
    loop {
        let text = match b.find(fantoccini::Locator::Css(css)).await {
            Ok(el) => el.text().await.unwrap_or_default(),
            Err(_) => String::new(),
        };
        if text.contains(want) {
            return text;
        }
        assert!(
            Instant::now() < deadline,
            "{css} never showed {want:?}; it shows {text:?}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

async fn status_attr(b: &fantoccini::Client) -> String {
    // live.js replaces the element as fragments arrive: a lookup may meet a stale one.
    for _ in 0..50 {
        if let Ok(el) = b.find(fantoccini::Locator::Css("#dep-status")).await {
            if let Ok(Some(v)) = el.attr("data-status").await {
                return v;
            }
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    String::new()
}

async fn click(b: &fantoccini::Client, css: &str) {
    b.find(fantoccini::Locator::Css(css))
        .await
        .unwrap_or_else(|e| panic!("{css}: {e}"))
        .click()
        .await
        .unwrap_or_else(|e| panic!("click {css}: {e}"));
}

/// Waits (bounded) for the deployment page in the browser to show `want`.
async fn wait_status(b: &fantoccini::Client, want: &str) {
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let now = status_attr(b).await;
        if now == want {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "the page shows {now:?}, never {want:?}: {}",
            b.source().await.unwrap_or_default()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// The service page's deployment history after the rollout test: all five, newest first, each
/// linking to its live page (`failed`, rolled back with its reason, then its automatic
/// rollback); shot with the rest of the service page.
async fn deployment_history_in_the_browser(
    b: &fantoccini::Client,
    c: &orchestrator_common::Cluster,
    failed: &str,
) {
    use orchestrator_common::eventually;
    let (base, id) = (c.addr(), failed);
    eventually(
        "the automatic rollback ended",
        Duration::from_secs(60),
        || async {
            let list = c.get("/api/v1/services/hello/deployments").await;
            list[0]["status"] == "succeeded" && list[0]["rollback_of"] == json!(id)
        },
    )
    .await;
    b.goto(&format!("{base}/ui/services/hello")).await.unwrap();
    let history = b
        .find_all(fantoccini::Locator::Css("table.deployments tbody tr"))
        .await
        .unwrap();
    let mut rows = Vec::new();
    for r in &history {
        rows.push(r.text().await.unwrap_or_default());
    }
    assert_eq!(rows.len(), 5, "deployments listed: {rows:#?}");
    assert!(rows[0].contains("succeeded"), "newest first: {rows:#?}");
    assert!(
        rows[1].contains("rolled back") && rows[1].contains("health"),
        "the bad version, rolled back and why: {rows:#?}"
    );
    assert!(rows[4].contains("succeeded"), "{rows:#?}");
    click(
        b,
        &format!("table.deployments a[href='/ui/deployments/{id}']"),
    )
    .await;
    wait_status(b, "rolled_back").await;
    b.goto(&format!("{base}/ui/services/hello")).await.unwrap();
    wait_text(
        b,
        "table.deployments",
        "rolled back",
        Duration::from_secs(5),
    )
    .await;
    shot(b, "service").await;
}

/// `pier deploy --detach FILE`: the deployment id it prints.
fn detached_deploy(c: &orchestrator_common::Cluster, file: &str) -> String {
    let out = c.pier(&["deploy", "--detach", file]);
    let text = orchestrator_common::stdout(&out);
    assert!(
        out.status.success(),
        "{}",
        orchestrator_common::stderr(&out)
    );
    text.lines()
        .find_map(|l| l.strip_prefix("deployment "))
        .unwrap_or_else(|| panic!("no deployment id in {text:?}"))
        .trim()
        .to_string()
}

#[tokio::test(flavor = "multi_thread")]
async fn in_a_browser_the_deployment_page_follows_a_rollout_live() {
    use orchestrator_common::*;
    let started = Instant::now();
    let mut c = Cluster::start(true, &[]).await;
    let v1 = c.push_image("ui-hello:v1", pier_testkit::images::HttpdVariant::Healthy);
    let v2 = c.push_image("ui-hello:v2", pier_testkit::images::HttpdVariant::Healthy);
    let bad = c.push_image(
        "ui-hello:bad",
        pier_testkit::images::HttpdVariant::NoHealthz,
    );
    let file = c.write_file("hello.toml", &service_file("hello", &v1, 2, ""));
    let out = c.pier(&["deploy", &file]);
    assert!(out.status.success(), "{}\n{}", stderr(&out), c.log("dev"));
    let put = client()
        .put(format!("{}/api/v1/kv/app/greeting", c.addr()))
        .body("hello")
        .send()
        .await
        .unwrap();
    assert!(put.status().is_success());

    let driver = Driver::start().await;
    let b = driver.session().await;
    let base = c.addr();
    b.goto(&format!("{base}/ui/")).await.unwrap();
    wait_text(&b, "main", "hello", Duration::from_secs(10)).await;
    wait_text(&b, "main", "2 / 2", Duration::from_secs(10)).await;
    shot(&b, "overview").await;
    for (name, path, want) in [
        ("services", "/ui/services", "ui-hello:v1"),
        ("nodes", "/ui/nodes", "local"),
        ("pipelines", "/ui/pipelines", "No pipeline"),
        ("catalog", "/ui/catalog", "hello"),
        ("kv", "/ui/kv", "app/greeting"),
    ] {
        b.goto(&format!("{base}{path}")).await.unwrap();
        wait_text(&b, "main", want, Duration::from_secs(10)).await;
        shot(&b, name).await;
    }

    // A new version from the CLI; the page opened once follows it to the end.
    let file2 = c.write_file("hello2.toml", &service_file("hello", &v2, 2, ""));
    let id = detached_deploy(&c, &file2);
    b.goto(&format!("{base}/ui/deployments/{id}"))
        .await
        .unwrap();
    let first = status_attr(&b).await;
    assert_eq!(
        first, "in_progress",
        "the rollout ended before the page opened"
    );
    b.execute("window.pierMarker = 'same page'; return 1;", vec![])
        .await
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(60);
    let mut seen_healthy_task = false;
    while status_attr(&b).await != "succeeded" {
        assert!(
            Instant::now() < deadline,
            "the page never showed succeeded: {}",
            b.source().await.unwrap_or_default()
        );
        if let Ok(el) = b.find(fantoccini::Locator::Css("table.tasks")).await {
            seen_healthy_task |= el.text().await.unwrap_or_default().contains("healthy");
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let marker = b
        .execute("return window.pierMarker || null;", vec![])
        .await
        .unwrap();
    assert_eq!(marker, json!("same page"), "the page was reloaded");
    wait_text(&b, "#live", "2/2 healthy", Duration::from_secs(5)).await;
    assert!(
        seen_healthy_task
            || wait_text(&b, "table.tasks", "healthy", Duration::from_secs(5))
                .await
                .contains("healthy")
    );
    shot(&b, "deployment").await;

    // The registry page: the digest that runs, with the service running it.
    let detail = c.get("/api/v1/services/hello").await;
    let pinned = detail["spec"]["pinned_image"]
        .as_str()
        .unwrap_or("")
        .to_string();
    let (_, digest) = pinned.split_once('@').expect("a pinned digest");
    b.goto(&format!("{base}/ui/registry")).await.unwrap();
    let text = wait_text(&b, "main", digest, Duration::from_secs(10)).await;
    let row = text.lines().find(|l| l.contains(digest)).unwrap_or("");
    assert!(
        row.contains("v2") && row.contains("hello"),
        "{row:?} in {text}"
    );
    shot(&b, "registry").await;

    // Scale from the service page (confirmed): a deployment to 3 healthy tasks.
    b.goto(&format!("{base}/ui/services/hello")).await.unwrap();
    let count = b.find(fantoccini::Locator::Css("#count")).await.unwrap();
    count.clear().await.unwrap();
    count.send_keys("3").await.unwrap();
    click(&b, "form[action$='/scale'] input[name=confirm]").await;
    click(&b, "#scale").await;
    // A scale without a new revision starts no deployment: back on the service page.
    wait_text(&b, "dl.facts", "desired\n3", Duration::from_secs(10)).await;
    eventually("3 healthy tasks", Duration::from_secs(30), || async {
        c.count_state("hello", "healthy").await == 3
    })
    .await;
    b.refresh().await.unwrap();
    let tasks = wait_text(&b, "table.tasks", "healthy", Duration::from_secs(5)).await;
    assert_eq!(tasks.matches("healthy").count(), 3, "{tasks}");

    // Roll back to revision 1 (v1) from the service page.
    b.goto(&format!("{base}/ui/services/hello")).await.unwrap();
    click(&b, "form[action$='/rollback'] input[name=confirm]").await;
    click(&b, "#rollback").await;
    wait_status(&b, "succeeded").await;
    let detail = c.get("/api/v1/services/hello").await;
    assert_eq!(detail["spec"]["image"], json!(v1), "{detail}");
    shot(&b, "rollback").await;

    // Delete the tag v2, which nothing runs any more.
    b.goto(&format!("{base}/ui/registry")).await.unwrap();
    wait_text(&b, "main", "v2", Duration::from_secs(10)).await;
    let forms = b
        .find_all(fantoccini::Locator::Css(
            "form[action='/ui/registry/delete']",
        ))
        .await
        .unwrap();
    let mut deleted = false;
    for f in forms {
        let tag = f
            .find(fantoccini::Locator::Css("input[name=tag]"))
            .await
            .unwrap();
        if tag.attr("value").await.unwrap().as_deref() == Some("v2") {
            f.find(fantoccini::Locator::Css("input[name=confirm]"))
                .await
                .unwrap()
                .click()
                .await
                .unwrap();
            f.find(fantoccini::Locator::Css("button"))
                .await
                .unwrap()
                .click()
                .await
                .unwrap();
            deleted = true;
            break;
        }
    }
    assert!(deleted, "no delete form for v2");
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let tags: serde_json::Value = reqwest::get(format!(
            "http://127.0.0.1:{}/v2/ui-hello/tags/list",
            c.registry_port
        ))
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
        let list = tags["tags"].as_array().cloned().unwrap_or_default();
        if !list.contains(&json!("v2")) && list.contains(&json!("v1")) {
            break;
        }
        assert!(Instant::now() < deadline, "v2 still listed: {tags}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }

    // A version whose health check never passes: the page shows it rolled back, and why.
    let file3 = c.write_file("bad.toml", &service_file("hello", &bad, 3, ""));
    let id = detached_deploy(&c, &file3);
    b.goto(&format!("{base}/ui/deployments/{id}"))
        .await
        .unwrap();
    wait_status(&b, "rolled_back").await;
    let reason = wait_text(&b, "#dep-reason", "health", Duration::from_secs(5)).await;
    assert!(!reason.is_empty());
    shot(&b, "deployment-rolled-back").await;

    deployment_history_in_the_browser(&b, &c, &id).await;
    b.goto(&format!("{base}/ui/services/hello/diff?from=1&to=2"))
        .await
        .unwrap();
    wait_text(&b, "main", "ui-hello:v2", Duration::from_secs(10)).await;
    shot(&b, "diff").await;
    b.goto(&format!("{base}/ui/login")).await.unwrap();
    wait_text(&b, "main", "token", Duration::from_secs(10)).await;
    shot(&b, "login").await;
    b.close().await.unwrap();
    eprintln!("browser test took {:.1}s", started.elapsed().as_secs_f64());
}

#[tokio::test(flavor = "multi_thread")]
async fn in_a_browser_a_pipeline_run_log_arrives_live() {
    let dev = pipeline_common::Dev::start(&[]).await;
    let repo = busybox_site_repo("site", "v1\n");
    let driver = Driver::start().await;
    let b = driver.session().await;
    let base = dev.addr();
    // Creating the pipeline queues run 1 at once; the page is opened while it goes on.
    dev.pier_ok(&[
        "pipeline",
        "create",
        "site",
        "--repo",
        repo.path().to_str().unwrap(),
        "--json",
    ]);
    b.goto(&format!("{base}/ui/pipelines/site/runs/1"))
        .await
        .unwrap();
    let live = b
        .find(fantoccini::Locator::Css("#log"))
        .await
        .unwrap()
        .attr("data-live")
        .await
        .unwrap();
    assert!(live.is_some(), "run 1 had ended before its page opened");
    b.execute("window.pierMarker = 'same page'; return 1;", vec![])
        .await
        .unwrap();
    let log = wait_text(&b, "#log", "==> succeeded", Duration::from_secs(120)).await;
    assert!(log.contains("checkout") && log.contains("image"), "{log}");
    let marker = b
        .execute("return window.pierMarker || null;", vec![])
        .await
        .unwrap();
    assert_eq!(marker, json!("same page"), "the page was reloaded");
    // Once the log has ended, the stages and outcome are refreshed in place.
    wait_text(&b, "#outcome", "succeeded", Duration::from_secs(10)).await;
    shot(&b, "pipeline-run").await;
    b.goto(&format!("{base}/ui/pipelines/site")).await.unwrap();
    wait_text(&b, "main", "succeeded", Duration::from_secs(10)).await;
    shot(&b, "pipeline").await;
    // "Run now": a manual run 2 of the branch head, listed on the page it returns to.
    click(&b, "#run-now").await;
    let runs = wait_text(&b, "main", "#2", Duration::from_secs(10)).await;
    assert!(runs.contains("manual"), "{runs}");
    b.close().await.unwrap();
}

/// `POST /api/v1/services` of a service file: the deployment id it answers. The controller
/// may write the service between two deploys: the API then answers 409 "deploy again", as it
/// says.
async fn deploy_through_api(c: &reqwest::Client, base: &str, file: &str) -> String {
    let mut resp = serde_json::Value::Null;
    for _ in 0..50 {
        resp = c
            .post(format!("{base}/api/v1/services"))
            .json(&json!({ "file": file }))
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        if resp["error"]["code"] != "conflict" {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    resp["deployment"]
        .as_str()
        .unwrap_or_else(|| panic!("{resp}"))
        .to_string()
}

#[tokio::test(flavor = "multi_thread")]
async fn service_deployment_and_revision_diff_pages_render() {
    let dir = tempfile::tempdir().unwrap();
    let guard = RunGuard::new_run();
    let dev = DevProcess::start(
        orchestrator_common::BIN,
        dir.path(),
        &guard,
        &["--no-agent"],
    )
    .await;
    let base = format!("http://127.0.0.1:{}", dev.http_port);
    let c = client();
    // No node: nothing runs, but revisions and deployments exist (an image outside pier's
    // registry is not resolved, so nothing is pulled either).
    let mut deployment = String::new();
    for (image, env) in [
        ("example.invalid/app:1", "A = \"1\""),
        ("example.invalid/app:2", "B = \"2\""),
    ] {
        let file = format!("name = \"web\"\nimage = \"{image}\"\ncount = 2\n\n[env]\n{env}\n");
        deployment = deploy_through_api(&c, &base, &file).await;
    }
    for path in [
        "/ui/services/web".to_string(),
        format!("/ui/deployments/{deployment}"),
        "/ui/services/web/diff?from=1&to=2".to_string(),
    ] {
        let (status, csp, body) = page(&c, &format!("{base}{path}"), None).await;
        assert_eq!((status, csp.as_str()), (200, CSP), "{path}: {body}");
    }
    let (_, _, diff) = page(
        &c,
        &format!("{base}/ui/services/web/diff?from=1&to=2"),
        None,
    )
    .await;
    for want in [
        "env.A",
        "env.B",
        "example.invalid/app:1",
        "example.invalid/app:2",
    ] {
        assert!(diff.contains(want), "{want} missing: {diff}");
    }
    assert!(
        !diff.contains("count"),
        "an unchanged setting is listed: {diff}"
    );
    let (_, _, dep) = page(&c, &format!("{base}/ui/deployments/{deployment}"), None).await;
    assert!(
        dep.contains("data-status=\"in_progress\"") && dep.contains("breaker threshold"),
        "{dep}"
    );
    let (status, _, body) = page(
        &c,
        &format!("{base}/ui/services/web/diff?from=1&to=9"),
        None,
    )
    .await;
    assert_eq!(status, 404);
    assert!(body.contains("has no revision 9"), "{body}");
    drop(dev);
}

/// Seconds since the epoch, as the test containers' `date +%s` prints them.
fn epoch_secs() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs()
}

/// Whether `log` (the merged tail, `TASK | tick N at SECS` lines) has a line of `task`
/// printed at `since` or later.
fn has_tick_since(log: &str, task: &str, since: u64) -> bool {
    log.lines().any(|l| {
        l.strip_prefix(task)
            .and_then(|rest| rest.strip_prefix(" | tick "))
            .and_then(|rest| rest.rsplit_once(" at "))
            .and_then(|(_, secs)| secs.trim().parse::<u64>().ok())
            .is_some_and(|at| at >= since)
    })
}

/// The service page's log once it shows lines of every one of `tasks` printed at `since`
/// or later (bounded wait; the panic says whether the stream ended or stalled).
async fn wait_tick_lines(b: &fantoccini::Client, tasks: &[String], since: u64) -> String {
    // Generous: a loaded Docker daemon can be seconds late copying a container's output.
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let log = match b.find(fantoccini::Locator::Css("#log")).await {
            Ok(el) => el.text().await.unwrap_or_default(),
            Err(_) => String::new(),
        };
        if tasks.iter().all(|t| has_tick_since(&log, t, since)) {
            return log;
        }
        if Instant::now() >= deadline {
            // Whether the stream ended (live.js marks it) or stalled.
            let ended = b
                .execute("var l = document.querySelector('#log'); return l && l.getAttribute('data-ended');", vec![])
                .await
                .unwrap_or_default();
            eprintln!("the log stream ended: {ended}");
        }
        assert!(
            Instant::now() < deadline,
            "not every instance's lines since {since} arrived on the open page (instances {tasks:?}): {log}"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn in_a_browser_the_service_log_merges_every_instance_live() {
    use orchestrator_common::*;
    let mut c = Cluster::start(true, &[]).await;
    let image = c.push_image("ui-ticker:v1", pier_testkit::images::HttpdVariant::Ticking);
    let file = c.write_file("ticker.toml", &service_file("ticker", &image, 3, ""));
    let out = c.pier(&["deploy", &file]);
    assert!(out.status.success(), "{}\n{}", stderr(&out), c.log("dev"));
    let tasks: Vec<String> = c
        .tasks("ticker")
        .await
        .iter()
        .filter(|t| t["display_state"] == "healthy")
        .filter_map(|t| t["task"]["id"].as_str().map(str::to_string))
        .collect();
    assert_eq!(tasks.len(), 3, "three healthy instances: {tasks:?}");

    let driver = Driver::start().await;
    let b = driver.session().await;
    b.goto(&format!("{}/ui/services/ticker", c.addr()))
        .await
        .unwrap();
    // Lines printed from now on can only reach the page through its live stream.
    let opened = epoch_secs() + 1;
    b.execute("window.pierMarker = 'same page'; return 1;", vec![])
        .await
        .unwrap();
    let log = wait_tick_lines(&b, &tasks, opened).await;
    let marker = b
        .execute("return window.pierMarker || null;", vec![])
        .await
        .unwrap();
    assert_eq!(marker, json!("same page"), "the page was reloaded");
    // Merged: the instances' lines interleave in one tail, not one instance after another.
    let owners: Vec<&str> = log
        .lines()
        .filter_map(|l| l.split_once(" | tick ").map(|(t, _)| t))
        .collect();
    let switches = owners.windows(2).filter(|w| w[0] != w[1]).count();
    assert!(
        switches >= 3,
        "the instances' lines do not interleave: {log}"
    );

    // An instance started while the page is open joins its tail.
    let scaled = client()
        .put(format!("{}/api/v1/services/ticker/scale", c.addr()))
        .json(&json!({"count": 4}))
        .send()
        .await
        .unwrap();
    assert!(
        scaled.status().is_success(),
        "{}",
        scaled.text().await.unwrap()
    );
    let deadline = Instant::now() + Duration::from_secs(30);
    let added = loop {
        let new_task = c
            .tasks("ticker")
            .await
            .iter()
            .filter_map(|t| t["task"]["id"].as_str().map(str::to_string))
            .find(|id| !tasks.contains(id));
        if let Some(id) = new_task {
            break id;
        }
        assert!(Instant::now() < deadline, "no fourth instance was placed");
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    let since = epoch_secs();
    let log = wait_tick_lines(&b, std::slice::from_ref(&added), since).await;
    let marker = b
        .execute("return window.pierMarker || null;", vec![])
        .await
        .unwrap();
    assert_eq!(marker, json!("same page"), "the page was reloaded");
    assert!(
        tasks.iter().all(|t| has_tick_since(&log, t, since)),
        "the first three stopped arriving: {log}"
    );
    shot(&b, "service-log").await;
    b.close().await.unwrap();
}

#[tokio::test(flavor = "multi_thread")]
async fn the_service_page_lists_its_deployments_newest_first() {
    let dir = tempfile::tempdir().unwrap();
    let guard = RunGuard::new_run();
    let dev = DevProcess::start(
        orchestrator_common::BIN,
        dir.path(),
        &guard,
        &["--no-agent"],
    )
    .await;
    let base = format!("http://127.0.0.1:{}", dev.http_port);
    let c = client();
    // Three revisions, so three deployments (no node: they stay in progress or are superseded).
    let mut ids = Vec::new();
    for n in 1..=3 {
        let file = format!("name = \"web\"\nimage = \"example.invalid/app:{n}\"\ncount = 1\n");
        ids.push(deploy_through_api(&c, &base, &file).await);
        // Distinct start times, so "newest first" is the order they were made in.
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    // The API: newest first, bounded by `limit`.
    let list: Vec<serde_json::Value> = c
        .get(format!("{base}/api/v1/services/web/deployments"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let listed: Vec<&str> = list.iter().filter_map(|d| d["id"].as_str()).collect();
    let newest_first: Vec<&str> = ids.iter().rev().map(String::as_str).collect();
    assert_eq!(listed, newest_first);
    let one = c
        .get(format!("{base}/api/v1/services/web/deployments?limit=1"))
        .send()
        .await
        .unwrap()
        .json::<Vec<serde_json::Value>>()
        .await
        .unwrap();
    assert_eq!(one.len(), 1);
    assert_eq!(one[0]["id"], json!(ids[2]));
    for bad in ["0", "x", "101"] {
        let resp = c
            .get(format!(
                "{base}/api/v1/services/web/deployments?limit={bad}"
            ))
            .send()
            .await
            .unwrap();
        assert_eq!(resp.status().as_u16(), 400, "limit={bad}");
    }
    let missing = c
        .get(format!("{base}/api/v1/services/nope/deployments"))
        .send()
        .await
        .unwrap();
    assert_eq!(missing.status().as_u16(), 404);

    // The page: one row per deployment, newest first, revision and outcome, linking to the
    // deployment's live page.
    let (status, csp, body) = page(&c, &format!("{base}/ui/services/web"), None).await;
    assert_eq!((status, csp.as_str()), (200, CSP), "{body}");
    let table = body
        .split_once("<table class=\"deployments\">")
        .and_then(|(_, rest)| rest.split_once("</table>"))
        .map(|(t, _)| t.to_string())
        .unwrap_or_else(|| panic!("no deployment history on the page: {body}"));
    let rows: Vec<&str> = table.split("<tr data-deployment=").skip(1).collect();
    assert_eq!(rows.len(), 3, "{table}");
    for (row, (id, revision)) in rows.iter().zip([(&ids[2], 3), (&ids[1], 2), (&ids[0], 1)]) {
        assert!(
            row.contains(&format!("href=\"/ui/deployments/{id}\"")),
            "{id} not linked in {row}"
        );
        assert!(
            row.contains(&format!("<td>{revision}")),
            "revision {revision} missing in {row}"
        );
        assert!(row.contains("class=\"badge "), "no outcome in {row}");
    }
    drop(dev);
}

/// Pushes a one-blob manifest as `repo:tag` to the registry at `registry` (host:port).
async fn push_tiny_image(c: &reqwest::Client, registry: &str, repo: &str, tag: &str) {
    use sha2::Digest;
    let config = format!("{{\"repo\":\"{repo}\"}}");
    let config_digest = format!("sha256:{}", hex::encode(sha2::Sha256::digest(&config)));
    let blob = c
        .post(format!(
            "http://{registry}/v2/{repo}/blobs/uploads/?digest={config_digest}"
        ))
        .body(config.clone())
        .send()
        .await
        .unwrap();
    assert_eq!(blob.status().as_u16(), 201, "blob of {repo}");
    let manifest = json!({
        "schemaVersion": 2,
        "mediaType": "application/vnd.oci.image.manifest.v1+json",
        "config": {"mediaType": "application/vnd.oci.image.config.v1+json",
                   "digest": config_digest, "size": config.len()},
        "layers": [],
    });
    let put = c
        .put(format!("http://{registry}/v2/{repo}/manifests/{tag}"))
        .header("content-type", "application/vnd.oci.image.manifest.v1+json")
        .body(manifest.to_string())
        .send()
        .await
        .unwrap();
    assert_eq!(put.status().as_u16(), 201, "manifest of {repo}:{tag}");
}

/// The repositories (section headings) a registry page shows.
fn repos_on(body: &str) -> Vec<String> {
    body.split("<section class=\"repo\"><h2>")
        .skip(1)
        .filter_map(|s| s.split_once("</h2>").map(|(name, _)| name.to_string()))
        .collect()
}

/// The `href` of the link with class `class` on the page, unescaped.
fn link_of(body: &str, class: &str) -> Option<String> {
    let (_, rest) = body.split_once(&format!("<a class=\"{class}\" href=\""))?;
    Some(rest.split_once('"')?.0.replace("&amp;", "&"))
}

#[tokio::test(flavor = "multi_thread")]
async fn the_registry_page_pages_through_many_repositories_and_tags() {
    let dir = tempfile::tempdir().unwrap();
    let guard = RunGuard::new_run();
    let dev = DevProcess::start(
        orchestrator_common::BIN,
        dir.path(),
        &guard,
        &["--no-agent"],
    )
    .await;
    let base = format!("http://127.0.0.1:{}", dev.http_port);
    let registry = format!("127.0.0.1:{}", dev.registry_port);
    let c = client();
    // More repositories than one page holds (20), and one repository with more tags than a
    // page shows (20).
    let mut want: Vec<String> = (0..45).map(|i| format!("paged/r{i:02}")).collect();
    for repo in &want {
        push_tiny_image(&c, &registry, repo, "v1").await;
    }
    for t in 0..23 {
        push_tiny_image(&c, &registry, "paged/r00", &format!("t{t:02}")).await;
    }
    want.sort();

    let mut seen: Vec<String> = Vec::new();
    let mut url = format!("{base}/ui/registry");
    let mut pages = 0;
    loop {
        let started = Instant::now();
        let (status, csp, body) = page(&c, &url, None).await;
        assert_eq!((status, csp.as_str()), (200, CSP), "{url}: {body}");
        eprintln!("{url}: {:?}", started.elapsed());
        let repos = repos_on(&body);
        assert!(
            !repos.is_empty() && repos.len() <= 20,
            "{url} shows {} repositories",
            repos.len()
        );
        seen.extend(repos);
        pages += 1;
        if pages > 1 {
            assert!(
                link_of(&body, "first").is_some(),
                "{url}: no first page link"
            );
        }
        match link_of(&body, "next") {
            Some(next) => url = format!("{base}{next}"),
            None => break,
        }
        assert!(pages < 10, "the pages never end: {seen:?}");
    }
    assert_eq!(pages, 3, "45 repositories at 20 a page");
    assert_eq!(seen, want, "every repository once, in order");

    // The first repository's tags: 20 on its page, the rest behind "More tags".
    let (_, _, first) = page(&c, &format!("{base}/ui/registry"), None).await;
    let more = link_of(&first, "more")
        .filter(|h| h == "/ui/registry?repo=paged%2Fr00&tag=t19")
        .unwrap_or_else(|| panic!("no 'more tags' link for paged/r00 after t19: {first}"));
    let section = first
        .split("<section class=\"repo\"><h2>paged/r00</h2>")
        .nth(1)
        .and_then(|s| s.split("</section>").next())
        .unwrap_or("");
    let tags_here = section.matches("name=\"tag\" value=\"").count();
    assert_eq!(tags_here, 20, "{section}");
    let (status, _, rest) = page(&c, &format!("{base}{more}"), None).await;
    assert_eq!(status, 200, "{rest}");
    assert_eq!(repos_on(&rest), vec!["paged/r00".to_string()]);
    assert!(
        link_of(&rest, "more").is_none(),
        "no more tags after the second page"
    );
    let tags_rest = rest.matches("name=\"tag\" value=\"").count();
    assert_eq!(
        tags_here + tags_rest,
        24,
        "v1 and t00..t22 across the two pages"
    );
    drop(dev);
}
