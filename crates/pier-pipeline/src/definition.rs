//! A pipeline definition as the user gives it, checked into a [`PipelineDef`] the rest of the
//! crate can trust. Only what can be judged from the text is checked here; whether the
//! repository, the branch and the files exist is checked against git at creation.

use std::collections::BTreeMap;
use std::path::{Component, Path, PathBuf};
use std::time::Duration;

use pier_api::pipeline::{PipelineCreate, PipelineInfo};

pub const DEFAULT_BRANCH: &str = "main";
pub const DEFAULT_SERVICE_FILE: &str = "pier.toml";
pub const DEFAULT_DOCKERFILE: &str = "Dockerfile";
pub const DEFAULT_POLL_INTERVAL: Duration = Duration::from_secs(10);
pub const MIN_POLL_INTERVAL: Duration = Duration::from_secs(1);
pub const MAX_POLL_INTERVAL: Duration = Duration::from_secs(24 * 3600);
pub const DEFAULT_KEEP_RUNS: u32 = 20;
pub const MAX_KEEP_RUNS: u32 = 1000;
const MAX_REPO_BYTES: usize = 2048;
const MAX_PATH_BYTES: usize = 255;
const MAX_BUILD_ARGS: usize = 64;
const MAX_SECRET_BYTES: usize = 256;

/// Where the repository lives.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum RepoSource {
    /// A repository on this server's file system (a path or a `file://` URL); read in place.
    Local(PathBuf),
    /// An `http://` remote; fetched into a cache under the data dir.
    Remote(String),
}

/// A checked pipeline definition.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PipelineDef {
    pub name: String,
    /// The repository as the user wrote it (shown back to them).
    pub repo: String,
    pub source: RepoSource,
    pub branch: String,
    pub file: String,
    pub dockerfile: String,
    /// `None`: polling off, webhook only.
    pub poll_interval: Option<Duration>,
    pub webhook_secret: Option<String>,
    pub build_args: BTreeMap<String, String>,
    pub keep_runs: u32,
}

impl PipelineDef {
    pub fn info(&self, created_at_ms: u64) -> PipelineInfo {
        PipelineInfo {
            name: self.name.clone(),
            repo: self.repo.clone(),
            branch: self.branch.clone(),
            file: self.file.clone(),
            dockerfile: self.dockerfile.clone(),
            poll_interval_ms: self.poll_interval.map(|d| d.as_millis() as u64),
            webhook: self.webhook_secret.is_some(),
            build_args: self.build_args.clone(),
            keep_runs: self.keep_runs,
            created_at_ms,
            last_run: None,
            poll_error: None,
        }
    }
}

/// Why a definition was refused; each message names the field and what would be accepted.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DefinitionError {
    #[error("pipeline name {0:?} must be 1-63 characters of a-z, 0-9 and '-', starting with a letter and not ending with '-'")]
    Name(String),
    #[error("repository {repo:?}: {reason}")]
    Repo { repo: String, reason: String },
    #[error("branch {branch:?} is not a valid git branch name: {reason}")]
    Branch { branch: String, reason: String },
    #[error(
        "{field} {path:?} must be a relative path inside the repository without '..': {reason}"
    )]
    Path {
        field: &'static str,
        path: String,
        reason: String,
    },
    #[error("poll interval {value:?}: {reason}")]
    Poll { value: String, reason: String },
    #[error("build argument {name:?}: {reason}")]
    BuildArg { name: String, reason: String },
    #[error("keep_runs = {0} must be between 1 and {MAX_KEEP_RUNS}")]
    KeepRuns(u32),
    #[error("webhook secret must be 1-{MAX_SECRET_BYTES} bytes")]
    Secret,
}

/// Checks a create request and fills in the defaults.
pub fn validate(req: &PipelineCreate) -> Result<PipelineDef, DefinitionError> {
    let name = req.name.trim().to_string();
    if !is_valid_name(&name) {
        return Err(DefinitionError::Name(req.name.clone()));
    }
    let repo = req.repo.trim().to_string();
    let source = parse_repo(&repo)?;
    let branch = req
        .branch
        .as_deref()
        .map(str::trim)
        .unwrap_or(DEFAULT_BRANCH)
        .to_string();
    check_branch(&branch)?;
    let file = check_repo_path(
        "service file",
        req.file.as_deref().unwrap_or(DEFAULT_SERVICE_FILE),
    )?;
    let dockerfile = check_repo_path(
        "dockerfile",
        req.dockerfile.as_deref().unwrap_or(DEFAULT_DOCKERFILE),
    )?;
    let poll_interval = match req.poll.as_deref() {
        None => Some(DEFAULT_POLL_INTERVAL),
        Some(text) => parse_poll(text)?,
    };
    let webhook_secret = match &req.webhook_secret {
        None => None,
        Some(s) if s.is_empty() || s.len() > MAX_SECRET_BYTES => {
            return Err(DefinitionError::Secret)
        }
        Some(s) => Some(s.clone()),
    };
    if req.build_args.len() > MAX_BUILD_ARGS {
        return Err(DefinitionError::BuildArg {
            name: String::new(),
            reason: format!("at most {MAX_BUILD_ARGS} build arguments"),
        });
    }
    for (k, v) in &req.build_args {
        check_build_arg(k, v)?;
    }
    let keep_runs = req.keep_runs.unwrap_or(DEFAULT_KEEP_RUNS);
    if keep_runs == 0 || keep_runs > MAX_KEEP_RUNS {
        return Err(DefinitionError::KeepRuns(keep_runs));
    }
    Ok(PipelineDef {
        name,
        repo,
        source,
        branch,
        file,
        dockerfile,
        poll_interval,
        webhook_secret,
        build_args: req.build_args.clone(),
        keep_runs,
    })
}

pub fn is_valid_name(name: &str) -> bool {
    let b = name.as_bytes();
    !b.is_empty()
        && b.len() <= 63
        && b[0].is_ascii_lowercase()
        && b[b.len() - 1] != b'-'
        && b.iter()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || *c == b'-')
}

fn repo_err(repo: &str, reason: impl Into<String>) -> DefinitionError {
    DefinitionError::Repo {
        repo: repo.to_string(),
        reason: reason.into(),
    }
}

/// `http://…` or `https://…` → remote; `file://PATH` or an absolute path → local.
pub fn parse_repo(repo: &str) -> Result<RepoSource, DefinitionError> {
    if repo.is_empty() {
        return Err(repo_err(repo, "must not be empty"));
    }
    if repo.len() > MAX_REPO_BYTES {
        return Err(repo_err(
            repo,
            format!("longer than {MAX_REPO_BYTES} bytes"),
        ));
    }
    if repo.chars().any(|c| c.is_control()) {
        return Err(repo_err(repo, "contains control characters"));
    }
    let lower = repo.to_ascii_lowercase();
    if lower.starts_with("http://") || lower.starts_with("https://") {
        let rest = &repo[repo.find("://").map_or(0, |i| i + 3)..];
        let host = rest.split('/').next().unwrap_or("");
        if host.is_empty() || host.contains(char::is_whitespace) {
            return Err(repo_err(repo, "the URL has no host"));
        }
        if rest.split('/').nth(1).is_none_or(str::is_empty) {
            return Err(repo_err(repo, "the URL has no repository path"));
        }
        return Ok(RepoSource::Remote(repo.to_string()));
    }
    if let Some(path) = repo.strip_prefix("file://") {
        let path = Path::new(path);
        if !path.is_absolute() {
            return Err(repo_err(
                repo,
                "a file:// URL needs an absolute path (file:///srv/repo)",
            ));
        }
        return Ok(RepoSource::Local(path.to_path_buf()));
    }
    if let Some((scheme, _)) = repo.split_once("://") {
        return Err(repo_err(
            repo,
            format!("scheme {scheme:?} is not supported; use a path, file://, http:// or https://"),
        ));
    }
    let path = Path::new(repo);
    if !path.is_absolute() {
        if repo.contains('@') && repo.contains(':') {
            return Err(repo_err(
                repo,
                "ssh remotes are not supported; use a path, file://, http:// or https://",
            ));
        }
        return Err(repo_err(
            repo,
            "a local repository must be given as an absolute path (the CLI resolves relative paths)",
        ));
    }
    Ok(RepoSource::Local(path.to_path_buf()))
}

/// The rules of `git check-ref-format` that matter for a branch name.
pub fn check_branch(branch: &str) -> Result<(), DefinitionError> {
    let fail = |reason: &str| {
        Err(DefinitionError::Branch {
            branch: branch.to_string(),
            reason: reason.to_string(),
        })
    };
    if branch.is_empty() {
        return fail("it is empty");
    }
    if branch.len() > 200 {
        return fail("it is longer than 200 bytes");
    }
    if branch.starts_with('/') || branch.ends_with('/') || branch.contains("//") {
        return fail("it must not start or end with '/' or contain '//'");
    }
    if branch.starts_with('-') {
        return fail("it must not start with '-'");
    }
    if branch.ends_with('.') || branch.contains("..") || branch.contains("@{") || branch == "@" {
        return fail("it must not end with '.' or contain '..' or '@{'");
    }
    if branch
        .split('/')
        .any(|part| part.starts_with('.') || part.ends_with(".lock"))
    {
        return fail("no part may start with '.' or end with '.lock'");
    }
    if branch
        .chars()
        .any(|c| c.is_control() || c == ' ' || "~^:?*[\\".contains(c))
    {
        return fail("it must not contain spaces, control characters or any of ~ ^ : ? * [ \\");
    }
    Ok(())
}

fn check_repo_path(field: &'static str, path: &str) -> Result<String, DefinitionError> {
    let fail = |reason: &str| {
        Err(DefinitionError::Path {
            field,
            path: path.to_string(),
            reason: reason.to_string(),
        })
    };
    let trimmed = path.trim();
    if trimmed.is_empty() {
        return fail("it is empty");
    }
    if trimmed.len() > MAX_PATH_BYTES {
        return fail("it is too long");
    }
    if trimmed.contains('\\') || trimmed.chars().any(char::is_control) {
        return fail("it contains a backslash or a control character");
    }
    let p = Path::new(trimmed);
    if p.is_absolute() {
        return fail("it is absolute");
    }
    if !p
        .components()
        .all(|c| matches!(c, Component::Normal(_) | Component::CurDir))
    {
        return fail("it leaves the repository");
    }
    let normal: Vec<&str> = p
        .components()
        .filter_map(|c| match c {
            Component::Normal(s) => s.to_str(),
            _ => None,
        })
        .collect();
    if normal.is_empty() {
        return fail("it names no file");
    }
    Ok(normal.join("/"))
}

/// `10s`, `1m30s`, `off`.
pub fn parse_poll(text: &str) -> Result<Option<Duration>, DefinitionError> {
    let t = text.trim();
    if matches!(t, "off" | "none" | "0" | "never") {
        return Ok(None);
    }
    let fail = |reason: String| {
        Err(DefinitionError::Poll {
            value: text.to_string(),
            reason,
        })
    };
    let d = match humantime::parse_duration(t) {
        Ok(d) => d,
        Err(e) => return fail(format!("{e}; write it like \"10s\", \"2m\" or \"off\"")),
    };
    if d < MIN_POLL_INTERVAL || d > MAX_POLL_INTERVAL {
        return fail("must be between 1s and 24h, or \"off\"".to_string());
    }
    Ok(Some(d))
}

fn check_build_arg(name: &str, value: &str) -> Result<(), DefinitionError> {
    let fail = |reason: &str| {
        Err(DefinitionError::BuildArg {
            name: name.to_string(),
            reason: reason.to_string(),
        })
    };
    let b = name.as_bytes();
    if b.is_empty() || b.len() > 128 || b[0].is_ascii_digit() {
        return fail("the name must be 1-128 characters and not start with a digit");
    }
    if !b.iter().all(|c| c.is_ascii_alphanumeric() || *c == b'_') {
        return fail("the name may only contain letters, digits and '_'");
    }
    if value.len() > 4096 || value.contains('\0') {
        return fail("the value must be at most 4096 bytes without NUL");
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn req(name: &str, repo: &str) -> PipelineCreate {
        PipelineCreate {
            name: name.into(),
            repo: repo.into(),
            branch: None,
            file: None,
            dockerfile: None,
            poll: None,
            webhook_secret: None,
            build_args: BTreeMap::new(),
            keep_runs: None,
        }
    }

    #[test]
    fn defaults_are_filled() {
        let d = validate(&req("hello", "/srv/hello")).unwrap();
        assert_eq!(d.branch, "main");
        assert_eq!(d.file, "pier.toml");
        assert_eq!(d.dockerfile, "Dockerfile");
        assert_eq!(d.poll_interval, Some(Duration::from_secs(10)));
        assert_eq!(d.keep_runs, 20);
        assert_eq!(d.source, RepoSource::Local("/srv/hello".into()));
        assert!(d.webhook_secret.is_none());
    }

    #[test]
    fn repo_forms() {
        assert_eq!(
            parse_repo("file:///srv/x").unwrap(),
            RepoSource::Local("/srv/x".into())
        );
        assert_eq!(
            parse_repo("http://git.example/a/b.git").unwrap(),
            RepoSource::Remote("http://git.example/a/b.git".into())
        );
        assert_eq!(
            parse_repo("https://git.example/a/b.git").unwrap(),
            RepoSource::Remote("https://git.example/a/b.git".into())
        );
        assert!(matches!(
            parse_repo("https:///a/b.git"),
            Err(DefinitionError::Repo { .. })
        ));
        assert!(matches!(
            parse_repo("http://host"),
            Err(DefinitionError::Repo { .. })
        ));
        assert!(matches!(
            parse_repo("relative/dir"),
            Err(DefinitionError::Repo { .. })
        ));
        assert!(matches!(
            parse_repo("ssh://h/r"),
            Err(DefinitionError::Repo { .. })
        ));
        let e = parse_repo("git@github.com:a/b.git").unwrap_err();
        assert!(e.to_string().contains("ssh"), "{e}");
        assert!(parse_repo("file://rel").is_err());
        assert!(parse_repo("").is_err());
    }

    #[test]
    fn names() {
        for ok in ["a", "hello", "web-2"] {
            assert!(is_valid_name(ok), "{ok}");
        }
        for bad in ["", "2web", "Web", "a_b", "a-", &"a".repeat(64)] {
            assert!(!is_valid_name(bad), "{bad}");
        }
        assert!(matches!(
            validate(&req("Bad", "/r")),
            Err(DefinitionError::Name(_))
        ));
    }

    #[test]
    fn branches() {
        for ok in ["main", "release/1.2", "feature-x"] {
            check_branch(ok).unwrap();
        }
        for bad in [
            "", "/a", "a/", "a//b", "a..b", "a.lock", "a b", "a~1", "a^", "a:b", "-x", ".hidden",
            "@", "x@{y",
        ] {
            assert!(check_branch(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn repo_paths() {
        assert_eq!(
            check_repo_path("f", "./deploy/pier.toml").unwrap(),
            "deploy/pier.toml"
        );
        for bad in ["", "/etc/passwd", "../x", "a/../../b", "a\\b", "."] {
            assert!(check_repo_path("f", bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn polls() {
        assert_eq!(parse_poll("off").unwrap(), None);
        assert_eq!(parse_poll("2m").unwrap(), Some(Duration::from_secs(120)));
        assert!(parse_poll("100ms").is_err());
        assert!(parse_poll("3d").is_err());
        assert!(parse_poll("soon").is_err());
    }

    #[test]
    fn build_args_and_keep() {
        let mut r = req("a", "/r");
        r.build_args.insert("VERSION".into(), "1".into());
        validate(&r).unwrap();
        r.build_args.insert("BAD-NAME".into(), "1".into());
        assert!(matches!(
            validate(&r),
            Err(DefinitionError::BuildArg { .. })
        ));
        let mut r = req("a", "/r");
        r.keep_runs = Some(0);
        assert!(matches!(validate(&r), Err(DefinitionError::KeepRuns(0))));
        r.keep_runs = Some(5);
        r.webhook_secret = Some(String::new());
        assert!(matches!(validate(&r), Err(DefinitionError::Secret)));
    }
}
