//! Keep-alive HTTP/1.1 connections to one backend.
//!
//! Each backend's pool lives in its [`crate::backend::BackendState`], so it
//! survives table swaps with the rest of the backend's state and goes away
//! with it. A connection is a plain socket spoken to by [`crate::upstream`];
//! no task runs for it while it is idle. It returns to the pool only after
//! its response was read exactly to its end, so a pooled connection is never
//! mid-message. At checkout, a connection whose socket signalled anything
//! while idle (the backend closed it, or sent stray bytes) is dropped: the
//! reactor has already recorded that, so the check costs no syscall in the
//! common case.

use std::collections::VecDeque;
use std::io;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::net::TcpSocket;
use tokio::time::{Instant, Sleep};

use crate::upstream::Wire;

/// A backend connection and its response-header timer.
/// The timer lives as long as the connection and is moved forward for each
/// request: moving a registered timer later is a couple of atomic
/// operations, while a fresh timer per request is an insertion into and a
/// removal from the timer wheel. An idle connection's timer may still fire
/// once; that wakes whichever task used the connection last, which then
/// finds nothing to do.
pub(crate) struct Conn {
    pub(crate) wire: Wire,
    pub(crate) timer: Pin<Box<Sleep>>,
}

impl Conn {
    pub(crate) fn new(wire: Wire) -> Self {
        Conn {
            wire,
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
        if let Some(conn) = self.idle_conn() {
            return Ok(conn);
        }
        // Boxed: connecting is the rare path and its future is large; inline
        // it would bloat every request's future.
        Box::pin(self.connect()).await
    }

    fn idle_conn(&self) -> Option<Conn> {
        let mut idle = self.lock();
        // Newest first: the connection most recently used is the one least
        // likely to have been closed by the backend's idle timeout.
        while let Some(mut entry) = idle.pop_back() {
            if entry.conn.wire.idle_usable() {
                return Some(entry.conn);
            }
        }
        None
    }

    /// A new connection, never a pooled one.
    pub(crate) async fn connect(&self) -> Result<Conn, ConnectError> {
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
        Ok(Conn::new(Wire::new(stream)))
    }

    /// Returns a connection whose last response was read to the end.
    pub(crate) fn checkin(&self, conn: Conn) {
        let cfg = &self.cfg;
        let mut idle = self.lock();
        if idle.len() >= cfg.max_idle {
            return;
        }
        idle.push_back(Idle {
            conn,
            since_tick: cfg.tick.load(Ordering::Relaxed),
        });
    }

    /// Closes idle connections past the idle timeout and those the backend
    /// closed.
    pub(crate) fn prune(&self) {
        let now = self.cfg.tick.load(Ordering::Relaxed);
        let max_age = self.cfg.idle_ticks;
        let mut idle = self.lock();
        idle.retain_mut(|e| {
            now.saturating_sub(e.since_tick) < max_age && e.conn.wire.idle_usable()
        });
    }
}
