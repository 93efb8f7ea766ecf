//! Query parameters shared by read endpoints: blocking (`index`, `wait`) and
//! consistency (`stale`, `consistent`).

use std::collections::HashMap;
use std::time::Duration;

use pier_store::Consistency;

use super::HttpError;

pub use pier_store::blocking::DEFAULT_WAIT;

pub struct ReadParams {
    pub consistency: Consistency,
    /// `Some` when the caller wants to block until the result index passes it.
    pub min_index: Option<u64>,
    pub wait: Duration,
}

/// A present flag counts as true unless it says `false`/`0`, as Consul reads
/// `?stale`, `?stale=1` and `?stale=true` alike.
pub fn flag(query: &HashMap<String, String>, name: &str) -> bool {
    match query.get(name) {
        Some(v) => !matches!(v.as_str(), "false" | "0"),
        None => false,
    }
}

pub fn read_params(query: &HashMap<String, String>) -> Result<ReadParams, HttpError> {
    let stale = flag(query, "stale");
    let consistent = flag(query, "consistent");
    if stale && consistent {
        return Err(HttpError::invalid(
            "`stale` and `consistent` cannot be used together",
        ));
    }
    let consistency = if stale {
        Consistency::Stale
    } else if consistent {
        Consistency::Consistent
    } else {
        Consistency::Default
    };
    let min_index = match query.get("index") {
        Some(v) => Some(v.parse::<u64>().map_err(|_| {
            HttpError::invalid(format!("`index` must be a non-negative integer, got {v:?}"))
        })?),
        None => None,
    };
    let wait = match query.get("wait") {
        Some(v) => parse_wait(v)?,
        None => DEFAULT_WAIT,
    };
    Ok(ReadParams {
        consistency,
        min_index,
        wait,
    })
}

/// Consul's `wait`: the one parser every pier API uses (`pier_catalog::duration::parse_wait`),
/// so `/api/v1` and `/v1` accept exactly the same spellings.
pub fn parse_wait(text: &str) -> Result<Duration, HttpError> {
    pier_catalog::duration::parse_wait(text)
        .map(|w| w.unwrap_or(DEFAULT_WAIT))
        .map_err(HttpError::invalid)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn wait_accepts_consul_durations() {
        assert_eq!(parse_wait("10s").ok(), Some(Duration::from_secs(10)));
        assert_eq!(parse_wait("5m").ok(), Some(Duration::from_secs(300)));
        assert_eq!(parse_wait("120000ms").ok(), Some(Duration::from_secs(120)));
        assert_eq!(parse_wait("7").ok(), Some(Duration::from_secs(7)));
    }

    #[test]
    fn wait_rejects_garbage_and_too_long() {
        assert!(parse_wait("11m").is_err());
        assert!(parse_wait("abc").is_err());
        assert!(parse_wait("5 parsecs").is_err());
        assert!(parse_wait("-1s").is_err());
    }
}
