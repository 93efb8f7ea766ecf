//! Docker engine helpers for tests: an availability check that fails loudly,
//! `FROM scratch` images built from any set of files (one layer per file),
//! the standard busybox httpd test image, and guards that remove containers
//! and images when dropped, also when the test panics.
//!
//! Everything goes through the `docker` CLI (the classic builder, since the
//! machine has no buildx), and everything created carries `pier.test=1`.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

/// Label on every image and container the tests create.
pub const TEST_LABEL: &str = "pier.test=1";

/// Panics with a clear message when the Docker engine does not answer.
/// Tests that need Docker call this first; they never skip.
pub fn docker_available() {
    match Command::new("docker")
        .args(["version", "--format", "{{.Server.Version}}"])
        .output()
    {
        Ok(out) if out.status.success() => {}
        Ok(out) => panic!(
            "this test needs a running Docker engine, and `docker version` failed: {}",
            String::from_utf8_lossy(&out.stderr).trim()
        ),
        Err(e) => {
            panic!("this test needs the docker CLI and a running engine: cannot run `docker`: {e}")
        }
    }
}

/// Runs `docker <args>`; returns the output whatever the exit status.
pub fn try_docker(args: &[&str]) -> Output {
    Command::new("docker")
        .args(args)
        .env("DOCKER_BUILDKIT", "0")
        .output()
        .unwrap_or_else(|e| panic!("cannot run docker {args:?}: {e}"))
}

/// Runs `docker <args>`, panics with its stderr if it fails, returns stdout (trimmed).
pub fn docker(args: &[&str]) -> String {
    let out = try_docker(args);
    assert!(
        out.status.success(),
        "docker {} failed ({}): {}",
        args.join(" "),
        out.status,
        String::from_utf8_lossy(&out.stderr).trim()
    );
    String::from_utf8_lossy(&out.stdout).trim().to_string()
}

/// Debian's statically linked busybox (package busybox-static).
pub fn static_busybox() -> &'static Path {
    for path in ["/bin/busybox", "/usr/bin/busybox"] {
        let p = Path::new(path);
        if p.exists() {
            return p;
        }
    }
    panic!("static busybox not found at /bin/busybox: apt-get install busybox-static");
}

enum Content {
    Bytes(Vec<u8>),
    Host(PathBuf),
}

struct ImageFile {
    path_in_image: String,
    content: Content,
    mode: u32,
}

/// A `FROM scratch` image described file by file; each file becomes its own
/// layer, so the number of layers is under the test's control.
#[derive(Default)]
pub struct ScratchImage {
    files: Vec<ImageFile>,
    cmd: Vec<String>,
    entrypoint: Vec<String>,
    expose: Vec<u16>,
    env: Vec<(String, String)>,
    labels: Vec<(String, String)>,
}

impl ScratchImage {
    pub fn new() -> ScratchImage {
        ScratchImage::default()
    }

    /// Adds a file with the given bytes at an absolute path in the image.
    pub fn file(
        mut self,
        path_in_image: &str,
        bytes: impl Into<Vec<u8>>,
        mode: u32,
    ) -> ScratchImage {
        self.files.push(ImageFile {
            path_in_image: path_in_image.into(),
            content: Content::Bytes(bytes.into()),
            mode,
        });
        self
    }

    /// Adds a copy of a host file.
    pub fn host_file(
        mut self,
        path_in_image: &str,
        host_path: impl Into<PathBuf>,
        mode: u32,
    ) -> ScratchImage {
        self.files.push(ImageFile {
            path_in_image: path_in_image.into(),
            content: Content::Host(host_path.into()),
            mode,
        });
        self
    }

    /// Adds the static busybox as `/bin/busybox`.
    pub fn with_busybox(self) -> ScratchImage {
        self.host_file("/bin/busybox", static_busybox(), 0o755)
    }

    pub fn cmd(mut self, argv: &[&str]) -> ScratchImage {
        self.cmd = argv.iter().map(|s| s.to_string()).collect();
        self
    }

    pub fn entrypoint(mut self, argv: &[&str]) -> ScratchImage {
        self.entrypoint = argv.iter().map(|s| s.to_string()).collect();
        self
    }

    pub fn expose(mut self, port: u16) -> ScratchImage {
        self.expose.push(port);
        self
    }

    pub fn env(mut self, key: &str, value: &str) -> ScratchImage {
        self.env.push((key.into(), value.into()));
        self
    }

    pub fn label(mut self, key: &str, value: &str) -> ScratchImage {
        self.labels.push((key.into(), value.into()));
        self
    }

    /// The Dockerfile and the context files, written into `dir`.
    fn write_context(&self, dir: &Path) {
        use std::os::unix::fs::PermissionsExt;
        let mut dockerfile = String::from("FROM scratch\n");
        for (i, f) in self.files.iter().enumerate() {
            assert!(
                f.path_in_image.starts_with('/'),
                "image paths must be absolute: {}",
                f.path_in_image
            );
            let name = format!("f{i}");
            let dest = dir.join(&name);
            match &f.content {
                Content::Bytes(b) => std::fs::write(&dest, b).expect("write a build context file"),
                Content::Host(p) => {
                    std::fs::copy(p, &dest).unwrap_or_else(|e| {
                        panic!("copy {} into the build context: {e}", p.display())
                    });
                }
            }
            std::fs::set_permissions(&dest, std::fs::Permissions::from_mode(f.mode))
                .expect("chmod a context file");
            dockerfile.push_str(&format!("COPY {name} {}\n", f.path_in_image));
        }
        for (k, v) in &self.env {
            dockerfile.push_str(&format!("ENV {k}={}\n", json_string(v)));
        }
        for port in &self.expose {
            dockerfile.push_str(&format!("EXPOSE {port}\n"));
        }
        dockerfile.push_str("LABEL pier.test=\"1\"\n");
        for (k, v) in &self.labels {
            dockerfile.push_str(&format!("LABEL {}={}\n", json_string(k), json_string(v)));
        }
        if !self.entrypoint.is_empty() {
            dockerfile.push_str(&format!("ENTRYPOINT {}\n", json_array(&self.entrypoint)));
        }
        if !self.cmd.is_empty() {
            dockerfile.push_str(&format!("CMD {}\n", json_array(&self.cmd)));
        }
        std::fs::write(dir.join("Dockerfile"), dockerfile).expect("write Dockerfile");
    }

    /// Builds the image as `tag` with `docker build`; the guard removes it.
    pub fn build(&self, tag: &str) -> ImageGuard {
        docker_available();
        let dir = tempfile::tempdir().expect("temp dir for a build context");
        self.write_context(dir.path());
        let context = dir.path().to_string_lossy().into_owned();
        docker(&["build", "-q", "--label", TEST_LABEL, "-t", tag, &context]);
        ImageGuard::new(tag)
    }
}

fn json_string(s: &str) -> String {
    serde_json::Value::String(s.to_string()).to_string()
}

fn json_array(items: &[String]) -> String {
    serde_json::Value::Array(
        items
            .iter()
            .cloned()
            .map(serde_json::Value::String)
            .collect(),
    )
    .to_string()
}

/// Body of `/www/index.html` in [`build_busybox_image`].
pub const BUSYBOX_INDEX_HTML: &str = "<h1>pier busybox test image</h1>\n";

/// The standard test image: static busybox at `/bin/busybox`, a small
/// `/www/index.html`, and `busybox httpd -f -p 8080 -h /www` as its command.
pub fn busybox_image() -> ScratchImage {
    ScratchImage::new()
        .with_busybox()
        .file("/www/index.html", BUSYBOX_INDEX_HTML, 0o644)
        .cmd(&["/bin/busybox", "httpd", "-f", "-p", "8080", "-h", "/www"])
        .expose(8080)
}

/// Builds [`busybox_image`] as `tag`.
pub fn build_busybox_image(tag: &str) -> ImageGuard {
    busybox_image().build(tag)
}

/// Removes the image references it holds (`docker rmi -f`) when dropped.
#[derive(Default)]
pub struct ImageGuard {
    refs: Vec<String>,
}

impl ImageGuard {
    pub fn new(reference: &str) -> ImageGuard {
        ImageGuard {
            refs: vec![reference.to_string()],
        }
    }

    /// The first reference (the tag the image was built as); empty for an empty guard.
    pub fn tag(&self) -> &str {
        self.refs.first().map_or("", String::as_str)
    }

    /// Also remove `reference` (a re-tag, or the same image pulled back).
    pub fn also(&mut self, reference: &str) {
        self.refs.push(reference.to_string());
    }
}

impl Drop for ImageGuard {
    fn drop(&mut self) {
        if self.refs.is_empty() {
            return;
        }
        let mut args = vec!["rmi", "-f"];
        args.extend(self.refs.iter().map(String::as_str));
        let _ = try_docker(&args);
    }
}

/// A container removed (`docker rm -f`) when dropped.
pub struct ContainerGuard {
    pub name: String,
}

impl ContainerGuard {
    /// `docker run -d --name <name> --label pier.test=1 <args...> <image> [cmd...]`.
    pub fn run(name: &str, args: &[&str], image: &str, cmd: &[&str]) -> ContainerGuard {
        docker_available();
        let _ = try_docker(&["rm", "-f", name]);
        let mut all = vec!["run", "-d", "--name", name, "--label", TEST_LABEL];
        all.extend_from_slice(args);
        all.push(image);
        all.extend_from_slice(cmd);
        // The guard exists before the run so a half-created container goes too.
        let guard = ContainerGuard {
            name: name.to_string(),
        };
        docker(&all);
        guard
    }

    /// The host port published for `container_port/tcp`.
    pub fn host_port(&self, container_port: u16) -> u16 {
        let out = docker(&["port", &self.name, &format!("{container_port}/tcp")]);
        let first = out.lines().next().unwrap_or_default();
        first
            .rsplit(':')
            .next()
            .and_then(|p| p.trim().parse().ok())
            .unwrap_or_else(|| {
                panic!(
                    "no published port for {container_port} on {}: {out:?}",
                    self.name
                )
            })
    }

    pub fn logs(&self) -> String {
        let out = try_docker(&["logs", &self.name]);
        format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        )
    }
}

impl Drop for ContainerGuard {
    fn drop(&mut self) {
        let _ = try_docker(&["rm", "-f", &self.name]);
    }
}

/// Removes every container of one test run when dropped, also on panic: each run
/// gets a fresh label `pier.test.run=<random>` that the code under test puts on
/// the containers it starts.
pub struct RunGuard {
    pub label: String,
    pub value: String,
}

impl RunGuard {
    /// A guard with a fresh per-run label `pier.test.run=<random>`.
    pub fn new_run() -> RunGuard {
        RunGuard {
            label: "pier.test.run".into(),
            value: format!("{:016x}", rand::random::<u64>()),
        }
    }

    pub fn filter(&self) -> String {
        format!("label={}={}", self.label, self.value)
    }

    /// IDs of the run's containers (`all`: stopped ones too).
    pub fn containers(&self, all: bool) -> Vec<String> {
        let filter = self.filter();
        let mut args = vec!["ps", "-q", "--no-trunc", "--filter", &filter];
        if all {
            args.push("-a");
        }
        // Not `docker()`: this also runs from `Drop`, where a second panic would abort.
        let out = try_docker(&args);
        String::from_utf8_lossy(&out.stdout)
            .lines()
            .map(str::to_string)
            .filter(|l| !l.is_empty())
            .collect()
    }

    pub fn remove_all(&self) {
        let ids = self.containers(true);
        if !ids.is_empty() {
            let mut args = vec!["rm", "-f"];
            args.extend(ids.iter().map(String::as_str));
            let _ = try_docker(&args);
        }
        // Then the networks the run's agents created (they carry the run label too).
        let filter = self.filter();
        let out = try_docker(&["network", "ls", "-q", "--filter", &filter]);
        let nets: Vec<String> = String::from_utf8_lossy(&out.stdout)
            .split_whitespace()
            .map(str::to_string)
            .collect();
        if !nets.is_empty() {
            let mut args = vec!["network", "rm"];
            args.extend(nets.iter().map(String::as_str));
            let _ = try_docker(&args);
        }
    }

    /// A Docker network name of this run (at most 15 characters, so it is also the name of
    /// the host's bridge interface): each `pier dev` of a test gets its own network, bridge
    /// address, node gateway and DNS.
    pub fn network_name(&self) -> String {
        format!("pt{}", &self.value[..self.value.len().min(12)])
    }
}

impl Drop for RunGuard {
    fn drop(&mut self) {
        self.remove_all();
    }
}

/// Removes every container, then every image, carrying `label` (e.g.
/// "pier.test.run=abc"); for cleaning up after a whole test run.
pub fn remove_by_label(label: &str) {
    let filter = format!("label={label}");
    let ids = docker(&["ps", "-aq", "--filter", &filter]);
    let ids: Vec<&str> = ids.split_whitespace().collect();
    if !ids.is_empty() {
        let mut args = vec!["rm", "-f"];
        args.extend(ids);
        let _ = try_docker(&args);
    }
    let images = docker(&["images", "-q", "--filter", &filter]);
    let mut images: Vec<&str> = images.split_whitespace().collect();
    images.sort_unstable();
    images.dedup();
    if !images.is_empty() {
        let mut args = vec!["rmi", "-f"];
        args.extend(images);
        let _ = try_docker(&args);
    }
}
