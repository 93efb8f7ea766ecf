//! The read-only pages. Each reads the same API endpoints the CLI reads (through
//! [`super::Api`]), so what a page shows is what `pier … --json` shows.

use std::collections::BTreeMap;

use axum::extract::{Path, Query, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use maud::{html, Markup};
use pier_api::pipeline::{PipelineInfo, RunInfo};
use pier_api::service::{DeploymentRecord, NodeView, ServiceDetail, ServiceSummary, TaskView};
use pier_api::status::StatusResponse;
use serde::Deserialize;
use serde_json::Value;

use super::api::{Ctx, Failure};
use super::render::{self, ago, badge, error_box, failed, key_path, n, ok, s, seg};
use super::UiState;

/// A part of a page: its markup, or the API's refusal in its place (a token may read
/// services but not the cluster status).
fn part<T>(r: &Result<T, Failure>, f: impl FnOnce(&T) -> Markup) -> Markup {
    match r {
        Ok(v) => f(v),
        Err(e) => error_box(e),
    }
}

/// The first failure that means "sign in", to show the login form instead of the page.
fn login_needed(fs: &[Option<&Failure>]) -> Option<Response> {
    fs.iter()
        .flatten()
        .find(|f| f.needs_login())
        .map(|f| failed("", f))
}

pub async fn overview(State(st): State<UiState>, ctx: Ctx) -> Response {
    let (status, nodes, services, failing, pipelines) = tokio::join!(
        st.api.get::<StatusResponse>(&ctx, "/api/v1/status"),
        st.api.get::<Vec<NodeView>>(&ctx, "/api/v1/nodes"),
        st.api.get::<Vec<ServiceSummary>>(&ctx, "/api/v1/services"),
        st.api.get::<Vec<Value>>(&ctx, "/v1/health/state/critical"),
        st.api.get::<Vec<PipelineInfo>>(&ctx, "/api/v1/pipelines"),
    );
    if let Some(r) = login_needed(&[
        status.as_ref().err(),
        nodes.as_ref().err(),
        services.as_ref().err(),
        failing.as_ref().err(),
        pipelines.as_ref().err(),
    ]) {
        return r;
    }
    let body = html! {
        section { h2 { "Servers" } (part(&status, members)) }
        section { h2 { "Nodes by zone" } (part(&nodes, |n| nodes_by_zone(n))) }
        section { h2 { "Services" } (part(&services, |s| services_table(s, st.gateway_port))) }
        section { h2 { "Failing checks" } (part(&failing, |c| checks_table(c))) }
        section { h2 { "Deployments" } (part(&services, |s| deployments_in_flight(s))) }
        section { h2 { "Last pipeline runs" } (part(&pipelines, |p| pipelines_table(p))) }
    };
    ok("Overview", body)
}

fn members(st: &StatusResponse) -> Markup {
    let leader = st.leader.as_ref().map(|l| l.id);
    html! {
        p { "Answered by " strong { (st.node_name) } ", term " (st.term) ", commit index "
            (st.commit_index) ", applied " (st.last_applied_index) ", pier " (st.version) }
        table {
            thead { tr { th { "server" } th { "raft state" } th { "raft address" } th { "API" } } }
            tbody { @for m in &st.members { tr {
                td { (m.name) }
                td { @if Some(m.id) == leader { (badge("leader")) }
                     @else if m.voter { (badge("follower")) } @else { (badge("learner")) } }
                td { code { (m.raft_addr) } }
                td { code { (m.http_addr) } }
            } } }
        }
    }
}

fn percent(used: u64, of: u64) -> String {
    match (used * 100).checked_div(of) {
        Some(p) => format!("{p}%"),
        None => "–".into(),
    }
}

fn node_state(v: &NodeView) -> String {
    serde_json::to_value(v.state)
        .ok()
        .and_then(|x| x.as_str().map(str::to_string))
        .unwrap_or_default()
}

fn nodes_by_zone(nodes: &[NodeView]) -> Markup {
    let mut zones: BTreeMap<&str, Vec<&NodeView>> = BTreeMap::new();
    for v in nodes {
        zones.entry(&v.node.zone).or_default().push(v);
    }
    html! {
        @if zones.is_empty() { p.muted { "No node has registered." } }
        div.zones { @for (zone, ns) in &zones {
            div.zone {
                h3 { "zone " (zone) }
                ul { @for v in ns { li {
                    a href={ "/ui/nodes#" (seg(&v.node.name)) } { (v.node.name) } " "
                    (badge(&node_state(v))) " "
                    span.muted { "cpu " (percent(v.allocated_cpu_millis, v.node.cpu_millis))
                        ", memory " (percent(v.allocated_memory_mb, v.node.memory_mb))
                        ", " (v.tasks) " tasks" }
                } } }
            }
        } }
    }
}

/// The gateway address of a route: the host on this server's gateway port, when it runs one.
fn route_href(route: &str, gateway_port: Option<u16>) -> String {
    match gateway_port {
        Some(p) if p != 80 => format!("http://{route}:{p}/"),
        _ => format!("http://{route}/"),
    }
}

pub fn services_table(list: &[ServiceSummary], gateway_port: Option<u16>) -> Markup {
    html! {
        @if list.is_empty() { p.muted { "No service yet: " code { "pier deploy hello.toml" } } }
        @else { table {
            thead { tr { th { "service" } th { "healthy / desired" } th { "deployment" }
                         th { "image" } th { "revision" } th { "route" } } }
            tbody { @for sv in list { tr {
                td { a href={ "/ui/services/" (seg(&sv.name)) } { (sv.name) } }
                td class=@if sv.healthy < sv.desired { "bad" } @else { "good" } {
                    (sv.healthy) " / " (sv.desired) }
                td { @if let Some(d) = sv.deployment_status { (badge(d.as_str())) } }
                td { code { (sv.image) } }
                td { (sv.revision) }
                td { @if !sv.route.is_empty() { a href=(route_href(&sv.route, gateway_port)) { (sv.route) } } }
            } } }
        } }
    }
}

fn deployments_in_flight(list: &[ServiceSummary]) -> Markup {
    html! {
        ul { @for sv in list.iter().filter(|s| s.deployment_status.is_some()) { li {
            a href={ "/ui/services/" (seg(&sv.name)) } { (sv.name) } " revision " (sv.revision) " "
            @if let Some(d) = sv.deployment_status { (badge(d.as_str())) }
        } } }
    }
}

/// Consul checks (`/v1/health/...` answers).
pub fn checks_table(checks: &[Value]) -> Markup {
    html! {
        @if checks.is_empty() { p.muted { "None." } }
        @else { table {
            thead { tr { th { "check" } th { "service" } th { "node" } th { "status" } th { "output" } } }
            tbody { @for c in checks { tr {
                td { (s(c, "Name")) }
                td { (s(c, "ServiceName")) }
                td { (s(c, "Node")) }
                td { (badge(s(c, "Status"))) }
                td { pre.output { (s(c, "Output")) } }
            } } }
        } }
    }
}

fn pipelines_table(list: &[PipelineInfo]) -> Markup {
    html! {
        @if list.is_empty() { p.muted { "No pipeline: " code { "pier pipeline create" } } }
        @else { table {
            thead { tr { th { "pipeline" } th { "last run" } th { "commit" } th { "outcome" } th { "when" } } }
            tbody { @for p in list { tr {
                td { a href={ "/ui/pipelines/" (seg(&p.name)) } { (p.name) } }
                @if let Some(r) = &p.last_run {
                    td { a href={ "/ui/pipelines/" (seg(&p.name)) "/runs/" (r.number) } { "#" (r.number) } }
                    td { code { (r.short_sha()) } }
                    td { (badge(r.status.name())) }
                    td { (ago(r.queued_at_ms)) " ago" }
                } @else { td colspan="4" { "no run yet" } }
            } } }
        } }
    }
}

pub async fn services(State(st): State<UiState>, ctx: Ctx) -> Response {
    match st
        .api
        .get::<Vec<ServiceSummary>>(&ctx, "/api/v1/services")
        .await
    {
        Ok(list) => ok("Services", services_table(&list, st.gateway_port)),
        Err(f) => failed("Services", &f),
    }
}

pub async fn service(State(st): State<UiState>, ctx: Ctx, Path(name): Path<String>) -> Response {
    let base = format!("/api/v1/services/{}", seg(&name));
    let (tasks_uri, checks_uri, deployments_uri) = (
        format!("{base}/tasks"),
        format!("/v1/health/checks/{}", seg(&name)),
        format!("{base}/deployments?limit={DEPLOYMENT_HISTORY}"),
    );
    let (detail, tasks, checks, deployments) = tokio::join!(
        st.api.get::<ServiceDetail>(&ctx, &base),
        st.api.get::<Vec<TaskView>>(&ctx, &tasks_uri),
        st.api.get::<Vec<Value>>(&ctx, &checks_uri),
        st.api.get::<Vec<DeploymentRecord>>(&ctx, &deployments_uri),
    );
    let detail = match detail {
        Ok(d) => d,
        Err(f) => return failed(&name, &f),
    };
    let body = html! {
        (service_head(&detail, st.gateway_port))
        section { h2 { "Instances" } (part(&tasks, |t| tasks_table(t, None))) }
        section { h2 { "Checks" } (part(&checks, |c| checks_table(c))) }
        section { h2 { "Deployments" } (part(&deployments, |d| deployment_history(d))) }
        section { h2 { "Revisions" } (revisions(&detail)) }
        section { h2 { "Actions" } (super::actions::service_forms(&detail)) }
        section {
            h2 { "Live log of every instance" }
            pre.log #log data-live={ "/ui/services/" (seg(&name)) "/logs/live" } {
                "The log streams here while this page is open (it needs JavaScript)." }
        }
    };
    ok(&name, body)
}

/// Deployments the service page lists (the API's newest first).
const DEPLOYMENT_HISTORY: usize = 10;

/// The service's recent deployments, newest first, each linking to its live page.
fn deployment_history(list: &[DeploymentRecord]) -> Markup {
    html! {
        @if list.is_empty() { p.muted { "No deployment yet." } }
        @else { table.deployments {
            thead { tr { th { "deployment" } th { "outcome" } th { "revision" } th { "started" }
                         th { "ended" } th { "reason" } } }
            tbody { @for d in list { tr data-deployment=(d.id) {
                td { a href={ "/ui/deployments/" (seg(&d.id)) } { code { (d.id) } } }
                td { (badge(d.status.as_str())) }
                td { (d.revision) @if let Some(from) = d.from_revision {
                    span.muted { " from " (from) } } }
                td { (ago(d.created_at_ms)) " ago" }
                td { @if d.status.is_terminal() { (ago(d.updated_at_ms)) " ago" }
                     @else { span.muted { "running" } } }
                td { (d.reason.as_deref().unwrap_or("")) }
            } } }
        } }
    }
}

fn service_head(d: &ServiceDetail, gateway_port: Option<u16>) -> Markup {
    html! {
        dl.facts {
            dt { "image" } dd { code { (d.spec.image) } }
            @if let Some(p) = &d.spec.pinned_image { dt { "pinned" } dd { code { (p) } } }
            dt { "revision" } dd { (d.service.revision) " (latest " (d.service.latest_revision) ")" }
            dt { "desired" } dd { (d.service.count) }
            @if !d.spec.route.is_empty() {
                dt { "route" } dd { a href=(route_href(&d.spec.route, gateway_port)) { (d.spec.route) } } }
            @if let Some(e) = &d.service.placement_error { dt { "placement" } dd.bad { (e) } }
            @if let Some(dep) = &d.deployment {
                dt { "deployment" } dd {
                    a href={ "/ui/deployments/" (seg(&dep.id)) } { (dep.id) } " " (badge(dep.status.as_str())) }
            }
        }
    }
}

fn revisions(d: &ServiceDetail) -> Markup {
    let newest = d.revisions.iter().max().copied().unwrap_or(0);
    html! {
        ol.revisions reversed { @for r in d.revisions.iter().rev() { li {
            "revision " (r)
            @if *r == d.service.revision { " " (badge("running")) }
            @if d.service.stable_revision == Some(*r) { " " span.muted { "(last stable)" } }
        } } }
        @if d.revisions.len() > 1 {
            form.inline method="get" action={ "/ui/services/" (seg(&d.service.name)) "/diff" } {
                label for="from" { "Compare revision" }
                select #from name="from" { @for r in d.revisions.iter().rev() {
                    option value=(r) selected[*r + 1 == newest] { (r) } } }
                label for="to" { "with" }
                select #to name="to" { @for r in d.revisions.iter().rev() {
                    option value=(r) selected[*r == newest] { (r) } } }
                button.secondary type="submit" { "Compare" }
            }
        }
    }
}

/// Tasks by zone and node; only those of `revision` when given.
pub fn tasks_table(tasks: &[TaskView], revision: Option<u64>) -> Markup {
    let mut rows: Vec<&TaskView> = tasks
        .iter()
        .filter(|t| revision.is_none_or(|r| t.task.revision == r))
        .collect();
    rows.sort_by(|a, b| {
        (&a.task.zone, &a.task.node, &a.task.id).cmp(&(&b.task.zone, &b.task.node, &b.task.id))
    });
    html! {
        @if rows.is_empty() { p.muted { "No task." } }
        @else { table.tasks {
            thead { tr { th { "task" } th { "state" } th { "zone" } th { "node" } th { "revision" } th { "why" } } }
            tbody { @for t in rows { tr data-task=(t.task.id) {
                td { code { (t.task.id) } }
                td.state { (badge(&t.display_state)) }
                td { (t.task.zone) } td { (t.task.node) }
                td { (t.task.revision) }
                td { (t.status.message.as_deref().or(t.task.stop_reason.as_deref()).unwrap_or("")) }
            } } }
        } }
    }
}

pub async fn deployment(State(st): State<UiState>, ctx: Ctx, Path(id): Path<String>) -> Response {
    match deployment_fragment(&st, &ctx, &id).await {
        Ok((dep, fragment)) => {
            let title = format!("Deployment of {} revision {}", dep.service, dep.revision);
            ok(
                &title,
                html! {
                    p { a href={ "/ui/services/" (seg(&dep.service)) } { "← " (dep.service) } }
                    div #live data-live={ "/ui/deployments/" (seg(&id)) "/live" } { (fragment) }
                },
            )
        }
        Err(f) => failed("Deployment", &f),
    }
}

/// The live part of the deployment page (also what the SSE stream sends).
pub async fn deployment_fragment(
    st: &UiState,
    ctx: &Ctx,
    id: &str,
) -> Result<(DeploymentRecord, Markup), Failure> {
    let dep: DeploymentRecord = st
        .api
        .get(ctx, &format!("/api/v1/deployments/{}", seg(id)))
        .await?;
    let tasks = st
        .api
        .get::<Vec<TaskView>>(
            ctx,
            &format!("/api/v1/services/{}/tasks", seg(&dep.service)),
        )
        .await;
    let m = deployment_markup(&dep, &tasks);
    Ok((dep, m))
}

pub fn deployment_markup(dep: &DeploymentRecord, tasks: &Result<Vec<TaskView>, Failure>) -> Markup {
    html! {
        p.status { "Status: " span #dep-status data-status=(dep.status.as_str()) { (badge(dep.status.as_str())) }
            @if let Some(r) = &dep.reason { " — " span #dep-reason { (r) } }
            @if let Some(by) = &dep.rolled_back_by { " (rolled back by " (by) ")" } }
        p { (dep.healthy) "/" (dep.desired) " healthy, " (dep.placed) " placed, "
            span #breaker { (dep.failed) " failed (breaker threshold " (dep.failure_threshold) ")" }
            ", " (dep.old_running) " old still running"
            @if let Some(from) = dep.from_revision { ", from revision " (from) } }
        h2 { "Tasks of revision " (dep.revision) }
        (part(tasks, |t| tasks_table(t, Some(dep.revision))))
        h2 { "Events" }
        ol.events { @for e in &dep.events { li { span.muted { (ago(e.at_ms)) " ago " } (e.message) } } }
    }
}

pub async fn nodes(State(st): State<UiState>, ctx: Ctx) -> Response {
    let list = match st.api.get::<Vec<NodeView>>(&ctx, "/api/v1/nodes").await {
        Ok(l) => l,
        Err(f) => return failed("Nodes", &f),
    };
    let body = html! {
        @if list.is_empty() { p.muted { "No node has registered." } }
        table {
            thead { tr { th { "node" } th { "zone" } th { "state" } th { "cpu used" } th { "memory used" }
                         th { "tasks" } th { "heartbeat" } th { "" } } }
            tbody { @for v in &list { tr id=(seg(&v.node.name)) {
                td { (v.node.name) } td { (v.node.zone) } td { (badge(&node_state(v))) }
                td { (v.allocated_cpu_millis) " / " (v.node.cpu_millis) " m" }
                td { (v.allocated_memory_mb) " / " (v.node.memory_mb) " MB" }
                td { (v.tasks) }
                td { @match v.last_heartbeat_age_ms { Some(a) => { (render::age(a)) " ago" } None => { "–" } } }
                td { (super::actions::drain_form(&v.node.name, v.node.draining)) }
            } } }
        }
    };
    ok("Nodes", body)
}

pub async fn pipelines(State(st): State<UiState>, ctx: Ctx) -> Response {
    match st
        .api
        .get::<Vec<PipelineInfo>>(&ctx, "/api/v1/pipelines")
        .await
    {
        Ok(list) => ok("Pipelines", pipelines_table(&list)),
        Err(f) => failed("Pipelines", &f),
    }
}

pub async fn pipeline(State(st): State<UiState>, ctx: Ctx, Path(name): Path<String>) -> Response {
    let base = format!("/api/v1/pipelines/{}", seg(&name));
    let runs_uri = format!("{base}/runs");
    let (info, runs) = tokio::join!(
        st.api.get::<PipelineInfo>(&ctx, &base),
        st.api.get::<Vec<RunInfo>>(&ctx, &runs_uri),
    );
    let info = match info {
        Ok(i) => i,
        Err(f) => return failed(&name, &f),
    };
    let body = html! {
        dl.facts { dt { "repository" } dd { code { (info.repo) } } dt { "branch" } dd { (info.branch) }
                   @if let Some(e) = &info.poll_error { dt { "poll error" } dd.bad { (e) } } }
        (super::actions::run_form(&name))
        h2 { "Runs" }
        (part(&runs, |r| runs_table(&name, r)))
    };
    ok(&name, body)
}

fn runs_table(name: &str, runs: &[RunInfo]) -> Markup {
    html! { table {
        thead { tr { th { "run" } th { "commit" } th { "trigger" } th { "outcome" } th { "queued" } th { "took" } } }
        tbody { @for r in runs { tr {
            td { a href={ "/ui/pipelines/" (seg(name)) "/runs/" (r.number) } { "#" (r.number) } }
            td { code { (r.short_sha()) } " " (r.commit_message.as_deref().unwrap_or("")) }
            td { (format!("{:?}", r.trigger).to_lowercase()) }
            td { (badge(r.status.name())) " " span.muted { (r.status.to_string()) } }
            td { (ago(r.queued_at_ms)) " ago" }
            td { @if let (Some(a), Some(b)) = (r.started_at_ms, r.finished_at_ms) { (render::age(b.saturating_sub(a))) } }
        } } }
    } }
}

pub async fn run(
    State(st): State<UiState>,
    ctx: Ctx,
    Path((name, number)): Path<(String, String)>,
) -> Response {
    let base = format!("/api/v1/pipelines/{}/runs/{}", seg(&name), seg(&number));
    let log_uri = format!("{base}/logs");
    let (info, log) = tokio::join!(
        st.api.get::<RunInfo>(&ctx, &base),
        st.api.get_text(&ctx, &log_uri),
    );
    let info = match info {
        Ok(i) => i,
        Err(f) => return failed(&name, &f),
    };
    let stages = ["queued", "building", "pushing", "deploying", "succeeded"];
    let reached = stages.iter().position(|s| *s == info.status.name());
    let title = format!("{name} run #{}", info.number);
    let body = html! {
        p { a href={ "/ui/pipelines/" (seg(&name)) } { "← " (name) } }
        div #run-head {
        ol.stages { @for (i, stage) in stages.iter().enumerate() {
            li class=@if reached.is_some_and(|r| i <= r) { "done" } @else { "" } { (stage) } } }
        p #outcome data-status=(info.status.name()) { "Outcome: " (badge(info.status.name())) " " (info.status.to_string()) }
        }
        p { "Commit " code { (info.commit) } " " (info.commit_message.as_deref().unwrap_or("")) }
        @if let Some(img) = &info.image { p { "Image " code { (img) } } }
        h2 { "Log" }
        @match &log {
            Ok(text) => {
                pre.log #log data-refresh="#run-head"
                    data-live=[(!info.status.is_terminal()).then(|| format!("/ui/pipelines/{}/runs/{}/live", seg(&name), info.number))] { (text) }
            }
            Err(f) => { (error_box(f)) }
        }
    };
    ok(&title, body)
}

pub async fn catalog(State(st): State<UiState>, ctx: Ctx) -> Response {
    let (services, checks) = tokio::join!(
        st.api
            .get::<BTreeMap<String, Vec<String>>>(&ctx, "/v1/catalog/services"),
        st.api.get::<Vec<Value>>(&ctx, "/v1/health/state/any"),
    );
    if let Some(r) = login_needed(&[services.as_ref().err(), checks.as_ref().err()]) {
        return r;
    }
    let body = html! {
        section { h2 { "Services" } (part(&services, |m| html! {
            table { thead { tr { th { "service" } th { "tags" } } }
                tbody { @for (name, tags) in m { tr { td { (name) } td { (tags.join(", ")) } } } } }
        })) }
        section { h2 { "Checks" } (part(&checks, |c| checks_table(c))) }
    };
    ok("Catalog", body)
}

#[derive(Deserialize)]
pub struct KvQuery {
    #[serde(default)]
    prefix: String,
}

pub async fn kv(State(st): State<UiState>, ctx: Ctx, Query(q): Query<KvQuery>) -> Response {
    let uri = if q.prefix.is_empty() {
        "/api/v1/kv".to_string()
    } else {
        format!("/api/v1/kv/{}?recurse=true", key_path(&q.prefix))
    };
    let entries = match st.api.get::<Vec<Value>>(&ctx, &uri).await {
        Ok(e) => e,
        Err(f) if super::api::is_not_found(&f) => Vec::new(),
        Err(f) => return failed("KV", &f),
    };
    let body = html! {
        form.inline method="get" action="/ui/kv" {
            label for="prefix" { "prefix" }
            input #prefix name="prefix" value=(q.prefix);
            button type="submit" { "List" }
        }
        table { thead { tr { th { "key" } th { "value" } th { "modify index" } } }
            tbody { @for e in &entries { tr {
                td { code { (s(e, "key")) } }
                td { pre.output { @if let Some(v) = e.get("value").and_then(|v| v.as_str()) {
                        (v.chars().take(500).collect::<String>()) } @else { "(binary)" } } }
                td { (n(e, "modify_index")) }
            } } } }
    };
    ok("KV", body)
}

pub async fn not_found() -> Response {
    (
        StatusCode::NOT_FOUND,
        render::page("Not found", html! { p { "No console page here." } }),
    )
        .into_response()
}
