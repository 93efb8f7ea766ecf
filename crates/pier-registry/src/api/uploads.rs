//! Blob uploads: `POST /v2/<name>/blobs/uploads/` (start, single-request
//! push, cross-repository mount) and `PATCH`/`PUT`/`GET`/`DELETE` on the
//! session location.

use axum::body::Body;
use axum::extract::Request;
use axum::response::Response;
use http::{header, StatusCode};

use super::{empty, finish, util};
use crate::digest::{Algorithm, Digest};
use crate::names::RepoName;
use crate::uploads::UploadSession;
use crate::{Inner, RegistryError};

fn location(name: &RepoName, id: &str) -> String {
    format!("/v2/{name}/blobs/uploads/{id}")
}

fn session_headers(
    builder: http::response::Builder,
    name: &RepoName,
    session: &UploadSession,
    size: u64,
) -> http::response::Builder {
    builder
        .header(header::LOCATION, location(name, &session.id))
        .header(header::RANGE, util::upload_range(size))
        .header("docker-upload-uuid", session.id.as_str())
}

fn created_blob(name: &RepoName, digest: &Digest) -> Result<Response, RegistryError> {
    finish(
        empty(StatusCode::CREATED)
            .header(header::LOCATION, format!("/v2/{name}/blobs/{digest}"))
            .header("docker-content-digest", digest.to_string()),
        Body::empty(),
    )
}

pub(super) async fn start(
    inner: &Inner,
    name: &RepoName,
    req: Request,
) -> Result<Response, RegistryError> {
    let query = util::Query::parse(req.uri().query());
    if let Some(mount) = query.get("mount") {
        let digest = Digest::parse(mount)?;
        let from = query.get("from").map(RepoName::parse).transpose()?;
        if inner
            .mount_blob(name, from.as_ref(), &digest)
            .await?
            .is_some()
        {
            return created_blob(name, &digest);
        }
        // Not mountable: fall through to an ordinary upload session (202).
    } else if let Some(digest) = query.get("digest") {
        let digest = Digest::parse(digest)?;
        let length = util::content_length(req.headers());
        let session = inner.start_upload(name, digest.algorithm()).await?;
        let body = req.into_body().into_data_stream();
        if let Err(e) = inner
            .finish_upload(&session, &digest, Some((body, None, length)))
            .await
        {
            let _ = inner.cancel_upload(&session).await;
            return Err(e);
        }
        return created_blob(name, &digest);
    }
    let algorithm = match query.get("digest-algorithm") {
        Some(a) => a.parse::<Algorithm>()?,
        None => Algorithm::Sha256,
    };
    let session = inner.start_upload(name, algorithm).await?;
    finish(
        session_headers(empty(StatusCode::ACCEPTED), name, &session, 0),
        Body::empty(),
    )
}

pub(super) async fn patch(
    inner: &Inner,
    name: &RepoName,
    id: &str,
    req: Request,
) -> Result<Response, RegistryError> {
    let session = inner.upload_session(name, id).await?;
    let range = util::chunk_range(req.headers())?;
    let length = util::content_length(req.headers());
    let body = req.into_body().into_data_stream();
    match inner.append_upload(&session, body, range, length).await {
        Ok(size) => finish(
            session_headers(empty(StatusCode::ACCEPTED), name, &session, size),
            Body::empty(),
        ),
        Err(RegistryError::ChunkOutOfOrder { start, size }) => {
            tracing::debug!(upload = id, start, size, "chunk out of order");
            finish(
                session_headers(
                    empty(StatusCode::RANGE_NOT_SATISFIABLE),
                    name,
                    &session,
                    size,
                ),
                Body::empty(),
            )
        }
        Err(e) => Err(e),
    }
}

pub(super) async fn put(
    inner: &Inner,
    name: &RepoName,
    id: &str,
    req: Request,
) -> Result<Response, RegistryError> {
    let query = util::Query::parse(req.uri().query());
    let digest = query.get("digest").ok_or_else(|| {
        RegistryError::DigestInvalid("closing an upload needs ?digest=<digest>".into())
    })?;
    let digest = Digest::parse(digest)?;
    let session = inner.upload_session(name, id).await?;
    let range = util::chunk_range(req.headers())?;
    let length = util::content_length(req.headers());
    let last_chunk = if length == Some(0) && range.is_none() {
        None
    } else {
        Some((req.into_body().into_data_stream(), range, length))
    };
    match inner.finish_upload(&session, &digest, last_chunk).await {
        Ok(_) => created_blob(name, &digest),
        Err(RegistryError::ChunkOutOfOrder { size, .. }) => finish(
            session_headers(
                empty(StatusCode::RANGE_NOT_SATISFIABLE),
                name,
                &session,
                size,
            ),
            Body::empty(),
        ),
        Err(e) => Err(e),
    }
}

pub(super) async fn status(
    inner: &Inner,
    name: &RepoName,
    id: &str,
) -> Result<Response, RegistryError> {
    let session = inner.upload_session(name, id).await?;
    let size = session.size();
    finish(
        session_headers(empty(StatusCode::NO_CONTENT), name, &session, size),
        Body::empty(),
    )
}

pub(super) async fn cancel(
    inner: &Inner,
    name: &RepoName,
    id: &str,
) -> Result<Response, RegistryError> {
    let session = inner.upload_session(name, id).await?;
    inner.cancel_upload(&session).await?;
    finish(empty(StatusCode::NO_CONTENT), Body::empty())
}
