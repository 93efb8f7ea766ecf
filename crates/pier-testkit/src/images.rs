//! Test images for the orchestrator: `FROM scratch` + the host's static busybox running
//! `busybox httpd`, in variants that behave well or badly. The guards that remove what
//! tests create live in [`crate::docker`].

use std::process::Command;

use crate::docker::{docker_available, static_busybox};

/// How a test image behaves.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum HttpdVariant {
    /// Serves `/healthz` and `/` (whose body is the tag) on port 8080.
    Healthy,
    /// Serves `/` but answers 404 on `/healthz`: its health check never passes.
    NoHealthz,
    /// Healthy, and prints `tick N at EPOCH-SECONDS` every second (a log that keeps growing).
    Ticking,
    /// Healthy for about `seconds`, then exits with status 1.
    CrashAfter { seconds: u32 },
}

/// Builds `tag` (e.g. "pier-test/hello:v1") as a FROM-scratch busybox httpd image.
pub fn build_httpd_image(tag: &str, variant: HttpdVariant) {
    docker_available();
    let dir = tempfile::tempdir().expect("temp dir for the image build context");
    std::fs::copy(static_busybox(), dir.path().join("busybox"))
        .expect("copy busybox into the build context");
    let www = dir.path().join("www");
    std::fs::create_dir_all(&www).expect("create www");
    std::fs::write(www.join("index.html"), format!("{tag}\n")).expect("write index.html");
    if variant != HttpdVariant::NoHealthz {
        std::fs::write(www.join("healthz"), "ok\n").expect("write healthz");
    }
    // `/cgi-bin/whoami` answers the container's host name, so a test can tell
    // which replica served a request.
    let cgi = www.join("cgi-bin");
    std::fs::create_dir_all(&cgi).expect("create cgi-bin");
    std::fs::write(
        cgi.join("whoami"),
        "#!/bin/busybox sh\necho 'Content-Type: text/plain'\necho\n/bin/busybox hostname\n",
    )
    .expect("write whoami");
    {
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(cgi.join("whoami"), std::fs::Permissions::from_mode(0o755))
            .expect("make whoami executable");
    }
    let cmd = match variant {
        HttpdVariant::Healthy | HttpdVariant::NoHealthz => {
            r#"["/bin/busybox", "httpd", "-f", "-p", "8080", "-h", "/www"]"#.to_string()
        }
        HttpdVariant::Ticking => r#"["/bin/busybox", "sh", "-c", "/bin/busybox httpd -p 8080 -h /www; i=0; while true; do i=$((i+1)); echo \"tick $i at $(/bin/busybox date +%s)\"; /bin/busybox sleep 1; done"]"#.to_string(),
        HttpdVariant::CrashAfter { seconds } => format!(
            r#"["/bin/busybox", "sh", "-c", "/bin/busybox httpd -p 8080 -h /www; /bin/busybox sleep {seconds}; echo crashing after {seconds}s; exit 1"]"#
        ),
    };
    let dockerfile = format!(
        "FROM scratch\nCOPY busybox /bin/busybox\nCOPY www /www\nLABEL pier.test=1\nCMD {cmd}\n"
    );
    std::fs::write(dir.path().join("Dockerfile"), dockerfile).expect("write Dockerfile");
    let out = Command::new("docker")
        .args(["build", "-q", "-t", tag, "."])
        .current_dir(dir.path())
        .env("DOCKER_BUILDKIT", "0")
        .output()
        .expect("run docker build");
    assert!(
        out.status.success(),
        "docker build {tag} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}
