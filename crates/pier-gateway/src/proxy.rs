//! The request path: route, pick a backend, forward, retry, answer.
//!
//! Retry rules (the only places a request is sent twice):
//! - connect failure (hyper-util reports `is_connect`): nothing reached the
//!   backend, so any request is sent to another backend, as long as its body
//!   was never polled (see [`crate::body`]), up to `max_connect_attempts`;
//! - an idempotent method whose body is empty or buffered (≤
//!   `replay_body_bytes`) is sent once more to another backend when the
//!   connection broke before a response head arrived;
//! - nothing else: a non-idempotent request whose bytes may have left is
//!   answered 502, and a response-header timeout is answered 504 (a retry
//!   would double the load on a backend that is already slow).
//!
//! Every failed attempt and every 5xx answer counts against the backend for
//! outlier detection; any other answer resets its failure count.

use std::convert::Infallible;
use std::future::Future as _;
use std::sync::Arc;
use std::task::Poll;
use std::time::{Duration, Instant};

use bytes::Bytes;
use http::header::{self, HeaderValue};
use http::uri::PathAndQuery;
use http::{Method, Request, Response, StatusCode, Version};
use http_body::Body as _;
use http_body_util::BodyExt;
use hyper::body::Incoming;
use hyper_util::rt::TokioIo;
use tokio::io::AsyncWriteExt as _;

use crate::access::AccessLog;
use crate::backend::{Clock, Verdict};
use crate::body::{
    AccessRecord, BodySlot, Completion, GatewayBody, TrackedBody, UpstreamBody, ACCESS_TARGET,
};
use crate::config::GatewayConfig;
use crate::headers::{
    has_hop_by_hop, is_upgrade_request, new_request_id, strip_hop_by_hop, valid_request_id,
    Forwarding, RequestScan, X_REQUEST_ID,
};
use crate::host::normalize_host_ref;
use crate::live::Router;
use crate::local;
use crate::metrics::{FailureKind, GatewayMetrics, ServiceMetrics};
use crate::pool::Conn;
use crate::server::ConnCtx;
use crate::table::HttpsPolicy;
use crate::table::{strip_path, Resolution};
use crate::upstream::{
    self, ExchangeError, Framing, RequestFraming, ResponseBody, ResponseHead, Wire,
};

/// Everything the request path shares across connections.
pub(crate) struct Shared {
    pub(crate) cfg: GatewayConfig,
    pub(crate) router: Router,
    pub(crate) clock: Clock,
    pub(crate) metrics: GatewayMetrics,
    pub(crate) unrouted: ServiceMetrics,
    pub(crate) access: Option<AccessLog>,
    /// No access log at all, not even `tracing` events.
    pub(crate) access_off: bool,
    /// The HTTPS listener's port, for redirects.
    pub(crate) https_port: Option<u16>,
    /// Pending ACME HTTP-01 challenges this gateway answers itself.
    pub(crate) challenges: Option<Arc<crate::challenge::AcmeChallenges>>,
}

enum Prepared {
    Empty,
    Full(Bytes),
    Stream(BodySlot),
}

impl Prepared {
    /// The body for the next attempt, or `None` when the streamed body was
    /// already (partly) sent and cannot be replayed.
    fn attempt(&self) -> Option<UpstreamBody> {
        match self {
            Prepared::Empty => Some(UpstreamBody::Empty),
            Prepared::Full(b) => Some(UpstreamBody::Full(Some(b.clone()))),
            Prepared::Stream(slot) => slot.untouched().then(|| UpstreamBody::stream(slot.clone())),
        }
    }
    fn replayable(&self) -> bool {
        !matches!(self, Prepared::Stream(_))
    }
}

fn is_idempotent(m: &Method) -> bool {
    matches!(
        *m,
        Method::GET | Method::HEAD | Method::OPTIONS | Method::PUT | Method::DELETE | Method::TRACE
    )
}

struct Ctx {
    start: Instant,
    /// Its `HeadWatch` learns when the response is finished.
    client: Arc<ConnCtx>,
    request_id: HeaderValue,
    log: Option<Box<AccessRecord>>,
}

impl Ctx {
    /// Finishes a gateway-made response: metrics, log, request id.
    fn local(
        mut self,
        metrics: &ServiceMetrics,
        mut resp: Response<GatewayBody>,
    ) -> Response<GatewayBody> {
        resp.headers_mut()
            .insert(X_REQUEST_ID.clone(), self.request_id.clone());
        if let Some(rec) = self.log.as_mut() {
            rec.bytes = resp.body().size_hint().exact();
        }
        Completion {
            status: resp.status().as_u16(),
            start: self.start,
            metrics: metrics.clone(),
            guard: None,
            client: Some(Arc::clone(&self.client)),
            log: self.log.take(),
        }
        .finish("local");
        resp
    }
}

/// One year, the value browsers' preload lists ask for.
static HSTS: HeaderValue = HeaderValue::from_static("max-age=31536000");

/// ACME's HTTP-01 challenges must reach the gateway over plain HTTP.
const ACME_CHALLENGE: &str = "/.well-known/acme-challenge/";

/// The 308 to HTTPS a route with `https=redirect` answers over plain HTTP. Only when this
/// gateway has an HTTPS listener: redirecting to nothing would break the route.
fn redirect(
    shared: &Shared,
    conn: &ConnCtx,
    https: HttpsPolicy,
    host: &str,
    uri: &http::Uri,
) -> Option<Response<GatewayBody>> {
    let port = shared.https_port?;
    if !https.redirect || conn.https || uri.path().starts_with(ACME_CHALLENGE) {
        return None;
    }
    let target = uri.path_and_query().map_or("/", |p| p.as_str());
    Some(local::redirect_https(host, port, target))
}

/// The key authorization of a pending ACME challenge, answered before routing: the host may
/// have no healthy backend yet (that is often why it needs a certificate).
fn acme_answer(shared: &Shared, conn: &ConnCtx, uri: &http::Uri) -> Option<Response<GatewayBody>> {
    let challenges = shared.challenges.as_ref()?;
    if conn.https || challenges.is_empty() {
        return None;
    }
    let token = uri.path().strip_prefix(ACME_CHALLENGE)?;
    let answer = challenges.answer(token)?;
    let mut resp = Response::new(GatewayBody::Local(Some(Bytes::from(answer))));
    resp.headers_mut().insert(
        http::header::CONTENT_TYPE,
        HeaderValue::from_static("application/octet-stream"),
    );
    Some(resp)
}

fn access_record(
    req: &Request<Incoming>,
    host: Option<&str>,
    request_id: &HeaderValue,
) -> Box<AccessRecord> {
    let headers = req.headers();
    Box::new(AccessRecord {
        method: req.method().clone(),
        host: host.unwrap_or("-").to_string(),
        uri: req
            .uri()
            .path_and_query()
            .map_or("/", |p| p.as_str())
            .to_string(),
        version: req.version(),
        referer: headers.get(http::header::REFERER).cloned(),
        user_agent: headers.get(http::header::USER_AGENT).cloned(),
        request_id: request_id.clone(),
        backend: None,
        attempts: 0,
        bytes: None,
    })
}

pub(crate) async fn handle(
    shared: Arc<Shared>,
    conn: Arc<ConnCtx>,
    mut req: Request<Incoming>,
) -> Result<Response<GatewayBody>, Infallible> {
    let start = Instant::now();
    conn.head.request_started();
    let shared = &*shared;
    let mut scan = RequestScan::of(req.headers());
    let request_id = match scan.request_id.clone() {
        Some(v) if valid_request_id(&v) => v,
        _ => new_request_id(),
    };
    let json = scan.accept_json;
    // The Host header is rewritten below only when the request's own single
    // Host header is not already the value to send.
    let (raw_host_value, host_header_ok) = match req.uri().authority() {
        Some(a) => (HeaderValue::from_str(a.as_str()).ok(), false),
        None => (scan.host.take(), scan.hosts == 1),
    };
    let host_cow = raw_host_value
        .as_ref()
        .and_then(|h| h.to_str().ok())
        .and_then(normalize_host_ref);
    let wants_log = !shared.access_off
        && (shared.access.is_some()
            || tracing::enabled!(target: ACCESS_TARGET, tracing::Level::INFO));
    let log = wants_log.then(|| access_record(&req, host_cow.as_deref(), &request_id));
    let ctx = Ctx {
        start,
        client: Arc::clone(&conn),
        request_id,
        log,
    };

    // hyper already refuses differing duplicate Content-Length and a
    // non-chunked Transfer-Encoding, and when both framing headers arrive it
    // keeps chunked, drops Content-Length and closes after the response.
    // Anything ambiguous that still got here is refused, never forwarded.
    if scan.transfer_encodings > 0 && scan.content_length.is_some() {
        let r = local::bad_request(json, "both Transfer-Encoding and Content-Length are set");
        return Ok(ctx.local(&shared.unrouted, r));
    }
    // hyper accepts any coding list ending in `chunked` and decodes only the
    // chunking; forwarding the rest (e.g. `gzip, chunked`) without its
    // coding would change the body's meaning, so only plain chunked passes.
    if scan.odd_transfer_encoding || scan.transfer_encodings > 1 {
        let r = local::bad_request(json, "only `Transfer-Encoding: chunked` is accepted");
        return Ok(ctx.local(&shared.unrouted, r));
    }
    if req.method() == Method::CONNECT {
        let r = local::respond(
            StatusCode::METHOD_NOT_ALLOWED,
            json,
            "method_not_allowed",
            "the gateway does not tunnel CONNECT requests".to_string(),
            &[],
            true,
        );
        return Ok(ctx.local(&shared.unrouted, r));
    }
    let (Some(host), Some(raw_host)) = (host_cow.as_deref(), raw_host_value.as_ref()) else {
        let r = local::bad_request(json, "missing or invalid Host header");
        return Ok(ctx.local(&shared.unrouted, r));
    };

    if let Some(r) = acme_answer(shared, &conn, req.uri()) {
        return Ok(ctx.local(&shared.unrouted, r));
    }
    let table = shared.router.current();
    let (index, strip, https) = match table.source.resolve(host, req.uri().path()) {
        Resolution::Service {
            index,
            strip_prefix,
            https,
            ..
        } => (index, strip_prefix, https),
        Resolution::UnknownHost => {
            return Ok(ctx.local(&shared.unrouted, local::unknown_host(json, host)))
        }
        Resolution::NoRoute => {
            let r = local::no_route(json, host, req.uri().path());
            return Ok(ctx.local(&shared.unrouted, r));
        }
    };
    let service = &table.services[index];
    if let Some(r) = redirect(shared, &conn, https, host, req.uri()) {
        return Ok(ctx.local(&service.metrics, r));
    }
    let service_name = table.source.services()[index].name();
    if service.backends.is_empty() {
        let registered = table.source.services()[index].backends().len();
        let r = local::no_healthy_instance(json, service_name, registered);
        return Ok(ctx.local(&service.metrics, r));
    }

    let limits = &shared.cfg.limits;
    let content_length = scan
        .content_length
        .as_ref()
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok());
    if content_length.is_some_and(|n| n > limits.max_body_bytes) {
        return Ok(ctx.local(
            &service.metrics,
            local::too_large(json, limits.max_body_bytes),
        ));
    }

    let upgrade = req.version() == Version::HTTP_11
        && scan.upgrade
        && scan.connection
        && is_upgrade_request(req.headers());
    let client_upgrade = upgrade.then(|| hyper::upgrade::on(&mut req));
    let idempotent = is_idempotent(req.method());
    let (parts, body) = req.into_parts();
    let http::request::Parts {
        method,
        uri,
        mut headers,
        ..
    } = parts;

    let prepared = if body.is_end_stream() {
        Prepared::Empty
    } else if idempotent && content_length.is_some_and(|n| n <= limits.replay_body_bytes) {
        match Box::pin(body.collect()).await {
            Ok(c) => Prepared::Full(c.to_bytes()),
            Err(_) => {
                let r = local::bad_request(json, "request body could not be read");
                return Ok(ctx.local(&service.metrics, r));
            }
        }
    } else {
        Prepared::Stream(BodySlot::new(body, limits.max_body_bytes))
    };

    let path_and_query = match (strip, uri.path_and_query()) {
        (None, Some(pq)) => pq.clone(),
        (None, None) => PathAndQuery::from_static("/"),
        (Some(s), _) => {
            let path = strip_path(uri.path(), s);
            let pq = match uri.query() {
                Some(q) => format!("{path}?{q}"),
                None => path.to_string(),
            };
            match PathAndQuery::try_from(pq) {
                Ok(pq) => pq,
                Err(_) => {
                    let r = local::bad_request(json, "request target is not a valid path");
                    return Ok(ctx.local(&service.metrics, r));
                }
            }
        }
    };

    if scan.hop_by_hop {
        strip_hop_by_hop(&mut headers, upgrade);
    }
    if scan.expect {
        // The gateway answered `Expect: 100-continue` itself when it read the body.
        headers.remove(header::EXPECT);
    }
    let forwarding = Forwarding::new(
        &headers,
        &scan,
        &conn.peer_ip,
        raw_host,
        !host_header_ok,
        &ctx.request_id,
        shared.cfg.trust_forwarded_headers,
    )
    .over_https(conn.https);
    let framing = match &prepared {
        // A body-less POST/PUT/PATCH, or a request that said
        // `Content-Length: 0`, says so explicitly, as clients do.
        Prepared::Empty
            if scan.content_length.is_some()
                || matches!(method, Method::POST | Method::PUT | Method::PATCH) =>
        {
            RequestFraming::Length(0)
        }
        Prepared::Empty => RequestFraming::None,
        Prepared::Full(b) => RequestFraming::Length(b.len() as u64),
        Prepared::Stream(slot) => match slot.exact_len() {
            Some(n) => RequestFraming::Length(n),
            None => RequestFraming::Chunked,
        },
    };
    // The head is encoded once and sent as is by every attempt. What it was
    // built from is dropped here, so none of it is kept in the request's
    // future across the attempts' awaits (and nothing holds on to hyper's
    // read buffer while the backend answers).
    let mut head = Vec::with_capacity(512);
    upstream::encode_head(
        &mut head,
        &method,
        path_and_query.as_str(),
        &headers,
        &forwarding,
        &framing,
    );
    let chunked = matches!(framing, RequestFraming::Chunked);
    drop(forwarding);
    drop(headers);
    drop(path_and_query);
    drop(uri);
    drop(scan);
    drop(host_cow);
    drop(raw_host_value);

    let cfg = &shared.cfg;
    let mut tried: Vec<usize> = Vec::new();
    let mut connect_attempts = 0u32;
    let mut reset_retried = false;
    let mut last_failure: Option<FailureKind> = None;
    let mut ctx = ctx;

    loop {
        let now_ms = if tried.is_empty() {
            shared.clock.ms_at(start)
        } else {
            shared.clock.now_ms()
        };
        let Some(i) = service.pick(cfg.balancing, now_ms, &tried) else {
            break;
        };
        let backend = &service.backends[i];
        if let Some(rec) = ctx.log.as_mut() {
            rec.backend = Some((backend.addr, Arc::clone(&backend.zone)));
            rec.attempts += 1;
        }
        let guard = backend.state.start();
        let outcome = attempt(shared, backend, &prepared, &method, &head, chunked).await;
        let kind = match outcome {
            Attempt::Response(backend_conn, head) => {
                let status = head.parts.status;
                if head.framing == Framing::Upgrade && client_upgrade.is_none() {
                    drop(guard);
                    note_failure(shared, service, i, FailureKind::Reset);
                    let r = local::bad_gateway(
                        json,
                        service_name,
                        "the instance switched protocols without being asked to",
                    );
                    return Ok(ctx.local(&service.metrics, r));
                }
                if status.is_server_error() {
                    note_failure(shared, service, i, FailureKind::Status5xx);
                } else {
                    backend.state.record_success();
                }
                let ResponseHead {
                    parts: mut rparts,
                    framing,
                    keep_alive,
                } = head;
                rparts.version = Version::HTTP_11;
                rparts
                    .headers
                    .insert(X_REQUEST_ID.clone(), ctx.request_id.clone());
                if https.hsts && conn.https {
                    rparts
                        .headers
                        .insert(header::STRICT_TRANSPORT_SECURITY, HSTS.clone());
                }
                let mut log = ctx.log;
                if let Some(rec) = log.as_mut() {
                    rec.bytes = match framing {
                        Framing::Length(n) => Some(n),
                        Framing::Empty => Some(0),
                        _ => None,
                    };
                }
                let completion = Completion {
                    status: status.as_u16(),
                    start,
                    metrics: service.metrics.clone(),
                    guard: Some(guard),
                    client: Some(ctx.client),
                    log,
                };
                if let (Framing::Upgrade, Some(client_up)) = (framing, client_upgrade) {
                    strip_hop_by_hop(&mut rparts.headers, true);
                    tokio::spawn(tunnel(
                        client_up,
                        backend_conn.wire,
                        completion,
                        Arc::clone(&conn),
                        cfg.timeouts.idle_ms,
                    ));
                    return Ok(Response::from_parts(rparts, GatewayBody::Local(None)));
                }
                if has_hop_by_hop(&rparts.headers) {
                    strip_hop_by_hop(&mut rparts.headers, false);
                }
                let rbody = ResponseBody::new(backend_conn, framing, keep_alive);
                let body = GatewayBody::Upstream(TrackedBody::new(rbody, completion));
                return Ok(Response::from_parts(rparts, body));
            }
            Attempt::TooLarge => {
                let r = local::too_large(json, limits.max_body_bytes);
                return Ok(ctx.local(&service.metrics, r));
            }
            Attempt::ClientBody => {
                let r = local::bad_request(
                    json,
                    "the request body could not be read (malformed chunk or client went away)",
                );
                return Ok(ctx.local(&service.metrics, r));
            }
            Attempt::Timeout => {
                drop(guard);
                note_failure(shared, service, i, FailureKind::Timeout);
                let r = local::gateway_timeout(json, service_name, cfg.timeouts.response_header_ms);
                return Ok(ctx.local(&service.metrics, r));
            }
            Attempt::Failed(kind) => kind,
        };
        drop(guard);
        note_failure(shared, service, i, kind);
        tried.push(i);
        last_failure = Some(kind);
        let retry = match kind {
            FailureKind::Connect => {
                connect_attempts += 1;
                connect_attempts < cfg.retry.max_connect_attempts && prepared.attempt().is_some()
            }
            _ => {
                let ok = idempotent
                    && prepared.replayable()
                    && cfg.retry.retry_idempotent_on_reset
                    && !reset_retried;
                reset_retried = true;
                ok
            }
        };
        if !retry {
            break;
        }
        service.metrics.retry(kind);
    }

    let r = match last_failure {
        None => local::no_healthy_instance(
            json,
            service_name,
            table.source.services()[index].backends().len(),
        ),
        Some(FailureKind::Connect) => local::bad_gateway(
            json,
            service_name,
            &format!(
                "could not connect to any of {} tried instance(s)",
                tried.len()
            ),
        ),
        Some(_) => local::bad_gateway(
            json,
            service_name,
            "the instance closed the connection before answering",
        ),
    };
    Ok(ctx.local(&service.metrics, r))
}

// Returned once per attempt: a move is cheaper than boxing the head.
#[allow(clippy::large_enum_variant)]
enum Attempt {
    Response(Conn, ResponseHead),
    /// Nothing reached the backend (connect failed) or it broke before a
    /// response head (reset); the caller decides about retrying.
    Failed(FailureKind),
    Timeout,
    TooLarge,
    ClientBody,
}

/// One try against one backend: a pooled or new connection, then the
/// request. A reused connection that breaks before any response byte was
/// most likely closed by the backend while idle, just as the request left:
/// an idempotent request whose body can be sent again goes out once more on
/// a fresh connection to the same backend, which is not the backend's fault.
async fn attempt(
    shared: &Shared,
    backend: &crate::live::LiveBackend,
    prepared: &Prepared,
    method: &Method,
    head: &[u8],
    chunked: bool,
) -> Attempt {
    let pool = &backend.state.pool;
    let mut conn = match pool.checkout().await {
        Ok(conn) => conn,
        Err(e) => {
            tracing::debug!(backend = %backend.addr, error = %e, "backend connect failed");
            return Attempt::Failed(FailureKind::Connect);
        }
    };
    let timeout = Duration::from_millis(shared.cfg.timeouts.response_header_ms);
    let deadline = tokio::time::Instant::now() + timeout;
    loop {
        let Some(body) = prepared.attempt() else {
            return Attempt::Failed(FailureKind::Connect);
        };
        conn.timer.as_mut().reset(deadline);
        // A fresh connection is never reused, so this retries at most once.
        let reused = conn.wire.reused;
        let sent = {
            let Conn { wire, timer } = &mut conn;
            let mut exchange =
                std::pin::pin!(upstream::exchange(wire, method, head, chunked, body));
            std::future::poll_fn(|cx| {
                if let Poll::Ready(r) = exchange.as_mut().poll(cx) {
                    return Poll::Ready(Some(r));
                }
                timer.as_mut().poll(cx).map(|()| None)
            })
            .await
        };
        match sent {
            Some(Ok(head)) => return Attempt::Response(conn, head),
            None => return Attempt::Timeout,
            Some(Err(ExchangeError::Broken))
                if reused && is_idempotent(method) && prepared.attempt().is_some() =>
            {
                conn = match Box::pin(pool.connect()).await {
                    Ok(c) => c,
                    Err(_) => return Attempt::Failed(FailureKind::Connect),
                };
            }
            Some(Err(ExchangeError::TooLarge(_))) => return Attempt::TooLarge,
            Some(Err(ExchangeError::ClientBody(_))) => return Attempt::ClientBody,
            Some(Err(e)) => {
                tracing::debug!(backend = %backend.addr, error = %e, "backend request failed");
                return Attempt::Failed(FailureKind::Reset);
            }
        }
    }
}

fn note_failure(shared: &Shared, service: &crate::live::LiveService, i: usize, kind: FailureKind) {
    let backend = &service.backends[i];
    service.metrics.failure(kind);
    if let Verdict::Ejected { for_ms } = backend
        .state
        .record_failure(&shared.cfg.outlier, shared.clock.now_ms())
    {
        service.metrics.ejection();
        tracing::warn!(
            service = %service.metrics.name(),
            instance_id = %backend.instance_id,
            backend = %backend.addr,
            for_ms,
            "backend ejected after consecutive failures"
        );
    }
}

/// Copies bytes both ways between an upgraded client connection and the
/// backend connection that answered 101, until either side closes, the
/// client connection idles out, or the gateway stops.
async fn tunnel(
    client: hyper::upgrade::OnUpgrade,
    backend: Wire,
    completion: Completion,
    conn: Arc<ConnCtx>,
    idle_ms: u64,
) {
    let outcome = match client.await {
        Ok(c) => {
            let mut c = TokioIo::new(c);
            let Wire {
                io: mut b, rbuf, ..
            } = backend;
            let mut hard_stop = conn.hard_stop.clone();
            tokio::select! {
                r = async {
                    // Bytes the backend sent right after its 101 head.
                    if !rbuf.is_empty() {
                        c.write_all(&rbuf).await?;
                    }
                    tokio::io::copy_bidirectional(&mut c, &mut b).await
                } => {
                    if r.is_ok() { "tunnel_closed" } else { "tunnel_error" }
                }
                _ = conn.idle.expired(idle_ms) => "tunnel_idle",
                _ = hard_stop.wait_for(|stop| *stop) => "tunnel_shutdown",
            }
        }
        Err(_) => "upgrade_failed",
    };
    completion.finish(outcome);
}
