//! Child processes of the `pier` binary that are killed (SIGKILL) when dropped,
//! so a failing test never leaves a server behind.

use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

pub struct PierProcess {
    child: Option<Child>,
    pub name: String,
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

impl Drop for PierProcess {
    fn drop(&mut self) {
        self.kill9();
    }
}

/// Polls `url` until it answers 2xx or `timeout` passes; panics with the last
/// error so the test output says why the server never came up.
pub async fn wait_http_ok(url: &str, timeout: Duration) {
    let client = reqwest::Client::new();
    let deadline = Instant::now() + timeout;
    let mut last = String::from("no attempt");
    while Instant::now() < deadline {
        match client.get(url).timeout(Duration::from_secs(2)).send().await {
            Ok(resp) if resp.status().is_success() => return,
            Ok(resp) => last = format!("status {}", resp.status()),
            Err(e) => last = e.to_string(),
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    panic!("{url} did not answer 2xx within {timeout:?}: {last}");
}
