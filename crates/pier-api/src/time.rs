//! The one wall clock of pier's IO code (pure code takes `now_ms` as an input instead).

/// Milliseconds since the Unix epoch; 0 if the system clock is before it.
pub fn now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

/// Seconds since the Unix epoch.
pub fn now_secs() -> u64 {
    now_ms() / 1000
}
