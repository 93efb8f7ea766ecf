//! pier's own key/value API (`/api/v1/kv/...`). The Consul-compatible KV lives
//! at `/v1/kv/...` in the catalog; both read and write the same table.

use serde::{Deserialize, Serialize};

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct KvEntry {
    pub key: String,
    /// UTF-8 values are returned as text; anything else base64 in `value_base64`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub value: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub value_base64: Option<String>,
    pub flags: u64,
    pub create_index: u64,
    pub modify_index: u64,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct KvWriteResponse {
    /// False when a `cas` condition did not hold; nothing was written then.
    pub written: bool,
    pub index: u64,
}
