//! `/v1/agent/*`: this server acting as the Consul agent of its own node. Services registered
//! here belong to the server's node, and the server's check runner runs their checks.

use std::collections::BTreeMap;

use axum::body::Bytes;
use axum::extract::{Path, RawQuery, State};
use axum::http::StatusCode;
use axum::response::IntoResponse;

use super::{json_response, parse_json_body, parse_query, ApiResult, ApiState};
use crate::error::CatalogError;
use crate::model::{CheckKind, CheckStatus};
use crate::wire::{
    canonicalize_check_update, canonicalize_service, AgentConfigOut, AgentMemberOut, AgentSelfOut,
    CheckOut, CheckUpdateIn, ServiceOut, ServiceRegisterIn,
};

pub async fn agent_self(State(s): State<ApiState>) -> ApiResult {
    let agent = &s.agent;
    let dc = s.catalog.datacenter().to_string();
    let mut tags = BTreeMap::new();
    tags.insert("dc".to_string(), dc.clone());
    tags.insert("role".to_string(), "consul".to_string());
    let body = AgentSelfOut {
        config: AgentConfigOut {
            datacenter: dc.clone(),
            node_name: agent.node_name().to_string(),
            node_id: agent.node_id().await,
            server: true,
            revision: "pier".to_string(),
            version: format!("1.15.0+pier.{}", env!("CARGO_PKG_VERSION")),
            primary_datacenter: dc,
        },
        member: AgentMemberOut {
            name: agent.node_name().to_string(),
            addr: agent.address().to_string(),
            port: 8301,
            tags,
            status: 1,
        },
        meta: BTreeMap::new(),
    };
    Ok(json_response(&s.catalog, 1, StatusCode::OK, &body))
}

pub async fn agent_services(State(s): State<ApiState>) -> ApiResult {
    let dc = s.catalog.datacenter().to_string();
    let instances = s.catalog.node_instances(s.agent.node_name()).await?;
    let body: BTreeMap<String, ServiceOut> = instances
        .iter()
        .map(|i| (i.id.clone(), ServiceOut::new(i, &dc)))
        .collect();
    Ok(json_response(&s.catalog, 1, StatusCode::OK, &body))
}

pub async fn agent_checks(State(s): State<ApiState>) -> ApiResult {
    let res = s
        .catalog
        .node_checks(
            s.agent.node_name(),
            &crate::blocking::QueryOptions::default(),
        )
        .await?;
    let body: BTreeMap<String, CheckOut> = res
        .value
        .iter()
        .map(|c| (c.id.clone(), CheckOut::from(c)))
        .collect();
    Ok(json_response(&s.catalog, res.index, StatusCode::OK, &body))
}

pub async fn service_register(State(s): State<ApiState>, body: Bytes) -> ApiResult {
    let mut value = parse_json_body(&body)?;
    if !value.is_object() {
        return Err(
            CatalogError::bad("Request decode failed: the body must be a JSON object").into(),
        );
    }
    canonicalize_service(&mut value);
    let input: ServiceRegisterIn = serde_json::from_value(value)
        .map_err(|e| CatalogError::bad(format!("Request decode failed: {e}")))?;
    let reg = input.to_registration(s.agent.node_name())?;
    if !s.agent.script_checks_enabled()
        && reg
            .checks
            .iter()
            .any(|c| matches!(c.definition.kind, CheckKind::Script { .. }))
    {
        return Err(CatalogError::bad(
            "Scripts are disabled on this agent; to enable, configure 'enable_script_checks' to true",
        )
        .into());
    }
    s.agent.register_service(&reg).await?;
    Ok(StatusCode::OK.into_response())
}

pub async fn service_deregister(State(s): State<ApiState>, Path(id): Path<String>) -> ApiResult {
    if !s.agent.deregister_service(&id).await? {
        return Err(CatalogError::NotFound(format!("Unknown service ID {id:?}")).into());
    }
    Ok(StatusCode::OK.into_response())
}

async fn ttl_update(s: &ApiState, id: &str, status: CheckStatus, q: Option<String>) -> ApiResult {
    let p = parse_query(q.as_deref());
    let note = p.get("note").map(str::to_string);
    s.agent.update_ttl(id, status, note).await?;
    Ok(StatusCode::OK.into_response())
}

pub async fn check_pass(
    State(s): State<ApiState>,
    Path(id): Path<String>,
    RawQuery(q): RawQuery,
) -> ApiResult {
    ttl_update(&s, &id, CheckStatus::Passing, q).await
}

pub async fn check_warn(
    State(s): State<ApiState>,
    Path(id): Path<String>,
    RawQuery(q): RawQuery,
) -> ApiResult {
    ttl_update(&s, &id, CheckStatus::Warning, q).await
}

pub async fn check_fail(
    State(s): State<ApiState>,
    Path(id): Path<String>,
    RawQuery(q): RawQuery,
) -> ApiResult {
    ttl_update(&s, &id, CheckStatus::Critical, q).await
}

pub async fn check_update(
    State(s): State<ApiState>,
    Path(id): Path<String>,
    body: Bytes,
) -> ApiResult {
    let (status, output) = parse_check_update(&body)?;
    s.agent.update_ttl(&id, status, output).await?;
    Ok(StatusCode::OK.into_response())
}

/// The body of a check update (`{"Status": ..., "Output": ...}`, any field-name case), shared
/// by the agent endpoint and the remote agents' node endpoint.
pub(super) fn parse_check_update(
    body: &Bytes,
) -> Result<(CheckStatus, Option<String>), CatalogError> {
    let mut value = parse_json_body(body)?;
    canonicalize_check_update(&mut value);
    let input: CheckUpdateIn = serde_json::from_value(value)
        .map_err(|e| CatalogError::bad(format!("Request decode failed: {e}")))?;
    let status = input
        .status
        .as_deref()
        .and_then(CheckStatus::parse)
        .ok_or_else(|| CatalogError::bad("Invalid Status: use passing, warning or critical"))?;
    Ok((status, input.output))
}
