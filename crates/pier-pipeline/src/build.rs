//! Building the image through the Docker engine and pushing it to the registry (bollard).

use std::collections::HashMap;

use bollard::query_parameters::{BuildImageOptions, PushImageOptions};
use bollard::Docker;
use futures::StreamExt;

use crate::log_sink::LogSink;

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum BuildError {
    #[error("cannot reach the Docker engine: {0}")]
    Engine(String),
    #[error("{0}")]
    Build(String),
    #[error("{0}")]
    Push(String),
}

/// What to build.
pub struct BuildSpec<'a> {
    /// Full reference to tag the image as: `<registry>/<name>:<short-sha>`.
    pub image: &'a str,
    /// The build context (uncompressed tar).
    pub context_tar: Vec<u8>,
    pub dockerfile: &'a str,
    pub build_args: &'a std::collections::BTreeMap<String, String>,
    /// Labels put on the image (pipeline, commit).
    pub labels: HashMap<String, String>,
}

/// Builds `spec` with the engine's classic builder, streaming its output to `log`.
/// Returns the image id.
pub async fn build_image(
    docker: &Docker,
    spec: BuildSpec<'_>,
    log: &LogSink,
) -> Result<String, BuildError> {
    let options = BuildImageOptions {
        dockerfile: spec.dockerfile.to_string(),
        t: Some(spec.image.to_string()),
        rm: true,
        forcerm: true,
        buildargs: Some(
            spec.build_args
                .iter()
                .map(|(k, v)| (k.clone(), v.clone()))
                .collect(),
        ),
        labels: Some(spec.labels),
        ..Default::default()
    };
    let body = bollard::body_full(spec.context_tar.into());
    let mut stream = docker.build_image(options, None, Some(body));
    let mut image_id = None;
    let mut last_lines: Vec<String> = Vec::new();
    while let Some(item) = stream.next().await {
        let info = match item {
            Ok(info) => info,
            Err(e) => return Err(classify_build_error(e, &last_lines)),
        };
        if let Some(detail) = info.error_detail.as_ref().and_then(|d| d.message.clone()) {
            log.line(format!("build error: {detail}"));
            return Err(BuildError::Build(detail));
        }
        if let Some(text) = info.stream {
            for l in text.lines().filter(|l| !l.trim().is_empty()) {
                last_lines.push(l.to_string());
                if last_lines.len() > 5 {
                    last_lines.remove(0);
                }
            }
            log.raw(text);
        }
        if let Some(status) = info.status {
            log.line(status);
        }
        if let Some(id) = info.aux.and_then(|a| a.id) {
            image_id = Some(id);
        }
    }
    match image_id {
        Some(id) => Ok(id),
        // Older engines report the id only as "Successfully built <id>".
        None => last_lines
            .iter()
            .rev()
            .find_map(|l| l.strip_prefix("Successfully built ").map(str::to_string))
            .ok_or_else(|| {
                BuildError::Build("the builder finished without reporting an image".into())
            }),
    }
}

fn classify_build_error(e: bollard::errors::Error, _last: &[String]) -> BuildError {
    use bollard::errors::Error as E;
    match e {
        E::DockerStreamError { error } => BuildError::Build(error),
        E::DockerResponseServerError { message, .. } => BuildError::Build(message),
        E::HyperResponseError { .. } | E::IOError { .. } | E::SocketNotFoundError(_) => {
            BuildError::Engine(e.to_string())
        }
        other => BuildError::Build(other.to_string()),
    }
}

/// Pushes `image` (`registry/name:tag`) to its registry, streaming progress to `log`.
/// With `registry_token`, the engine sends it as the bearer token (a secure cluster's registry).
pub async fn push_image(
    docker: &Docker,
    image: &str,
    registry_token: Option<String>,
    log: &LogSink,
) -> Result<(), BuildError> {
    let (repo, tag) = split_tag(image);
    let options = PushImageOptions {
        tag: Some(tag.to_string()),
        ..Default::default()
    };
    let credentials = registry_token.map(|t| bollard::auth::DockerCredentials {
        registrytoken: Some(t),
        ..Default::default()
    });
    let mut stream = docker.push_image(repo, Some(options), credentials);
    let mut last_status = String::new();
    while let Some(item) = stream.next().await {
        let info = match item {
            Ok(info) => info,
            Err(bollard::errors::Error::DockerStreamError { error }) => {
                log.line(format!("push error: {error}"));
                return Err(BuildError::Push(error));
            }
            Err(e) => {
                log.line(format!("push error: {e}"));
                return Err(BuildError::Push(e.to_string()));
            }
        };
        if let Some(detail) = info.error_detail.and_then(|d| d.message) {
            log.line(format!("push error: {detail}"));
            return Err(BuildError::Push(detail));
        }
        if let Some(status) = info.status {
            // Progress bars repeat the same status many times; keep the log readable.
            let line = status;
            if line != last_status && !line.ends_with("Pushing") {
                log.line(line.clone());
                last_status = line;
            }
        }
    }
    Ok(())
}

/// `host:5000/name:tag` → (`host:5000/name`, `tag`); `latest` when there is no tag.
pub fn split_tag(image: &str) -> (&str, &str) {
    let last_slash = image.rfind('/').map_or(0, |i| i + 1);
    match image[last_slash..].rfind(':') {
        Some(i) => (&image[..last_slash + i], &image[last_slash + i + 1..]),
        None => (image, "latest"),
    }
}

#[cfg(test)]
mod tests {
    use super::split_tag;

    #[test]
    fn tags() {
        assert_eq!(
            split_tag("127.0.0.1:5000/hello:abc"),
            ("127.0.0.1:5000/hello", "abc")
        );
        assert_eq!(
            split_tag("127.0.0.1:5000/hello"),
            ("127.0.0.1:5000/hello", "latest")
        );
        assert_eq!(split_tag("hello:v1"), ("hello", "v1"));
    }
}
