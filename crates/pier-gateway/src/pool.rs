//! Keep-alive HTTP/1.1 connections to one backend.
//!
//! Each backend's pool lives in its [`crate::backend::BackendState`], so it
//! survives table swaps with the rest of the backend's state and goes away
//! with it. A connection is hyper's low-level client connection: its task is
//! spawned (so a backend closing an idle connection is noticed at once), and
//! its `SendRequest` handle sits in the pool while idle. A handle returns to
//! the pool only after its response body was read to the end, so a pooled
//! connection is never mid-message.
//!
//! Compared with hyper-util's pooled client this skips the per-request pool
//! key hashing, URI rewriting and the task it spawns per response, and it
//! tells exactly whether a request left the gateway: a request refused by a
//! connection that closed under it comes back unsent (`try_send_request`).

use std::collections::VecDeque;
use std::io;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use hyper::client::conn::http1::{self, SendRequest};
use hyper_util::rt::TokioIo;
use tokio::net::TcpSocket;
use tokio::time::{Instant, Sleep};

use crate::body::UpstreamBody;

pub(crate) type Sender = SendRequest<UpstreamBody>;

/// A backend connection's request handle and its response-header timer.
/// The timer lives as long as the connection and is moved forward for each
/// request: moving a registered timer later is a couple of atomic
/// operations, while a fresh timer per request is an insertion into and a
/// removal from the timer wheel. An idle connection's timer may still fire
/// once; that wakes whichever task used the connection last, which then
/// finds nothing to do.
pub(crate) struct Conn {
    pub(crate) sender: Sender,
    pub(crate) timer: Pin<Box<Sleep>>,
}

impl Conn {
    fn new(sender: Sender) -> Self {
        Conn {
            sender,
            timer: Box::pin(tokio::time::sleep_until(Instant::now())),
        }
    }
}

/// Settings shared by all pools of a gateway.
#[derive(Clone, Debug, Default)]
pub(crate) struct PoolConfig {
    pub(crate) connect_timeout: Duration,
    /// Idle connections are closed after this many prune ticks.
    pub(crate) idle_ticks: u64,
    pub(crate) max_idle: usize,
    /// Advanced by the pruner; idle entries remember the tick they came
    /// back in, so the request path never reads a clock.
    pub(crate) tick: Arc<AtomicU64>,
}

/// Why no connection could be had: nothing was sent.
#[derive(Debug, thiserror::Error)]
pub(crate) enum ConnectError {
    #[error("connect to {addr} timed out after {ms} ms")]
    Timeout { addr: SocketAddr, ms: u128 },
    #[error("connect to {addr}: {source}")]
    Io {
        addr: SocketAddr,
        #[source]
        source: io::Error,
    },
    #[error("HTTP/1.1 handshake with {addr}: {source}")]
    Handshake {
        addr: SocketAddr,
        #[source]
        source: hyper::Error,
    },
}

struct Idle {
    conn: Conn,
    since_tick: u64,
}

pub(crate) struct BackendPool {
    addr: SocketAddr,
    cfg: PoolConfig,
    idle: Mutex<VecDeque<Idle>>,
}

impl std::fmt::Debug for BackendPool {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("BackendPool")
            .field("addr", &self.addr)
            .finish_non_exhaustive()
    }
}

impl BackendPool {
    pub(crate) fn new(addr: SocketAddr, cfg: PoolConfig) -> Self {
        BackendPool {
            addr,
            cfg,
            idle: Mutex::new(VecDeque::new()),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, VecDeque<Idle>> {
        match self.idle.lock() {
            Ok(g) => g,
            Err(poisoned) => poisoned.into_inner(),
        }
    }

    /// An idle connection that can take a request now, or a new one.
    pub(crate) async fn checkout(&self) -> Result<Conn, ConnectError> {
        let mut waiting: Option<Conn> = None;
        {
            let mut idle = self.lock();
            // Oldest first: the longer a connection has been back, the more
            // likely its task has already marked it ready.
            while let Some(entry) = idle.pop_front() {
                if entry.conn.sender.is_closed() {
                    continue;
                }
                if entry.conn.sender.is_ready() {
                    return Ok(entry.conn);
                }
                waiting = Some(entry.conn);
                break;
            }
        }
        if let Some(mut conn) = waiting {
            // Its task has not yet run since the last response ended.
            if conn.sender.ready().await.is_ok() {
                return Ok(conn);
            }
        }
        // Boxed: connecting is the rare path and its future is large; inline
        // it would bloat every request's future.
        Box::pin(self.connect()).await
    }

    async fn connect(&self) -> Result<Conn, ConnectError> {
        let cfg = &self.cfg;
        let addr = self.addr;
        let socket = if addr.is_ipv4() {
            TcpSocket::new_v4()
        } else {
            TcpSocket::new_v6()
        }
        .map_err(|source| ConnectError::Io { addr, source })?;
        let _ = socket.set_keepalive(true);
        let stream = match tokio::time::timeout(cfg.connect_timeout, socket.connect(addr)).await {
            Ok(Ok(s)) => s,
            Ok(Err(source)) => return Err(ConnectError::Io { addr, source }),
            Err(_) => {
                return Err(ConnectError::Timeout {
                    addr,
                    ms: cfg.connect_timeout.as_millis(),
                })
            }
        };
        let _ = stream.set_nodelay(true);
        let (sender, conn) = http1::Builder::new()
            .writev(false)
            .handshake(TokioIo::new(stream))
            .await
            .map_err(|source| ConnectError::Handshake { addr, source })?;
        tokio::spawn(async move {
            if let Err(e) = conn.with_upgrades().await {
                tracing::debug!(backend = %addr, error = %e, "backend connection ended with an error");
            }
        });
        Ok(Conn::new(sender))
    }

    /// Returns a connection whose last response was read to the end.
    pub(crate) fn checkin(&self, conn: Conn) {
        let cfg = &self.cfg;
        if conn.sender.is_closed() {
            return;
        }
        let mut idle = self.lock();
        if idle.len() >= cfg.max_idle {
            return;
        }
        idle.push_back(Idle {
            conn,
            since_tick: cfg.tick.load(Ordering::Relaxed),
        });
    }

    /// Drops idle connections past the idle timeout (their tasks then close
    /// the sockets) and handles whose connection is gone.
    pub(crate) fn prune(&self) {
        let now = self.cfg.tick.load(Ordering::Relaxed);
        let max_age = self.cfg.idle_ticks;
        let mut idle = self.lock();
        idle.retain(|e| !e.conn.sender.is_closed() && now.saturating_sub(e.since_tick) < max_age);
    }
}
