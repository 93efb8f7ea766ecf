//! Push webhooks from GitHub and Gitea (and anything speaking the same dialect): signature
//! verification and payload parsing.

use hmac::{Hmac, Mac};
use serde::Deserialize;
use sha2::Sha256;

/// The header carrying `sha256=<hex HMAC of the body>` (GitHub, Gitea, Gogs, Forgejo).
pub const SIGNATURE_HEADER: &str = "x-hub-signature-256";
/// Gitea's own header: the bare hex digest.
pub const GITEA_SIGNATURE_HEADER: &str = "x-gitea-signature";
/// Event name headers; a `ping` is acknowledged without a run.
pub const EVENT_HEADERS: [&str; 3] = ["x-github-event", "x-gitea-event", "x-gogs-event"];

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SignatureError {
    #[error("the request has no X-Hub-Signature-256 header")]
    Missing,
    #[error("the signature header is not \"sha256=\" followed by 64 hex digits")]
    Malformed,
    #[error("the signature does not match the body and the pipeline's webhook secret")]
    Mismatch,
}

/// Checks `header` (`sha256=<hex>` or Gitea's bare `<hex>`) against HMAC-SHA256(secret, body).
/// The comparison is constant-time.
pub fn verify_signature(
    secret: &[u8],
    body: &[u8],
    header: Option<&str>,
) -> Result<(), SignatureError> {
    let header = header.ok_or(SignatureError::Missing)?.trim();
    let hex_part = header.strip_prefix("sha256=").unwrap_or(header);
    if hex_part.len() != 64 {
        return Err(SignatureError::Malformed);
    }
    let expected = hex::decode(hex_part).map_err(|_| SignatureError::Malformed)?;
    let mut mac = Hmac::<Sha256>::new_from_slice(secret).map_err(|_| SignatureError::Mismatch)?;
    mac.update(body);
    mac.verify_slice(&expected)
        .map_err(|_| SignatureError::Mismatch)
}

/// `sha256=<hex>` for `body`: what a sender puts in `X-Hub-Signature-256`.
pub fn sign(secret: &[u8], body: &[u8]) -> String {
    // HMAC takes keys of any length, so this cannot fail.
    let mut mac = match Hmac::<Sha256>::new_from_slice(secret) {
        Ok(m) => m,
        Err(_) => unreachable!("HMAC accepts keys of any length"),
    };
    mac.update(body);
    format!("sha256={}", hex::encode(mac.finalize().into_bytes()))
}

/// The parts of a push event a pipeline uses.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PushEvent {
    /// `refs/heads/main`.
    pub git_ref: String,
    /// The commit the ref points to after the push (all zeros for a deletion).
    pub after: String,
    /// `owner/name` as the forge knows it, if sent.
    pub repository: Option<String>,
    /// The head commit's message, if sent.
    pub head_message: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PayloadError {
    #[error("the push payload is not valid JSON with \"ref\" and \"after\": {0}")]
    Json(String),
    #[error("\"after\" = {0:?} is not a commit id (40 or 64 hex digits)")]
    Commit(String),
}

#[derive(Deserialize)]
struct PushPayload {
    #[serde(rename = "ref")]
    git_ref: String,
    after: String,
    #[serde(default)]
    deleted: bool,
    #[serde(default)]
    repository: Option<RepositoryPayload>,
    #[serde(default)]
    head_commit: Option<CommitPayload>,
    #[serde(default)]
    commits: Vec<CommitPayload>,
}

#[derive(Deserialize)]
struct RepositoryPayload {
    #[serde(default)]
    full_name: Option<String>,
}

#[derive(Deserialize)]
struct CommitPayload {
    #[serde(default)]
    id: Option<String>,
    #[serde(default)]
    message: Option<String>,
}

/// What to do with a verified push.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum HookDecision {
    /// Queue a run for this commit.
    Run {
        commit: String,
        message: Option<String>,
    },
    /// Acknowledge without a run, for this reason.
    Ignore(String),
}

fn is_commit_id(s: &str) -> bool {
    (s.len() == 40 || s.len() == 64) && s.bytes().all(|b| b.is_ascii_hexdigit())
}

/// Parses a GitHub- or Gitea-style push payload.
pub fn parse_push(body: &[u8]) -> Result<PushEvent, PayloadError> {
    let p: PushPayload =
        serde_json::from_slice(body).map_err(|e| PayloadError::Json(e.to_string()))?;
    let after = p.after.trim().to_ascii_lowercase();
    if !is_commit_id(&after) {
        return Err(PayloadError::Commit(p.after));
    }
    let after = if p.deleted {
        "0".repeat(after.len())
    } else {
        after
    };
    // GitHub sends head_commit; Gitea sends commits (newest last) and sometimes head_commit.
    let head_message = p
        .head_commit
        .as_ref()
        .and_then(|c| c.message.clone())
        .or_else(|| {
            p.commits
                .iter()
                .rev()
                .find(|c| c.id.as_deref() == Some(after.as_str()))
                .and_then(|c| c.message.clone())
        })
        .map(|m| m.lines().next().unwrap_or("").to_string());
    Ok(PushEvent {
        git_ref: p.git_ref,
        after,
        repository: p.repository.and_then(|r| r.full_name),
        head_message,
    })
}

/// Runs only for pushes that move `branch` to a commit.
pub fn decide(event: &PushEvent, branch: &str) -> HookDecision {
    let pushed_branch = event.git_ref.strip_prefix("refs/heads/");
    if pushed_branch != Some(branch) {
        return HookDecision::Ignore(format!(
            "push to {} does not concern branch {branch}",
            event.git_ref
        ));
    }
    if event.after.bytes().all(|b| b == b'0') {
        return HookDecision::Ignore(format!("branch {branch} was deleted"));
    }
    HookDecision::Run {
        commit: event.after.clone(),
        message: event.head_message.clone(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const SHA: &str = "0123456789abcdef0123456789abcdef01234567";

    fn github_payload() -> String {
        format!(
            r#"{{"ref":"refs/heads/main","before":"{z}","after":"{SHA}","created":false,"deleted":false,
            "repository":{{"id":1,"name":"hello","full_name":"me/hello","clone_url":"https://github.com/me/hello.git"}},
            "pusher":{{"name":"me"}},"head_commit":{{"id":"{SHA}","message":"New page\n\nbody"}},"commits":[]}}"#,
            z = "0".repeat(40)
        )
    }

    #[test]
    fn signature_roundtrip() {
        let body = github_payload();
        let sig = sign(b"s3cret", body.as_bytes());
        assert!(sig.starts_with("sha256="));
        verify_signature(b"s3cret", body.as_bytes(), Some(&sig)).unwrap();
        // Gitea's bare-hex header form.
        verify_signature(b"s3cret", body.as_bytes(), Some(&sig["sha256=".len()..])).unwrap();
    }

    #[test]
    fn known_vector() {
        // HMAC-SHA256 from RFC 4231 test case 2.
        let sig = sign(b"Jefe", b"what do ya want for nothing?");
        assert_eq!(
            sig,
            "sha256=5bdcc146bf60754e6a042426089575c75a003f089d2739839dec58b964ec3843"
        );
    }

    #[test]
    fn bad_signatures() {
        let body = b"{}";
        assert_eq!(
            verify_signature(b"k", body, None),
            Err(SignatureError::Missing)
        );
        assert_eq!(
            verify_signature(b"k", body, Some("sha1=abc")),
            Err(SignatureError::Malformed)
        );
        assert_eq!(
            verify_signature(b"k", body, Some(&format!("sha256={}", "zz".repeat(32)))),
            Err(SignatureError::Malformed)
        );
        let other = sign(b"other", body);
        assert_eq!(
            verify_signature(b"k", body, Some(&other)),
            Err(SignatureError::Mismatch)
        );
        let mut tampered = sign(b"k", body);
        tampered.pop();
        tampered.push('0');
        let good = sign(b"k", body);
        if tampered != good {
            assert_eq!(
                verify_signature(b"k", body, Some(&tampered)),
                Err(SignatureError::Mismatch)
            );
        }
    }

    #[test]
    fn github_push() {
        let ev = parse_push(github_payload().as_bytes()).unwrap();
        assert_eq!(ev.git_ref, "refs/heads/main");
        assert_eq!(ev.after, SHA);
        assert_eq!(ev.repository.as_deref(), Some("me/hello"));
        assert_eq!(ev.head_message.as_deref(), Some("New page"));
        assert_eq!(
            decide(&ev, "main"),
            HookDecision::Run {
                commit: SHA.into(),
                message: Some("New page".into())
            }
        );
        assert!(matches!(decide(&ev, "dev"), HookDecision::Ignore(_)));
    }

    #[test]
    fn gitea_push() {
        let body = format!(
            r#"{{"ref":"refs/heads/main","before":"{b}","after":"{SHA}","compare_url":"",
            "commits":[{{"id":"{b}","message":"old\n"}},{{"id":"{SHA}","message":"Gitea commit\n"}}],
            "repository":{{"id":3,"full_name":"org/site","clone_url":"http://gitea/org/site.git"}},
            "pusher":{{"login":"me"}},"sender":{{"login":"me"}}}}"#,
            b = "1".repeat(40)
        );
        let ev = parse_push(body.as_bytes()).unwrap();
        assert_eq!(ev.head_message.as_deref(), Some("Gitea commit"));
        assert_eq!(ev.repository.as_deref(), Some("org/site"));
        assert!(matches!(decide(&ev, "main"), HookDecision::Run { .. }));
    }

    #[test]
    fn deletion_and_tags_are_ignored() {
        let del = format!(
            r#"{{"ref":"refs/heads/main","after":"{}","deleted":true}}"#,
            "0".repeat(40)
        );
        let ev = parse_push(del.as_bytes()).unwrap();
        assert!(matches!(decide(&ev, "main"), HookDecision::Ignore(r) if r.contains("deleted")));
        let tag = format!(r#"{{"ref":"refs/tags/main","after":"{SHA}"}}"#);
        let ev = parse_push(tag.as_bytes()).unwrap();
        assert!(matches!(decide(&ev, "main"), HookDecision::Ignore(_)));
    }

    #[test]
    fn bad_payloads() {
        assert!(matches!(
            parse_push(b"not json"),
            Err(PayloadError::Json(_))
        ));
        assert!(matches!(
            parse_push(br#"{"ref":"refs/heads/main"}"#),
            Err(PayloadError::Json(_))
        ));
        assert!(matches!(
            parse_push(br#"{"ref":"refs/heads/main","after":"HEAD"}"#),
            Err(PayloadError::Commit(_))
        ));
    }
}
