//! Child processes of the `pier` binary that are killed (SIGKILL) when dropped,
//! so a failing test never leaves a server behind.

use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

pub struct PierProcess {
    child: Option<Child>,
    pub name: String,
    /// Where the child's stdout and stderr go.
    pub log_path: std::path::PathBuf,
}

impl PierProcess {
    /// Starts `bin` with `args`; stderr goes to `<log_dir>/<name>.log` so a
    /// failing test can show what the server said.
    pub fn spawn(bin: &str, name: &str, args: &[&str], log_dir: &Path) -> PierProcess {
        PierProcess::spawn_with_env(bin, name, args, &[], log_dir)
    }

    /// [`PierProcess::spawn`] with extra environment variables for the child.
    pub fn spawn_with_env(
        bin: &str,
        name: &str,
        args: &[&str],
        env: &[(&str, &str)],
        log_dir: &Path,
    ) -> PierProcess {
        let log_path = log_dir.join(format!("{name}.log"));
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&log_path)
            .expect("open child log file");
        let child = Command::new(bin)
            .args(args)
            .envs(env.iter().copied())
            .stdin(Stdio::null())
            .stdout(log.try_clone().expect("clone log handle"))
            .stderr(log)
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start {bin}: {e}"));
        PierProcess {
            child: Some(child),
            name: name.to_string(),
            log_path,
        }
    }

    pub fn pid(&self) -> u32 {
        self.child.as_ref().map(|c| c.id()).unwrap_or(0)
    }

    /// SIGKILL, as a crash would: no graceful shutdown.
    pub fn kill9(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Sends `signal` (e.g. "INT", "TERM") and waits up to `timeout` for exit.
    /// Returns the exit status, or None if it had to be killed.
    pub fn signal_and_wait(
        &mut self,
        signal: &str,
        timeout: Duration,
    ) -> Option<std::process::ExitStatus> {
        let child = self.child.as_mut()?;
        let _ = Command::new("kill")
            .arg(format!("-{signal}"))
            .arg(child.id().to_string())
            .status();
        let deadline = Instant::now() + timeout;
        while Instant::now() < deadline {
            if let Ok(Some(status)) = child.try_wait() {
                self.child = None;
                return Some(status);
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        self.kill9();
        None
    }

    pub fn is_running(&mut self) -> bool {
        match self.child.as_mut() {
            Some(child) => matches!(child.try_wait(), Ok(None)),
            None => false,
        }
    }
}

impl PierProcess {
    /// As [`wait_http_ok`], but stops as soon as the process exits, and panics with its exit
    /// status and the end of its log, so a server that never came up says why.
    pub async fn wait_http_ok(&mut self, url: &str, timeout: Duration) {
        let name = self.name.clone();
        let child = &mut self.child;
        let exited = move || match child.as_mut().map(|c| c.try_wait()) {
            Some(Ok(Some(status))) => Some(format!("{name} exited ({status}) before answering")),
            _ => None,
        };
        if let Err(why) = poll_http_ok(url, timeout, exited).await {
            panic!(
                "{why}\n--- end of {}:\n{}",
                self.log_path.display(),
                self.log_tail(40)
            );
        }
    }

    /// The last `lines` lines of the child's log.
    pub fn log_tail(&self, lines: usize) -> String {
        let text = std::fs::read_to_string(&self.log_path).unwrap_or_default();
        let all: Vec<&str> = text.lines().collect();
        all[all.len().saturating_sub(lines)..].join("\n")
    }
}

impl Drop for PierProcess {
    fn drop(&mut self) {
        self.kill9();
    }
}

/// Polls `url` until it answers 2xx or `timeout` passes; panics with the last
/// error so the test output says why the server never came up.
pub async fn wait_http_ok(url: &str, timeout: Duration) {
    if let Err(why) = poll_http_ok(url, timeout, || None).await {
        panic!("{why}");
    }
}

/// The one wait for a server's first 2xx: gives up at `timeout`, or at once when `gone` says
/// the server is gone (and why); the error names the last answer or failure.
async fn poll_http_ok(
    url: &str,
    timeout: Duration,
    mut gone: impl FnMut() -> Option<String>,
) -> Result<(), String> {
    let client = reqwest::Client::new();
    let deadline = Instant::now() + timeout;
    let mut last = String::from("no attempt");
    while Instant::now() < deadline {
        match client.get(url).timeout(Duration::from_secs(2)).send().await {
            Ok(resp) if resp.status().is_success() => return Ok(()),
            Ok(resp) => last = format!("status {}", resp.status()),
            Err(e) => last = e.to_string(),
        }
        if let Some(why) = gone() {
            last = why;
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    Err(format!(
        "{url} did not answer 2xx within {timeout:?}: {last}"
    ))
}
