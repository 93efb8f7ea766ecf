//! Query-string parsing with Consul's rules: booleans as `?x`, `?x=1`, `?x=true`; `index`,
//! `wait` (Go durations, default 5m, at most 10m), `stale`/`consistent`, repeated `tag`,
//! `node-meta=key:value`. `token` and `dc` are accepted and ignored (no ACLs, one datacenter).

use pier_store::Consistency;

use crate::blocking::{QueryOptions, DEFAULT_WAIT};
use crate::duration::parse_wait;
use crate::error::CatalogError;

#[derive(Debug, Default, Clone)]
pub struct Params(pub Vec<(String, String)>);

impl Params {
    pub fn get(&self, key: &str) -> Option<&str> {
        self.0
            .iter()
            .find(|(k, _)| k == key)
            .map(|(_, v)| v.as_str())
    }

    pub fn all(&self, key: &str) -> Vec<String> {
        self.0
            .iter()
            .filter(|(k, _)| k == key)
            .map(|(_, v)| v.clone())
            .collect()
    }

    /// A Consul boolean flag: present without value, `1`, `true` → true; `0`, `false` → false.
    pub fn flag(&self, key: &str) -> Result<bool, CatalogError> {
        match self.get(key) {
            None => Ok(false),
            Some(v) => match v.to_ascii_lowercase().as_str() {
                "" | "1" | "true" | "t" | "yes" => Ok(true),
                "0" | "false" | "f" | "no" => Ok(false),
                other => Err(CatalogError::bad(format!(
                    "Invalid value {other:?} for ?{key}: use 1/true or 0/false"
                ))),
            },
        }
    }

    pub fn u64(&self, key: &str) -> Result<Option<u64>, CatalogError> {
        match self.get(key) {
            None => Ok(None),
            Some(v) => v.parse::<u64>().map(Some).map_err(|_| {
                CatalogError::bad(format!("Invalid {key} {v:?}: not a non-negative integer"))
            }),
        }
    }

    /// `node-meta=key:value`, repeatable.
    pub fn node_meta(&self) -> Result<Vec<(String, String)>, CatalogError> {
        self.all("node-meta")
            .into_iter()
            .map(|pair| {
                pair.split_once(':')
                    .map(|(k, v)| (k.to_string(), v.to_string()))
                    .ok_or_else(|| {
                        CatalogError::bad(format!("Invalid node-meta {pair:?}: use key:value"))
                    })
            })
            .collect()
    }

    /// Blocking and consistency options of a read.
    pub fn query_options(&self) -> Result<QueryOptions, CatalogError> {
        let stale = self.flag("stale")?;
        let consistent = self.flag("consistent")?;
        if stale && consistent {
            return Err(CatalogError::bad(
                "Cannot specify ?stale with ?consistent, conflicting semantics.",
            ));
        }
        let consistency = if stale {
            Consistency::Stale
        } else if consistent {
            Consistency::Consistent
        } else {
            Consistency::Default
        };
        let min_index = self.u64("index")?.unwrap_or(0);
        let wait = parse_wait(self.get("wait").unwrap_or_default())
            .map_err(|e| CatalogError::bad(format!("Invalid wait time: {e}")))?
            .unwrap_or(DEFAULT_WAIT);
        Ok(QueryOptions {
            consistency,
            min_index,
            wait,
        }
        .with_jitter())
    }
}

/// Parses a raw query string (`None` = no query).
pub fn parse_query(raw: Option<&str>) -> Params {
    let Some(raw) = raw else {
        return Params::default();
    };
    let pairs = raw
        .split('&')
        .filter(|p| !p.is_empty())
        .map(|p| {
            let (k, v) = p.split_once('=').unwrap_or((p, ""));
            (decode(k), decode(v))
        })
        .collect();
    Params(pairs)
}

/// Percent-decoding with `+` as space (form encoding, as Go's `url.ParseQuery`).
fn decode(s: &str) -> String {
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        match bytes[i] {
            b'+' => {
                out.push(b' ');
                i += 1;
            }
            b'%' if i + 2 < bytes.len() => {
                let hex = std::str::from_utf8(&bytes[i + 1..i + 3])
                    .ok()
                    .and_then(|h| u8::from_str_radix(h, 16).ok());
                match hex {
                    Some(b) => {
                        out.push(b);
                        i += 3;
                    }
                    None => {
                        out.push(b'%');
                        i += 1;
                    }
                }
            }
            b => {
                out.push(b);
                i += 1;
            }
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[test]
    fn flags_and_waits() {
        let p = parse_query(Some(
            "recurse&keys=1&raw=true&stale=0&wait=120000ms&index=7&tag=a&tag=b%2Fc&x=%zz",
        ));
        assert!(p.flag("recurse").unwrap());
        assert!(p.flag("keys").unwrap());
        assert!(p.flag("raw").unwrap());
        assert!(!p.flag("stale").unwrap());
        assert!(!p.flag("absent").unwrap());
        assert_eq!(p.all("tag"), vec!["a".to_string(), "b/c".to_string()]);
        assert_eq!(p.get("x"), Some("%zz"));
        let o = p.query_options().unwrap();
        assert_eq!(o.min_index, 7);
        assert!(o.wait >= Duration::from_secs(120) && o.wait <= Duration::from_secs(128));
        assert!(parse_query(Some("wait=11m")).query_options().is_err());
        assert!(parse_query(Some("wait=10m")).query_options().is_ok());
        assert!(parse_query(Some("wait=abc")).query_options().is_err());
        assert!(parse_query(Some("stale&consistent"))
            .query_options()
            .is_err());
        assert!(parse_query(Some("index=-1")).query_options().is_err());
    }
}
