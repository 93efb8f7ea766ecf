//! The service file exactly as users write it. Every table refuses unknown fields so a typo
//! is an error with its line and column, never a silently ignored setting. Values whose
//! range is checked later keep their position (`Spanned`) so those errors point at the line
//! too. Defaults and normalisation happen in `validate`.

use std::collections::BTreeMap;
use std::fmt;

use serde::de::{self, Deserializer, SeqAccess, Visitor};
use serde::Deserialize;
use toml::Spanned;

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ServiceFile {
    pub name: Spanned<String>,
    pub image: Spanned<String>,
    pub count: Option<Spanned<i64>>,
    /// Overrides the image's entrypoint: a string (split on whitespace) or a list.
    pub command: Option<Spanned<Argv>>,
    /// Overrides the image's default arguments.
    pub args: Option<Vec<String>>,
    #[serde(default)]
    pub env: BTreeMap<String, String>,
    /// `KEY=VALUE` lines read by `pier deploy` (path relative to the service file); `[env]`
    /// wins over it.
    pub env_file: Option<Spanned<String>>,
    pub port: Option<Spanned<i64>>,
    pub ports: Option<Spanned<Vec<Spanned<i64>>>>,
    /// Millicores (1000 = one CPU).
    pub cpu: Option<Spanned<i64>>,
    /// "256MiB", "1GiB" or a number of MiB.
    pub memory: Option<Spanned<IntOrString>>,
    pub health: Option<Spanned<HealthFile>>,
    pub deploy: Option<DeployFile>,
    pub placement: Option<PlacementFile>,
    pub stop_signal: Option<Spanned<String>>,
    pub stop_timeout: Option<Spanned<String>>,
    /// Host name the gateway routes to this service; default `<name>.localhost`.
    pub route: Option<Spanned<String>>,
    /// `"redirect"`: plain HTTP requests to the route get 308 to HTTPS.
    pub https: Option<Spanned<String>>,
    /// Responses over HTTPS carry `Strict-Transport-Security`.
    pub hsts: Option<bool>,
    /// `"acme"`: the cluster obtains the route's certificate from the ACME directory.
    pub tls: Option<Spanned<String>>,
    /// Restricts placement to these zones.
    pub zones: Option<Spanned<Vec<String>>>,
    /// Services this one calls: each gets `<NAME>_URL=http://<name>.internal` and a task
    /// starts only once every one of them has a healthy instance.
    pub needs: Option<Spanned<Vec<String>>>,
    /// Secrets as environment variables: `DB_PASSWORD = "db-password"` (variable = secret).
    pub secrets: Option<Spanned<BTreeMap<String, String>>>,
    /// Secrets mounted read-only as files at `/run/secrets/<name>` (mode 0400).
    pub secret_files: Option<Spanned<Vec<String>>>,
    /// `[[volumes]]`: named volumes, host paths and tmpfs mounts.
    pub volumes: Option<Vec<Spanned<VolumeFile>>>,
    /// `[files]`: container path → a template, or `{ template = "…", on_change = "…" }`.
    pub files: Option<BTreeMap<String, Spanned<FileEntry>>>,
}

/// One `[files]` entry: the template alone, or a table with `template` and `on_change`.
#[derive(Debug)]
pub enum FileEntry {
    Template(String),
    Table(FileTable),
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FileTable {
    pub template: String,
    /// "restart" (default), "signal:SIGHUP" or "none".
    pub on_change: Option<String>,
}

impl<'de> Deserialize<'de> for FileEntry {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl<'de> Visitor<'de> for V {
            type Value = FileEntry;
            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str("a template string or a table with `template` and `on_change`")
            }
            fn visit_str<E: de::Error>(self, v: &str) -> Result<FileEntry, E> {
                Ok(FileEntry::Template(v.to_string()))
            }
            fn visit_map<A: de::MapAccess<'de>>(self, map: A) -> Result<FileEntry, A::Error> {
                FileTable::deserialize(de::value::MapAccessDeserializer::new(map))
                    .map(FileEntry::Table)
            }
        }
        d.deserialize_any(V)
    }
}

/// One `[[volumes]]` entry: exactly one of `name` (a named volume the agent creates and
/// keeps), `source` (a host path under one of the agent's `--volume-root`s) or `tmpfs = true`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct VolumeFile {
    pub name: Option<String>,
    pub source: Option<String>,
    pub tmpfs: Option<bool>,
    /// Where it is mounted in the container (an absolute path).
    pub target: Option<String>,
    pub read_only: Option<bool>,
    /// Size of a tmpfs: "64MiB" or a number of MiB.
    pub size: Option<IntOrString>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct HealthFile {
    /// HTTP GET of this path must answer 2xx/3xx.
    pub http: Option<Spanned<String>>,
    /// A TCP connect to the port must succeed.
    pub tcp: Option<bool>,
    /// Run inside the container; exit 0 is healthy.
    pub command: Option<Spanned<Argv>>,
    /// Which container port HTTP/TCP checks use (default: the first port).
    pub port: Option<Spanned<i64>>,
    pub interval: Option<Spanned<String>>,
    pub timeout: Option<Spanned<String>>,
    /// Consecutive failures before the task is unhealthy.
    pub retries: Option<Spanned<i64>>,
    /// Grace period after start during which failures do not count.
    pub start_period: Option<Spanned<String>>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DeployFile {
    /// Extra tasks allowed above `count` during a rollout: a count (1) or a percent ("25%").
    pub max_surge: Option<Spanned<IntOrString>>,
    /// Tasks allowed below `count` during a rollout: a count or a percent.
    pub max_unavailable: Option<Spanned<IntOrString>>,
    pub auto_rollback: Option<bool>,
    /// Failed tasks (before or after running) that fail the deployment.
    pub failure_threshold: Option<Spanned<i64>>,
    /// How long a new task must stay healthy before it counts.
    pub min_healthy_time: Option<Spanned<String>>,
    /// Time between deregistering a task and signalling it, so the gateway stops routing.
    pub drain_delay: Option<Spanned<String>>,
    /// A new task that is not healthy by then counts as failed.
    pub healthy_deadline: Option<Spanned<String>>,
    /// The user (and group) the process runs as: "1000", "1000:1000", "nobody".
    pub user: Option<Spanned<String>>,
    /// Mount the image's root filesystem read-only.
    pub read_only_root: Option<bool>,
    /// Linux capabilities to drop: ["ALL"], ["NET_RAW", "CAP_CHOWN"].
    pub cap_drop: Option<Spanned<Vec<String>>>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PlacementFile {
    /// "spread" (default) or "binpack".
    pub strategy: Option<Spanned<String>>,
    /// For binpack: "memory" (default) or "cpu".
    pub binpack_resource: Option<Spanned<String>>,
    /// Hard constraints: "attr.disk == ssd", "node.zone != c", "attr.rack in [r1, r2]".
    #[serde(default)]
    pub constraints: Vec<Spanned<String>>,
    /// At most one task of the service per node.
    pub distinct_node: Option<bool>,
}

/// A command line: `"httpd -f -p 8080"` or `["httpd", "-f"]`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Argv(pub Vec<String>);

impl<'de> Deserialize<'de> for Argv {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl<'de> Visitor<'de> for V {
            type Value = Argv;
            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str("a command as a string or a list of strings")
            }
            fn visit_str<E: de::Error>(self, v: &str) -> Result<Argv, E> {
                Ok(Argv(v.split_whitespace().map(str::to_string).collect()))
            }
            fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Argv, A::Error> {
                let mut out = Vec::new();
                while let Some(item) = seq.next_element::<String>()? {
                    out.push(item);
                }
                Ok(Argv(out))
            }
        }
        d.deserialize_any(V)
    }
}

/// A value written either as an integer or as a string (`memory = 256` or `"256MiB"`,
/// `max_surge = 1` or `"25%"`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum IntOrString {
    Int(i64),
    Str(String),
}

impl<'de> Deserialize<'de> for IntOrString {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl Visitor<'_> for V {
            type Value = IntOrString;
            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str("an integer or a string")
            }
            fn visit_i64<E: de::Error>(self, v: i64) -> Result<IntOrString, E> {
                Ok(IntOrString::Int(v))
            }
            fn visit_u64<E: de::Error>(self, v: u64) -> Result<IntOrString, E> {
                i64::try_from(v)
                    .map(IntOrString::Int)
                    .map_err(|_| E::custom("integer too large"))
            }
            fn visit_str<E: de::Error>(self, v: &str) -> Result<IntOrString, E> {
                Ok(IntOrString::Str(v.to_string()))
            }
        }
        d.deserialize_any(V)
    }
}
