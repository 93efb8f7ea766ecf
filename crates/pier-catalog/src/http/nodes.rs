//! pier's node-scoped catalog endpoints, for agents that run on other machines (they have no
//! store of their own): register the node, register and deregister its instances, and report
//! check results they evaluated themselves (with [`crate::checks::probes`]). Bodies use
//! Consul's field names, parsed case-insensitively like `/v1/agent/service/register`.
//!
//! - `PUT /api/v1/catalog/nodes/:node` `{"Address", "Zone", "Meta"}` → `{"Index": n}`
//! - `PUT /api/v1/catalog/nodes/:node/services` (Consul service registration body) → `{"Index": n}`
//! - `DELETE /api/v1/catalog/nodes/:node/services/:id` → 200, 404 when unknown
//! - `PUT /api/v1/catalog/nodes/:node/checks/:id` `{"Status", "Output"}` → `{"Changed": bool}`
//! - `PUT /api/v1/catalog/nodes/:node/heartbeat` (see [`super::status::heartbeat`])

use std::collections::BTreeMap;

use axum::body::Bytes;
use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::response::IntoResponse;
use serde::Deserialize;

use super::{json_response, parse_json_body, ApiResult, ApiState};
use crate::error::CatalogError;
use crate::model::NodeRegistration;
use crate::wire::{canonicalize_service, ServiceRegisterIn};

#[derive(Deserialize, Default)]
struct NodeIn {
    #[serde(default, alias = "address")]
    #[serde(rename = "Address")]
    address: String,
    #[serde(default, alias = "zone")]
    #[serde(rename = "Zone")]
    zone: Option<String>,
    #[serde(default, alias = "meta")]
    #[serde(rename = "Meta")]
    meta: BTreeMap<String, String>,
}

fn index_body(index: u64) -> serde_json::Value {
    serde_json::json!({ "Index": index })
}

pub async fn register_node(
    State(s): State<ApiState>,
    Path(node): Path<String>,
    body: Bytes,
) -> ApiResult {
    let value = parse_json_body(&body)?;
    let input: NodeIn = serde_json::from_value(value)
        .map_err(|e| CatalogError::bad(format!("Request decode failed: {e}")))?;
    let index = s
        .catalog
        .register_node(&NodeRegistration {
            name: node,
            address: input.address,
            zone: input.zone.filter(|z| !z.is_empty()),
            meta: input.meta,
            tagged_addresses: BTreeMap::new(),
            monitored: true,
        })
        .await?;
    Ok(json_response(
        &s.catalog,
        index,
        StatusCode::OK,
        &index_body(index),
    ))
}

pub async fn register_service(
    State(s): State<ApiState>,
    Path(node): Path<String>,
    body: Bytes,
) -> ApiResult {
    let mut value = parse_json_body(&body)?;
    if !value.is_object() {
        return Err(
            CatalogError::bad("Request decode failed: the body must be a JSON object").into(),
        );
    }
    canonicalize_service(&mut value);
    let input: ServiceRegisterIn = serde_json::from_value(value)
        .map_err(|e| CatalogError::bad(format!("Request decode failed: {e}")))?;
    let reg = input.to_registration(&node)?;
    // The remote agent runs these checks itself (script checks included: it decides).
    let index = s.catalog.register_instance(&reg).await?;
    Ok(json_response(
        &s.catalog,
        index,
        StatusCode::OK,
        &index_body(index),
    ))
}

pub async fn deregister_service(
    State(s): State<ApiState>,
    Path((node, id)): Path<(String, String)>,
) -> ApiResult {
    if !s.catalog.deregister_instance(&node, &id).await? {
        return Err(
            CatalogError::NotFound(format!("Unknown service ID {id:?} on node {node:?}")).into(),
        );
    }
    Ok(StatusCode::OK.into_response())
}

pub async fn update_check(
    State(s): State<ApiState>,
    Path((node, id)): Path<(String, String)>,
    body: Bytes,
) -> ApiResult {
    let (status, output) = super::agent::parse_check_update(&body)?;
    crate::names::validate_node_name(&node)?;
    crate::names::validate_check_id(&id)?;
    let changed = s
        .catalog
        .update_check(&node, &id, status, output.as_deref())
        .await?;
    Ok(json_response(
        &s.catalog,
        1,
        StatusCode::OK,
        &serde_json::json!({ "Changed": changed }),
    ))
}
