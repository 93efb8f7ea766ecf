//! Reading repositories with gix: resolve a branch head, find a commit, read one file of a
//! commit, and turn a commit's tree into the tar the Docker build API takes.
//!
//! Local repositories (a path or `file://`) are read in place; nothing is written to them.
//! Remote ones (`http(s)://`) are fetched into a bare cache repository per URL under the
//! data dir. Everything here blocks: call it from `spawn_blocking`.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::atomic::AtomicBool;
use std::sync::{Arc, Mutex};

use gix::bstr::ByteSlice;
use sha2::{Digest, Sha256};

use crate::definition::RepoSource;
use crate::dockerignore::IgnoreRules;

/// Build contexts larger than this are refused (they are held in memory while sent).
pub const MAX_CONTEXT_BYTES: u64 = 512 * 1024 * 1024;

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum GitError {
    #[error("repository {repo} cannot be opened: {detail}")]
    Open { repo: String, detail: String },
    #[error("fetching {repo} failed: {detail}")]
    Fetch { repo: String, detail: String },
    #[error("branch {branch:?} does not exist in {repo}")]
    NoBranch { repo: String, branch: String },
    #[error("commit {commit} does not exist in {repo}")]
    NoCommit { repo: String, commit: String },
    #[error("commit prefix {prefix} is ambiguous in {repo}; give more digits")]
    Ambiguous { repo: String, prefix: String },
    #[error("{path} does not exist in commit {commit}")]
    NoFile { path: String, commit: String },
    #[error("{path} in commit {commit} is not a regular file")]
    NotAFile { path: String, commit: String },
    #[error("the build context of commit {commit} is larger than {MAX_CONTEXT_BYTES} bytes")]
    ContextTooLarge { commit: String },
    #[error("reading {repo} failed: {detail}")]
    Read { repo: String, detail: String },
}

/// A resolved commit.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CommitInfo {
    /// Full hex id.
    pub id: String,
    /// First line of the message.
    pub subject: String,
}

/// Opens and fetches repositories; one per server, shared by the poller and the runs.
#[derive(Clone)]
pub struct GitRepos {
    cache_dir: PathBuf,
    /// One lock per remote URL so two fetches never write the same cache repository at once.
    fetch_locks: Arc<Mutex<HashMap<String, Arc<Mutex<()>>>>>,
}

/// An opened repository and where its branch refs are.
pub struct OpenRepo {
    repo: gix::Repository,
    display: String,
    /// `refs/heads/` for local repositories, `refs/remotes/origin/` for fetched ones.
    branch_prefix: &'static str,
}

impl GitRepos {
    pub fn new(cache_dir: impl Into<PathBuf>) -> GitRepos {
        GitRepos {
            cache_dir: cache_dir.into(),
            fetch_locks: Arc::default(),
        }
    }

    /// Opens a local repository, or fetches `branch` of a remote one into its cache first.
    pub fn open(&self, source: &RepoSource, branch: &str) -> Result<OpenRepo, GitError> {
        match source {
            RepoSource::Local(path) => open_local(path),
            RepoSource::Remote(url) => self.fetch_remote(url, branch),
        }
    }

    fn fetch_remote(&self, url: &str, branch: &str) -> Result<OpenRepo, GitError> {
        let lock = {
            let mut locks = self.fetch_locks.lock().unwrap_or_else(|p| p.into_inner());
            locks.entry(url.to_string()).or_default().clone()
        };
        let _guard = lock.lock().unwrap_or_else(|p| p.into_inner());
        let fetch_err = |detail: String| GitError::Fetch {
            repo: url.to_string(),
            detail,
        };
        let dir = self
            .cache_dir
            .join(hex::encode(&Sha256::digest(url.as_bytes())[..12]));
        let repo = if dir.join("HEAD").exists() {
            gix::open_opts(&dir, gix::open::Options::isolated())
                .map_err(|e| fetch_err(format!("cache {}: {e}", dir.display())))?
        } else {
            std::fs::create_dir_all(&self.cache_dir)
                .map_err(|e| fetch_err(format!("cache dir {}: {e}", self.cache_dir.display())))?;
            // Initialise beside the final place and rename, so a crash never leaves a half-made
            // cache repository that later opens fail on.
            let tmp = tempfile::Builder::new()
                .prefix(".init-")
                .tempdir_in(&self.cache_dir)
                .map_err(|e| fetch_err(format!("cache dir {}: {e}", self.cache_dir.display())))?;
            gix::init_bare(tmp.path()).map_err(|e| fetch_err(format!("init cache: {e}")))?;
            let tmp_path = tmp.keep();
            std::fs::rename(&tmp_path, &dir)
                .map_err(|e| fetch_err(format!("cache {}: {e}", dir.display())))?;
            gix::open_opts(&dir, gix::open::Options::isolated())
                .map_err(|e| fetch_err(format!("cache {}: {e}", dir.display())))?
        };
        // All branches: a refspec naming only `branch` makes the fetch itself fail when the
        // branch is missing, and the advertisement below gives the clearer error.
        let spec = "+refs/heads/*:refs/remotes/origin/*";
        let remote = repo
            .remote_at(url)
            .and_then(|r| r.with_refspecs([spec], gix::remote::Direction::Fetch))
            .map_err(|e| fetch_err(e.to_string()))?;
        let connection = remote
            .connect(gix::remote::Direction::Fetch)
            .map_err(|e| fetch_err(chain(&e)))?;
        let prepared = connection
            .prepare_fetch(gix::progress::Discard, Default::default())
            .map_err(|e| fetch_err(chain(&e)))?;
        let interrupt = AtomicBool::new(false);
        let outcome = prepared
            .receive(gix::progress::Discard, &interrupt)
            .map_err(|e| fetch_err(chain(&e)))?;
        let wanted = format!("refs/heads/{branch}");
        let advertised = outcome.ref_map.remote_refs.iter().any(|r| {
            let (name, _, _) = r.unpack();
            name.to_str().ok() == Some(wanted.as_str())
        });
        if !advertised {
            return Err(GitError::NoBranch {
                repo: url.to_string(),
                branch: branch.to_string(),
            });
        }
        Ok(OpenRepo {
            repo,
            display: url.to_string(),
            branch_prefix: "refs/remotes/origin/",
        })
    }
}

/// The messages of an error and its causes, without repeats: gix nests its errors deeply and
/// their debug form is unreadable.
fn chain(e: &(dyn std::error::Error + 'static)) -> String {
    let mut parts: Vec<String> = Vec::new();
    let mut cur: Option<&(dyn std::error::Error + 'static)> = Some(e);
    while let Some(err) = cur {
        let text = err.to_string();
        if !text.is_empty() && !parts.iter().any(|p| p.contains(&text)) {
            parts.push(text);
        }
        cur = err.source();
    }
    parts.join(": ")
}

fn open_local(path: &Path) -> Result<OpenRepo, GitError> {
    let display = path.display().to_string();
    if !path.exists() {
        return Err(GitError::Open {
            repo: display,
            detail: "no such directory".to_string(),
        });
    }
    let repo =
        gix::open_opts(path, gix::open::Options::isolated()).map_err(|e| GitError::Open {
            repo: display.clone(),
            detail: chain(&e),
        })?;
    Ok(OpenRepo {
        repo,
        display,
        branch_prefix: "refs/heads/",
    })
}

impl OpenRepo {
    fn read_err(&self, e: impl std::fmt::Display) -> GitError {
        GitError::Read {
            repo: self.display.clone(),
            detail: e.to_string(),
        }
    }

    /// The commit `branch` points to.
    pub fn branch_head(&self, branch: &str) -> Result<CommitInfo, GitError> {
        let name = format!("{}{branch}", self.branch_prefix);
        let mut reference = match self.repo.try_find_reference(name.as_str()) {
            Ok(Some(r)) => r,
            Ok(None) => {
                return Err(GitError::NoBranch {
                    repo: self.display.clone(),
                    branch: branch.to_string(),
                })
            }
            Err(e) => return Err(self.read_err(e)),
        };
        let id = reference
            .peel_to_id()
            .map_err(|e| self.read_err(chain(&e)))?
            .detach();
        self.commit_info(id)
    }

    /// A commit by full id or unique prefix (at least 4 hex digits).
    pub fn find_commit(&self, spec: &str) -> Result<CommitInfo, GitError> {
        let spec = spec.trim().to_ascii_lowercase();
        let no_commit = || GitError::NoCommit {
            repo: self.display.clone(),
            commit: spec.clone(),
        };
        if spec.len() < 4 || spec.len() > 64 || !spec.bytes().all(|b| b.is_ascii_hexdigit()) {
            return Err(no_commit());
        }
        let id = match gix::ObjectId::from_hex(spec.as_bytes()) {
            Ok(id) => id,
            Err(_) => {
                let prefix = gix::hash::Prefix::from_hex(&spec).map_err(|_| no_commit())?;
                match self.repo.objects.lookup_prefix(prefix, None) {
                    Ok(Some(Ok(id))) => id,
                    Ok(Some(Err(()))) => {
                        return Err(GitError::Ambiguous {
                            repo: self.display.clone(),
                            prefix: spec.clone(),
                        })
                    }
                    Ok(None) => return Err(no_commit()),
                    Err(e) => return Err(self.read_err(e)),
                }
            }
        };
        self.commit_info(id)
    }

    fn commit_info(&self, id: gix::ObjectId) -> Result<CommitInfo, GitError> {
        let commit = match self.repo.try_find_object(id) {
            Ok(Some(obj)) => obj.try_into_commit().map_err(|_| GitError::NoCommit {
                repo: self.display.clone(),
                commit: id.to_string(),
            })?,
            Ok(None) => {
                return Err(GitError::NoCommit {
                    repo: self.display.clone(),
                    commit: id.to_string(),
                })
            }
            Err(e) => return Err(self.read_err(e)),
        };
        let subject = commit
            .message_raw_sloppy()
            .lines()
            .next()
            .map(|l| l.to_str_lossy().trim().to_string())
            .unwrap_or_default();
        Ok(CommitInfo {
            id: id.to_string(),
            subject,
        })
    }

    fn tree_of(&self, commit: &str) -> Result<gix::Tree<'_>, GitError> {
        let id = gix::ObjectId::from_hex(commit.as_bytes()).map_err(|_| GitError::NoCommit {
            repo: self.display.clone(),
            commit: commit.to_string(),
        })?;
        let c = self.repo.find_commit(id).map_err(|_| GitError::NoCommit {
            repo: self.display.clone(),
            commit: commit.to_string(),
        })?;
        c.tree().map_err(|e| self.read_err(e))
    }

    /// The bytes of the regular file `path` in `commit` (full id).
    pub fn read_file(&self, commit: &str, path: &str) -> Result<Vec<u8>, GitError> {
        let tree = self.tree_of(commit)?;
        let entry = tree
            .lookup_entry_by_path(path)
            .map_err(|e| self.read_err(e))?
            .ok_or_else(|| GitError::NoFile {
                path: path.to_string(),
                commit: commit.to_string(),
            })?;
        if !entry.mode().is_blob() {
            return Err(GitError::NotAFile {
                path: path.to_string(),
                commit: commit.to_string(),
            });
        }
        let obj = entry.object().map_err(|e| self.read_err(e))?;
        Ok(obj.detach().data)
    }

    /// The tree of `commit` as an uncompressed tar: the build context. Submodules are left
    /// out (their content is not in this repository).
    /// `.dockerignore` at the root is applied as the Docker CLI would; the Dockerfile and
    /// `.dockerignore` itself are always sent (the builder needs them).
    pub fn context_tar(&self, commit: &str, dockerfile: &str) -> Result<Vec<u8>, GitError> {
        let tree = self.tree_of(commit)?;
        let ignore = match self.read_file(commit, ".dockerignore") {
            Ok(bytes) => Some(IgnoreRules::parse(&String::from_utf8_lossy(&bytes))),
            Err(GitError::NoFile { .. }) | Err(GitError::NotAFile { .. }) => None,
            Err(e) => return Err(e),
        };
        let files = tree
            .traverse()
            .breadthfirst
            .files()
            .map_err(|e| self.read_err(e))?;
        let mut out = tar::Builder::new(Vec::new());
        let mut total: u64 = 0;
        for entry in files {
            let path = entry.filepath.to_str_lossy().to_string();
            // Git refuses such names, but the tree comes from outside: keep the tar inside.
            if path
                .split('/')
                .any(|c| c.is_empty() || c == "." || c == ".." || c.eq_ignore_ascii_case(".git"))
            {
                continue;
            }
            if let Some(rules) = &ignore {
                let always = path == dockerfile || path == ".dockerignore";
                let is_dir = entry.mode.kind() == gix::object::tree::EntryKind::Tree;
                // A directory stays when exceptions may re-include something below it.
                if !always && rules.is_excluded(&path) && !(is_dir && rules.has_exceptions()) {
                    continue;
                }
            }
            let mut header = tar::Header::new_gnu();
            header.set_mtime(0);
            header.set_uid(0);
            header.set_gid(0);
            let kind = entry.mode.kind();
            use gix::object::tree::EntryKind;
            match kind {
                EntryKind::Tree => {
                    header.set_entry_type(tar::EntryType::Directory);
                    header.set_mode(0o755);
                    header.set_size(0);
                    out.append_data(&mut header, format!("{path}/"), std::io::empty())
                        .map_err(|e| self.read_err(e))?;
                }
                EntryKind::Blob | EntryKind::BlobExecutable => {
                    let data = self
                        .repo
                        .find_object(entry.oid)
                        .map_err(|e| self.read_err(e))?
                        .detach()
                        .data;
                    total += data.len() as u64;
                    if total > MAX_CONTEXT_BYTES {
                        return Err(GitError::ContextTooLarge {
                            commit: commit.to_string(),
                        });
                    }
                    header.set_entry_type(tar::EntryType::Regular);
                    header.set_mode(if kind == EntryKind::BlobExecutable {
                        0o755
                    } else {
                        0o644
                    });
                    header.set_size(data.len() as u64);
                    out.append_data(&mut header, &path, data.as_slice())
                        .map_err(|e| self.read_err(e))?;
                }
                EntryKind::Link => {
                    let target = self
                        .repo
                        .find_object(entry.oid)
                        .map_err(|e| self.read_err(e))?
                        .detach()
                        .data;
                    header.set_entry_type(tar::EntryType::Symlink);
                    header.set_mode(0o777);
                    header.set_size(0);
                    out.append_link(&mut header, &path, target.to_str_lossy().as_ref())
                        .map_err(|e| self.read_err(e))?;
                }
                EntryKind::Commit => {}
            }
        }
        out.into_inner().map_err(|e| self.read_err(e))
    }
}
