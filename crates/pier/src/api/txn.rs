//! `POST /api/v1/txn`: several key/value operations applied atomically in one
//! raft entry. Either every condition holds and every operation applies, or
//! nothing changes.

use axum::extract::State;
use axum::Json;
use base64::Engine;
use serde::{Deserialize, Serialize};

use pier_store::{Op, Table, Txn};

use super::json::JsonBody;
use super::{AppState, HttpError};

/// Most operations one transaction may carry, as Consul limits `/v1/txn`.
pub const MAX_TXN_OPS: usize = 128;

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TxnRequest {
    pub ops: Vec<TxnOp>,
}

#[derive(Debug, Deserialize)]
#[serde(tag = "op", rename_all = "snake_case", deny_unknown_fields)]
pub enum TxnOp {
    Put {
        key: String,
        /// UTF-8 text; use `value_base64` for bytes.
        #[serde(default)]
        value: Option<String>,
        #[serde(default)]
        value_base64: Option<String>,
        #[serde(default)]
        flags: u64,
        #[serde(default)]
        cas: Option<u64>,
    },
    Delete {
        key: String,
        #[serde(default)]
        cas: Option<u64>,
    },
    DeletePrefix {
        prefix: String,
    },
    /// Guard: holds only if `key` was last changed at `modify_index` (0: absent).
    Check {
        key: String,
        modify_index: u64,
    },
}

#[derive(Debug, Serialize)]
pub struct TxnResponse {
    pub applied: bool,
    pub index: u64,
    /// Position of the first operation whose condition failed.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub failed_op: Option<usize>,
}

fn to_op(position: usize, op: TxnOp) -> Result<Op, HttpError> {
    Ok(match op {
        TxnOp::Put {
            key,
            value,
            value_base64,
            flags,
            cas,
        } => {
            let value = match (value, value_base64) {
                (Some(text), None) => text.into_bytes(),
                (None, Some(b64)) => base64::engine::general_purpose::STANDARD
                    .decode(b64.as_bytes())
                    .map_err(|e| {
                        HttpError::invalid(format!(
                            "ops[{position}].value_base64 is not base64: {e}"
                        ))
                    })?,
                (None, None) => Vec::new(),
                (Some(_), Some(_)) => {
                    return Err(HttpError::invalid(format!(
                        "ops[{position}] has both `value` and `value_base64`; send one"
                    )))
                }
            };
            Op::Put {
                table: Table::KV,
                key,
                value,
                flags,
                cas,
            }
        }
        TxnOp::Delete { key, cas } => Op::Delete {
            table: Table::KV,
            key,
            cas,
        },
        TxnOp::DeletePrefix { prefix } => Op::DeletePrefix {
            table: Table::KV,
            prefix,
        },
        TxnOp::Check { key, modify_index } => Op::Check {
            table: Table::KV,
            key,
            modify_index,
        },
    })
}

pub async fn post_txn(
    State(state): State<AppState>,
    JsonBody(req): JsonBody<TxnRequest>,
) -> Result<Json<TxnResponse>, HttpError> {
    if req.ops.is_empty() {
        return Err(HttpError::invalid(
            "`ops` is empty: a transaction needs at least one operation",
        ));
    }
    if req.ops.len() > MAX_TXN_OPS {
        return Err(HttpError::invalid(format!(
            "a transaction may carry at most {MAX_TXN_OPS} operations, got {}",
            req.ops.len()
        )));
    }
    let ops = req
        .ops
        .into_iter()
        .enumerate()
        .map(|(i, op)| to_op(i, op))
        .collect::<Result<Vec<_>, _>>()?;
    let result = state.store.write(Txn { ops }).await?;
    Ok(Json(TxnResponse {
        applied: result.applied,
        index: result.index,
        failed_op: result.failed_op,
    }))
}
