//! A Docker engine of its own inside one host of a [`Net`]: what makes a network namespace a
//! real second machine for pier's agent (its containers, their published ports, its bridge
//! networks and iptables rules all live in that namespace, not beside the machine's engine).
//!
//! * `dockerd` runs with only its network namespace entered (`nsenter --net`), not through
//!   `ip netns exec`: that one remounts `/sys` for the namespace, which hides the cgroup
//!   hierarchy the engine needs ("Devices cgroup isn't mounted").
//! * Everything it keeps is its own: `--config-file` (not `/etc/docker/daemon.json`), a data
//!   root in the temp dir, an exec root, socket and pid file under `/run/pdk/<id>` (short:
//!   a unix socket path has at most 108 bytes), and `--cgroup-parent /pdk-<id>`, so its
//!   containers' processes can be found and killed even without the engine.
//! * Dropping a [`NetnsDocker`] removes its containers, stops the engine (SIGKILL after
//!   10 s), kills whatever is left in its cgroups or names its exec root, unmounts what it
//!   mounted and deletes both directories, also while a test unwinds. Drop it before the
//!   [`Net`]. A run killed before that is cleaned up by the next [`NetnsDocker::start`]: each
//!   engine records its owner's pid in `/run/pdk/<id>/owner`.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

use crate::netns::Net;

/// Where every engine keeps its socket, exec root, pid file and owner record.
const RUN_DIR: &str = "/run/pdk";
/// How long an engine may take to answer after it was started.
const READY_TIMEOUT: Duration = Duration::from_secs(30);

/// A `dockerd` (with its own containerd) running in one host namespace of a [`Net`].
pub struct NetnsDocker {
    id: String,
    ns: String,
    run_dir: PathBuf,
    data_root: PathBuf,
    child: Option<Child>,
    /// The storage driver the engine runs with (`overlay2`, or `vfs` where overlay fails).
    pub storage_driver: String,
    pub log_path: PathBuf,
}

impl NetnsDocker {
    /// Starts an engine in host `i` of `net`, its log in `<log_dir>/dockerd-<ns>.log`, and
    /// waits until it answers. Panics with the engine's log when it does not.
    pub fn start(net: &Net, i: usize, log_dir: &Path) -> NetnsDocker {
        crate::docker::docker_available();
        remove_stale_engines();
        let id = format!("{:08x}", rand::random::<u32>());
        let ns = net.ns(i).to_string();
        let run_dir = Path::new(RUN_DIR).join(&id);
        let data_root = std::env::temp_dir().join(format!("pier-dockerd-{id}"));
        std::fs::create_dir_all(&run_dir)
            .unwrap_or_else(|e| panic!("cannot create {}: {e}", run_dir.display()));
        let owner = format!("{}\n{}\n", std::process::id(), data_root.display());
        std::fs::write(run_dir.join("owner"), owner).expect("write the engine's owner record");
        std::fs::write(run_dir.join("daemon.json"), "{}\n").expect("write daemon.json");
        let mut engine = NetnsDocker {
            id,
            log_path: log_dir.join(format!("dockerd-{ns}.log")),
            ns,
            run_dir,
            data_root,
            child: None,
            storage_driver: String::new(),
        };
        // From here on Drop cleans up, also if a step panics.
        for driver in ["overlay2", "vfs"] {
            if engine.try_start(driver) {
                engine.storage_driver = driver.to_string();
                return engine;
            }
        }
        panic!(
            "dockerd in namespace {} did not start with overlay2 nor vfs; its log {}:\n{}",
            engine.ns,
            engine.log_path.display(),
            tail(&engine.log_path, 30)
        );
    }

    /// Starts dockerd with `driver`; true once it answers, false when it exited meanwhile.
    fn try_start(&mut self, driver: &str) -> bool {
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&self.log_path)
            .expect("open the dockerd log");
        let (r, d) = (self.run_dir.display(), self.data_root.display());
        let child = Command::new("nsenter")
            .arg(format!("--net=/run/netns/{}", self.ns))
            .arg("dockerd")
            .args(["--config-file", &format!("{r}/daemon.json")])
            .args(["--data-root", &d.to_string()])
            .args(["--exec-root", &format!("{r}/x")])
            .args(["-H", &self.host()])
            .args(["--pidfile", &format!("{r}/d.pid")])
            .args(["--storage-driver", driver])
            .args(["--cgroup-parent", &format!("/pdk-{}", self.id)])
            .args(["--iptables=true", "--shutdown-timeout", "2"])
            .stdin(Stdio::null())
            .stdout(log.try_clone().expect("clone the log handle"))
            .stderr(log)
            .spawn()
            .unwrap_or_else(|e| panic!("cannot run nsenter dockerd (util-linux, docker.io): {e}"));
        self.child = Some(child);
        let deadline = Instant::now() + READY_TIMEOUT;
        loop {
            let info = self.docker(&["info", "--format", "{{.Driver}}"]);
            if info.status.success() {
                return true;
            }
            let exited = self
                .child
                .as_mut()
                .is_some_and(|c| matches!(c.try_wait(), Ok(Some(_))));
            if exited {
                self.child = None;
                cleanup(&self.id, &self.data_root, None);
                std::fs::create_dir_all(&self.run_dir).expect("recreate the run dir");
                std::fs::write(self.run_dir.join("daemon.json"), "{}\n").expect("daemon.json");
                let owner = format!("{}\n{}\n", std::process::id(), self.data_root.display());
                std::fs::write(self.run_dir.join("owner"), owner).expect("owner record");
                return false;
            }
            assert!(
                Instant::now() < deadline,
                "dockerd in {} did not answer within {READY_TIMEOUT:?}:\n{}",
                self.ns,
                tail(&self.log_path, 30)
            );
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// The engine's address, for `DOCKER_HOST`.
    pub fn host(&self) -> String {
        format!("unix://{}/d.sock", self.run_dir.display())
    }

    /// The namespace it runs in.
    pub fn ns(&self) -> &str {
        &self.ns
    }

    /// Runs the docker CLI against this engine.
    pub fn docker(&self, args: &[&str]) -> Output {
        Command::new("docker")
            .env("DOCKER_HOST", self.host())
            .args(args)
            .output()
            .unwrap_or_else(|e| panic!("cannot run docker: {e}"))
    }

    /// Copies `reference` from the machine's engine into this one (`docker save | docker
    /// load`): the image is then present, so an agent using this engine runs it unpulled.
    pub fn load_image(&self, reference: &str) {
        let mut save = Command::new("docker")
            .args(["save", reference])
            .stdout(Stdio::piped())
            .spawn()
            .expect("run docker save");
        let stdout = save.stdout.take().expect("docker save's stdout");
        let load = Command::new("docker")
            .env("DOCKER_HOST", self.host())
            .args(["load", "-q"])
            .stdin(stdout)
            .output()
            .expect("run docker load");
        let saved = save.wait().expect("wait for docker save");
        assert!(
            saved.success() && load.status.success(),
            "docker save {reference} | docker load into {}: {}",
            self.ns,
            String::from_utf8_lossy(&load.stderr)
        );
    }
}

impl Drop for NetnsDocker {
    fn drop(&mut self) {
        // Containers first, through the engine, so it unmounts and unwires them itself.
        let ids = self.docker(&["ps", "-aq"]);
        let ids: Vec<String> = String::from_utf8_lossy(&ids.stdout)
            .split_whitespace()
            .map(str::to_string)
            .collect();
        if !ids.is_empty() {
            let mut args = vec!["rm", "-f"];
            args.extend(ids.iter().map(String::as_str));
            let _ = self.docker(&args);
        }
        cleanup(&self.id, &self.data_root, self.child.take());
    }
}

/// Stops the engine `id` and removes every trace of it; best effort, never panics (it runs
/// in Drop, possibly while unwinding, and for engines of dead test processes).
fn cleanup(id: &str, data_root: &Path, child: Option<Child>) {
    let run_dir = Path::new(RUN_DIR).join(id);
    let pid = child.as_ref().map(|c| c.id()).or_else(|| {
        std::fs::read_to_string(run_dir.join("d.pid"))
            .ok()
            .and_then(|p| p.trim().parse().ok())
    });
    if let Some(pid) = pid {
        let _ = Command::new("kill")
            .args(["-TERM", &pid.to_string()])
            .output();
        let deadline = Instant::now() + Duration::from_secs(10);
        while Path::new(&format!("/proc/{pid}")).exists() && !is_zombie(pid) {
            if Instant::now() > deadline {
                let _ = Command::new("kill")
                    .args(["-KILL", &pid.to_string()])
                    .output();
                break;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }
    if let Some(mut c) = child {
        let _ = c.kill();
        let _ = c.wait();
    }
    kill_leftovers(id, &run_dir);
    unmount_below(&[&run_dir, data_root]);
    let _ = std::fs::remove_dir_all(data_root);
    let _ = std::fs::remove_dir_all(&run_dir);
}

fn is_zombie(pid: u32) -> bool {
    std::fs::read_to_string(format!("/proc/{pid}/stat"))
        .map(|s| {
            s.rsplit_once(')')
                .is_some_and(|(_, r)| r.trim_start().starts_with('Z'))
        })
        .unwrap_or(true)
}

/// Kills the containers' processes (in the engine's cgroups) and any containerd or shim
/// naming its exec root, then removes the cgroups.
fn kill_leftovers(id: &str, run_dir: &Path) {
    let parent = format!("pdk-{id}");
    let mut cgroups = Vec::new();
    if let Ok(controllers) = std::fs::read_dir("/sys/fs/cgroup") {
        for c in controllers.flatten() {
            let dir = c.path().join(&parent);
            if dir.is_dir() {
                cgroups.push(dir);
            }
        }
    }
    // The root itself on cgroup v2 (one hierarchy at /sys/fs/cgroup).
    let v2 = Path::new("/sys/fs/cgroup").join(&parent);
    if v2.is_dir() && !cgroups.contains(&v2) {
        cgroups.push(v2);
    }
    let mut pids: Vec<String> = Vec::new();
    for dir in &cgroups {
        collect_procs(dir, &mut pids);
    }
    let marker = run_dir.display().to_string();
    if let Ok(procs) = std::fs::read_dir("/proc") {
        for p in procs.flatten() {
            let name = p.file_name().to_string_lossy().into_owned();
            if !name.bytes().all(|b| b.is_ascii_digit()) {
                continue;
            }
            let cmdline = std::fs::read(p.path().join("cmdline")).unwrap_or_default();
            if String::from_utf8_lossy(&cmdline).contains(&marker) {
                pids.push(name);
            }
        }
    }
    for pid in &pids {
        let _ = Command::new("kill").args(["-KILL", pid]).output();
    }
    // Children first: a cgroup directory is removed only once it is empty.
    for dir in &cgroups {
        remove_cgroup(dir, Instant::now() + Duration::from_secs(5));
    }
}

fn collect_procs(dir: &Path, out: &mut Vec<String>) {
    if let Ok(text) = std::fs::read_to_string(dir.join("cgroup.procs")) {
        out.extend(text.split_whitespace().map(str::to_string));
    }
    if let Ok(entries) = std::fs::read_dir(dir) {
        for e in entries.flatten() {
            if e.path().is_dir() {
                collect_procs(&e.path(), out);
            }
        }
    }
}

fn remove_cgroup(dir: &Path, deadline: Instant) {
    if let Ok(entries) = std::fs::read_dir(dir) {
        for e in entries.flatten() {
            if e.path().is_dir() {
                remove_cgroup(&e.path(), deadline);
            }
        }
    }
    // Killed processes leave their cgroup a moment later.
    while std::fs::remove_dir(dir).is_err() && dir.exists() && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// Unmounts (lazily, deepest first) every mount point below the given directories.
fn unmount_below(dirs: &[&Path]) {
    let mounts = std::fs::read_to_string("/proc/self/mounts").unwrap_or_default();
    let mut points: Vec<String> = mounts
        .lines()
        .filter_map(|l| l.split_whitespace().nth(1))
        // /proc/mounts escapes blanks as \040; our paths have none.
        .filter(|p| {
            dirs.iter()
                .any(|d| Path::new(p).starts_with(d) && !d.as_os_str().is_empty())
        })
        .map(str::to_string)
        .collect();
    points.sort_by_key(|p| std::cmp::Reverse(p.len()));
    for p in points {
        let _ = Command::new("umount").args(["-l", &p]).output();
    }
}

/// Cleans up after engines whose test process no longer exists (killed with SIGKILL).
fn remove_stale_engines() {
    let Ok(entries) = std::fs::read_dir(RUN_DIR) else {
        return;
    };
    for e in entries.flatten() {
        let id = e.file_name().to_string_lossy().into_owned();
        let owner = std::fs::read_to_string(e.path().join("owner")).unwrap_or_default();
        let mut lines = owner.lines();
        let (Some(pid), Some(data_root)) = (lines.next(), lines.next()) else {
            // Being created right now (the record comes a moment after the directory), or
            // broken: only an old one is stale.
            let old = e
                .metadata()
                .and_then(|m| m.modified())
                .ok()
                .and_then(|t| t.elapsed().ok())
                .is_some_and(|age| age > Duration::from_secs(60));
            if old {
                let _ = std::fs::remove_dir_all(e.path());
            }
            continue;
        };
        if Path::new(&format!("/proc/{}", pid.trim())).exists() {
            continue;
        }
        cleanup(&id, Path::new(data_root), None);
    }
}

fn tail(path: &Path, lines: usize) -> String {
    let text = std::fs::read_to_string(path).unwrap_or_default();
    let all: Vec<&str> = text.lines().collect();
    all[all.len().saturating_sub(lines)..].join("\n")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_engine_in_a_namespace_runs_containers_there_and_leaves_nothing_behind() {
        let net = Net::new(1);
        let logs = tempfile::tempdir().expect("temp dir");
        let (run_dir, data_root) = {
            let engine = NetnsDocker::start(&net, 0, logs.path());
            let image = crate::docker::build_busybox_image(&format!(
                "pier-test/netns-docker-{}:v1",
                engine.id
            ));
            engine.load_image(image.tag());
            // A published port on the host's address answers from the test process.
            let addr = net.addr(0).to_string();
            let run = engine.docker(&[
                "run",
                "-d",
                "-p",
                &format!("{addr}:18080:8080"),
                image.tag(),
                "/bin/busybox",
                "httpd",
                "-f",
                "-p",
                "8080",
                "-h",
                "/",
            ]);
            assert!(
                run.status.success(),
                "{}",
                String::from_utf8_lossy(&run.stderr)
            );
            let deadline = Instant::now() + Duration::from_secs(10);
            while std::net::TcpStream::connect_timeout(
                &(net.addr(0), 18080).into(),
                Duration::from_millis(300),
            )
            .is_err()
            {
                assert!(Instant::now() < deadline, "published port never answered");
                std::thread::sleep(Duration::from_millis(50));
            }
            // The machine's own engine does not see that container.
            let mine = Command::new("docker")
                .args(["ps", "-q", "--filter", &format!("ancestor={}", image.tag())])
                .output()
                .expect("docker ps");
            assert!(String::from_utf8_lossy(&mine.stdout).trim().is_empty());
            (engine.run_dir.clone(), engine.data_root.clone())
        };
        assert!(!run_dir.exists(), "{} left behind", run_dir.display());
        assert!(!data_root.exists(), "{} left behind", data_root.display());
        let mounts = std::fs::read_to_string("/proc/self/mounts").unwrap();
        assert!(
            !mounts.contains(&data_root.display().to_string()),
            "{mounts}"
        );
    }

    #[test]
    fn engines_of_dead_test_processes_are_removed_by_the_next_one() {
        let net = Net::new(1);
        let logs = tempfile::tempdir().expect("temp dir");
        let leaked = NetnsDocker::start(&net, 0, logs.path());
        let pid = leaked
            .child
            .as_ref()
            .map(|c| c.id())
            .expect("dockerd's pid");
        let (run_dir, data_root) = (leaked.run_dir.clone(), leaked.data_root.clone());
        // Pretend its owner died: a pid that certainly exited.
        let mut gone = Command::new("true").spawn().expect("run true");
        let dead_pid = gone.id();
        gone.wait().expect("wait for true");
        let owner = format!("{dead_pid}\n{}\n", data_root.display());
        std::fs::write(run_dir.join("owner"), owner).expect("rewrite the owner");
        std::mem::forget(leaked);
        let _next = NetnsDocker::start(&net, 0, logs.path());
        assert!(!run_dir.exists(), "stale {} not removed", run_dir.display());
        assert!(
            !data_root.exists(),
            "stale {} not removed",
            data_root.display()
        );
        assert!(is_zombie(pid), "the stale dockerd (pid {pid}) still runs");
    }
}
