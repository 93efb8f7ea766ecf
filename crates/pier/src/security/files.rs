//! What a secure node keeps on its disk, under `DATA_DIR/tls/`:
//!
//! | file | mode | what |
//! |---|---|---|
//! | `ca.crt` | 0644 | the CA certificate(s) this node trusts (two during a rotation) |
//! | `ca.key` | 0600 | the CA key (servers only) |
//! | `node.crt`, `node.key` | 0644, 0600 | this node's certificate and key |
//! | `server.token`, `agent.token` | 0600 | join tokens (servers) |
//! | `management.token` | 0600 | the first management API token (first server only) |
//!
//! Every file is written temp → fsync → rename → fsync of the directory.

use std::io::Write;
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};

use anyhow::Context;

pub const CA_CERT: &str = "ca.crt";
pub const CA_KEY: &str = "ca.key";
pub const NODE_CERT: &str = "node.crt";
pub const NODE_KEY: &str = "node.key";
pub const SERVER_TOKEN: &str = "server.token";
pub const AGENT_TOKEN: &str = "agent.token";
pub const MANAGEMENT_TOKEN: &str = "management.token";

/// The `tls` directory of a data directory.
#[derive(Clone, Debug)]
pub struct TlsDir(PathBuf);

impl TlsDir {
    pub fn new(data_dir: &Path) -> TlsDir {
        TlsDir(data_dir.join("tls"))
    }

    pub fn path(&self, name: &str) -> PathBuf {
        self.0.join(name)
    }

    pub fn exists(&self, name: &str) -> bool {
        self.path(name).is_file()
    }

    pub fn read(&self, name: &str) -> anyhow::Result<String> {
        let p = self.path(name);
        std::fs::read_to_string(&p).with_context(|| format!("cannot read {}", p.display()))
    }

    pub fn read_opt(&self, name: &str) -> anyhow::Result<Option<String>> {
        if self.exists(name) {
            self.read(name).map(Some)
        } else {
            Ok(None)
        }
    }

    /// Writes `text` with `mode` (0600 for anything secret).
    pub fn write(&self, name: &str, text: &str, mode: u32) -> anyhow::Result<()> {
        std::fs::create_dir_all(&self.0)
            .with_context(|| format!("cannot create {}", self.0.display()))?;
        std::fs::set_permissions(&self.0, std::fs::Permissions::from_mode(0o700))
            .with_context(|| format!("cannot restrict {}", self.0.display()))?;
        let path = self.path(name);
        let tmp = self.path(&format!(".{name}.tmp"));
        {
            let mut f = std::fs::OpenOptions::new()
                .write(true)
                .create(true)
                .truncate(true)
                .mode(mode)
                .open(&tmp)
                .with_context(|| format!("cannot write {}", tmp.display()))?;
            f.write_all(text.as_bytes())?;
            f.sync_all()?;
        }
        std::fs::rename(&tmp, &path).with_context(|| format!("cannot write {}", path.display()))?;
        std::fs::File::open(&self.0)
            .and_then(|d| d.sync_all())
            .with_context(|| format!("cannot sync {}", self.0.display()))?;
        Ok(())
    }
}
