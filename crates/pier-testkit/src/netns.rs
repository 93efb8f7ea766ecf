//! Hosts with their own IPv4 addresses on this one machine, for fault tests: Linux network
//! namespaces joined by a bridge, partitions made with iptables inside the namespaces.
//!
//! ```text
//!   root namespace (the test process)          hub namespace              host namespaces
//!   pr<tag> 10.A.B.254/24  ── veth ──  pr<tag>h ─┐
//!                                               br0 ── ph<tag>-0 ── veth ── eth0 10.A.B.1/24
//!                                                  ── ph<tag>-1 ── veth ── eth0 10.A.B.2/24 ...
//! ```
//!
//! * Each [`Net`] picks a random `/24` in `10.0.0.0/8` that no route of the root namespace
//!   covers (Docker's `172.16.0.0/12` is never used). The hub namespace is named after that
//!   `/24` and `ip netns add` refuses an existing name, so two tests running in parallel can
//!   never share one: the hub's name is the reservation.
//! * The bridge lives in the hub namespace, so the root namespace's iptables (Docker's chains)
//!   is never touched; faults are iptables rules inside the host namespaces, or a host's link in
//!   the hub taken down.
//! * The test process reaches every host from the root namespace through its own veth, so its
//!   clients see exactly the partitions the test makes, no more.
//! * Dropping the [`Net`] kills every process left in its namespaces and deletes the namespaces
//!   (which deletes every veth and every rule with them), also when the test panicked. A run
//!   killed before that (SIGKILL) is cleaned up by the next [`Net::new`], which removes the
//!   namespaces of test processes that no longer exist.
//!
//! Everything here needs root, `ip` (iproute2) and `iptables`; without them it panics with
//! what to install, it never skips.

use std::fmt::Write as _;
use std::net::Ipv4Addr;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::time::{Duration, Instant};

use crate::process::PierProcess;

/// Every namespace a [`Net`] creates starts with this.
pub const NS_PREFIX: &str = "piert-";
/// The last octet of the root namespace's address in every net.
pub const CLIENT_OCTET: u8 = 254;
/// Where each net records the pid of the test process that owns it.
const OWNER_DIR: &str = "/run/pier-testkit-netns";

/// A set of hosts (network namespaces) with their own addresses, reachable from the test
/// process. See the module docs for the layout.
pub struct Net {
    /// The `/24`'s first three octets.
    prefix: [u8; 3],
    /// Per-run tag in link names: the `/24`'s middle octets in hex.
    tag: String,
    hub: String,
    hosts: Vec<String>,
    owner_file: PathBuf,
}

impl Net {
    /// Creates `n` hosts (1..=200). Panics, with the failing command's stderr, when this is
    /// not root or `ip`/`iptables` is missing or any step fails; what was made so far is
    /// removed again.
    pub fn new(n: usize) -> Net {
        assert!((1..=200).contains(&n), "Net::new: 1..=200 hosts, not {n}");
        preflight();
        remove_stale_nets();
        let (prefix, hub) = reserve_prefix();
        let tag = format!("{:02x}{:02x}", prefix[1], prefix[2]);
        let base = hub.trim_end_matches("-hub").to_string();
        let mut net = Net {
            prefix,
            tag,
            hosts: (0..n).map(|i| format!("{base}-h{i}")).collect(),
            hub,
            owner_file: Path::new(OWNER_DIR).join(format!("{base}.pid")),
        };
        // From here on `net`'s Drop cleans up whatever exists, if a step panics.
        std::fs::create_dir_all(OWNER_DIR)
            .unwrap_or_else(|e| panic!("cannot create {OWNER_DIR}: {e}"));
        std::fs::write(&net.owner_file, std::process::id().to_string())
            .unwrap_or_else(|e| panic!("cannot write {}: {e}", net.owner_file.display()));
        net.build();
        net
    }

    fn build(&mut self) {
        let hub = self.hub.clone();
        ip(&["netns", "exec", &hub, "ip", "link", "set", "lo", "up"]);
        ip(&[
            "netns", "exec", &hub, "ip", "link", "add", "br0", "type", "bridge",
        ]);
        ip(&["netns", "exec", &hub, "ip", "link", "set", "br0", "up"]);

        // The root namespace's way in: pr<tag> here, pr<tag>h in the hub.
        let root = self.root_link();
        let root_peer = format!("{root}h");
        ip(&[
            "link", "add", &root, "type", "veth", "peer", "name", &root_peer, "netns", &hub,
        ]);
        self.attach_to_bridge(&root_peer);
        let client = format!("{}/24", self.client_addr());
        ip(&["addr", "add", &client, "dev", &root]);
        ip(&["link", "set", &root, "up"]);

        for i in 0..self.hosts.len() {
            let ns = self.hosts[i].clone();
            ip(&["netns", "add", &ns]);
            ip(&["netns", "exec", &ns, "ip", "link", "set", "lo", "up"]);
            let outside = self.host_link(i);
            ip(&[
                "link", "add", &outside, "netns", &hub, "type", "veth", "peer", "name", "eth0",
                "netns", &ns,
            ]);
            self.attach_to_bridge(&outside);
            let addr = format!("{}/24", self.addr(i));
            ip(&[
                "netns", "exec", &ns, "ip", "addr", "add", &addr, "dev", "eth0",
            ]);
            ip(&["netns", "exec", &ns, "ip", "link", "set", "eth0", "up"]);
            // A rule list that exists from the start: fails here, not mid-test, if iptables
            // cannot work in a namespace.
            iptables(&ns, &["-F"]);
        }
        let start = Instant::now();
        for i in 0..self.hosts.len() {
            self.wait_reachable(i, start + Duration::from_secs(10));
        }
    }

    fn attach_to_bridge(&self, link: &str) {
        ip(&[
            "netns", "exec", &self.hub, "ip", "link", "set", link, "master", "br0",
        ]);
        ip(&["netns", "exec", &self.hub, "ip", "link", "set", link, "up"]);
    }

    /// Waits until the host answers a ping from the root namespace (links come up
    /// asynchronously, a bridge port needs a moment).
    fn wait_reachable(&self, i: usize, deadline: Instant) {
        let addr = self.addr(i).to_string();
        loop {
            if self.tcp_probe(i) {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "host {i} ({addr}) in namespace {} is not reachable from the test process: {}",
                self.hosts[i],
                self.describe()
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// A TCP connect from the root namespace to a closed port of host `i`: a refusal (RST)
    /// proves the path works both ways.
    fn tcp_probe(&self, i: usize) -> bool {
        let addr = std::net::SocketAddr::from((self.addr(i), 9));
        match std::net::TcpStream::connect_timeout(&addr, Duration::from_millis(200)) {
            Ok(_) => true,
            Err(e) => e.kind() == std::io::ErrorKind::ConnectionRefused,
        }
    }

    /// Number of hosts.
    pub fn len(&self) -> usize {
        self.hosts.len()
    }

    pub fn is_empty(&self) -> bool {
        self.hosts.is_empty()
    }

    /// The address of host `i` (0-based): `10.A.B.(i+1)`.
    pub fn addr(&self, i: usize) -> Ipv4Addr {
        assert!(
            i < self.hosts.len(),
            "no host {i} in a net of {}",
            self.len()
        );
        let [a, b, c] = self.prefix;
        Ipv4Addr::new(a, b, c, i as u8 + 1)
    }

    /// The test process's own address in this net (the root namespace's end).
    pub fn client_addr(&self) -> Ipv4Addr {
        let [a, b, c] = self.prefix;
        Ipv4Addr::new(a, b, c, CLIENT_OCTET)
    }

    /// The namespace name of host `i`, for `ip netns exec`.
    pub fn ns(&self, i: usize) -> &str {
        &self.hosts[i]
    }

    /// The hub namespace (the bridge).
    pub fn hub(&self) -> &str {
        &self.hub
    }

    fn root_link(&self) -> String {
        format!("pr{}", self.tag)
    }

    /// Host `i`'s link in the hub namespace (its end of the veth to the bridge).
    fn host_link(&self, i: usize) -> String {
        format!("ph{}-{i}", self.tag)
    }

    /// A command that runs `program` inside host `i`'s namespace.
    pub fn command(&self, i: usize, program: &str) -> Command {
        let mut cmd = Command::new("ip");
        cmd.args(["netns", "exec", &self.hosts[i], program]);
        cmd
    }

    /// Starts `bin args` in host `i`'s namespace as a [`PierProcess`] named `name` (its output
    /// goes to `<log_dir>/<name>.log`). `ip netns exec` execs the program, so the process's pid
    /// is the program's own: this waits until the exec happened and checks it, so `kill9`
    /// really kills the program.
    pub fn spawn(
        &self,
        i: usize,
        bin: &str,
        name: &str,
        args: &[&str],
        log_dir: &Path,
    ) -> PierProcess {
        self.spawn_with_env(i, bin, name, args, &[], log_dir)
    }

    /// [`Net::spawn`] with extra environment variables for the program.
    pub fn spawn_with_env(
        &self,
        i: usize,
        bin: &str,
        name: &str,
        args: &[&str],
        env: &[(&str, &str)],
        log_dir: &Path,
    ) -> PierProcess {
        let mut full: Vec<&str> = vec!["netns", "exec", &self.hosts[i], bin];
        full.extend_from_slice(args);
        let mut process = PierProcess::spawn_with_env("ip", name, &full, env, log_dir);
        let want = std::fs::canonicalize(bin)
            .or_else(|_| which(bin))
            .unwrap_or_else(|e| panic!("cannot resolve {bin}: {e}"));
        let deadline = Instant::now() + Duration::from_secs(5);
        loop {
            let exe = std::fs::read_link(format!("/proc/{}/exe", process.pid()));
            match exe {
                Ok(exe) if exe == want => break,
                _ if !process.is_running() => panic!(
                    "{bin} in namespace {} exited at once; see {}",
                    self.hosts[i],
                    log_dir.join(format!("{name}.log")).display()
                ),
                _ => {}
            }
            assert!(
                Instant::now() < deadline,
                "pid {} did not become {} within 5 s (is `ip netns exec` not exec'ing?)",
                process.pid(),
                want.display()
            );
            std::thread::sleep(Duration::from_millis(5));
        }
        let ns = std::fs::read_link(format!("/proc/{}/ns/net", process.pid()));
        let mine = std::fs::read_link("/proc/self/ns/net");
        assert!(
            matches!((&ns, &mine), (Ok(a), Ok(b)) if a != b),
            "pid {} is not in its own network namespace ({ns:?} vs {mine:?})",
            process.pid()
        );
        process
    }

    /// Cuts hosts `i` and `j` off from each other, both directions (each drops the other's
    /// packets, in and out). Other paths stay.
    pub fn cut(&self, i: usize, j: usize) {
        assert_ne!(i, j, "cannot cut a host from itself");
        for (me, other) in [(i, j), (j, i)] {
            let peer = self.addr(other).to_string();
            iptables(&self.hosts[me], &["-A", "INPUT", "-s", &peer, "-j", "DROP"]);
            iptables(
                &self.hosts[me],
                &["-A", "OUTPUT", "-d", &peer, "-j", "DROP"],
            );
        }
    }

    /// Cuts host `i` off from every other host; the test process still reaches it.
    pub fn isolate(&self, i: usize) {
        for j in (0..self.len()).filter(|&j| j != i) {
            self.cut(i, j);
        }
    }

    /// Cuts host `i` off from everything, the test process included (loopback stays).
    pub fn isolate_all(&self, i: usize) {
        iptables(&self.hosts[i], &["-A", "INPUT", "-i", "eth0", "-j", "DROP"]);
        iptables(
            &self.hosts[i],
            &["-A", "OUTPUT", "-o", "eth0", "-j", "DROP"],
        );
    }

    /// Splits the hosts into two sides that cannot reach each other (`side` and the rest).
    pub fn partition(&self, side: &[usize]) {
        for &i in side {
            for j in (0..self.len()).filter(|j| !side.contains(j)) {
                self.cut(i, j);
            }
        }
    }

    /// Removes every rule in every host and brings every link up.
    pub fn heal(&self) {
        for i in 0..self.len() {
            iptables(&self.hosts[i], &["-F"]);
            self.link_up(i);
        }
    }

    /// Takes host `i`'s link to the bridge down: it loses everything, like a pulled cable.
    pub fn link_down(&self, i: usize) {
        let link = self.host_link(i);
        ip(&[
            "netns", "exec", &self.hub, "ip", "link", "set", &link, "down",
        ]);
    }

    pub fn link_up(&self, i: usize) {
        let link = self.host_link(i);
        ip(&["netns", "exec", &self.hub, "ip", "link", "set", &link, "up"]);
    }

    /// The iptables rules of host `i` (`iptables -S`), for messages.
    pub fn rules(&self, i: usize) -> String {
        iptables(&self.hosts[i], &["-S"])
    }

    /// Namespaces, addresses and rules, for a failing assertion's message.
    pub fn describe(&self) -> String {
        let mut s = format!(
            "net {}.{}.{}.0/24 (client {}):",
            self.prefix[0],
            self.prefix[1],
            self.prefix[2],
            self.client_addr()
        );
        for (i, ns) in self.hosts.iter().enumerate() {
            let rules = Command::new("ip")
                .args(["netns", "exec", ns, "iptables", "-S"])
                .output()
                .map(|o| String::from_utf8_lossy(&o.stdout).replace('\n', "; "))
                .unwrap_or_default();
            let _ = write!(s, "\n  host {i} {} in {ns}: {rules}", self.addr(i));
        }
        s
    }
}

impl Drop for Net {
    fn drop(&mut self) {
        // The root end goes explicitly: a namespace's links go away asynchronously after
        // `ip netns del`, and the next test may look for this name at once.
        let _ = Command::new("ip")
            .args(["link", "del", &self.root_link()])
            .output();
        let mut names: Vec<&str> = self.hosts.iter().map(String::as_str).collect();
        names.push(&self.hub);
        destroy_namespaces(&names);
        let _ = std::fs::remove_file(&self.owner_file);
    }
}

/// Kills every process in the namespaces, then deletes them; best effort, never panics (it
/// runs in Drop, possibly while unwinding).
fn destroy_namespaces(names: &[&str]) {
    for ns in names {
        if let Ok(out) = Command::new("ip").args(["netns", "pids", ns]).output() {
            for pid in String::from_utf8_lossy(&out.stdout).split_whitespace() {
                let _ = Command::new("kill").args(["-9", pid]).output();
            }
        }
    }
    for ns in names {
        let _ = Command::new("ip").args(["netns", "del", ns]).output();
    }
}

fn preflight() {
    let status = std::fs::read_to_string("/proc/self/status").expect("read /proc/self/status");
    let euid = status
        .lines()
        .find_map(|l| l.strip_prefix("Uid:"))
        .and_then(|l| l.split_whitespace().nth(1))
        .unwrap_or("?");
    assert_eq!(
        euid, "0",
        "network-namespace tests must run as root (effective uid is {euid}); they never skip"
    );
    for (tool, args, package) in [
        ("ip", ["-V"], "iproute2"),
        ("iptables", ["--version"], "iptables"),
    ] {
        match Command::new(tool).args(args).output() {
            Ok(out) if out.status.success() => {}
            Ok(out) => panic!(
                "`{tool} {}` failed: {}; install Debian's {package}",
                args.join(" "),
                String::from_utf8_lossy(&out.stderr).trim()
            ),
            Err(e) => panic!(
                "network-namespace tests need `{tool}`: {e}; apt-get install -y {package} \
                 (scripts/test installs it)"
            ),
        }
    }
}

/// Picks a random `/24` in 10/8 that no root-namespace route covers and creates its hub
/// namespace; a name that exists (another test's net) makes it pick again.
fn reserve_prefix() -> ([u8; 3], String) {
    for _ in 0..64 {
        let prefix = [
            10u8,
            rand::random_range(1..=254),
            rand::random_range(0..=255),
        ];
        if routes_overlap(prefix) {
            continue;
        }
        let hub = format!("{NS_PREFIX}{}-{}-{}-hub", prefix[0], prefix[1], prefix[2]);
        let out = run(Command::new("ip").args(["netns", "add", &hub]));
        if out.status.success() {
            return (prefix, hub);
        }
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(
            err.contains("File exists"),
            "ip netns add {hub} failed: {}",
            err.trim()
        );
    }
    panic!("found no free 10.x.y.0/24 in 64 tries: {}", route_table());
}

fn route_table() -> String {
    String::from_utf8_lossy(
        &run(Command::new("ip").args(["-4", "route", "show", "table", "all"])).stdout,
    )
    .into_owned()
}

/// Whether any IPv4 route of the root namespace (any table) overlaps `prefix.0/24`.
fn routes_overlap(prefix: [u8; 3]) -> bool {
    let ours = u32::from(Ipv4Addr::new(prefix[0], prefix[1], prefix[2], 0));
    for line in route_table().lines() {
        let mut words = line.split_whitespace();
        let mut dst = words.next().unwrap_or("");
        // Typed routes: "local 10.0.0.1 dev ...", "broadcast ...".
        if matches!(
            dst,
            "local" | "broadcast" | "unicast" | "multicast" | "anycast"
        ) {
            dst = words.next().unwrap_or("");
        }
        if dst == "default" {
            continue;
        }
        let (addr, len) = match dst.split_once('/') {
            Some((a, l)) => (a, l.parse::<u32>().unwrap_or(32)),
            None => (dst, 32),
        };
        let Ok(addr) = addr.parse::<Ipv4Addr>() else {
            continue;
        };
        let len = len.min(32);
        // Two prefixes overlap when they agree on the shorter one's bits.
        let common = len.min(24);
        let mask = if common == 0 {
            0
        } else {
            u32::MAX << (32 - common)
        };
        if (u32::from(addr) & mask) == (ours & mask) {
            return true;
        }
    }
    false
}

/// Removes the namespaces of nets whose test process no longer exists (a run killed with
/// SIGKILL never drops its `Net`).
fn remove_stale_nets() {
    let out = run(Command::new("ip").args(["netns", "list"]));
    let listing = String::from_utf8_lossy(&out.stdout);
    let names: Vec<&str> = listing
        .lines()
        .filter_map(|l| l.split_whitespace().next())
        .filter(|n| n.starts_with(NS_PREFIX))
        .collect();
    let bases: std::collections::BTreeSet<&str> = names
        .iter()
        .filter_map(|n| n.strip_suffix("-hub"))
        .collect();
    for base in bases {
        let owner_file = Path::new(OWNER_DIR).join(format!("{base}.pid"));
        let alive = match std::fs::read_to_string(&owner_file) {
            Ok(pid) => Path::new(&format!("/proc/{}", pid.trim())).exists(),
            // Being created right now by another test: the pid file comes a moment after the
            // hub namespace. Only an old one without a pid file is stale.
            Err(_) => namespace_age(&format!("{base}-hub")) < Duration::from_secs(60),
        };
        if alive {
            continue;
        }
        let mine: Vec<&str> = names
            .iter()
            .copied()
            .filter(|n| n.starts_with(&format!("{base}-")))
            .collect();
        destroy_namespaces(&mine);
        let _ = std::fs::remove_file(&owner_file);
    }
}

fn namespace_age(name: &str) -> Duration {
    std::fs::metadata(format!("/run/netns/{name}"))
        .and_then(|m| m.modified())
        .ok()
        .and_then(|t| t.elapsed().ok())
        .unwrap_or(Duration::MAX)
}

fn which(bin: &str) -> std::io::Result<PathBuf> {
    let path = std::env::var_os("PATH").unwrap_or_default();
    for dir in std::env::split_paths(&path) {
        let candidate = dir.join(bin);
        if candidate.is_file() {
            return std::fs::canonicalize(candidate);
        }
    }
    Err(std::io::Error::new(
        std::io::ErrorKind::NotFound,
        format!("{bin} is not on PATH"),
    ))
}

fn run(cmd: &mut Command) -> Output {
    cmd.output()
        .unwrap_or_else(|e| panic!("cannot run {cmd:?}: {e}"))
}

/// Runs `ip <args>`; panics with its stderr when it fails. Returns stdout.
fn ip(args: &[&str]) -> String {
    checked(Command::new("ip").args(args))
}

/// Runs `iptables -w <args>` inside namespace `ns`; panics with its stderr when it fails.
fn iptables(ns: &str, args: &[&str]) -> String {
    checked(
        Command::new("ip")
            .args(["netns", "exec", ns, "iptables", "-w"])
            .args(args),
    )
}

fn checked(cmd: &mut Command) -> String {
    let out = run(cmd);
    assert!(
        out.status.success(),
        "{cmd:?} failed ({}): {}",
        out.status,
        String::from_utf8_lossy(&out.stderr).trim()
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::{Read, Write};
    use std::net::{TcpListener, TcpStream};

    fn connect(addr: Ipv4Addr, port: u16) -> std::io::Result<TcpStream> {
        TcpStream::connect_timeout(&(addr, port).into(), Duration::from_millis(500))
    }

    #[test]
    fn hosts_reach_each_other_and_the_client_until_cut() {
        let net = Net::new(3);
        assert_eq!(net.len(), 3);
        assert_ne!(net.addr(0), net.addr(1));
        // The client reaches every host (a refused connect means the host answered).
        for i in 0..3 {
            assert!(net.tcp_probe(i), "host {i} unreachable: {}", net.describe());
        }
        // Host-to-host: a TCP connect from one namespace to a closed port of another; a
        // refusal means the packets went both ways.
        let ping = |from: usize, to: usize| {
            let script = format!(
                "import socket;s=socket.socket();s.settimeout(0.5)\n\
                 try:\n s.connect(('{}',9))\n\
                 except ConnectionRefusedError:\n print('refused')\n\
                 except Exception as e:\n print(e)",
                net.addr(to)
            );
            let out = net
                .command(from, "python3")
                .args(["-c", &script])
                .output()
                .expect("run python3 in a namespace");
            String::from_utf8_lossy(&out.stdout).trim() == "refused"
        };
        assert!(ping(0, 1), "0 -> 1 before the cut: {}", net.describe());
        net.cut(0, 1);
        assert!(!ping(0, 1), "0 -> 1 after the cut");
        assert!(!ping(1, 0), "1 -> 0 after the cut");
        assert!(ping(0, 2), "0 -> 2 is not cut");
        assert!(
            net.tcp_probe(0) && net.tcp_probe(1),
            "the client is not cut"
        );
        net.isolate_all(2);
        assert!(!net.tcp_probe(2), "isolate_all cuts the client too");
        net.heal();
        assert!(ping(0, 1) && net.tcp_probe(2), "heal: {}", net.describe());
        net.link_down(1);
        assert!(!net.tcp_probe(1), "link down");
        net.link_up(1);
        let deadline = Instant::now() + Duration::from_secs(5);
        net.wait_reachable(1, deadline);
    }

    #[test]
    fn spawned_process_is_the_program_itself_and_dies_with_kill9() {
        let net = Net::new(1);
        let dir = tempfile::tempdir().expect("temp dir");
        let mut p = net.spawn(0, "sleep", "sleeper", &["30"], dir.path());
        let pid = p.pid();
        assert!(std::fs::read_link(format!("/proc/{pid}/exe"))
            .expect("exe link")
            .ends_with("sleep"));
        p.kill9();
        assert!(!p.is_running());
        assert!(
            !Path::new(&format!("/proc/{pid}")).exists()
                || std::fs::read_to_string(format!("/proc/{pid}/stat"))
                    .map(|s| s.contains(") Z "))
                    .unwrap_or(true),
            "pid {pid} still alive after kill9"
        );
    }

    #[test]
    fn drop_removes_every_namespace_and_link() {
        let (hub, hosts, root) = {
            let net = Net::new(2);
            (
                net.hub().to_string(),
                vec![net.ns(0).to_string(), net.ns(1).to_string()],
                net.root_link(),
            )
        };
        let list = String::from_utf8_lossy(&run(Command::new("ip").args(["netns", "list"])).stdout)
            .into_owned();
        for ns in std::iter::once(&hub).chain(&hosts) {
            assert!(!list.contains(ns.as_str()), "{ns} left behind: {list}");
        }
        let links = ip(&["-o", "link", "show"]);
        assert!(!links.contains(&root), "{root} left behind");
    }

    #[test]
    fn nets_of_dead_test_processes_are_removed_by_the_next_one() {
        let leaked = Net::new(1);
        let names = [leaked.hub().to_string(), leaked.ns(0).to_string()];
        // Pretend its owner died: a pid that certainly exited.
        let mut gone = Command::new("true").spawn().expect("run true");
        let dead_pid = gone.id();
        gone.wait().expect("wait for true");
        std::fs::write(&leaked.owner_file, dead_pid.to_string()).expect("rewrite owner");
        std::mem::forget(leaked);
        let _next = Net::new(1);
        let list = String::from_utf8_lossy(&run(Command::new("ip").args(["netns", "list"])).stdout)
            .into_owned();
        for ns in &names {
            assert!(
                !list.contains(ns.as_str()),
                "stale {ns} not removed: {list}"
            );
        }
    }

    #[test]
    fn a_listener_in_a_host_is_reached_from_the_client_at_its_address() {
        let net = Net::new(1);
        // A listener bound to the host's address inside its namespace, made by python3 there.
        let addr = net.addr(0).to_string();
        let script = format!(
            "import socket;s=socket.socket();s.bind(('{addr}',7777));s.listen(1);\
             c,_=s.accept();c.sendall(c.recv(64)[::-1]);c.close()"
        );
        let mut child = net
            .command(0, "python3")
            .args(["-c", &script])
            .spawn()
            .expect("python3 in the namespace");
        let deadline = Instant::now() + Duration::from_secs(10);
        let mut stream = loop {
            match connect(net.addr(0), 7777) {
                Ok(s) => break s,
                Err(e) => {
                    assert!(Instant::now() < deadline, "listener never came up: {e}");
                    std::thread::sleep(Duration::from_millis(50));
                }
            }
        };
        stream.write_all(b"abc").expect("send");
        let mut back = String::new();
        stream.read_to_string(&mut back).expect("receive");
        assert_eq!(back, "cba");
        let _ = child.wait();
        // And a listener on loopback in the test process is not visible inside.
        let local = TcpListener::bind("127.0.0.1:0").expect("bind");
        let port = local.local_addr().expect("addr").port();
        let inside = net
            .command(0, "python3")
            .args([
                "-c",
                &format!(
                    "import socket;s=socket.socket();s.settimeout(1)\n\
                     try:\n s.connect(('127.0.0.1',{port}));print('reached')\n\
                     except Exception:\n print('refused')"
                ),
            ])
            .output()
            .expect("python3");
        assert_eq!(String::from_utf8_lossy(&inside.stdout).trim(), "refused");
    }
}
