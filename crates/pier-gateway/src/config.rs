//! Gateway configuration. Every field has a sane default so that
//! `GatewayConfig::new(listen, zone)` is a working gateway; callers override
//! single fields. Durations are plain integers with their unit in the name.

use std::net::SocketAddr;

/// How a backend is chosen among the eligible ones of a service.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum Balancing {
    /// Pick two eligible backends at random and send to the one with fewer
    /// outstanding requests. Close to least-outstanding without its herd
    /// behaviour when several gateways share backends.
    #[default]
    PowerOfTwoChoices,
    /// Strict rotation over the eligible backends.
    RoundRobin,
}

/// Limits on what a client may send.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Limits {
    /// Request line plus headers, in bytes (HTTP/1) or the decoded header list
    /// (HTTP/2). Larger requests get 431. HTTP/1 enforces at least 8192 bytes
    /// of read buffer, so smaller values still limit the header section but
    /// the buffer never shrinks below that.
    pub max_header_bytes: usize,
    /// Number of header fields (HTTP/1). More get 431.
    pub max_headers: usize,
    /// Request body, in bytes. A larger declared `Content-Length` gets 413
    /// before anything reaches a backend; a chunked body that grows past it is
    /// cut off and answered with 413 if the backend has not answered yet.
    pub max_body_bytes: u64,
    /// Idempotent requests whose declared body is at most this many bytes are
    /// buffered so they can be sent again after a reset; larger ones stream
    /// and are retried only after a connect failure.
    pub replay_body_bytes: u64,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            max_header_bytes: 16 * 1024,
            max_headers: 100,
            max_body_bytes: 64 * 1024 * 1024,
            replay_body_bytes: 64 * 1024,
        }
    }
}

/// Timeouts, all in milliseconds.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Timeouts {
    /// TCP connect to a backend. A connect failure is retried elsewhere.
    pub connect_ms: u64,
    /// From sending a request to a backend until its response head arrives.
    /// Expiry answers 504 and counts as a backend failure.
    pub response_header_ms: u64,
    /// A client must send a complete request head within this time, both on a
    /// new connection (slowloris) and between requests on a kept-alive HTTP/1
    /// connection (the timer runs from the end of one response to the next
    /// complete head, so this is also the HTTP/1 keep-alive idle limit).
    /// A connection is closed between 1 and 1.5 times this after it began
    /// waiting.
    pub header_read_ms: u64,
    /// A client connection (HTTP/1, HTTP/2 or an upgraded tunnel) on which no
    /// byte moves in either direction for this long is closed.
    pub idle_ms: u64,
    /// Idle pooled connections to backends are closed after this long.
    pub backend_pool_idle_ms: u64,
    /// After the shutdown signal, in-flight requests get this long to finish
    /// before their connections are dropped.
    pub shutdown_grace_ms: u64,
}

impl Default for Timeouts {
    fn default() -> Self {
        Timeouts {
            connect_ms: 2_000,
            response_header_ms: 60_000,
            header_read_ms: 10_000,
            idle_ms: 120_000,
            backend_pool_idle_ms: 60_000,
            shutdown_grace_ms: 10_000,
        }
    }
}

/// Passive outlier detection: failures seen on real traffic eject a backend
/// for a while.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct OutlierConfig {
    /// Consecutive failures (connect errors, resets, timeouts, 5xx answers)
    /// that eject a backend. 0 disables ejection.
    pub consecutive_failures: u32,
    /// First ejection length; each further ejection without a success in
    /// between doubles it.
    pub base_ejection_ms: u64,
    /// Upper bound for the doubling.
    pub max_ejection_ms: u64,
}

impl Default for OutlierConfig {
    fn default() -> Self {
        OutlierConfig {
            consecutive_failures: 5,
            base_ejection_ms: 10_000,
            max_ejection_ms: 300_000,
        }
    }
}

/// Retry policy.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RetryConfig {
    /// Backends tried in total for a request whose attempts fail to connect
    /// (nothing was sent, so this is always safe).
    pub max_connect_attempts: u32,
    /// Idempotent requests with a replayable body are sent once more, to
    /// another backend, when the connection breaks before a response head.
    pub retry_idempotent_on_reset: bool,
}

impl Default for RetryConfig {
    fn default() -> Self {
        RetryConfig {
            max_connect_attempts: 3,
            retry_idempotent_on_reset: true,
        }
    }
}

/// Everything the gateway needs besides the routing table.
#[derive(Clone, Debug)]
pub struct GatewayConfig {
    /// Where to accept client connections.
    pub listen: SocketAddr,
    /// This gateway's zone; backends in it are preferred. Empty: no preference.
    pub zone: String,
    pub balancing: Balancing,
    pub limits: Limits,
    pub timeouts: Timeouts,
    pub outlier: OutlierConfig,
    pub retry: RetryConfig,
    /// Keep `X-Forwarded-For/-Proto/-Host` sent by the client (append to
    /// `X-Forwarded-For`). Only for a gateway behind another trusted proxy;
    /// by default they are overwritten so clients cannot spoof them.
    pub trust_forwarded_headers: bool,
}

impl GatewayConfig {
    pub fn new(listen: SocketAddr, zone: impl Into<String>) -> Self {
        GatewayConfig {
            listen,
            zone: zone.into(),
            balancing: Balancing::default(),
            limits: Limits::default(),
            timeouts: Timeouts::default(),
            outlier: OutlierConfig::default(),
            retry: RetryConfig::default(),
            trust_forwarded_headers: false,
        }
    }
}
