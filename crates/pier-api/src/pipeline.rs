//! Pipelines (`/api/v1/pipelines`): the request to create one, the pipeline and run records the
//! server stores and serves, and the webhook answer.

use std::collections::BTreeMap;
use std::fmt;

use serde::{Deserialize, Serialize};

/// Body of `POST /api/v1/pipelines`. Omitted fields take the defaults documented on each.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PipelineCreate {
    /// Pipeline name, also the image repository name (`<registry>/<name>:<short-sha>`).
    pub name: String,
    /// A local path (absolute, on the server), a `file://` URL or an `http(s)://` URL.
    pub repo: String,
    /// Branch to follow; default `main`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub branch: Option<String>,
    /// Service file inside the repository; default `pier.toml`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub file: Option<String>,
    /// Dockerfile inside the repository; default `Dockerfile`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub dockerfile: Option<String>,
    /// Poll interval like `10s`, or `off` for webhook-only; default `10s`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub poll: Option<String>,
    /// Shared secret for the push webhook's HMAC-SHA256 signature. Without one the webhook is off.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub webhook_secret: Option<String>,
    /// `--build-arg` values passed to the Docker build.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub build_args: BTreeMap<String, String>,
    /// How many runs to keep (older finished runs and their logs are deleted); default 20.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub keep_runs: Option<u32>,
}

/// A pipeline as the server serves it. The webhook secret is never served.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct PipelineInfo {
    pub name: String,
    pub repo: String,
    pub branch: String,
    pub file: String,
    pub dockerfile: String,
    /// `None` when polling is off.
    pub poll_interval_ms: Option<u64>,
    pub webhook: bool,
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub build_args: BTreeMap<String, String>,
    pub keep_runs: u32,
    pub created_at_ms: u64,
    /// The latest run, if any.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_run: Option<RunInfo>,
    /// Why the last poll of the repository failed (absent once a poll succeeds).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub poll_error: Option<String>,
}

/// Body of `POST /api/v1/pipelines/NAME/runs`.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RunCreate {
    /// A commit id (full or abbreviated); default the branch head.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub commit: Option<String>,
}

/// What started a run.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum RunTrigger {
    /// The first run, started when the pipeline was created.
    Create,
    Poll,
    Webhook,
    Manual,
}

/// The part of a run that failed or was interrupted.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum RunStage {
    Checkout,
    Build,
    Push,
    Deploy,
}

impl RunStage {
    pub fn as_str(self) -> &'static str {
        match self {
            RunStage::Checkout => "checkout",
            RunStage::Build => "build",
            RunStage::Push => "push",
            RunStage::Deploy => "deploy",
        }
    }
}

impl fmt::Display for RunStage {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Where a run is. `queued → building → pushing → deploying → succeeded`, or one of the
/// other terminal states.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "state", rename_all = "snake_case")]
pub enum RunStatus {
    Queued,
    /// Checking out the commit and building the image.
    Building,
    Pushing,
    Deploying,
    Succeeded,
    Failed {
        stage: RunStage,
        reason: String,
    },
    /// The deployment failed its health checks and the previous revision was rolled out again.
    RolledBack {
        reason: String,
    },
    /// The server running it stopped or lost leadership mid-run.
    Interrupted {
        stage: RunStage,
    },
    /// A newer run was queued before this one started; only the newest of a burst is built.
    Skipped {
        superseded_by: u64,
    },
}

impl RunStatus {
    pub fn is_terminal(&self) -> bool {
        !matches!(
            self,
            RunStatus::Queued | RunStatus::Building | RunStatus::Pushing | RunStatus::Deploying
        )
    }

    /// Building, pushing or deploying.
    pub fn is_active(&self) -> bool {
        matches!(
            self,
            RunStatus::Building | RunStatus::Pushing | RunStatus::Deploying
        )
    }

    /// Short name: `queued`, `building`, …, `rolled back`.
    pub fn name(&self) -> &'static str {
        match self {
            RunStatus::Queued => "queued",
            RunStatus::Building => "building",
            RunStatus::Pushing => "pushing",
            RunStatus::Deploying => "deploying",
            RunStatus::Succeeded => "succeeded",
            RunStatus::Failed { .. } => "failed",
            RunStatus::RolledBack { .. } => "rolled back",
            RunStatus::Interrupted { .. } => "interrupted",
            RunStatus::Skipped { .. } => "skipped",
        }
    }
}

impl fmt::Display for RunStatus {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            RunStatus::Failed { stage, reason } => write!(f, "failed at {stage}: {reason}"),
            RunStatus::RolledBack { reason } => write!(f, "rolled back: {reason}"),
            RunStatus::Interrupted { stage } => write!(f, "interrupted during {stage}"),
            RunStatus::Skipped { superseded_by } => {
                write!(f, "skipped (superseded by run {superseded_by})")
            }
            other => f.write_str(other.name()),
        }
    }
}

/// One run of a pipeline, as stored and served.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct RunInfo {
    pub pipeline: String,
    /// 1, 2, 3, … per pipeline.
    pub number: u64,
    /// Full commit id.
    pub commit: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub commit_message: Option<String>,
    pub trigger: RunTrigger,
    pub status: RunStatus,
    /// `<registry>/<name>:<short-sha>` once known.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub image: Option<String>,
    pub queued_at_ms: u64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub started_at_ms: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub finished_at_ms: Option<u64>,
    /// Identity of the server process executing it (to tell orphaned runs after a restart).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub runner: Option<String>,
}

impl RunInfo {
    /// The first 12 hex digits of the commit id.
    pub fn short_sha(&self) -> &str {
        short_sha(&self.commit)
    }
}

/// The first 12 characters of a commit id (all of it when shorter).
pub fn short_sha(commit: &str) -> &str {
    commit.get(..12).unwrap_or(commit)
}

/// Answer to a push webhook.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct WebhookAnswer {
    /// The run queued for the push, if one was.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub run: Option<RunInfo>,
    /// Why nothing was queued (another branch, a branch deletion, a ping, already queued).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ignored: Option<String>,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn status_json_is_tagged() {
        let s = RunStatus::Failed {
            stage: RunStage::Build,
            reason: "no such file".into(),
        };
        let j = serde_json::to_string(&s).unwrap();
        assert_eq!(
            j,
            r#"{"state":"failed","stage":"build","reason":"no such file"}"#
        );
        assert_eq!(serde_json::from_str::<RunStatus>(&j).unwrap(), s);
        let r = serde_json::to_string(&RunStatus::RolledBack { reason: "x".into() }).unwrap();
        assert_eq!(r, r#"{"state":"rolled_back","reason":"x"}"#);
    }

    #[test]
    fn create_rejects_unknown_fields() {
        let err = serde_json::from_str::<PipelineCreate>(r#"{"name":"a","repo":"/r","brnch":"x"}"#)
            .unwrap_err();
        assert!(err.to_string().contains("brnch"), "{err}");
    }
}
