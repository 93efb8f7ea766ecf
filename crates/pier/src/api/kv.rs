//! pier's own key/value endpoints, `/api/v1/kv/<key>`. Reads can block until
//! the index of their own result passes `?index=` (see `pier_store` watches).

use std::collections::HashMap;

use axum::body::Bytes;
use axum::extract::{Path, Query, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Json;
use base64::Engine;
use pier_api::kv::{KvEntry, KvWriteResponse};
use pier_api::ErrorCode;
use pier_store::{Entry, Op, Table, Txn, WatchKey};

use super::params::{flag, read_params};
use super::{AppState, HttpError};

/// Header carrying the index of a read's result, for the next blocking read.
pub const INDEX_HEADER: &str = "x-pier-index";

fn parse_u64(query: &HashMap<String, String>, name: &str) -> Result<Option<u64>, HttpError> {
    match query.get(name) {
        Some(v) => v.parse::<u64>().map(Some).map_err(|_| {
            HttpError::invalid(format!(
                "`{name}` must be a non-negative integer, got {v:?}"
            ))
        }),
        None => Ok(None),
    }
}

fn to_wire(key: &str, entry: &Entry) -> KvEntry {
    let (value, value_base64) = match std::str::from_utf8(&entry.value) {
        Ok(text) => (Some(text.to_string()), None),
        Err(_) => (
            None,
            Some(base64::engine::general_purpose::STANDARD.encode(&entry.value)),
        ),
    };
    KvEntry {
        key: key.to_string(),
        value,
        value_base64,
        flags: entry.flags,
        create_index: entry.create_index,
        modify_index: entry.modify_index,
    }
}

pub async fn list_root(
    state: State<AppState>,
    Query(mut query): Query<HashMap<String, String>>,
) -> Result<Response, HttpError> {
    query.insert("recurse".into(), "true".into());
    get_key(state, Path(String::new()), Query(query)).await
}

pub async fn get_key(
    State(state): State<AppState>,
    Path(key): Path<String>,
    Query(query): Query<HashMap<String, String>>,
) -> Result<Response, HttpError> {
    let params = read_params(&query)?;
    let recurse = flag(&query, "recurse");
    let watch_key = if recurse {
        WatchKey::prefix(Table::KV, key.clone())
    } else {
        WatchKey::key(Table::KV, key.clone())
    };
    let opts = pier_store::blocking::QueryOptions {
        consistency: params.consistency,
        min_index: params.min_index.unwrap_or(0),
        wait: params.wait,
    }
    .with_jitter();
    let (index, entries) = pier_store::blocking::blocking_query(&state.store, &opts, |view| {
        let entries: Vec<KvEntry> = if recurse {
            view.range_prefix(&Table::KV, &key)
                .map(|(k, e)| to_wire(k, e))
                .collect()
        } else {
            view.get(&Table::KV, &key)
                .map(|e| to_wire(&key, e))
                .into_iter()
                .collect()
        };
        Ok::<_, pier_store::StoreError>((entries, vec![watch_key.clone()]))
    })
    .await?;
    Ok(kv_response(index, recurse, entries))
}

fn kv_response(index: u64, recurse: bool, entries: Vec<KvEntry>) -> Response {
    let mut headers = HeaderMap::new();
    headers.insert(INDEX_HEADER, HeaderValue::from(index));
    if entries.is_empty() && !recurse {
        let body = pier_api::ApiError::new(ErrorCode::NotFound, "no such key");
        return (StatusCode::NOT_FOUND, headers, Json(body)).into_response();
    }
    if recurse {
        (headers, Json(entries)).into_response()
    } else {
        (headers, Json(entries.into_iter().next())).into_response()
    }
}

pub async fn put_key(
    State(state): State<AppState>,
    Path(key): Path<String>,
    Query(query): Query<HashMap<String, String>>,
    body: Bytes,
) -> Result<Json<KvWriteResponse>, HttpError> {
    let cas = parse_u64(&query, "cas")?;
    let flags = parse_u64(&query, "flags")?.unwrap_or(0);
    let txn = Txn {
        ops: vec![Op::Put {
            table: Table::KV,
            key,
            value: body.to_vec(),
            flags,
            cas,
        }],
    };
    let result = state.store.write(txn).await?;
    Ok(Json(KvWriteResponse {
        written: result.applied,
        index: result.index,
    }))
}

pub async fn delete_key(
    State(state): State<AppState>,
    Path(key): Path<String>,
    Query(query): Query<HashMap<String, String>>,
) -> Result<Json<KvWriteResponse>, HttpError> {
    let cas = parse_u64(&query, "cas")?;
    let op = if flag(&query, "recurse") {
        if cas.is_some() {
            return Err(HttpError::invalid(
                "`cas` cannot be combined with `recurse`",
            ));
        }
        Op::DeletePrefix {
            table: Table::KV,
            prefix: key,
        }
    } else {
        Op::Delete {
            table: Table::KV,
            key,
            cas,
        }
    };
    let result = state.store.write(Txn { ops: vec![op] }).await?;
    Ok(Json(KvWriteResponse {
        written: result.applied,
        index: result.index,
    }))
}
