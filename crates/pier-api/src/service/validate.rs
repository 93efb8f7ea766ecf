//! From the file users write to the normalised [`ServiceSpec`] every revision stores: every
//! default filled in, every value range-checked, every error pointing at its line and column.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt;
use std::ops::Range;

use serde::{Deserialize, Serialize};
use toml::Spanned;

use super::file::{IntOrString, ServiceFile};
use super::units::{parse_duration_ms, parse_memory_mb};

/// The largest `count` accepted unless the server is configured otherwise.
pub const DEFAULT_MAX_COUNT: u32 = 1000;

/// Server-side limits applied while validating.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Limits {
    pub max_count: u32,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            max_count: DEFAULT_MAX_COUNT,
        }
    }
}

/// A service file that cannot be used: what is wrong and, when known, where.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub struct SpecError {
    pub message: String,
    pub line: Option<usize>,
    pub column: Option<usize>,
}

impl fmt::Display for SpecError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match (self.line, self.column) {
            (Some(line), Some(col)) => write!(f, "line {line}, column {col}: {}", self.message),
            _ => f.write_str(&self.message),
        }
    }
}

/// A count or a percentage of the desired count.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case", deny_unknown_fields)]
pub enum Amount {
    Count(u32),
    Percent(u32),
}

impl Amount {
    /// The amount for a service of `count` tasks; percentages round up when `round_up`.
    pub fn resolve(self, count: u32, round_up: bool) -> u32 {
        match self {
            Amount::Count(n) => n,
            Amount::Percent(p) => {
                let scaled = u64::from(count) * u64::from(p);
                let v = if round_up {
                    scaled.div_ceil(100)
                } else {
                    scaled / 100
                };
                u32::try_from(v).unwrap_or(u32::MAX)
            }
        }
    }
}

impl fmt::Display for Amount {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Amount::Count(n) => write!(f, "{n}"),
            Amount::Percent(p) => write!(f, "{p}%"),
        }
    }
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case", deny_unknown_fields)]
pub enum HealthKind {
    Http { path: String, port: u16 },
    Tcp { port: u16 },
    Command { argv: Vec<String> },
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct HealthSpec {
    pub kind: HealthKind,
    pub interval_ms: u64,
    pub timeout_ms: u64,
    pub retries: u32,
    pub start_period_ms: u64,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DeploySpec {
    pub max_surge: Amount,
    pub max_unavailable: Amount,
    pub auto_rollback: bool,
    /// `None`: half the desired count, at least 1 (decided when a deployment starts).
    pub failure_threshold: Option<u32>,
    pub min_healthy_time_ms: u64,
    pub drain_delay_ms: u64,
    pub healthy_deadline_ms: u64,
    /// `user:group` the process runs as; None: the image's.
    #[serde(default)]
    pub user: Option<String>,
    #[serde(default)]
    pub read_only_root: bool,
    /// Capability names without `CAP_`, upper case (`ALL` drops every one).
    #[serde(default)]
    pub cap_drop: Vec<String>,
}

impl Default for DeploySpec {
    fn default() -> Self {
        DeploySpec {
            max_surge: Amount::Percent(25),
            max_unavailable: Amount::Count(0),
            auto_rollback: true,
            failure_threshold: None,
            min_healthy_time_ms: 3_000,
            drain_delay_ms: 2_000,
            healthy_deadline_ms: 120_000,
            user: None,
            read_only_root: false,
            cap_drop: Vec::new(),
        }
    }
}

#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum PlacementStrategy {
    #[default]
    Spread,
    BinpackMemory,
    BinpackCpu,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ConstraintOp {
    Eq,
    Ne,
    In,
}

/// `target op values`: target is `attr.<key>`, `node.zone` or `node.id`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ConstraintSpec {
    pub target: String,
    pub op: ConstraintOp,
    pub values: Vec<String>,
}

impl fmt::Display for ConstraintSpec {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.op {
            ConstraintOp::Eq => write!(f, "{} == {}", self.target, self.values.join("")),
            ConstraintOp::Ne => write!(f, "{} != {}", self.target, self.values.join("")),
            ConstraintOp::In => write!(f, "{} in [{}]", self.target, self.values.join(", ")),
        }
    }
}

#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PlacementSpec {
    pub strategy: PlacementStrategy,
    pub constraints: Vec<ConstraintSpec>,
    pub distinct_node: bool,
    /// Empty: every zone.
    pub zones: Vec<String>,
}

/// A validated service with every default filled in. Two files that mean the same thing give
/// equal specs, which is how a deploy of an unchanged file is recognised as a no-op.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ServiceSpec {
    pub name: String,
    pub image: String,
    /// `image` resolved at deploy to the manifest it named then (`name:tag@sha256:…`):
    /// what agents run, so every task of a revision (and a rollback to it) runs the same
    /// bytes. None when it could not be resolved (then agents run `image`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pinned_image: Option<String>,
    pub count: u32,
    pub command: Option<Vec<String>>,
    pub args: Option<Vec<String>>,
    pub env: BTreeMap<String, String>,
    /// The `env_file` the service file named (its variables are in `env`, below `[env]`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub env_file: Option<String>,
    pub ports: Vec<u16>,
    pub cpu_millis: u64,
    pub memory_mb: u64,
    pub health: Option<HealthSpec>,
    pub deploy: DeploySpec,
    pub placement: PlacementSpec,
    pub stop_signal: String,
    pub stop_timeout_ms: u64,
    pub route: String,
    /// `https = "redirect"`: the gateway answers plain HTTP to the route with 308 to HTTPS.
    #[serde(default)]
    pub https_redirect: bool,
    /// `hsts = true`: `Strict-Transport-Security` on the route's HTTPS responses.
    #[serde(default)]
    pub hsts: bool,
    /// `tls = "acme"`: the route's certificate comes from the cluster's ACME directory.
    #[serde(default)]
    pub tls_acme: bool,
    /// Services this one calls (`needs`), sorted, without duplicates.
    #[serde(default)]
    pub needs: Vec<String>,
    /// Secrets given as environment variables: variable name → secret name.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub secrets: BTreeMap<String, String>,
    /// Secrets mounted as files at `/run/secrets/<name>`, sorted, without duplicates.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub secret_files: Vec<String>,
    /// The version of every secret the revision uses, recorded by the server at deploy: a new
    /// version of a secret makes a new revision, so the service's tasks are replaced.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub secret_versions: BTreeMap<String, u64>,
    /// `[[volumes]]`, in file order.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub volumes: Vec<VolumeSpec>,
    /// `[files]`, sorted by path.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub files: Vec<FileSpec>,
}

/// The most `[files]` entries a service may have.
pub const MAX_FILES: usize = 16;
/// The largest template text of one `[files]` entry.
pub const MAX_TEMPLATE_BYTES: usize = 64 * 1024;

/// A small file rendered from a template into the container, and rendered again whenever
/// what the template reads changes.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FileSpec {
    /// Where the file is in the container (a clean absolute path, not directly under `/`).
    pub path: String,
    /// The template text (parsed at deploy: it is known to be valid).
    pub template: String,
    pub on_change: OnChange,
}

impl FileSpec {
    /// The file's directory in the container (the agent mounts one host directory per
    /// distinct directory, so a rendered file can be replaced by rename).
    pub fn dir(&self) -> &str {
        self.path.rsplit_once('/').map(|(d, _)| d).unwrap_or("")
    }

    /// The file's name within its directory.
    pub fn file_name(&self) -> &str {
        self.path
            .rsplit_once('/')
            .map(|(_, f)| f)
            .unwrap_or(&self.path)
    }
}

/// What the agent does to a running task once one of its files was rendered anew.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum OnChange {
    /// Restart the container (its stop signal, then start again): the default, as Nomad's
    /// `change_mode`, because most programs read their configuration only at start.
    #[default]
    Restart,
    /// Send this signal (e.g. SIGHUP) to the container's main process.
    Signal(String),
    /// Only replace the file; the program watches it itself.
    None,
}

impl fmt::Display for OnChange {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            OnChange::Restart => f.write_str("restart"),
            OnChange::Signal(s) => write!(f, "signal:{s}"),
            OnChange::None => f.write_str("none"),
        }
    }
}

/// A mount of a task's container.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case", tag = "kind")]
pub enum VolumeSpec {
    /// A volume the agent creates on its node and keeps across task restarts and rollouts;
    /// the service's tasks are placed on the node that holds it.
    Named {
        name: String,
        target: String,
        read_only: bool,
    },
    /// A directory of the host, only under one of the node's `--volume-root`s.
    Host {
        source: String,
        target: String,
        read_only: bool,
    },
    /// A tmpfs, gone with the container.
    Tmpfs {
        target: String,
        size_mb: Option<u64>,
    },
}

impl VolumeSpec {
    pub fn target(&self) -> &str {
        match self {
            VolumeSpec::Named { target, .. }
            | VolumeSpec::Host { target, .. }
            | VolumeSpec::Tmpfs { target, .. } => target,
        }
    }
}

/// Whether `path` is absolute, without `..`, `.` or empty components (a trailing `/` is
/// removed by the caller), and not `/` itself.
pub fn is_clean_absolute_path(path: &str) -> bool {
    path.starts_with('/')
        && path.len() > 1
        && path.len() <= 4096
        && !path.contains('\0')
        && path[1..]
            .split('/')
            .all(|c| !c.is_empty() && c != "." && c != "..")
}

/// Whether `path` is `root` or below it (both clean absolute paths).
pub fn is_under(path: &str, root: &str) -> bool {
    let root = root.trim_end_matches('/');
    root.is_empty()
        || path == root
        || path
            .strip_prefix(root)
            .is_some_and(|rest| rest.starts_with('/'))
}

impl ServiceSpec {
    /// The distinct directories of `[files]`, sorted: the agent mounts `<task>.files/<i>` at
    /// the i-th.
    pub fn file_dirs(&self) -> Vec<String> {
        let set: BTreeSet<&str> = self.files.iter().map(FileSpec::dir).collect();
        set.into_iter().map(str::to_string).collect()
    }

    /// Every KV key the `[files]` templates read.
    pub fn template_keys(&self) -> BTreeSet<String> {
        use super::template::{Dependency, Template};
        self.files
            .iter()
            .filter_map(|f| Template::parse(&f.template).ok())
            .flat_map(|t| t.dependencies())
            .filter_map(|d| match d {
                Dependency::Key(k) => Some(k),
                Dependency::Service(_) => None,
            })
            .collect()
    }

    /// Every secret the service uses (as a variable or as a file).
    pub fn secret_names(&self) -> BTreeSet<String> {
        self.secrets
            .values()
            .chain(self.secret_files.iter())
            .cloned()
            .collect()
    }

    /// The spec without `count`: what makes tasks of two revisions interchangeable. A change
    /// of `count` alone scales; any other change rolls out a new revision.
    pub fn template(&self) -> ServiceSpec {
        ServiceSpec {
            count: 0,
            ..self.clone()
        }
    }

    /// The image reference agents pull and run: `name@sha256:…` when the revision pinned a
    /// digest (the tag only documents it), else `image`.
    pub fn run_image(&self) -> String {
        match self.pinned_image.as_deref().and_then(|p| p.split_once('@')) {
            Some((named, digest)) => {
                let last_slash = named.rfind('/').map(|i| i + 1).unwrap_or(0);
                let name = match named[last_slash..].rfind(':') {
                    Some(i) => &named[..last_slash + i],
                    None => named,
                };
                format!("{name}@{digest}")
            }
            None => self.image.clone(),
        }
    }
}

struct Ctx<'a> {
    text: &'a str,
}

impl Ctx<'_> {
    fn at(&self, span: Range<usize>, message: impl Into<String>) -> SpecError {
        let (line, column) = line_col(self.text, span.start);
        SpecError {
            message: message.into(),
            line: Some(line),
            column: Some(column),
        }
    }

    fn duration(
        &self,
        v: &Option<Spanned<String>>,
        field: &str,
        default_ms: u64,
    ) -> Result<u64, SpecError> {
        match v {
            None => Ok(default_ms),
            Some(s) => parse_duration_ms(s.get_ref())
                .map_err(|e| self.at(s.span(), format!("`{field}`: {e}"))),
        }
    }

    fn port(&self, v: &Spanned<i64>, field: &str) -> Result<u16, SpecError> {
        let n = *v.get_ref();
        if !(1..=65535).contains(&n) {
            return Err(self.at(
                v.span(),
                format!("`{field}` = {n} is out of range: ports are 1 to 65535"),
            ));
        }
        Ok(n as u16)
    }
}

fn line_col(text: &str, offset: usize) -> (usize, usize) {
    let before = &text[..offset.min(text.len())];
    let line = before.matches('\n').count() + 1;
    let column = before
        .rsplit('\n')
        .next()
        .map(|l| l.chars().count())
        .unwrap_or(0)
        + 1;
    (line, column)
}

/// The one name rule of services (and of what shares their names' uses: secrets, as file
/// names): 1-63 of a-z, 0-9 and '-', starting with a letter, not ending with '-'.
pub fn is_valid_name(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= 63
        && name.starts_with(|c: char| c.is_ascii_lowercase())
        && !name.ends_with('-')
        && name
            .chars()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-')
}

fn is_valid_image(image: &str) -> bool {
    !image.is_empty()
        && image.len() <= 512
        && !image.starts_with(['/', ':', '@', '.', '-'])
        && image
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || "._-/:@+".contains(c))
}

const SIGNALS: &[&str] = &[
    "SIGTERM", "SIGINT", "SIGQUIT", "SIGHUP", "SIGKILL", "SIGUSR1", "SIGUSR2", "SIGWINCH",
];

fn amount(ctx: &Ctx, v: &Spanned<IntOrString>, field: &str) -> Result<Amount, SpecError> {
    match v.get_ref() {
        IntOrString::Int(n) if (0..=i64::from(u32::MAX)).contains(n) => {
            Ok(Amount::Count(*n as u32))
        }
        IntOrString::Int(n) => {
            Err(ctx.at(v.span(), format!("`{field}` = {n} must not be negative")))
        }
        IntOrString::Str(s) => {
            let pct = s
                .trim()
                .strip_suffix('%')
                .and_then(|p| p.trim().parse::<u32>().ok());
            match pct {
                Some(p) if p <= 100 => Ok(Amount::Percent(p)),
                Some(p) => Err(ctx.at(v.span(), format!("`{field}` = {p}% is above 100%"))),
                None => Err(ctx.at(
                    v.span(),
                    format!("`{field}` must be a count (1) or a percent (\"25%\"), got {s:?}"),
                )),
            }
        }
    }
}

fn constraint(ctx: &Ctx, v: &Spanned<String>) -> Result<ConstraintSpec, SpecError> {
    let text = v.get_ref().trim();
    let bad = |why: &str| {
        ctx.at(
            v.span(),
            format!("constraint {text:?}: {why}; write e.g. \"attr.disk == ssd\", \"node.zone != c\" or \"attr.rack in [r1, r2]\""),
        )
    };
    let (target, op, rest) = if let Some((t, r)) = text.split_once("==") {
        (t, ConstraintOp::Eq, r)
    } else if let Some((t, r)) = text.split_once("!=") {
        (t, ConstraintOp::Ne, r)
    } else if let Some((t, r)) = text.split_once(" in ") {
        (t, ConstraintOp::In, r)
    } else {
        return Err(bad("no operator (==, != or in)"));
    };
    let target = target.trim();
    let target_ok = matches!(target, "node.zone" | "node.id")
        || target.strip_prefix("attr.").is_some_and(|k| !k.is_empty());
    if !target_ok {
        return Err(bad(&format!(
            "unknown target `{target}` (use attr.<key>, node.zone or node.id)"
        )));
    }
    let values: Vec<String> = match op {
        ConstraintOp::In => {
            let list = rest.trim();
            let inner = list
                .strip_prefix('[')
                .and_then(|l| l.strip_suffix(']'))
                .ok_or_else(|| bad("`in` needs a list in brackets"))?;
            inner
                .split(',')
                .map(|s| s.trim().to_string())
                .filter(|s| !s.is_empty())
                .collect()
        }
        _ => vec![rest.trim().to_string()],
    };
    if values.iter().any(String::is_empty) || values.is_empty() {
        return Err(bad("missing value"));
    }
    Ok(ConstraintSpec {
        target: target.to_string(),
        op,
        values,
    })
}

/// Parses and validates a service file. Errors carry the line and column of the offending
/// value; nothing about the cluster is checked here (see the orchestrator for image and
/// capacity checks).
pub fn parse_service_file(text: &str, limits: Limits) -> Result<ServiceSpec, SpecError> {
    let ctx = Ctx { text };
    let file: ServiceFile = toml::from_str(text).map_err(|e| {
        let (line, column) = match e.span() {
            Some(span) => {
                let (l, c) = line_col(text, span.start);
                (Some(l), Some(c))
            }
            None => (None, None),
        };
        SpecError {
            message: e.message().trim().to_string(),
            line,
            column,
        }
    })?;

    let name = file.name.get_ref().trim().to_string();
    if !is_valid_name(&name) {
        return Err(ctx.at(
            file.name.span(),
            format!("service name {name:?} must be 1-63 characters of a-z, 0-9 and '-', starting with a letter"),
        ));
    }
    let image = file.image.get_ref().trim().to_string();
    if !is_valid_image(&image) {
        return Err(ctx.at(
            file.image.span(),
            format!("image {image:?} is not an image reference like \"127.0.0.1:5000/hello:v1\""),
        ));
    }

    let count = match &file.count {
        None => 1,
        Some(c) => {
            let n = *c.get_ref();
            if n < 0 {
                return Err(ctx.at(c.span(), format!("`count` = {n} must not be negative")));
            }
            if n > i64::from(limits.max_count) {
                return Err(ctx.at(
                    c.span(),
                    format!(
                        "`count` = {n} is above this cluster's maximum of {}",
                        limits.max_count
                    ),
                ));
            }
            n as u32
        }
    };

    let command = match &file.command {
        Some(c) if c.get_ref().0.is_empty() => return Err(ctx.at(c.span(), "`command` is empty")),
        Some(c) => Some(c.get_ref().0.clone()),
        None => None,
    };

    for key in file.env.keys() {
        if key.is_empty() || key.contains('=') || key.contains('\0') {
            return Err(SpecError {
                message: format!("env variable name {key:?} is not valid"),
                line: None,
                column: None,
            });
        }
    }

    let ports: Vec<u16> = match (&file.port, &file.ports) {
        (Some(p), Some(_)) => {
            return Err(ctx.at(p.span(), "use either `port` or `ports`, not both"))
        }
        (Some(p), None) => vec![ctx.port(p, "port")?],
        (None, Some(list)) => {
            let mut out = Vec::new();
            let mut seen = BTreeSet::new();
            for p in list.get_ref() {
                let port = ctx.port(p, "ports")?;
                if !seen.insert(port) {
                    return Err(ctx.at(p.span(), format!("port {port} is listed twice")));
                }
                out.push(port);
            }
            out
        }
        (None, None) => Vec::new(),
    };

    let cpu_millis = match &file.cpu {
        None => 100,
        Some(c) => {
            let n = *c.get_ref();
            if n <= 0 {
                return Err(ctx.at(
                    c.span(),
                    format!("`cpu` = {n} must be a positive number of millicores (1000 = one CPU)"),
                ));
            }
            n as u64
        }
    };
    let memory_mb = match &file.memory {
        None => 128,
        Some(m) => {
            let mb = match m.get_ref() {
                IntOrString::Int(n) if *n > 0 => *n as u64,
                IntOrString::Int(n) => {
                    return Err(ctx.at(m.span(), format!("`memory` = {n} must be positive")))
                }
                IntOrString::Str(s) => {
                    parse_memory_mb(s).map_err(|e| ctx.at(m.span(), format!("`memory`: {e}")))?
                }
            };
            // Docker refuses limits below 6 MiB; say so before anything starts.
            if mb < 6 {
                return Err(ctx.at(
                    m.span(),
                    format!("`memory` = {mb} MiB is below the engine's minimum of 6 MiB"),
                ));
            }
            mb
        }
    };

    let health = match &file.health {
        // A service with a port gets a TCP check on it: a task that never listens is never
        // healthy, gets no traffic and fails its deployment.
        None => ports.first().map(|&port| implicit_tcp_check(port)),
        Some(h) => {
            let span = h.span();
            let h = h.get_ref();
            let port = match &h.port {
                Some(p) => {
                    let port = ctx.port(p, "health.port")?;
                    if !ports.contains(&port) {
                        return Err(ctx.at(p.span(), format!("`health.port` = {port} is not one of the service's ports {ports:?}; the check could never pass")));
                    }
                    Some(port)
                }
                None => ports.first().copied(),
            };
            let kinds = usize::from(h.http.is_some())
                + usize::from(h.tcp.is_some())
                + usize::from(h.command.is_some());
            if kinds != 1 {
                return Err(ctx.at(
                    span,
                    "[health] needs exactly one of `http`, `tcp` or `command`",
                ));
            }
            let need_port = |what: &str| {
                port.ok_or_else(|| ctx.at(span.clone(), format!("a {what} health check needs a `port` on the service; without one it could never pass")))
            };
            let kind = if let Some(path) = &h.http {
                if !path.get_ref().starts_with('/') {
                    return Err(ctx.at(
                        path.span(),
                        format!(
                            "`health.http` = {:?} must be a path starting with '/'",
                            path.get_ref()
                        ),
                    ));
                }
                HealthKind::Http {
                    path: path.get_ref().clone(),
                    port: need_port("http")?,
                }
            } else if let Some(tcp) = h.tcp {
                if !tcp {
                    return Err(ctx.at(
                        span,
                        "`health.tcp = false` checks nothing; remove [health] or set `tcp = true`",
                    ));
                }
                HealthKind::Tcp {
                    port: need_port("tcp")?,
                }
            } else {
                match &h.command {
                    Some(c) if c.get_ref().0.is_empty() => {
                        return Err(ctx.at(c.span(), "`health.command` is empty"))
                    }
                    Some(c) => HealthKind::Command {
                        argv: c.get_ref().0.clone(),
                    },
                    None => unreachable_kind()?,
                }
            };
            let interval_ms = ctx.duration(&h.interval, "health.interval", 10_000)?;
            if interval_ms < 100 {
                return Err(SpecError {
                    message: "`health.interval` must be at least 100ms".into(),
                    ..ctx.at(span.clone(), "")
                });
            }
            let timeout_ms = ctx.duration(&h.timeout, "health.timeout", interval_ms.min(2_000))?;
            if timeout_ms == 0 {
                return Err(ctx.at(span, "`health.timeout` of 0 can never pass"));
            }
            let retries = match &h.retries {
                None => 3,
                Some(r) if (1..=100).contains(r.get_ref()) => *r.get_ref() as u32,
                Some(r) => {
                    return Err(ctx.at(
                        r.span(),
                        format!("`health.retries` = {} must be 1 to 100", r.get_ref()),
                    ))
                }
            };
            let start_period_ms = ctx.duration(&h.start_period, "health.start_period", 0)?;
            Some(HealthSpec {
                kind,
                interval_ms,
                timeout_ms,
                retries,
                start_period_ms,
            })
        }
    };

    let mut deploy = DeploySpec::default();
    if let Some(d) = &file.deploy {
        if let Some(v) = &d.max_surge {
            deploy.max_surge = amount(&ctx, v, "deploy.max_surge")?;
        }
        if let Some(v) = &d.max_unavailable {
            deploy.max_unavailable = amount(&ctx, v, "deploy.max_unavailable")?;
        }
        if let Some(v) = d.auto_rollback {
            deploy.auto_rollback = v;
        }
        if let Some(v) = &d.failure_threshold {
            let n = *v.get_ref();
            if !(1..=10_000).contains(&n) {
                return Err(ctx.at(
                    v.span(),
                    format!("`deploy.failure_threshold` = {n} must be 1 to 10000"),
                ));
            }
            deploy.failure_threshold = Some(n as u32);
        }
        deploy.min_healthy_time_ms = ctx.duration(
            &d.min_healthy_time,
            "deploy.min_healthy_time",
            deploy.min_healthy_time_ms,
        )?;
        deploy.drain_delay_ms =
            ctx.duration(&d.drain_delay, "deploy.drain_delay", deploy.drain_delay_ms)?;
        deploy.healthy_deadline_ms = ctx.duration(
            &d.healthy_deadline,
            "deploy.healthy_deadline",
            deploy.healthy_deadline_ms,
        )?;
        deploy_security(&ctx, d, &mut deploy)?;
        if deploy.max_surge.resolve(count.max(1), true) == 0
            && deploy.max_unavailable.resolve(count.max(1), false) == 0
        {
            let span = d
                .max_surge
                .as_ref()
                .or(d.max_unavailable.as_ref())
                .map(|s| s.span())
                .unwrap_or(0..0);
            return Err(ctx.at(span, "`deploy.max_surge` and `deploy.max_unavailable` are both 0: a rollout could never make progress"));
        }
    }
    if let Some(h) = &health {
        if deploy.healthy_deadline_ms <= h.start_period_ms {
            return Err(SpecError {
                message: format!(
                    "`deploy.healthy_deadline` ({} ms) is not longer than `health.start_period` ({} ms): no task could ever become healthy in time",
                    deploy.healthy_deadline_ms, h.start_period_ms
                ),
                line: None,
                column: None,
            });
        }
    }

    let mut placement = PlacementSpec::default();
    if let Some(p) = &file.placement {
        let binpack_resource = match &p.binpack_resource {
            None => "memory".to_string(),
            Some(r) => r.get_ref().clone(),
        };
        placement.strategy = match p.strategy.as_ref().map(|s| s.get_ref().as_str()) {
            None | Some("spread") => PlacementStrategy::Spread,
            Some("binpack") => {
                match binpack_resource.as_str() {
                    "memory" => PlacementStrategy::BinpackMemory,
                    "cpu" => PlacementStrategy::BinpackCpu,
                    other => {
                        let span = p
                            .binpack_resource
                            .as_ref()
                            .map(|s| s.span())
                            .unwrap_or(0..0);
                        return Err(ctx.at(span, format!("`placement.binpack_resource` = {other:?}: use \"memory\" or \"cpu\"")));
                    }
                }
            }
            Some(other) => {
                let span = p.strategy.as_ref().map(|s| s.span()).unwrap_or(0..0);
                return Err(ctx.at(
                    span,
                    format!("`placement.strategy` = {other:?}: use \"spread\" or \"binpack\""),
                ));
            }
        };
        for c in &p.constraints {
            placement.constraints.push(constraint(&ctx, c)?);
        }
        placement.distinct_node = p.distinct_node.unwrap_or(false);
    }
    if let Some(z) = &file.zones {
        if z.get_ref().iter().any(|s| s.trim().is_empty()) {
            return Err(ctx.at(z.span(), "`zones` contains an empty zone name"));
        }
        let set: BTreeSet<String> = z.get_ref().iter().map(|s| s.trim().to_string()).collect();
        placement.zones = set.into_iter().collect();
    }

    let stop_signal = match &file.stop_signal {
        None => "SIGTERM".to_string(),
        Some(s) => {
            let upper = s.get_ref().trim().to_ascii_uppercase();
            let full = if upper.starts_with("SIG") {
                upper
            } else {
                format!("SIG{upper}")
            };
            if !SIGNALS.contains(&full.as_str()) {
                return Err(ctx.at(
                    s.span(),
                    format!(
                        "`stop_signal` = {:?} is not one of {}",
                        s.get_ref(),
                        SIGNALS.join(", ")
                    ),
                ));
            }
            full
        }
    };
    let stop_timeout_ms = ctx.duration(&file.stop_timeout, "stop_timeout", 10_000)?;
    if stop_timeout_ms > 600_000 {
        let span = file.stop_timeout.as_ref().map(|s| s.span()).unwrap_or(0..0);
        return Err(ctx.at(span, "`stop_timeout` is above the maximum of 10m"));
    }

    let route = match &file.route {
        None => format!("{name}.localhost"),
        Some(r) => {
            let host = r.get_ref().trim().to_ascii_lowercase();
            let ok = !host.is_empty()
                && host.len() <= 253
                && host.split('.').all(|l| {
                    !l.is_empty()
                        && l.len() <= 63
                        && l.chars().all(|c| c.is_ascii_alphanumeric() || c == '-')
                });
            if !ok {
                return Err(ctx.at(
                    r.span(),
                    format!("`route` = {:?} is not a host name", r.get_ref()),
                ));
            }
            host
        }
    };

    let https_redirect = match &file.https {
        None => false,
        Some(h) if h.get_ref() == "redirect" => true,
        Some(h) => {
            return Err(ctx.at(
                h.span(),
                format!(
                "`https` = {:?} is not supported; `https = \"redirect\"` sends plain HTTP to HTTPS",
                h.get_ref()
            ),
            ))
        }
    };
    let tls_acme = match &file.tls {
        None => false,
        Some(t) if t.get_ref() == "acme" => true,
        Some(t) => {
            return Err(ctx.at(
                t.span(),
                format!(
                    "`tls` = {:?} is not supported; `tls = \"acme\"` obtains the route's certificate by ACME",
                    t.get_ref()
                ),
            ))
        }
    };
    let needs = needs(&ctx, &file.needs, &name)?;
    let (secrets, secret_files) = secrets(&ctx, &file)?;
    let volumes = volumes(&ctx, &file, !secret_files.is_empty())?;
    let files = files(&ctx, &file, &volumes, !secret_files.is_empty())?;
    Ok(ServiceSpec {
        files,
        volumes,
        secrets,
        secret_files,
        secret_versions: BTreeMap::new(),
        https_redirect,
        tls_acme,
        hsts: file.hsts.unwrap_or(false),
        needs,
        name,
        image,
        pinned_image: None,
        count,
        command,
        args: file.args.clone(),
        env: file.env.clone(),
        env_file: env_file(&ctx, &file.env_file)?,
        ports,
        cpu_millis,
        memory_mb,
        health,
        deploy,
        placement,
        stop_signal,
        stop_timeout_ms,
        route,
    })
}

/// Interval of the TCP check a service with a port and no `[health]` gets.
pub const IMPLICIT_CHECK_INTERVAL_MS: u64 = 2_000;

fn implicit_tcp_check(port: u16) -> HealthSpec {
    HealthSpec {
        kind: HealthKind::Tcp { port },
        interval_ms: IMPLICIT_CHECK_INTERVAL_MS,
        timeout_ms: 1_000,
        retries: 3,
        start_period_ms: 0,
    }
}

fn needs(ctx: &Ctx, v: &Option<Spanned<Vec<String>>>, own: &str) -> Result<Vec<String>, SpecError> {
    let Some(list) = v else {
        return Ok(Vec::new());
    };
    let mut out = BTreeSet::new();
    for n in list.get_ref() {
        let n = n.trim().to_ascii_lowercase();
        if !is_valid_name(&n) {
            return Err(ctx.at(list.span(), format!("`needs`: {n:?} is not a service name")));
        }
        if n == own {
            return Err(ctx.at(list.span(), "`needs` names the service itself"));
        }
        out.insert(n);
    }
    Ok(out.into_iter().collect())
}

fn env_file(ctx: &Ctx, v: &Option<Spanned<String>>) -> Result<Option<String>, SpecError> {
    match v {
        None => Ok(None),
        Some(p) if p.get_ref().trim().is_empty() => Err(ctx.at(p.span(), "`env_file` is empty")),
        Some(p) => Ok(Some(p.get_ref().trim().to_string())),
    }
}

/// `[[volumes]]`: one kind each, clean absolute paths, no target twice.
fn volumes(
    ctx: &Ctx,
    file: &ServiceFile,
    has_secret_files: bool,
) -> Result<Vec<VolumeSpec>, SpecError> {
    let mut out = Vec::new();
    let mut targets = BTreeSet::new();
    for v in file.volumes.iter().flatten() {
        let span = v.span();
        let at = |m: String| ctx.at(span.clone(), format!("[[volumes]]: {m}"));
        let e = v.get_ref();
        let target = e
            .target
            .as_deref()
            .map(|t| t.trim().trim_end_matches('/').to_string());
        let Some(target) = target else {
            return Err(at("`target` (the path in the container) is missing".into()));
        };
        if !is_clean_absolute_path(&target) {
            return Err(at(format!(
                "`target` = {target:?} must be an absolute path without '..' (and not /)"
            )));
        }
        if has_secret_files && is_under(&target, crate::secret::SECRETS_MOUNT) {
            return Err(at(format!(
                "`target` = {target:?} is where secret files are mounted"
            )));
        }
        if !targets.insert(target.clone()) {
            return Err(at(format!("`target` = {target:?} is mounted twice")));
        }
        let read_only = e.read_only.unwrap_or(false);
        let kinds = usize::from(e.name.is_some())
            + usize::from(e.source.is_some())
            + usize::from(e.tmpfs == Some(true));
        if kinds != 1 || e.tmpfs == Some(false) {
            return Err(at("each volume needs exactly one of `name` (a named volume), `source` (a host path) or `tmpfs = true`".into()));
        }
        if e.size.is_some() && e.tmpfs != Some(true) {
            return Err(at("`size` is only for `tmpfs = true`".into()));
        }
        let spec = if let Some(name) = &e.name {
            let name = name.trim();
            if !is_valid_name(name) {
                return Err(at(format!("volume name {name:?} must be 1-63 characters of a-z, 0-9 and '-', starting with a letter")));
            }
            VolumeSpec::Named {
                name: name.to_string(),
                target,
                read_only,
            }
        } else if let Some(source) = &e.source {
            let source = source.trim().trim_end_matches('/');
            if !is_clean_absolute_path(source) {
                return Err(at(format!(
                    "`source` = {source:?} must be an absolute host path without '..' (and not /)"
                )));
            }
            VolumeSpec::Host {
                source: source.to_string(),
                target,
                read_only,
            }
        } else {
            if e.read_only.is_some() {
                return Err(at("`read_only` makes no sense for a tmpfs".into()));
            }
            let size_mb = match &e.size {
                None => None,
                Some(IntOrString::Int(n)) if *n > 0 => Some(*n as u64),
                Some(IntOrString::Int(n)) => {
                    return Err(at(format!("`size` = {n} must be positive")))
                }
                Some(IntOrString::Str(s)) => {
                    Some(parse_memory_mb(s).map_err(|err| at(format!("`size`: {err}")))?)
                }
            };
            VolumeSpec::Tmpfs { target, size_mb }
        };
        out.push(spec);
    }
    Ok(out)
}

/// `on_change`: "restart", "none" or "signal:<SIGNAL>".
fn on_change(text: Option<&str>) -> Result<OnChange, String> {
    let Some(text) = text.map(str::trim) else {
        return Ok(OnChange::default());
    };
    match text {
        "restart" => Ok(OnChange::Restart),
        "none" => Ok(OnChange::None),
        other => {
            let sig = other
                .strip_prefix("signal:")
                .map(|s| s.trim().to_ascii_uppercase())
                .map(|s| {
                    if s.starts_with("SIG") {
                        s
                    } else {
                        format!("SIG{s}")
                    }
                })
                .filter(|s| SIGNALS.contains(&s.as_str()) && s != "SIGKILL");
            sig.map(OnChange::Signal).ok_or_else(|| {
                format!("`on_change` = {other:?}: use \"restart\", \"none\" or \"signal:SIGHUP\" (a signal of {})", SIGNALS.join(", "))
            })
        }
    }
}

/// `[files]`: at most [`MAX_FILES`], clean paths in a directory of their own (not `/`, not a
/// volume's or the secrets' mount, no files directory inside another), templates that parse.
fn files(
    ctx: &Ctx,
    file: &ServiceFile,
    volumes: &[VolumeSpec],
    has_secret_files: bool,
) -> Result<Vec<FileSpec>, SpecError> {
    use super::file::FileEntry;
    let Some(table) = &file.files else {
        return Ok(Vec::new());
    };
    let mut out = Vec::new();
    for (path, entry) in table {
        let at = |m: String| ctx.at(entry.span(), format!("[files] {path:?}: {m}"));
        if out.len() == MAX_FILES {
            return Err(at(format!(
                "a service may render at most {MAX_FILES} files"
            )));
        }
        let (template, change) = match entry.get_ref() {
            FileEntry::Template(t) => (t.clone(), None),
            FileEntry::Table(t) => (t.template.clone(), t.on_change.as_deref()),
        };
        let clean = path.trim();
        if !is_clean_absolute_path(clean) || clean.ends_with('/') {
            return Err(at(
                "the path in the container must be an absolute file path without '..'".into(),
            ));
        }
        let spec = FileSpec {
            path: clean.to_string(),
            template,
            on_change: on_change(change).map_err(&at)?,
        };
        if out.iter().any(|f: &FileSpec| f.path == spec.path) {
            return Err(at("the path is listed twice".into()));
        }
        let dir = spec.dir().to_string();
        if dir.is_empty() {
            return Err(at("put the file in a directory (e.g. /etc/app/): its directory is mounted from the host, and / cannot be".into()));
        }
        if has_secret_files && is_under(&dir, crate::secret::SECRETS_MOUNT) {
            return Err(at(format!("{dir} is where secret files are mounted")));
        }
        if let Some(v) = volumes
            .iter()
            .find(|v| is_under(&dir, v.target()) || is_under(v.target(), &dir))
        {
            return Err(at(format!(
                "its directory {dir} overlaps the volume mounted at {}",
                v.target()
            )));
        }
        if spec.template.len() > MAX_TEMPLATE_BYTES {
            return Err(at(format!(
                "the template is larger than {} KiB",
                MAX_TEMPLATE_BYTES / 1024
            )));
        }
        super::template::Template::parse(&spec.template).map_err(|e| at(e.to_string()))?;
        out.push(spec);
    }
    let dirs: BTreeSet<&str> = out.iter().map(FileSpec::dir).collect();
    for f in &out {
        if let Some(other) = dirs.iter().find(|d| **d != f.dir() && is_under(f.dir(), d)) {
            let span = table.get(&f.path).map(|e| e.span()).unwrap_or(0..0);
            return Err(ctx.at(span, format!("[files] {:?}: its directory {} is inside {other}, the directory of another file; files are mounted per directory, so put them in one directory or in separate ones", f.path, f.dir())));
        }
    }
    Ok(out)
}

fn is_env_name(key: &str) -> bool {
    key.starts_with(|c: char| c.is_ascii_alphabetic() || c == '_')
        && key.chars().all(|c| c.is_ascii_alphanumeric() || c == '_')
}

/// `[secrets]` (variable → secret) and `secret_files`: names checked, no variable set twice.
fn secrets(
    ctx: &Ctx,
    file: &ServiceFile,
) -> Result<(BTreeMap<String, String>, Vec<String>), SpecError> {
    let bad_name = |span: Range<usize>, name: &str| {
        ctx.at(
            span,
            format!("secret name {name:?} must be 1-63 characters of a-z, 0-9 and '-', starting with a letter"),
        )
    };
    let mut vars = BTreeMap::new();
    if let Some(table) = &file.secrets {
        for (var, secret) in table.get_ref() {
            if !is_env_name(var) {
                return Err(ctx.at(
                    table.span(),
                    format!("[secrets]: {var:?} is not an environment variable name (letters, digits and '_', not starting with a digit)"),
                ));
            }
            if file.env.contains_key(var) {
                return Err(ctx.at(
                    table.span(),
                    format!("[secrets]: {var} is also set in [env]; set it in one place"),
                ));
            }
            let secret = secret.trim();
            if !crate::secret::is_valid_secret_name(secret) {
                return Err(bad_name(table.span(), secret));
            }
            vars.insert(var.clone(), secret.to_string());
        }
    }
    let mut files = BTreeSet::new();
    if let Some(list) = &file.secret_files {
        for secret in list.get_ref() {
            let secret = secret.trim();
            if !crate::secret::is_valid_secret_name(secret) {
                return Err(bad_name(list.span(), secret));
            }
            files.insert(secret.to_string());
        }
    }
    Ok((vars, files.into_iter().collect()))
}

fn deploy_security(
    ctx: &Ctx,
    d: &super::file::DeployFile,
    deploy: &mut DeploySpec,
) -> Result<(), SpecError> {
    if let Some(u) = &d.user {
        let user = u.get_ref().trim();
        let ok = !user.is_empty()
            && user.len() <= 64
            && user.split(':').count() <= 2
            && user
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || "_-.:".contains(c));
        if !ok {
            return Err(ctx.at(
                u.span(),
                format!("`deploy.user` = {user:?}: use a user name or id, optionally with a group (\"1000:1000\")"),
            ));
        }
        deploy.user = Some(user.to_string());
    }
    deploy.read_only_root = d.read_only_root.unwrap_or(false);
    if let Some(caps) = &d.cap_drop {
        let mut out = BTreeSet::new();
        for c in caps.get_ref() {
            let upper = c.trim().to_ascii_uppercase();
            let name = upper.strip_prefix("CAP_").unwrap_or(&upper);
            if name.is_empty() || !name.chars().all(|c| c.is_ascii_uppercase() || c == '_') {
                return Err(ctx.at(
                    caps.span(),
                    format!("`deploy.cap_drop`: {c:?} is not a capability name like \"NET_RAW\" or \"ALL\""),
                ));
            }
            out.insert(name.to_string());
        }
        deploy.cap_drop = out.into_iter().collect();
    }
    Ok(())
}

fn unreachable_kind<T>() -> Result<T, SpecError> {
    Err(SpecError {
        message: "[health] needs exactly one of `http`, `tcp` or `command`".into(),
        line: None,
        column: None,
    })
}
