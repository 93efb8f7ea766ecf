//! Body types on both sides of the proxy.
//!
//! [`UpstreamBody`] is what the gateway sends to a backend. A streamed client
//! body sits in a shared slot and is only moved into the attempt's body on its
//! first poll: if the attempt fails to connect, the body was never polled and
//! the next attempt can take it from the slot. Once taken, it cannot be
//! replayed, which is exactly "never retry after bytes were sent".
//!
//! [`GatewayBody`] is what the client gets. A proxied response body carries a
//! [`Completion`] that runs when the body ends or is dropped: it releases the
//! backend's outstanding-request count, records metrics and writes the access
//! log line, so duration and counters cover the whole response.

use std::error::Error as StdError;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::{Duration, Instant, SystemTime};

use bytes::Bytes;
use http::{HeaderValue, Method, Version};
use http_body::{Body, Frame, SizeHint};
use hyper::body::Incoming;

use crate::access::AccessEntry;
use crate::backend::InflightGuard;
use crate::metrics::ServiceMetrics;
use crate::server::ConnCtx;
use crate::upstream::ResponseBody;

pub(crate) type BoxError = Box<dyn StdError + Send + Sync>;

/// The client's body grew past `Limits::max_body_bytes`.
#[derive(Debug, thiserror::Error)]
#[error("request body larger than {limit} bytes")]
pub(crate) struct BodyTooLarge {
    pub(crate) limit: u64,
}

/// Reading the client's body failed (bad chunk, client went away): the
/// client's fault, not the backend's.
#[derive(Debug, thiserror::Error)]
#[error("reading the request body from the client failed: {0}")]
pub(crate) struct ClientBodyError(#[source] pub(crate) hyper::Error);

/// A client body that is streamed to at most one attempt.
#[derive(Clone)]
pub(crate) struct BodySlot {
    slot: Arc<Mutex<Option<Incoming>>>,
    hint: SizeHint,
    limit: u64,
}

impl BodySlot {
    pub(crate) fn new(body: Incoming, limit: u64) -> Self {
        let hint = body.size_hint();
        BodySlot {
            slot: Arc::new(Mutex::new(Some(body))),
            hint,
            limit,
        }
    }

    /// The body's length, when the client declared it.
    pub(crate) fn exact_len(&self) -> Option<u64> {
        self.hint.exact()
    }

    /// True while no attempt has started reading the body.
    pub(crate) fn untouched(&self) -> bool {
        match self.slot.lock() {
            Ok(s) => s.is_some(),
            Err(p) => p.into_inner().is_some(),
        }
    }
}

pub(crate) enum UpstreamBody {
    Empty,
    Full(Option<Bytes>),
    Stream {
        slot: BodySlot,
        body: Option<Incoming>,
        seen: u64,
    },
}

impl UpstreamBody {
    pub(crate) fn stream(slot: BodySlot) -> Self {
        UpstreamBody::Stream {
            slot,
            body: None,
            seen: 0,
        }
    }
}

impl Body for UpstreamBody {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        match self.get_mut() {
            UpstreamBody::Empty => Poll::Ready(None),
            UpstreamBody::Full(data) => Poll::Ready(data.take().map(|d| Ok(Frame::data(d)))),
            UpstreamBody::Stream { slot, body, seen } => {
                if body.is_none() {
                    *body = match slot.slot.lock() {
                        Ok(mut s) => s.take(),
                        Err(p) => p.into_inner().take(),
                    };
                    if body.is_none() {
                        return Poll::Ready(Some(Err("request body already consumed".into())));
                    }
                }
                let Some(inner) = body.as_mut() else {
                    return Poll::Ready(None);
                };
                match Pin::new(inner).poll_frame(cx) {
                    Poll::Ready(Some(Ok(frame))) => {
                        if let Some(data) = frame.data_ref() {
                            *seen += data.len() as u64;
                            if *seen > slot.limit {
                                return Poll::Ready(Some(Err(Box::new(BodyTooLarge {
                                    limit: slot.limit,
                                }))));
                            }
                        }
                        Poll::Ready(Some(Ok(frame)))
                    }
                    Poll::Ready(Some(Err(e))) => {
                        Poll::Ready(Some(Err(Box::new(ClientBodyError(e)))))
                    }
                    Poll::Ready(None) => Poll::Ready(None),
                    Poll::Pending => Poll::Pending,
                }
            }
        }
    }

    fn is_end_stream(&self) -> bool {
        match self {
            UpstreamBody::Empty => true,
            UpstreamBody::Full(d) => d.is_none(),
            UpstreamBody::Stream { .. } => false,
        }
    }

    fn size_hint(&self) -> SizeHint {
        match self {
            UpstreamBody::Empty => SizeHint::with_exact(0),
            UpstreamBody::Full(d) => SizeHint::with_exact(d.as_ref().map_or(0, |d| d.len() as u64)),
            UpstreamBody::Stream { slot, .. } => slot.hint,
        }
    }
}

/// Fields of one access log line known before the response.
pub(crate) struct AccessRecord {
    pub(crate) method: Method,
    pub(crate) host: String,
    /// Path and query.
    pub(crate) uri: String,
    pub(crate) version: Version,
    pub(crate) referer: Option<HeaderValue>,
    pub(crate) user_agent: Option<HeaderValue>,
    pub(crate) request_id: HeaderValue,
    pub(crate) backend: Option<(SocketAddr, Arc<str>)>,
    pub(crate) attempts: u32,
    /// The response body's length, when its framing said it.
    pub(crate) bytes: Option<u64>,
}

pub(crate) const ACCESS_TARGET: &str = "pier_gateway::access";

/// Runs once when a response is finished (or abandoned).
pub(crate) struct Completion {
    pub(crate) status: u16,
    pub(crate) start: Instant,
    pub(crate) metrics: ServiceMetrics,
    pub(crate) guard: Option<InflightGuard>,
    /// The client connection, told when its response is over.
    pub(crate) client: Option<Arc<ConnCtx>>,
    pub(crate) log: Option<Box<AccessRecord>>,
}

impl Completion {
    pub(crate) fn finish(self, outcome: &'static str) {
        let elapsed = self.start.elapsed();
        self.metrics.observe(self.status, elapsed.as_secs_f64());
        drop(self.guard);
        if let Some(client) = &self.client {
            client.head.request_finished();
        }
        let Some(rec) = self.log else {
            return;
        };
        // The connection's writer when the gateway has one; `tracing` otherwise.
        match self.client.as_ref().and_then(|c| c.access.as_ref()) {
            Some(access) => {
                let client = self.client.as_ref().map(|c| c.peer_ip.clone());
                let rec = *rec;
                access.log(Box::new(AccessEntry {
                    time: SystemTime::now(),
                    peer: client.unwrap_or(HeaderValue::from_static("-")),
                    method: rec.method,
                    host: rec.host,
                    uri: rec.uri,
                    version: rec.version,
                    status: self.status,
                    bytes: rec.bytes,
                    referer: rec.referer,
                    user_agent: rec.user_agent,
                    service: Arc::clone(self.metrics.name()),
                    backend: rec.backend,
                    duration: elapsed,
                    request_id: rec.request_id,
                    attempts: rec.attempts,
                    outcome,
                }));
            }
            None => trace_line(&rec, self.status, &self.metrics, elapsed, outcome),
        }
    }
}

fn trace_line(
    rec: &AccessRecord,
    status: u16,
    metrics: &ServiceMetrics,
    elapsed: Duration,
    outcome: &'static str,
) {
    let (backend, zone) = match &rec.backend {
        Some((addr, zone)) => (addr.to_string(), zone.to_string()),
        None => ("-".to_string(), "-".to_string()),
    };
    let path = rec.uri.split('?').next().unwrap_or("");
    tracing::info!(
        target: ACCESS_TARGET,
        method = %rec.method,
        host = %rec.host,
        path = %path,
        status,
        service = %metrics.name(),
        backend = %backend,
        zone = %zone,
        duration_ms = elapsed.as_secs_f64() * 1000.0,
        request_id = rec.request_id.to_str().unwrap_or("-"),
        attempts = rec.attempts,
        outcome,
        "request"
    );
}

/// The response body sent to clients.
// Boxing the upstream variant would cost an allocation per request; the body
// is moved a handful of times before hyper pins it, which is cheaper.
#[allow(clippy::large_enum_variant)]
pub enum GatewayBody {
    /// A response made by the gateway itself.
    Local(Option<Bytes>),
    Upstream(TrackedBody),
}

/// A backend's response body plus the bookkeeping that ends with it.
pub struct TrackedBody {
    inner: ResponseBody,
    completion: Option<Completion>,
    /// A frame went to hyper: from then on, the end of the backend's body is told with the
    /// last frame (see `is_end_stream`).
    yielded: bool,
}

impl TrackedBody {
    pub(crate) fn new(inner: ResponseBody, completion: Completion) -> Self {
        TrackedBody {
            inner,
            completion: Some(completion),
            yielded: false,
        }
    }
    fn finish(&mut self, outcome: &'static str) {
        if let Some(c) = self.completion.take() {
            // The connection goes back to the pool only after a clean end.
            if outcome == "ok" {
                if let (Some(guard), Some(conn)) = (c.guard.as_ref(), self.inner.take_reusable()) {
                    guard.state.pool.checkin(conn);
                }
            }
            c.finish(outcome);
        }
    }
}

impl Drop for TrackedBody {
    fn drop(&mut self) {
        // A body that hyper never polled because it was empty (HEAD, 204,
        // 304) or whose last frame said it was the last still ended cleanly.
        let outcome = if self.inner.ended() { "ok" } else { "aborted" };
        self.finish(outcome);
    }
}

impl Body for GatewayBody {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        match self.get_mut() {
            GatewayBody::Local(data) => Poll::Ready(data.take().map(|d| Ok(Frame::data(d)))),
            GatewayBody::Upstream(t) => match Pin::new(&mut t.inner).poll_frame(cx) {
                Poll::Ready(None) => {
                    t.finish("ok");
                    Poll::Ready(None)
                }
                Poll::Ready(Some(Err(e))) => {
                    t.finish("body_error");
                    Poll::Ready(Some(Err(e)))
                }
                Poll::Ready(Some(Ok(frame))) => {
                    t.yielded = true;
                    Poll::Ready(Some(Ok(frame)))
                }
                Poll::Pending => Poll::Pending,
            },
        }
    }

    fn is_end_stream(&self) -> bool {
        match self {
            GatewayBody::Local(d) => d.is_none(),
            // Before the first frame it stays false, so hyper always polls a proxied body and
            // frames the response from its size hint as before; the completion then runs when
            // hyper drops the body (`Drop`, outcome "ok" as the body ended). After a frame it
            // says whether that was the last: hyper sends HTTP/2's END_STREAM on the last DATA
            // frame instead of an extra empty DATA frame, and HTTP/1 ends the body without
            // another poll.
            GatewayBody::Upstream(t) => t.yielded && t.inner.is_end_stream(),
        }
    }

    fn size_hint(&self) -> SizeHint {
        match self {
            GatewayBody::Local(d) => SizeHint::with_exact(d.as_ref().map_or(0, |d| d.len() as u64)),
            GatewayBody::Upstream(t) => t.inner.size_hint(),
        }
    }
}
