//! Client connections: protocol detection, hyper HTTP/1.1 and HTTP/2 (h2c)
//! serving, idle tracking and graceful shutdown.
//!
//! Protocol detection peeks at the socket for the HTTP/2 connection preface
//! under the header-read timeout, so a client that connects and sends
//! nothing is closed like any other slow client. HTTP/1 then uses the
//! gateway's own header-read watchdog ([`HeadWatch`], which also runs
//! between kept-alive requests) and hyper's header limits; HTTP/2 uses the
//! header-list limit. On top of that every
//! connection is closed when no byte moved either way for `idle_ms`.
//!
//! Shutdown has two signals: `drain` asks each connection to finish the
//! requests it has and close (hyper's graceful shutdown: GOAWAY for HTTP/2,
//! close after the current response for HTTP/1), `hard_stop` drops whatever
//! is left once the grace period is over. Each connection and tunnel holds a
//! clone of an mpsc sender; when all are dropped, everything has finished.

use std::future::Future;
use std::io;
use std::net::SocketAddr;
use std::pin::{pin, Pin};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll, Wake, Waker};
use std::time::Duration;

use http::HeaderValue;
use hyper::server::conn::{http1, http2};
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::TcpStream;
use tokio::sync::{mpsc, watch};

use crate::access::AccessLog;
use crate::headers::ip_header;
use crate::proxy::{handle, Shared};

/// Whether bytes moved on a client connection since the watchdog last
/// looked. A flag instead of a timestamp keeps clock reads off the IO path;
/// the price is that an idle connection closes between `idle_ms` and
/// `2 × idle_ms` after its last byte.
pub(crate) struct IdleMark {
    active: AtomicBool,
}

impl IdleMark {
    fn new() -> Self {
        IdleMark {
            active: AtomicBool::new(false),
        }
    }

    fn touch(&self) {
        // Check first: the common case is already set, and a plain load
        // keeps the cache line shared.
        if !self.active.load(Ordering::Relaxed) {
            self.active.store(true, Ordering::Relaxed);
        }
    }

    /// Resolves once a whole `idle_ms` period passed without any byte.
    pub(crate) async fn expired(&self, idle_ms: u64) {
        loop {
            tokio::time::sleep(Duration::from_millis(idle_ms)).await;
            if !self.active.swap(false, Ordering::Relaxed) {
                return;
            }
        }
    }
}

/// A client socket that marks activity on every successful read or write.
struct IdleIo<T> {
    inner: T,
    mark: Arc<IdleMark>,
}

impl<T: AsyncRead + Unpin> AsyncRead for IdleIo<T> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let before = buf.filled().len();
        let res = Pin::new(&mut self.inner).poll_read(cx, buf);
        if matches!(res, Poll::Ready(Ok(()))) && buf.filled().len() > before {
            self.mark.touch();
        }
        res
    }
}

impl<T: AsyncWrite + Unpin> AsyncWrite for IdleIo<T> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        let res = Pin::new(&mut self.inner).poll_write(cx, buf);
        if matches!(res, Poll::Ready(Ok(n)) if n > 0) {
            self.mark.touch();
        }
        res
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        let res = Pin::new(&mut self.inner).poll_write_vectored(cx, bufs);
        if matches!(res, Poll::Ready(Ok(n)) if n > 0) {
            self.mark.touch();
        }
        res
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}

/// The HTTP/1 header-read timeout, kept by the gateway instead of hyper:
/// hyper's own arms a fresh boxed timer for every request head, which costs
/// an allocation and a timer-wheel insertion and removal per request. Here a
/// request costs one atomic add when it starts and one when its response
/// ends, and a watchdog that runs every `header_read_ms / 2` closes the
/// connection once it has seen it waiting for a head, with nothing started
/// or finished in between, for two whole periods: between 1 and 1.5 ×
/// `header_read_ms` after the wait began.
pub(crate) struct HeadWatch {
    /// Low 32 bits: requests in flight; high bits: a generation counter,
    /// bumped at every start and end.
    state: AtomicU64,
}

const GEN: u64 = 1 << 32;

impl HeadWatch {
    fn new() -> Self {
        HeadWatch {
            state: AtomicU64::new(0),
        }
    }

    pub(crate) fn request_started(&self) {
        self.state.fetch_add(GEN + 1, Ordering::Relaxed);
    }

    pub(crate) fn request_finished(&self) {
        // Next generation, one fewer in flight.
        self.state.fetch_add(GEN - 1, Ordering::Relaxed);
    }

    /// Resolves once the connection waited for a request head too long.
    async fn expired(&self, header_read_ms: u64) {
        let period = Duration::from_millis((header_read_ms / 2).max(1));
        let mut seen: Option<u64> = None;
        let mut periods = 0;
        loop {
            tokio::time::sleep(period).await;
            let now = self.state.load(Ordering::Relaxed);
            if now & (GEN - 1) != 0 {
                seen = None;
            } else if seen == Some(now) {
                periods += 1;
                if periods >= 2 {
                    return;
                }
            } else {
                seen = Some(now);
                periods = 0;
            }
        }
    }
}

/// What the request path needs to know about its client connection.
pub(crate) struct ConnCtx {
    pub(crate) peer_ip: HeaderValue,
    /// The client came over TLS.
    pub(crate) https: bool,
    pub(crate) idle: Arc<IdleMark>,
    pub(crate) head: HeadWatch,
    pub(crate) hard_stop: watch::Receiver<bool>,
    /// The gateway's access log writer, when it has one.
    pub(crate) access: Option<AccessLog>,
    /// Dropped with the last user of this context: counts for shutdown.
    _alive: mpsc::Sender<()>,
}

/// Shutdown signals shared by the accept loop and every connection.
#[derive(Clone)]
pub(crate) struct Lifecycle {
    pub(crate) drain: watch::Receiver<bool>,
    pub(crate) hard_stop: watch::Receiver<bool>,
    pub(crate) alive: mpsc::Sender<()>,
}

#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum Proto {
    Http1,
    Http2,
}

const HYPER_DEFAULT_MAX_HEADERS: usize = 100;

const H2_PREFACE: &[u8; 24] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";

/// Peeks until the bytes either diverge from the HTTP/2 preface or match it.
async fn detect(stream: &TcpStream) -> io::Result<Proto> {
    let mut buf = [0u8; 24];
    loop {
        let n = stream.peek(&mut buf).await?;
        if n == 0 {
            return Err(io::ErrorKind::UnexpectedEof.into());
        }
        if buf[..n] != H2_PREFACE[..n] {
            return Ok(Proto::Http1);
        }
        if n == H2_PREFACE.len() {
            return Ok(Proto::Http2);
        }
        // A partial preface: peek would return at once again, so wait a bit.
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
}

pub(crate) fn http1_builder(shared: &Shared) -> http1::Builder {
    let mut b = http1::Builder::new();
    // The header-read timeout is the gateway's own (see `HeadWatch`).
    b.header_read_timeout(None)
        // Half-closed clients get their response (HAProxy's default too: a
        // client that shuts its write side does not abort its request). It
        // also keeps hyper from reading ahead on the socket while a request is
        // in flight, to look for an EOF: that read had to allocate a new 8 KiB
        // buffer for every request, because the request in flight still
        // refers into the old one.
        .half_close(true)
        .writev(false)
        .max_header_size(shared.cfg.limits.max_header_bytes)
        .keep_alive(true);
    // Setting any header count makes hyper allocate the header array on the
    // heap for every request; its built-in default is this same 100.
    if shared.cfg.limits.max_headers != HYPER_DEFAULT_MAX_HEADERS {
        b.max_headers(shared.cfg.limits.max_headers);
    }
    b
}

pub(crate) fn http2_builder(shared: &Shared) -> http2::Builder<TokioExecutor> {
    let mut b = http2::Builder::new(TokioExecutor::new());
    b.timer(TokioTimer::new())
        .max_header_list_size(u32::try_from(shared.cfg.limits.max_header_bytes).unwrap_or(u32::MAX))
        .max_concurrent_streams(256);
    b
}

/// The builders every client connection is served with.
pub(crate) struct Builders {
    pub(crate) h1: http1::Builder,
    pub(crate) h2: http2::Builder<TokioExecutor>,
}

/// A plain TCP client: HTTP/1.1 or h2c, told apart by the HTTP/2 preface.
pub(crate) async fn serve_connection(
    shared: Arc<Shared>,
    b: Arc<Builders>,
    stream: TcpStream,
    peer: SocketAddr,
    life: Lifecycle,
) {
    let _ = stream.set_nodelay(true);
    let header_timeout = Duration::from_millis(shared.cfg.timeouts.header_read_ms);
    let proto = match tokio::time::timeout(header_timeout, detect(&stream)).await {
        Ok(Ok(p)) => p,
        Ok(Err(_)) => return,
        Err(_) => {
            tracing::debug!(%peer, "client sent no request within the header timeout");
            return;
        }
    };
    serve_io(shared, b, stream, proto, false, peer, life).await
}

/// A TLS client: the handshake has to finish within the header-read
/// timeout (a slow handshake is a slowloris too); ALPN picks the protocol.
pub(crate) async fn serve_tls_connection(
    shared: Arc<Shared>,
    b: Arc<Builders>,
    acceptor: tokio_rustls::TlsAcceptor,
    stream: TcpStream,
    peer: SocketAddr,
    life: Lifecycle,
) {
    let _ = stream.set_nodelay(true);
    let header_timeout = Duration::from_millis(shared.cfg.timeouts.header_read_ms);
    let tls = match tokio::time::timeout(header_timeout, acceptor.accept(stream)).await {
        Ok(Ok(tls)) => tls,
        Ok(Err(e)) => {
            tracing::debug!(%peer, error = %e, "TLS handshake failed");
            return;
        }
        Err(_) => {
            tracing::debug!(%peer, "TLS handshake not finished within the header timeout");
            return;
        }
    };
    let proto = match tls.get_ref().1.alpn_protocol() {
        Some(b"h2") => Some(Proto::Http2),
        Some(crate::challenge::ACME_TLS_ALPN) => None,
        _ => Some(Proto::Http1),
    };
    let Some(proto) = proto else {
        // An ACME TLS-ALPN-01 validation (RFC 8737): the validator learns all it needs from
        // the handshake and sends nothing more, so the connection ends here.
        use tokio::io::AsyncWriteExt;
        let host = tls.get_ref().1.server_name().map(str::to_string);
        tracing::info!(%peer, ?host, "answered an ACME TLS-ALPN-01 validation");
        let mut tls = tls;
        let _ = tokio::time::timeout(header_timeout, tls.shutdown()).await;
        return;
    };
    serve_io(shared, b, tls, proto, true, peer, life).await
}

async fn serve_io<S>(
    shared: Arc<Shared>,
    b: Arc<Builders>,
    stream: S,
    proto: Proto,
    https: bool,
    peer: SocketAddr,
    life: Lifecycle,
) where
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let header_timeout = Duration::from_millis(shared.cfg.timeouts.header_read_ms);
    let mark = Arc::new(IdleMark::new());
    let idle_ms = shared.cfg.timeouts.idle_ms;
    let ctx = Arc::new(ConnCtx {
        peer_ip: ip_header(peer.ip()),
        https,
        idle: Arc::clone(&mark),
        head: HeadWatch::new(),
        hard_stop: life.hard_stop.clone(),
        access: shared.access.clone(),
        _alive: life.alive.clone(),
    });
    let io = TokioIo::new(IdleIo {
        inner: stream,
        mark: Arc::clone(&mark),
    });
    let watch = Arc::clone(&ctx);
    let timers = Timers {
        mark: &mark,
        idle_ms,
        head: None,
    };
    match proto {
        Proto::Http1 => {
            // Not boxed: hyper keeps the in-flight request future in one allocation
            // per connection, reused for every request, which costs less than a
            // box per request (callgrind: 18,257 -> 17,368 instructions per request
            // with the request future at 2.7 KiB).
            let svc = service_fn(move |req| handle(Arc::clone(&shared), Arc::clone(&ctx), req));
            let conn = b.h1.serve_connection(io, svc).with_upgrades();
            let head = Some((&watch.head, header_timeout.as_millis() as u64));
            drive(conn, Timers { head, ..timers }, life).await
        }
        Proto::Http2 => {
            // Boxed: hyper spawns a task per HTTP/2 stream holding this future, and moves
            // it several times on the way into the task (copies of kilobytes each, about a
            // tenth of an HTTP/2 request's instructions); one allocation per stream is less.
            let svc =
                service_fn(move |req| Box::pin(handle(Arc::clone(&shared), Arc::clone(&ctx), req)));
            let conn = b.h2.serve_connection(io, svc);
            drive(conn, timers, life).await
        }
    }
}

/// hyper's HTTP/1 (with upgrades) and HTTP/2 connections, driven alike.
trait ServedConnection: Future<Output = Result<(), hyper::Error>> {
    fn begin_graceful_shutdown(self: Pin<&mut Self>);
}

impl<I, S> ServedConnection for http1::UpgradeableConnection<I, S>
where
    Self: Future<Output = Result<(), hyper::Error>>,
    S: hyper::service::HttpService<hyper::body::Incoming, ResBody = crate::body::GatewayBody>,
    I: hyper::rt::Read + hyper::rt::Write + Unpin + Send + 'static,
{
    fn begin_graceful_shutdown(self: Pin<&mut Self>) {
        self.graceful_shutdown()
    }
}

impl<I, S, E> ServedConnection for http2::Connection<I, S, E>
where
    Self: Future<Output = Result<(), hyper::Error>>,
    S: hyper::service::HttpService<hyper::body::Incoming, ResBody = crate::body::GatewayBody>,
    I: hyper::rt::Read + hyper::rt::Write + Unpin,
    E: hyper::rt::bounds::Http2ServerConnExec<S::Future, S::ResBody>,
{
    fn begin_graceful_shutdown(self: Pin<&mut Self>) {
        self.graceful_shutdown()
    }
}

/// Why `drive` stops polling hyper's connection or changes its mode.
enum ConnEvent {
    Drain,
    HardStop,
    Idle,
    HeadTimeout,
}

/// The watchdogs of one client connection.
#[derive(Clone, Copy)]
struct Timers<'a> {
    mark: &'a IdleMark,
    idle_ms: u64,
    /// HTTP/1 only: the header-read timeout, in ms.
    head: Option<(&'a HeadWatch, u64)>,
}

/// Waits for the first shutdown signal or watchdog expiry. Polled only when
/// one of its own wakers fired (see [`SideWake`]).
async fn next_event(
    drain: &mut watch::Receiver<bool>,
    hard_stop: &mut watch::Receiver<bool>,
    timers: Timers<'_>,
    draining: bool,
) -> ConnEvent {
    let head = async {
        match timers.head {
            Some((head, ms)) => head.expired(ms).await,
            None => std::future::pending().await,
        }
    };
    tokio::select! {
        _ = drain.wait_for(|d| *d), if !draining => ConnEvent::Drain,
        _ = hard_stop.wait_for(|s| *s) => ConnEvent::HardStop,
        _ = timers.mark.expired(timers.idle_ms) => ConnEvent::Idle,
        _ = head => ConnEvent::HeadTimeout,
    }
}

/// The waker given to the side future of a connection (shutdown signals and
/// the idle watchdog). It records that the side future has something to do
/// and wakes the connection's task, so each wake-up of the task for client
/// or backend IO polls only hyper's connection plus one atomic swap, instead
/// of re-polling two watch channels and a timer every time.
struct SideWake {
    woken: AtomicBool,
    task: std::sync::Mutex<Option<Waker>>,
}

impl SideWake {
    fn task(&self) -> std::sync::MutexGuard<'_, Option<Waker>> {
        match self.task.lock() {
            Ok(g) => g,
            Err(poisoned) => poisoned.into_inner(),
        }
    }
}

impl Wake for SideWake {
    fn wake(self: Arc<Self>) {
        self.wake_by_ref();
    }

    fn wake_by_ref(self: &Arc<Self>) {
        self.woken.store(true, Ordering::Release);
        if let Some(w) = self.task().as_ref() {
            w.wake_by_ref();
        }
    }
}

async fn drive<C>(conn: C, timers: Timers<'_>, life: Lifecycle)
where
    C: ServedConnection,
{
    let Lifecycle {
        mut drain,
        mut hard_stop,
        alive: _alive,
    } = life;
    let mut conn = pin!(conn);
    let mut draining = false;
    let side = Arc::new(SideWake {
        // Set: the side future must be polled once to register its wakers.
        woken: AtomicBool::new(true),
        task: std::sync::Mutex::new(None),
    });
    let side_waker = Waker::from(Arc::clone(&side));
    loop {
        let mut events = pin!(next_event(&mut drain, &mut hard_stop, timers, draining));
        let step = std::future::poll_fn(|cx| {
            if let Poll::Ready(res) = conn.as_mut().poll(cx) {
                return Poll::Ready(Err(res));
            }
            if side.woken.swap(false, Ordering::Acquire) {
                {
                    let mut task = side.task();
                    if !task.as_ref().is_some_and(|w| w.will_wake(cx.waker())) {
                        *task = Some(cx.waker().clone());
                    }
                }
                let mut side_cx = Context::from_waker(&side_waker);
                if let Poll::Ready(ev) = events.as_mut().poll(&mut side_cx) {
                    return Poll::Ready(Ok(ev));
                }
            }
            Poll::Pending
        })
        .await;
        match step {
            Err(res) => {
                if let Err(e) = res {
                    tracing::debug!(error = %e, "client connection ended with an error");
                }
                return;
            }
            Ok(ConnEvent::Drain) => {
                draining = true;
                conn.as_mut().begin_graceful_shutdown();
                // The next side future has not registered anything yet.
                side.woken.store(true, Ordering::Release);
            }
            Ok(ConnEvent::HardStop) => return,
            Ok(ConnEvent::Idle) => {
                tracing::debug!("closing idle client connection");
                return;
            }
            Ok(ConnEvent::HeadTimeout) => {
                tracing::debug!("client sent no complete request head within the header timeout");
                return;
            }
        }
    }
}

/// Waits for the shutdown future, then drains with a deadline.
pub(crate) async fn shutdown_sequence(
    drain_tx: watch::Sender<bool>,
    hard_tx: watch::Sender<bool>,
    alive_tx: mpsc::Sender<()>,
    mut alive_rx: mpsc::Receiver<()>,
    grace: Duration,
) {
    let _ = drain_tx.send(true);
    drop(alive_tx);
    if tokio::time::timeout(grace, alive_rx.recv()).await.is_err() {
        tracing::warn!(
            grace_ms = grace.as_millis() as u64,
            "gateway shutdown grace period over; dropping remaining connections"
        );
        let _ = hard_tx.send(true);
        let _ = tokio::time::timeout(Duration::from_secs(5), alive_rx.recv()).await;
    }
}
