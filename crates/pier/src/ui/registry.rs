//! The registry page and its "delete tag" button. Both go through this server's registry
//! router as `docker`/`skopeo` reach it (OCI Distribution: `_catalog`, `tags/list`,
//! manifests, `DELETE` of a tag), with its own door in a secure cluster (a pier API token is
//! accepted there as a Bearer credential), so the registry's rules apply unchanged.

use std::collections::BTreeMap;

use axum::extract::{Query, State};
use axum::http::{header, HeaderMap, Method, StatusCode};
use axum::response::{IntoResponse, Redirect, Response};
use axum::Form;
use futures::future::join_all;
use maud::{html, Markup};
use pier_api::service::ServiceSummary;
use serde::Deserialize;
use serde_json::Value;

use super::api::{Api, Ctx, Failure};
use super::render::{self, bytes, error_box, failed, key_path, ok, seg};
use super::session::{cross_site, same_origin};
use super::UiState;

/// Manifests of every kind a tag may name.
const MANIFEST_ACCEPT: &str = "application/vnd.oci.image.manifest.v1+json, application/vnd.docker.distribution.manifest.v2+json, application/vnd.oci.image.index.v1+json, application/vnd.docker.distribution.manifest.list.v2+json";
/// Repositories on one page, and tags of each: a registry with hundreds stays one quick page
/// at a time (every tag shown costs a manifest read).
const REPO_PAGE: usize = 20;
const TAG_PAGE: usize = 20;

/// The registry answers a token it does not accept for this with 401 and a challenge; on
/// the page that is a refusal of the signed-in token, not a request to sign in.
fn as_refusal(ctx: &Ctx, mut f: Failure) -> Failure {
    if ctx.token.is_some() && f.status == StatusCode::UNAUTHORIZED {
        f.status = StatusCode::FORBIDDEN;
        f.message = format!("this token does not allow it: {}", f.message);
    }
    f
}

struct Tag {
    name: String,
    digest: String,
    size: Option<u64>,
}

/// A tag's manifest digest and the size of what it pulls (config and layers, or the
/// manifests of an index).
async fn tag_of(reg: &Api, ctx: &Ctx, repo: &str, tag: &str) -> Tag {
    let uri = format!("/v2/{}/manifests/{}", key_path(repo), seg(tag));
    let resp = reg
        .call_with(ctx, Method::GET, &uri, &[("accept", MANIFEST_ACCEPT)], None)
        .await;
    let Ok(resp) = resp else {
        return Tag {
            name: tag.to_string(),
            digest: "?".into(),
            size: None,
        };
    };
    let digest = resp
        .headers()
        .get("docker-content-digest")
        .and_then(|v| v.to_str().ok())
        .unwrap_or("?")
        .to_string();
    let body = axum::body::to_bytes(resp.into_body(), 4 * 1024 * 1024)
        .await
        .unwrap_or_default();
    let size = serde_json::from_slice::<Value>(&body).ok().map(|m| {
        let sum = |key: &str| {
            m.get(key)
                .and_then(|l| l.as_array())
                .map(|l| l.iter().map(|d| render::n(d, "size")).sum::<u64>())
                .unwrap_or(0)
        };
        m.get("config").map(|c| render::n(c, "size")).unwrap_or(0)
            + sum("layers")
            + sum("manifests")
    });
    Tag {
        name: tag.to_string(),
        digest,
        size,
    }
}

/// One page of a repository's tags (`tags/list?n=&last=`, the registry's own paging) with
/// each tag's digest and size; whether the registry said there are more (its `Link`).
async fn repo_tags(
    reg: &Api,
    ctx: &Ctx,
    repo: &str,
    after: Option<&str>,
) -> Result<(Vec<Tag>, bool), Failure> {
    let mut uri = format!("/v2/{}/tags/list?n={TAG_PAGE}", key_path(repo));
    if let Some(t) = after {
        uri.push_str(&format!("&last={}", seg(t)));
    }
    let (list, more) = listing(reg, ctx, &uri, "tags").await?;
    let tags = join_all(list.iter().map(|t| tag_of(reg, ctx, repo, t))).await;
    Ok((tags, more))
}

/// A listing of the registry (`_catalog` or `tags/list`): the names under `key`, and whether
/// the answer carries a `Link` to a next page.
async fn listing(
    reg: &Api,
    ctx: &Ctx,
    uri: &str,
    key: &str,
) -> Result<(Vec<String>, bool), Failure> {
    let resp = reg.call(ctx, Method::GET, uri, None).await?;
    let more = resp.headers().contains_key(header::LINK);
    let bytes = axum::body::to_bytes(resp.into_body(), 4 * 1024 * 1024)
        .await
        .map_err(|e| Failure {
            status: StatusCode::BAD_GATEWAY,
            message: format!("reading {uri}: {e}"),
        })?;
    let value: Value = serde_json::from_slice(&bytes).map_err(|e| Failure {
        status: StatusCode::BAD_GATEWAY,
        message: format!("decoding {uri}: {e}"),
    })?;
    let names = value
        .get(key)
        .and_then(|t| t.as_array())
        .map(|t| {
            t.iter()
                .filter_map(|x| x.as_str().map(str::to_string))
                .collect()
        })
        .unwrap_or_default();
    Ok((names, more))
}

/// Pinned digest → services running it, from the service list (the same as `pier service ls`).
async fn digests_in_use(st: &UiState, ctx: &Ctx) -> BTreeMap<String, Vec<String>> {
    let list = st
        .api
        .get::<Vec<ServiceSummary>>(ctx, "/api/v1/services")
        .await
        .unwrap_or_default();
    let mut out: BTreeMap<String, Vec<String>> = BTreeMap::new();
    for s in list {
        if let Some((_, digest)) = s.pinned_image.as_deref().and_then(|p| p.split_once('@')) {
            out.entry(digest.to_string())
                .or_default()
                .push(s.name.clone());
        }
    }
    out
}

/// Where a registry page starts: after repository `last`, or (with `repo`) one repository's
/// tags after `tag`.
#[derive(Deserialize, Default)]
pub struct RegistryQuery {
    last: Option<String>,
    repo: Option<String>,
    tag: Option<String>,
}

pub async fn registry(
    State(st): State<UiState>,
    ctx: Ctx,
    Query(q): Query<RegistryQuery>,
) -> Response {
    let Some(reg) = st.registry.clone() else {
        return ok(
            "Registry",
            html! { p.muted { "This server runs no registry." } },
        );
    };
    // One repository's further tags, or one page of repositories.
    let (repos, more) = match &q.repo {
        Some(r) => (vec![r.clone()], false),
        None => {
            let mut uri = format!("/v2/_catalog?n={REPO_PAGE}");
            if let Some(l) = q.last.as_deref().filter(|l| !l.is_empty()) {
                uri.push_str(&format!("&last={}", seg(l)));
            }
            match listing(&reg, &ctx, &uri, "repositories").await {
                Ok(x) => x,
                Err(f) => return failed("Registry", &as_refusal(&ctx, f)),
            }
        }
    };
    let after = q.repo.as_ref().and(q.tag.as_deref());
    let (tags, in_use) = tokio::join!(
        join_all(repos.iter().map(|r| repo_tags(&reg, &ctx, r, after))),
        digests_in_use(&st, &ctx),
    );
    let tags: Vec<_> = tags
        .into_iter()
        .map(|t| t.map_err(|f| as_refusal(&ctx, f)))
        .collect();
    // No credential (one repository's page reads no catalog first): the login form, no data.
    if let Some(f) = tags
        .iter()
        .filter_map(|t| t.as_ref().err())
        .find(|f| f.needs_login())
    {
        return failed("Registry", f);
    }
    let body = html! {
        @if repos.is_empty() { p.muted { "No image pushed yet: " code { "docker push 127.0.0.1:5000/hello:v1" } } }
        @for (repo, tags) in repos.iter().zip(&tags) {
            section.repo { h2 { (repo) }
                @match tags {
                    Ok((tags, more_tags)) => {
                        (tags_table(repo, tags, &in_use))
                        @if *more_tags { @if let Some(t) = tags.last() {
                            p { a.more href={ "/ui/registry?repo=" (seg(repo)) "&tag=" (seg(&t.name)) } {
                                "More tags of " (repo) " →" } } } }
                    }
                    Err(f) => { (error_box(f)) }
                }
            }
        }
        (pager(&q, &repos, more))
    };
    ok("Registry", body)
}

/// Links to the first and the next page of repositories.
fn pager(q: &RegistryQuery, repos: &[String], more: bool) -> Markup {
    let paged = q.repo.is_some() || q.last.as_deref().is_some_and(|l| !l.is_empty());
    html! {
        @if paged || more { nav.pager {
            @if paged { a.first href="/ui/registry" { "← First page" } }
            @if more { @if let Some(last) = repos.last() {
                a.next href={ "/ui/registry?last=" (seg(last)) } { "Next repositories →" } } }
        } }
    }
}

fn tags_table(repo: &str, tags: &[Tag], in_use: &BTreeMap<String, Vec<String>>) -> Markup {
    html! { table.tags {
        thead { tr { th { "tag" } th { "digest" } th { "size" } th { "running in" } th { "" } } }
        tbody { @for t in tags { tr {
            td { (t.name) }
            td { code.digest { (t.digest) } }
            td { @if let Some(s) = t.size { (bytes(s)) } }
            td { @for s in in_use.get(&t.digest).into_iter().flatten() {
                a href={ "/ui/services/" (seg(s)) } { (s) } " " } }
            td { form.inline method="post" action="/ui/registry/delete" {
                input type="hidden" name="repo" value=(repo);
                input type="hidden" name="tag" value=(t.name);
                label.confirm { input type="checkbox" name="confirm" value="yes" required; " sure" }
                button.secondary type="submit" { "Delete tag" }
            } }
        } } }
    } }
}

#[derive(Deserialize)]
pub struct DeleteForm {
    repo: String,
    tag: String,
    confirm: Option<String>,
}

pub async fn delete_tag(
    State(st): State<UiState>,
    ctx: Ctx,
    headers: HeaderMap,
    Form(form): Form<DeleteForm>,
) -> Response {
    if !same_origin(&headers) {
        return cross_site();
    }
    let Some(reg) = st.registry.clone() else {
        return Redirect::to("/ui/registry").into_response();
    };
    let title = format!("Delete {}:{}", form.repo, form.tag);
    let refused = |f: Failure| {
        let body = html! { (error_box(&f)) p { a href="/ui/registry" { "← back" } } };
        (f.status, render::page(&title, body)).into_response()
    };
    if form.confirm.is_none() {
        return refused(Failure {
            status: StatusCode::BAD_REQUEST,
            message: "tick the confirmation box to do this".into(),
        });
    }
    let uri = format!("/v2/{}/manifests/{}", key_path(&form.repo), seg(&form.tag));
    match reg.call(&ctx, Method::DELETE, &uri, None).await {
        Ok(_) => Redirect::to("/ui/registry").into_response(),
        Err(f) => refused(as_refusal(&ctx, f)),
    }
}
