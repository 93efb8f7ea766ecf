//! Test images for the orchestrator: `FROM scratch` + the host's static busybox running
//! `busybox httpd`, in variants that behave well or badly, and a guard that removes every
//! container of one test run (by its per-run label) when dropped, also on panic.

use std::path::Path;
use std::process::Command;

/// How a test image behaves.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum HttpdVariant {
    /// Serves `/healthz` and `/` (whose body is the tag) on port 8080.
    Healthy,
    /// Serves `/` but answers 404 on `/healthz`: its health check never passes.
    NoHealthz,
    /// Healthy for about `seconds`, then exits with status 1.
    CrashAfter { seconds: u32 },
}

fn static_busybox() -> &'static str {
    for path in ["/bin/busybox", "/usr/bin/busybox"] {
        if Path::new(path).exists() {
            return path;
        }
    }
    panic!("static busybox not found: install Debian's busybox-static (apt-get install busybox-static)");
}

/// Fails loudly when the Docker engine is not usable.
pub fn require_docker() {
    let out = Command::new("docker")
        .args(["version", "--format", "{{.Server.Version}}"])
        .output();
    match out {
        Ok(o) if o.status.success() => {}
        Ok(o) => panic!(
            "Docker engine not usable: {}",
            String::from_utf8_lossy(&o.stderr)
        ),
        Err(e) => panic!("docker CLI not runnable: {e}"),
    }
}

/// Builds `tag` (e.g. "pier-test/hello:v1") as a FROM-scratch busybox httpd image.
pub fn build_httpd_image(tag: &str, variant: HttpdVariant) {
    require_docker();
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

/// Removes every container carrying `label=value` when dropped.
pub struct ContainerGuard {
    pub label: String,
    pub value: String,
}

impl ContainerGuard {
    /// A guard with a fresh per-run label `pier.test.run=<random>`.
    pub fn new_run() -> ContainerGuard {
        let value = format!("{:016x}", rand_u64());
        ContainerGuard {
            label: "pier.test.run".into(),
            value,
        }
    }

    pub fn filter(&self) -> String {
        format!("label={}={}", self.label, self.value)
    }

    /// IDs of the run's containers (`all`: stopped ones too).
    pub fn containers(&self, all: bool) -> Vec<String> {
        let mut args = vec!["ps", "-q", "--no-trunc", "--filter"];
        let filter = self.filter();
        args.push(&filter);
        if all {
            args.push("-a");
        }
        let out = Command::new("docker")
            .args(&args)
            .output()
            .expect("docker ps");
        String::from_utf8_lossy(&out.stdout)
            .lines()
            .map(str::to_string)
            .filter(|l| !l.is_empty())
            .collect()
    }

    pub fn remove_all(&self) {
        let ids = self.containers(true);
        if !ids.is_empty() {
            let _ = Command::new("docker")
                .arg("rm")
                .arg("-f")
                .args(&ids)
                .output();
        }
    }
}

impl Drop for ContainerGuard {
    fn drop(&mut self) {
        self.remove_all();
    }
}

/// Removes image tags when dropped.
pub struct ImageGuard(pub Vec<String>);

impl Drop for ImageGuard {
    fn drop(&mut self) {
        for tag in &self.0 {
            let _ = Command::new("docker").args(["rmi", "-f", tag]).output();
        }
    }
}

fn rand_u64() -> u64 {
    use std::collections::hash_map::RandomState;
    use std::hash::{BuildHasher, Hasher};
    let mut h = RandomState::new().build_hasher();
    h.write_u128(
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_nanos())
            .unwrap_or(0),
    );
    h.write_u32(std::process::id());
    h.finish()
}
