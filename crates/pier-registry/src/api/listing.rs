//! `GET /v2/_catalog`, `GET /v2/<name>/tags/list`, `GET /v2/<name>/referrers/<digest>`:
//! all answered from the index, never by walking the blob store.

use std::collections::BTreeMap;

use axum::response::Response;
use http::{header, HeaderValue, StatusCode};
use serde::Serialize;

use super::util::{self, Query};
use crate::digest::Digest;
use crate::index::Page;
use crate::manifest::OCI_INDEX;
use crate::names::RepoName;
use crate::{Inner, RegistryError};

#[derive(Serialize)]
struct TagList<'a> {
    name: &'a str,
    tags: &'a [String],
}

#[derive(Serialize)]
struct Catalog<'a> {
    repositories: &'a [String],
}

#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct ReferrerIndex<'a> {
    schema_version: u32,
    media_type: &'a str,
    manifests: Vec<ReferrerDescriptor<'a>>,
}

#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct ReferrerDescriptor<'a> {
    media_type: &'a str,
    digest: String,
    size: u64,
    #[serde(skip_serializing_if = "Option::is_none")]
    artifact_type: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    annotations: Option<&'a BTreeMap<String, String>>,
}

/// `n` and `last`; n=0 asks for an empty list.
fn paging(query: &Query) -> Result<(Option<usize>, Option<String>), RegistryError> {
    let n = match query.get("n") {
        None | Some("") => None,
        Some(n) => Some(
            n.parse::<usize>()
                .map_err(|_| RegistryError::BadRequest(format!("n={n:?} is not a count")))?,
        ),
    };
    Ok((
        n,
        query
            .get("last")
            .filter(|l| !l.is_empty())
            .map(str::to_string),
    ))
}

fn with_next_link(mut resp: Response, path: &str, n: Option<usize>, page: &Page) -> Response {
    if let (true, Some(n), Some(last)) = (page.more, n, page.items.last()) {
        let link = format!("<{path}?n={n}&last={last}>; rel=\"next\"");
        if let Ok(value) = HeaderValue::from_str(&link) {
            resp.headers_mut().insert(header::LINK, value);
        }
    }
    resp
}

fn to_json(value: &impl Serialize) -> Result<Vec<u8>, RegistryError> {
    serde_json::to_vec(value)
        .map_err(|e| RegistryError::Internal(format!("encoding a listing: {e}")))
}

pub(super) async fn tags(
    inner: &Inner,
    name: &RepoName,
    query: Option<&str>,
) -> Result<Response, RegistryError> {
    let (n, last) = paging(&Query::parse(query))?;
    let page = if n == Some(0) {
        inner
            .tags(name, None, Some(0))
            .await
            .map(|_| Page::default())?
    } else {
        inner.tags(name, last.as_deref(), n).await?
    };
    let body = to_json(&TagList {
        name: name.as_str(),
        tags: &page.items,
    })?;
    let resp = util::json_response(StatusCode::OK, body);
    Ok(with_next_link(
        resp,
        &format!("/v2/{name}/tags/list"),
        n,
        &page,
    ))
}

pub(super) async fn catalog(inner: &Inner, query: Option<&str>) -> Result<Response, RegistryError> {
    let (n, last) = paging(&Query::parse(query))?;
    let page = if n == Some(0) {
        Page::default()
    } else {
        inner.catalog(last.as_deref(), n).await?
    };
    let body = to_json(&Catalog {
        repositories: &page.items,
    })?;
    let resp = util::json_response(StatusCode::OK, body);
    Ok(with_next_link(resp, "/v2/_catalog", n, &page))
}

pub(super) async fn referrers(
    inner: &Inner,
    name: &RepoName,
    digest: &str,
    query: Option<&str>,
) -> Result<Response, RegistryError> {
    let subject = Digest::parse(digest)?;
    let query = Query::parse(query);
    let filter = query.get("artifactType").filter(|a| !a.is_empty());
    let found = inner.referrers(name, &subject).await?;
    let manifests = found
        .iter()
        .filter(|(_, r)| filter.is_none() || r.artifact_type.as_deref() == filter)
        .map(|(d, r)| ReferrerDescriptor {
            media_type: &r.media_type,
            digest: d.to_string(),
            size: r.size,
            artifact_type: r.artifact_type.as_deref(),
            annotations: r.annotations.as_ref(),
        })
        .collect();
    let body = to_json(&ReferrerIndex {
        schema_version: 2,
        media_type: OCI_INDEX,
        manifests,
    })?;
    let mut resp = util::json_response(StatusCode::OK, body);
    resp.headers_mut()
        .insert(header::CONTENT_TYPE, HeaderValue::from_static(OCI_INDEX));
    if filter.is_some() {
        resp.headers_mut().insert(
            "oci-filters-applied",
            HeaderValue::from_static("artifactType"),
        );
    }
    Ok(resp)
}
