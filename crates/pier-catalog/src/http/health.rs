//! `/v1/catalog/*` and `/v1/health/*`.

use std::collections::BTreeMap;

use axum::extract::{Path, RawQuery, State};
use axum::http::StatusCode;
use bytes::Bytes;

use super::{bytes_response, json_response, parse_query, ApiResult, ApiState};
use crate::catalog::ServiceFilter;
use crate::error::CatalogError;
use crate::model::CheckStatus;
use crate::wire::{
    CatalogServiceOut, CheckOut, HealthServiceOut, NodeOut, NodeServicesOut, ServiceOut,
};

pub async fn catalog_services(State(s): State<ApiState>, RawQuery(q): RawQuery) -> ApiResult {
    let p = parse_query(q.as_deref());
    let opts = p.query_options()?;
    let res = s.catalog.services(&p.node_meta()?, &opts).await?;
    let body: BTreeMap<String, Vec<String>> = res
        .value
        .into_iter()
        .map(|(name, tags)| (name, tags.into_iter().collect()))
        .collect();
    Ok(json_response(&s.catalog, res.index, StatusCode::OK, &body))
}

fn service_filter(p: &super::Params, passing_only: bool) -> Result<ServiceFilter, CatalogError> {
    Ok(ServiceFilter {
        passing_only,
        tags: p.all("tag"),
        node_meta: p.node_meta()?,
    })
}

pub async fn catalog_service(
    State(s): State<ApiState>,
    Path(name): Path<String>,
    RawQuery(q): RawQuery,
) -> ApiResult {
    let p = parse_query(q.as_deref());
    let opts = p.query_options()?;
    let filter = service_filter(&p, false)?;
    let res = s.catalog.service_instances(&name, &filter, &opts).await?;
    let body: Vec<CatalogServiceOut> = res
        .value
        .iter()
        .map(|(node, inst)| CatalogServiceOut::new(node, inst))
        .collect();
    Ok(json_response(&s.catalog, res.index, StatusCode::OK, &body))
}

pub async fn catalog_nodes(State(s): State<ApiState>, RawQuery(q): RawQuery) -> ApiResult {
    let p = parse_query(q.as_deref());
    let opts = p.query_options()?;
    let meta = p.node_meta()?;
    let res = s.catalog.nodes(&opts).await?;
    let body: Vec<NodeOut> = res
        .value
        .iter()
        .filter(|n| meta.iter().all(|(k, v)| n.meta.get(k) == Some(v)))
        .map(NodeOut::from)
        .collect();
    Ok(json_response(&s.catalog, res.index, StatusCode::OK, &body))
}

pub async fn catalog_node(
    State(s): State<ApiState>,
    Path(node): Path<String>,
    RawQuery(q): RawQuery,
) -> ApiResult {
    let p = parse_query(q.as_deref());
    let opts = p.query_options()?;
    let res = s.catalog.node_services(&node, &opts).await?;
    match res.value {
        // Consul answers `null` with 200 for an unknown node.
        None => Ok(json_response(
            &s.catalog,
            res.index,
            StatusCode::OK,
            &serde_json::Value::Null,
        )),
        Some((n, instances)) => {
            let dc = s.catalog.datacenter().to_string();
            let body = NodeServicesOut {
                node: NodeOut::from(&n),
                services: instances
                    .iter()
                    .map(|i| (i.id.clone(), ServiceOut::new(i, &dc)))
                    .collect(),
            };
            Ok(json_response(&s.catalog, res.index, StatusCode::OK, &body))
        }
    }
}

pub async fn catalog_datacenters(State(s): State<ApiState>) -> ApiResult {
    let body = vec![s.catalog.datacenter().to_string()];
    Ok(json_response(&s.catalog, 1, StatusCode::OK, &body))
}

pub async fn health_service(
    State(s): State<ApiState>,
    Path(name): Path<String>,
    RawQuery(q): RawQuery,
) -> ApiResult {
    let p = parse_query(q.as_deref());
    let opts = p.query_options()?;
    let filter = service_filter(&p, p.flag("passing")?)?;
    let res = s
        .catalog
        .health_service_shared(&name, &filter, &opts)
        .await?;
    let body = res
        .value
        .encoded
        .get_or_init(|| {
            let dc = s.catalog.datacenter().to_string();
            let out: Vec<HealthServiceOut> = res
                .value
                .instances
                .iter()
                .map(|h| HealthServiceOut {
                    node: NodeOut::from(&h.node),
                    service: ServiceOut::new(&h.instance, &dc),
                    checks: h.checks.iter().map(CheckOut::from).collect(),
                })
                .collect();
            Bytes::from(serde_json::to_vec(&out).unwrap_or_else(|_| b"[]".to_vec()))
        })
        .clone();
    Ok(bytes_response(&s.catalog, res.index, body))
}

pub async fn health_state(
    State(s): State<ApiState>,
    Path(state): Path<String>,
    RawQuery(q): RawQuery,
) -> ApiResult {
    let p = parse_query(q.as_deref());
    let opts = p.query_options()?;
    let filter = match state.as_str() {
        "any" => None,
        other => Some(CheckStatus::parse(other).ok_or_else(|| {
            CatalogError::bad(format!(
                "Invalid check state {other:?}: use any, passing, warning or critical"
            ))
        })?),
    };
    let res = s.catalog.checks_in_state(filter, &opts).await?;
    let body: Vec<CheckOut> = res.value.iter().map(CheckOut::from).collect();
    Ok(json_response(&s.catalog, res.index, StatusCode::OK, &body))
}

pub async fn health_checks(
    State(s): State<ApiState>,
    Path(service): Path<String>,
    RawQuery(q): RawQuery,
) -> ApiResult {
    let p = parse_query(q.as_deref());
    let opts = p.query_options()?;
    let res = s.catalog.service_checks(&service, &opts).await?;
    let body: Vec<CheckOut> = res.value.iter().map(CheckOut::from).collect();
    Ok(json_response(&s.catalog, res.index, StatusCode::OK, &body))
}

pub async fn health_node(
    State(s): State<ApiState>,
    Path(node): Path<String>,
    RawQuery(q): RawQuery,
) -> ApiResult {
    let p = parse_query(q.as_deref());
    let opts = p.query_options()?;
    let res = s.catalog.node_checks(&node, &opts).await?;
    let body: Vec<CheckOut> = res.value.iter().map(CheckOut::from).collect();
    Ok(json_response(&s.catalog, res.index, StatusCode::OK, &body))
}

/// `GET /api/v1/catalog/routes`: who owns each route host (or host-less path), and the
/// conflicts that could not be refused at registration. Blocking like every catalog read.
pub async fn route_claims(State(s): State<ApiState>, RawQuery(q): RawQuery) -> ApiResult {
    let p = parse_query(q.as_deref());
    let opts = p.query_options()?;
    let res = s.catalog.route_claims(&opts).await?;
    let body = crate::wire::RouteClaimsOut::from(&res.value);
    Ok(json_response(&s.catalog, res.index, StatusCode::OK, &body))
}
