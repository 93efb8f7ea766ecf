//! Pier's HTTP gateway: a reverse proxy that routes by host and path to the
//! passing instances of a service, following a routing table that the
//! catalog adapter replaces whenever the catalog changes.
//!
//! # Why hyper and not pingora
//! The gateway serves clients with hyper 1 and hyper-util. Pier is one tokio binary
//! and hyper is already in its dependency tree (axum, reqwest), so the gateway
//! adds almost nothing to build time or binary size and runs on the same
//! runtime as everything else. Pingora brings its own server framework,
//! runtime setup and a large dependency tree (TLS stacks, its own HTTP
//! implementation) for features Pier does not need at this stage. The price
//! of hyper is writing the proxy logic ourselves (this crate); the
//! benchmark in `bench/gateway/` measures the result against nginx and
//! HAProxy on the same machine.
//!
//! # Shape
//! - [`table`]: the immutable [`RouteTable`], built by the pure
//!   [`RouteTable::build`] from [`CatalogInstance`]s; [`parse_urlprefix_tag`]
//!   reads fabio-style route tags.
//! - `live`: joins the table with per-backend state (outstanding requests,
//!   outlier history) that survives swaps, and picks backends (zone tiers,
//!   power-of-two-choices or round robin).
//! - `proxy`: the request path with its retry rules; `pool`: keep-alive
//!   HTTP/1.1 connections per backend; `upstream`: the gateway's own HTTP/1.1
//!   client (httparse), driven inside the request's task instead of a task
//!   per backend connection as hyper's client does, which cut the
//!   instructions per proxied request by a third;
//!   `server`: client connections (HTTP/1.1, h2c by prior knowledge, detected
//!   per connection; WebSocket upgrades), timeouts, graceful shutdown.
//! - `metrics`: per-service counters and latency histograms
//!   ([`GatewayMetrics`]), registered into a prometheus-client `Registry` or
//!   rendered as text.
//! - `access`: the access log, one line per request (combined or JSON)
//!   written by its own thread behind a bounded queue; without one set, each
//!   request leaves a `tracing` event with target `pier_gateway::access`.
//!
//! # Limits of this version
//! - Backends are spoken to in HTTP/1.1 only, without TLS; clients may use
//!   HTTP/1.1 or h2c, and over the optional HTTPS listener (`tls`: rustls,
//!   certificate by SNI, HTTP/2 or HTTP/1.1 by ALPN) the same proxy path.
//! - A client that goes away does not cancel its request to the backend
//!   (HTTP/1 connections are served with half-close, HAProxy's default too);
//!   the answer is dropped when it arrives.
//! - WebSockets over HTTP/2 (extended CONNECT) are not supported; CONNECT is
//!   refused with 405.
//! - When a request carries both `Transfer-Encoding: chunked` and
//!   `Content-Length`, hyper drops the length before the gateway sees the
//!   request, so the gateway cannot answer 400: the request is forwarded
//!   re-framed as chunked (never with both headers) and the client
//!   connection is closed after the response, so nothing can be smuggled
//!   behind it.
//!
//! # Invariants
//! - Only passing backends of the current table get new requests; a table
//!   sent on the channel is used by every request that starts afterwards.
//! - Swapping the table never touches a connection; requests in flight
//!   finish on the backend they started on.
//! - A request is sent twice only when that is safe (see `proxy`).
//! - Framing is never copied: `upstream` writes its own framing for each
//!   request, so a backend never sees the client's framing headers, and a
//!   response with ambiguous framing is refused (502), never forwarded.

pub mod access;
mod backend;
mod body;
pub mod challenge;
pub mod config;
mod gateway;
mod headers;
mod host;
mod live;
mod local;
mod metrics;
mod pool;
mod proxy;
mod server;
pub mod table;
pub mod tls;
mod upstream;
pub mod urlprefix;

pub use access::{AccessDestination, AccessFormat, AccessLog, AccessLogError};
pub use body::GatewayBody;
pub use challenge::{AcmeChallenges, ACME_TLS_ALPN};
pub use config::{Balancing, GatewayConfig, Limits, OutlierConfig, RetryConfig, Timeouts};
pub use gateway::{Gateway, GatewayError};
pub use host::normalize_host;
pub use metrics::GatewayMetrics;
pub use table::{
    Backend, BuildIssue, CatalogInstance, HttpsPolicy, Resolution, RouteDefaults, RouteTable,
    ServiceEntry,
};
pub use tls::{
    acme_validation_key, certified_key, CertInfo, CertResolver, OnDemandIssuer, TlsError,
};
pub use urlprefix::{parse_urlprefix_tag, try_parse_urlprefix_tag, RouteSpec, TagError};
