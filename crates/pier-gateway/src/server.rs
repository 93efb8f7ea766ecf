//! Client connections: protocol detection, hyper HTTP/1.1 and HTTP/2 (h2c)
//! serving, idle tracking and graceful shutdown.
//!
//! Protocol detection peeks at the socket for the HTTP/2 connection preface
//! under the header-read timeout, so a client that connects and sends
//! nothing is closed like any other slow client. HTTP/1 then uses hyper's
//! own header timer (which also runs between kept-alive requests) and header
//! limits; HTTP/2 uses the header-list limit. On top of that every
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
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use http::HeaderValue;
use hyper::server::conn::{http1, http2};
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::TcpStream;
use tokio::sync::{mpsc, watch};

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

/// What the request path needs to know about its client connection.
pub(crate) struct ConnCtx {
    pub(crate) peer_ip: HeaderValue,
    pub(crate) idle: Arc<IdleMark>,
    pub(crate) hard_stop: watch::Receiver<bool>,
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
    b.timer(TokioTimer::new())
        .header_read_timeout(Duration::from_millis(shared.cfg.timeouts.header_read_ms))
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

pub(crate) async fn serve_connection(
    shared: Arc<Shared>,
    h1: Arc<http1::Builder>,
    h2: Arc<http2::Builder<TokioExecutor>>,
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
    let mark = Arc::new(IdleMark::new());
    let idle_ms = shared.cfg.timeouts.idle_ms;
    let ctx = Arc::new(ConnCtx {
        peer_ip: ip_header(peer.ip()),
        idle: Arc::clone(&mark),
        hard_stop: life.hard_stop.clone(),
        _alive: life.alive.clone(),
    });
    let io = TokioIo::new(IdleIo {
        inner: stream,
        mark: Arc::clone(&mark),
    });
    // The request future is a few KiB; boxing it once is cheaper than the
    // copies hyper's dispatcher would otherwise make of it.
    let svc = service_fn(move |req| Box::pin(handle(Arc::clone(&shared), Arc::clone(&ctx), req)));
    match proto {
        Proto::Http1 => {
            let conn = h1.serve_connection(io, svc).with_upgrades();
            drive(conn, &mark, idle_ms, life).await
        }
        Proto::Http2 => {
            let conn = h2.serve_connection(io, svc);
            drive(conn, &mark, idle_ms, life).await
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

async fn drive<C>(conn: C, mark: &IdleMark, idle_ms: u64, life: Lifecycle)
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
    loop {
        tokio::select! {
            res = conn.as_mut() => {
                if let Err(e) = res {
                    tracing::debug!(error = %e, "client connection ended with an error");
                }
                return;
            }
            _ = drain.wait_for(|d| *d), if !draining => {
                draining = true;
                conn.as_mut().begin_graceful_shutdown();
            }
            _ = hard_stop.wait_for(|s| *s) => return,
            _ = mark.expired(idle_ms) => {
                tracing::debug!("closing idle client connection");
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
