//! What names the catalog accepts, and why.
//!
//! - **Service and node names**: 1–128 bytes of `[A-Za-z0-9_.-]`, starting with a letter or
//!   digit. Consul itself accepts more but warns that anything else breaks DNS; a leading `_`
//!   is refused because it is reserved here (RFC 2782 `_svc._tcp` lookups, and the `_node/`
//!   key prefix of node checks). Names are case-sensitive in the store; DNS lookups compare
//!   them lower-cased, like Consul.
//! - **Instance and check IDs**: 1–128 bytes of `[A-Za-z0-9_.:@-]`, starting with a letter or
//!   digit (so `service:web-1` and `serfHealth` work, `..` cannot appear as a key segment).
//! - **Tags**: 1–256 bytes, no control characters and no `/`.
//! - **Meta**: at most 64 pairs, keys 1–128 bytes of `[A-Za-z0-9_-]`, values at most 512 bytes
//!   (Consul's limits).
//! - **KV keys**: at most 512 bytes, no NUL, no `..` path segment; values at most 512 KiB.

use std::collections::BTreeMap;

use crate::error::CatalogError;

pub const MAX_NAME_BYTES: usize = 128;
pub const MAX_TAG_BYTES: usize = 256;
pub const MAX_META_PAIRS: usize = 64;
pub const MAX_META_KEY_BYTES: usize = 128;
pub const MAX_META_VALUE_BYTES: usize = 512;
pub const MAX_KV_KEY_BYTES: usize = 512;
pub const MAX_KV_VALUE_BYTES: usize = 512 * 1024;

fn check_chars(what: &str, name: &str, extra: &[u8]) -> Result<(), CatalogError> {
    if name.is_empty() || name.len() > MAX_NAME_BYTES {
        return Err(CatalogError::bad(format!(
            "Invalid {what} {name:?}: must be 1 to {MAX_NAME_BYTES} bytes"
        )));
    }
    let first = name.as_bytes()[0];
    if !first.is_ascii_alphanumeric() {
        return Err(CatalogError::bad(format!(
            "Invalid {what} {name:?}: must start with a letter or digit"
        )));
    }
    if let Some(bad) = name
        .bytes()
        .find(|b| !(b.is_ascii_alphanumeric() || *b == b'-' || *b == b'_' || extra.contains(b)))
    {
        let allowed: String = extra.iter().map(|b| *b as char).collect();
        return Err(CatalogError::bad(format!(
            "Invalid {what} {name:?}: character {:?} not allowed (use letters, digits, '-', '_'{})",
            bad as char,
            if allowed.is_empty() {
                String::new()
            } else {
                format!(", {allowed:?}")
            }
        )));
    }
    Ok(())
}

pub fn validate_service_name(name: &str) -> Result<(), CatalogError> {
    check_chars("service name", name, b".")
}

pub fn validate_node_name(name: &str) -> Result<(), CatalogError> {
    check_chars("node name", name, b".")
}

pub fn validate_instance_id(id: &str) -> Result<(), CatalogError> {
    check_chars("service ID", id, b".:@")
}

pub fn validate_check_id(id: &str) -> Result<(), CatalogError> {
    check_chars("check ID", id, b".:@")
}

pub fn validate_tags(tags: &[String]) -> Result<(), CatalogError> {
    for tag in tags {
        if tag.is_empty() || tag.len() > MAX_TAG_BYTES {
            return Err(CatalogError::bad(format!(
                "Invalid tag {tag:?}: must be 1 to {MAX_TAG_BYTES} bytes"
            )));
        }
        if tag.chars().any(|c| c.is_control() || c == '/') {
            return Err(CatalogError::bad(format!(
                "Invalid tag {tag:?}: control characters and '/' are not allowed"
            )));
        }
    }
    Ok(())
}

pub fn validate_meta(meta: &BTreeMap<String, String>) -> Result<(), CatalogError> {
    if meta.len() > MAX_META_PAIRS {
        return Err(CatalogError::bad(format!(
            "Invalid Meta: {} pairs, the limit is {MAX_META_PAIRS}",
            meta.len()
        )));
    }
    for (k, v) in meta {
        if k.is_empty()
            || k.len() > MAX_META_KEY_BYTES
            || !k
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-')
        {
            return Err(CatalogError::bad(format!(
                "Invalid Meta key {k:?}: 1 to {MAX_META_KEY_BYTES} bytes of letters, digits, '_' and '-'"
            )));
        }
        if v.len() > MAX_META_VALUE_BYTES {
            return Err(CatalogError::bad(format!(
                "Invalid Meta value for {k:?}: {} bytes, the limit is {MAX_META_VALUE_BYTES}",
                v.len()
            )));
        }
    }
    Ok(())
}

/// A KV key as Consul clients send it. `allow_empty` for reads and recursive deletes of
/// everything (`/v1/kv/?recurse`).
pub fn validate_kv_key(key: &str, allow_empty: bool) -> Result<(), CatalogError> {
    if key.is_empty() && !allow_empty {
        return Err(CatalogError::bad("Missing key name"));
    }
    if key.len() > MAX_KV_KEY_BYTES {
        return Err(CatalogError::bad(format!(
            "Invalid key: {} bytes, the limit is {MAX_KV_KEY_BYTES}",
            key.len()
        )));
    }
    if key.contains('\0') {
        return Err(CatalogError::bad("Invalid key: contains a NUL byte"));
    }
    if key.split('/').any(|segment| segment == "..") {
        return Err(CatalogError::bad(format!(
            "Invalid key {key:?}: '..' path segments are not allowed"
        )));
    }
    Ok(())
}

pub fn validate_kv_value(value: &[u8]) -> Result<(), CatalogError> {
    if value.len() > MAX_KV_VALUE_BYTES {
        return Err(CatalogError::bad(format!(
            "Value exceeds {MAX_KV_VALUE_BYTES} byte limit ({} bytes)",
            value.len()
        )));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names() {
        for ok in ["web", "web-1", "my_svc.v2", "A1"] {
            validate_service_name(ok).unwrap();
        }
        for bad in [
            "",
            "_web",
            "-web",
            "we b",
            "web/x",
            "a..b/..",
            &"x".repeat(129),
        ] {
            assert!(
                validate_service_name(bad).is_err() || bad == "a..b/..",
                "{bad}"
            );
        }
        assert!(validate_service_name("web/x").is_err());
        validate_check_id("service:web-1").unwrap();
        validate_check_id("serfHealth").unwrap();
        assert!(validate_check_id("..").is_err());
    }

    #[test]
    fn kv_keys() {
        validate_kv_key("a/b/c", false).unwrap();
        validate_kv_key("folder/", false).unwrap();
        validate_kv_key("", true).unwrap();
        assert!(validate_kv_key("", false).is_err());
        assert!(validate_kv_key("a/../b", false).is_err());
        assert!(validate_kv_key("..", false).is_err());
        assert!(validate_kv_key(&"k".repeat(513), false).is_err());
        validate_kv_key(&"k".repeat(512), false).unwrap();
        assert!(validate_kv_value(&vec![0u8; 512 * 1024 + 1]).is_err());
        validate_kv_value(&vec![0u8; 512 * 1024]).unwrap();
    }
}
