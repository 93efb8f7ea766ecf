//! Human units in service files: durations ("1s", "500ms", "2m") and memory sizes
//! ("256MiB", "1GiB", "512M", or a bare number of MiB).

/// Parses a duration such as `"1s"`, `"250ms"`, `"1m30s"` into milliseconds.
pub fn parse_duration_ms(text: &str) -> Result<u64, String> {
    let trimmed = text.trim();
    if trimmed == "0" {
        return Ok(0);
    }
    let duration = humantime::parse_duration(trimmed).map_err(|e| {
        format!("`{text}` is not a duration ({e}); write e.g. \"500ms\", \"1s\" or \"2m\"")
    })?;
    u64::try_from(duration.as_millis()).map_err(|_| format!("`{text}` is too long"))
}

/// Formats milliseconds the way users write them back (`1s`, `1500ms`, `2m`).
pub fn format_duration_ms(ms: u64) -> String {
    if ms != 0 && ms.is_multiple_of(60_000) {
        format!("{}m", ms / 60_000)
    } else if ms != 0 && ms.is_multiple_of(1000) {
        format!("{}s", ms / 1000)
    } else {
        format!("{ms}ms")
    }
}

/// Parses a memory size into MiB. Binary (`KiB`, `MiB`, `GiB`) and decimal (`K`, `M`, `G`,
/// `KB`, `MB`, `GB`) suffixes are accepted; a bare number is MiB. Sizes that are not a whole
/// number of MiB are rounded up, because a limit below what was asked would surprise.
pub fn parse_memory_mb(text: &str) -> Result<u64, String> {
    let t = text.trim();
    let split = t
        .find(|c: char| !(c.is_ascii_digit() || c == '.'))
        .unwrap_or(t.len());
    let (number, unit) = t.split_at(split);
    let value: f64 = number
        .parse()
        .map_err(|_| format!("`{text}` is not a memory size; write e.g. \"256MiB\" or \"1GiB\""))?;
    let bytes_per_unit: f64 = match unit.trim() {
        "" | "MiB" | "Mi" => 1024.0 * 1024.0,
        "KiB" | "Ki" => 1024.0,
        "GiB" | "Gi" => 1024.0 * 1024.0 * 1024.0,
        "B" => 1.0,
        "K" | "KB" | "k" | "kB" => 1e3,
        "M" | "MB" => 1e6,
        "G" | "GB" => 1e9,
        other => {
            return Err(format!(
                "unknown memory unit `{other}` in `{text}`; use KiB, MiB, GiB (or K, M, G)"
            ))
        }
    };
    let mib = (value * bytes_per_unit / (1024.0 * 1024.0)).ceil();
    if !mib.is_finite() || mib > 1e12 {
        return Err(format!("memory size `{text}` is too large"));
    }
    Ok(mib as u64)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations() {
        assert_eq!(parse_duration_ms("1s"), Ok(1000));
        assert_eq!(parse_duration_ms("250ms"), Ok(250));
        assert_eq!(parse_duration_ms("1m 30s"), Ok(90_000));
        assert_eq!(parse_duration_ms("0"), Ok(0));
        assert!(parse_duration_ms("fast").is_err());
        assert_eq!(format_duration_ms(1000), "1s");
        assert_eq!(format_duration_ms(1500), "1500ms");
        assert_eq!(format_duration_ms(120_000), "2m");
    }

    #[test]
    fn memory() {
        assert_eq!(parse_memory_mb("256MiB"), Ok(256));
        assert_eq!(parse_memory_mb("1GiB"), Ok(1024));
        assert_eq!(parse_memory_mb("512"), Ok(512));
        assert_eq!(parse_memory_mb("1G"), Ok(954));
        assert_eq!(parse_memory_mb("0.5GiB"), Ok(512));
        assert!(parse_memory_mb("lots").is_err());
        assert!(parse_memory_mb("12PB").is_err());
    }
}
