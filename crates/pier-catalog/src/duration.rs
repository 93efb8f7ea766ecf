//! Go's `time.ParseDuration` syntax, which Consul uses for `wait`, `Interval`, `Timeout`, `TTL`
//! and `DeregisterCriticalServiceAfter`: a sequence of decimal numbers, each with an optional
//! fraction and a unit (`ns`, `us`, `µs`, `ms`, `s`, `m`, `h`), e.g. `120000ms`, `1m30s`, `1.5s`.
//! A bare `0` is allowed. Negative durations are refused: nothing here has a use for them.

use std::time::Duration;

/// `wait` of a blocking query as every pier HTTP API reads it (the catalog's `/v1`, the KV
/// API, the orchestrator's watches): a Go duration (`10s`, `5m`, `120000ms`) or plain seconds,
/// at most [`pier_store::blocking::MAX_WAIT`]. `None` when empty or zero: the caller's default.
pub fn parse_wait(text: &str) -> Result<Option<Duration>, String> {
    let bad = || {
        format!("`wait` must be a duration like 10s, 5m or 120000ms (at most 10m), got {text:?}")
    };
    let text = text.trim();
    if text.is_empty() {
        return Ok(None);
    }
    let wait = if text.bytes().all(|b| b.is_ascii_digit()) {
        Duration::from_secs(text.parse().map_err(|_| bad())?)
    } else {
        parse_go_duration(text).map_err(|_| bad())?
    };
    if wait > pier_store::blocking::MAX_WAIT {
        return Err(format!("`wait` may be at most 10m, got {text:?}"));
    }
    Ok((!wait.is_zero()).then_some(wait))
}

/// Parses a Go duration. The error says what was wrong, for a 400 answer.
pub fn parse_go_duration(input: &str) -> Result<Duration, String> {
    let s = input.trim();
    if s.is_empty() {
        return Err(format!("invalid duration {input:?}: empty"));
    }
    if s == "0" {
        return Ok(Duration::ZERO);
    }
    if s.starts_with('-') {
        return Err(format!("invalid duration {input:?}: negative"));
    }
    let s = s.strip_prefix('+').unwrap_or(s);
    let bytes = s.as_bytes();
    let mut i = 0;
    let mut total_ns: f64 = 0.0;
    while i < bytes.len() {
        let start = i;
        while i < bytes.len() && (bytes[i].is_ascii_digit() || bytes[i] == b'.') {
            i += 1;
        }
        let number = &s[start..i];
        if number.is_empty() || number == "." {
            return Err(format!("invalid duration {input:?}: expected a number"));
        }
        let value: f64 = number
            .parse()
            .map_err(|_| format!("invalid duration {input:?}: bad number {number:?}"))?;
        let unit_start = i;
        while i < bytes.len() && !(bytes[i].is_ascii_digit() || bytes[i] == b'.') {
            i += 1;
        }
        let unit = &s[unit_start..i];
        let ns_per_unit = match unit {
            "ns" => 1.0,
            "us" | "µs" | "μs" => 1e3,
            "ms" => 1e6,
            "s" => 1e9,
            "m" => 60e9,
            "h" => 3600e9,
            "" => return Err(format!("invalid duration {input:?}: missing unit")),
            other => {
                return Err(format!(
                    "invalid duration {input:?}: unknown unit {other:?}"
                ))
            }
        };
        total_ns += value * ns_per_unit;
    }
    // A year is far beyond any wait or interval; refusing it keeps the f64 → u64 cast exact.
    if !total_ns.is_finite() || total_ns > 3.2e16 {
        return Err(format!("invalid duration {input:?}: too large"));
    }
    Ok(Duration::from_nanos(total_ns.round() as u64))
}

/// Formats like Go's `Duration.String()` for the common cases (`10s`, `1m30s`, `500ms`), which is
/// how Consul echoes definitions back.
pub fn format_go_duration(d: Duration) -> String {
    let ms = d.as_millis() as u64;
    if ms == 0 {
        return "0s".to_string();
    }
    if ms < 1000 {
        return format!("{ms}ms");
    }
    let h = ms / 3_600_000;
    let m = (ms / 60_000) % 60;
    let s_ms = ms % 60_000;
    let mut out = String::new();
    if h > 0 {
        out.push_str(&format!("{h}h"));
    }
    if h > 0 || m > 0 {
        out.push_str(&format!("{m}m"));
    }
    if s_ms % 1000 == 0 {
        out.push_str(&format!("{}s", s_ms / 1000));
    } else {
        out.push_str(&format!("{}.{:03}s", s_ms / 1000, s_ms % 1000));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_consul_forms() {
        assert_eq!(
            parse_go_duration("120000ms").unwrap(),
            Duration::from_secs(120)
        );
        assert_eq!(parse_go_duration("5m").unwrap(), Duration::from_secs(300));
        assert_eq!(parse_go_duration("1m30s").unwrap(), Duration::from_secs(90));
        assert_eq!(
            parse_go_duration("1.5s").unwrap(),
            Duration::from_millis(1500)
        );
        assert_eq!(parse_go_duration("0").unwrap(), Duration::ZERO);
        assert_eq!(
            parse_go_duration("10us").unwrap(),
            Duration::from_micros(10)
        );
        assert_eq!(parse_go_duration("1h").unwrap(), Duration::from_secs(3600));
    }

    #[test]
    fn refuses_garbage() {
        for bad in ["", "10", "abc", "-5s", "5x", "s", "1e400h", ".s"] {
            assert!(parse_go_duration(bad).is_err(), "{bad:?} should not parse");
        }
    }

    #[test]
    fn formats_round_trip() {
        for s in ["10s", "1m30s", "500ms", "1h0m0s", "1.500s"] {
            let d = parse_go_duration(s).unwrap();
            assert_eq!(parse_go_duration(&format_go_duration(d)).unwrap(), d);
        }
        assert_eq!(format_go_duration(Duration::from_secs(10)), "10s");
    }
}
