//! The access log writer: one line per request, formatted and written by one
//! dedicated thread behind a bounded queue, so the request path only moves a
//! boxed record into a channel.
//!
//! Formatting through `tracing` to unbuffered stderr cost a formatter pass
//! and a `write(2)` per request on the proxy's own threads (issue 17 measured
//! 0.6–0.75× nginx with it, 0.9× without). Here lines are buffered and
//! flushed at least every [`FLUSH_EVERY`], on [`AccessLog::flush`] (shutdown),
//! and when the buffer fills. A full queue drops the line and counts it in
//! `pier_gateway_access_log_dropped` rather than slow requests down.
//! [`AccessLog::reopen`] (SIGHUP, for logrotate) makes the writer open its
//! file again by path.

use std::fs::{File, OpenOptions};
use std::io::{self, BufWriter, Write};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc::{self, RecvTimeoutError, SyncSender, TryRecvError, TrySendError};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use http::{HeaderValue, Method, Version};
use prometheus_client::metrics::counter::Counter;

use crate::metrics::GatewayMetrics;

/// The longest a written line waits in the buffer.
pub const FLUSH_EVERY: Duration = Duration::from_secs(1);

/// Lines waiting for the writer; more are dropped (and counted).
const QUEUE: usize = 16 * 1024;

/// How long the writer sleeps once it has emptied the queue while lines keep coming, so it
/// takes them in batches instead of being woken for each (1,000 lines at 100,000 requests/s,
/// far below [`QUEUE`]).
const BATCH_PAUSE: Duration = Duration::from_millis(10);

/// Where the lines go.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum AccessDestination {
    Stderr,
    /// Appended to; opened again by path on [`AccessLog::reopen`].
    File(PathBuf),
}

/// How a line looks.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum AccessFormat {
    /// The NCSA combined log format (Apache, nginx), which log tools parse.
    #[default]
    Combined,
    /// One JSON object per line with every field the gateway knows.
    Json,
}

#[derive(Debug, thiserror::Error)]
pub enum AccessLogError {
    #[error("cannot open the access log {path}: {source}")]
    Open {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("cannot start the access log writer thread: {0}")]
    Thread(#[source] io::Error),
}

/// One finished request, as the writer thread formats it.
pub(crate) struct AccessEntry {
    pub(crate) time: SystemTime,
    pub(crate) peer: HeaderValue,
    pub(crate) method: Method,
    pub(crate) host: String,
    /// Path and query, as the client sent them.
    pub(crate) uri: String,
    pub(crate) version: Version,
    pub(crate) status: u16,
    pub(crate) bytes: Option<u64>,
    pub(crate) referer: Option<HeaderValue>,
    pub(crate) user_agent: Option<HeaderValue>,
    pub(crate) service: Arc<str>,
    pub(crate) backend: Option<(SocketAddr, Arc<str>)>,
    pub(crate) duration: Duration,
    pub(crate) request_id: HeaderValue,
    pub(crate) attempts: u32,
    pub(crate) outcome: &'static str,
}

enum Msg {
    Entry(Box<AccessEntry>),
    /// Flush now and say so: shutdown waits for it.
    Flush(std::sync::mpsc::Sender<()>),
    /// Wakes the writer to look at the reopen flag.
    Wake,
}

struct Inner {
    tx: SyncSender<Msg>,
    reopen: Arc<AtomicBool>,
    dropped: Counter,
}

/// A handle on the writer; cheap to clone. The thread ends when the last
/// handle is dropped, after writing what was queued.
#[derive(Clone)]
pub struct AccessLog(Arc<Inner>);

impl std::fmt::Debug for AccessLog {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AccessLog").finish_non_exhaustive()
    }
}

impl AccessLog {
    /// Opens the destination (so a bad path fails at start) and starts the
    /// writer thread. Dropped lines are counted in `metrics`.
    pub fn start(
        dest: AccessDestination,
        format: AccessFormat,
        metrics: &GatewayMetrics,
    ) -> Result<AccessLog, AccessLogError> {
        let out = Output::open(dest)?;
        let (tx, rx) = mpsc::sync_channel(QUEUE);
        let reopen = Arc::new(AtomicBool::new(false));
        let flag = Arc::clone(&reopen);
        std::thread::Builder::new()
            .name("pier-access-log".into())
            .spawn(move || writer(rx, out, format, &flag))
            .map_err(AccessLogError::Thread)?;
        Ok(AccessLog(Arc::new(Inner {
            tx,
            reopen,
            dropped: metrics.access_log_dropped(),
        })))
    }

    /// Queues a line; never waits.
    pub(crate) fn log(&self, entry: Box<AccessEntry>) {
        if let Err(TrySendError::Full(_) | TrySendError::Disconnected(_)) =
            self.0.tx.try_send(Msg::Entry(entry))
        {
            self.0.dropped.inc();
        }
    }

    /// Asks the writer to open its file again by path (after logrotate moved
    /// it); takes effect within [`FLUSH_EVERY`] even when the queue is full.
    pub fn reopen(&self) {
        self.0.reopen.store(true, Ordering::Release);
        let _ = self.0.tx.try_send(Msg::Wake);
    }

    /// Writes out every line queued so far; returns once they reached the
    /// file (or after 5 s if the writer is stuck).
    pub async fn flush(&self) {
        let (ack_tx, ack_rx) = mpsc::channel();
        let tx = self.0.tx.clone();
        // `send` waits for room in the queue: do it off the runtime's threads.
        let waited = tokio::task::spawn_blocking(move || {
            if tx.send(Msg::Flush(ack_tx)).is_ok() {
                let _ = ack_rx.recv_timeout(Duration::from_secs(5));
            }
        });
        let _ = waited.await;
    }
}

enum Output {
    Stderr(BufWriter<io::Stderr>),
    File { path: PathBuf, w: BufWriter<File> },
}

/// Big enough that a busy gateway writes in large chunks between flushes.
const BUFFER: usize = 64 * 1024;

fn open_append(path: &Path) -> Result<File, AccessLogError> {
    OpenOptions::new()
        .create(true)
        .append(true)
        .open(path)
        .map_err(|source| AccessLogError::Open {
            path: path.to_path_buf(),
            source,
        })
}

impl Output {
    fn open(dest: AccessDestination) -> Result<Output, AccessLogError> {
        Ok(match dest {
            AccessDestination::Stderr => {
                Output::Stderr(BufWriter::with_capacity(BUFFER, io::stderr()))
            }
            AccessDestination::File(path) => {
                let w = BufWriter::with_capacity(BUFFER, open_append(&path)?);
                Output::File { path, w }
            }
        })
    }

    fn writer(&mut self) -> &mut dyn Write {
        match self {
            Output::Stderr(w) => w,
            Output::File { w, .. } => w,
        }
    }

    fn reopen(&mut self) {
        if let Output::File { path, w } = self {
            let _ = w.flush();
            match open_append(path) {
                Ok(f) => *w = BufWriter::with_capacity(BUFFER, f),
                Err(e) => {
                    tracing::warn!(error = %e, "access log not reopened; still writing to the old file")
                }
            }
        }
    }
}

fn writer(rx: mpsc::Receiver<Msg>, mut out: Output, format: AccessFormat, reopen: &AtomicBool) {
    let mut clock = ClockCache::default();
    let mut line = Vec::with_capacity(512);
    let mut last_flush = Instant::now();
    let mut failing = false;
    let mut busy = false;
    loop {
        let msg = match rx.try_recv() {
            Ok(m) => Ok(m),
            Err(TryRecvError::Disconnected) => Err(RecvTimeoutError::Disconnected),
            // Lines came in since the last pause: pause again instead of blocking. A sender only
            // wakes the writer (a futex wake and a context switch on a proxy thread, for every
            // request) while it blocks in `recv`; during the pause lines just queue up.
            Err(TryRecvError::Empty) if busy => {
                busy = false;
                std::thread::sleep(BATCH_PAUSE);
                continue;
            }
            Err(TryRecvError::Empty) => rx.recv_timeout(FLUSH_EVERY),
        };
        busy |= matches!(msg, Ok(Msg::Entry(_)));
        if reopen.swap(false, Ordering::AcqRel) {
            out.reopen();
        }
        match msg {
            Ok(Msg::Entry(e)) => {
                line.clear();
                match format {
                    AccessFormat::Combined => combined(&mut line, &e, &mut clock),
                    AccessFormat::Json => json(&mut line, &e, &mut clock),
                }
                report(out.writer().write_all(&line), &mut failing);
            }
            Ok(Msg::Flush(ack)) => {
                report(out.writer().flush(), &mut failing);
                last_flush = Instant::now();
                let _ = ack.send(());
                continue;
            }
            Ok(Msg::Wake) | Err(RecvTimeoutError::Timeout) => {}
            Err(RecvTimeoutError::Disconnected) => {
                report(out.writer().flush(), &mut failing);
                return;
            }
        }
        if last_flush.elapsed() >= FLUSH_EVERY {
            report(out.writer().flush(), &mut failing);
            last_flush = Instant::now();
        }
    }
}

/// Warns once per run of write errors (a full disk must not flood the log).
fn report(res: io::Result<()>, failing: &mut bool) {
    match res {
        Ok(()) => *failing = false,
        Err(e) if !*failing => {
            *failing = true;
            tracing::warn!(error = %e, "cannot write the access log");
        }
        Err(_) => {}
    }
}

/// The formatted time of the current second, computed once per second.
#[derive(Default)]
struct ClockCache {
    secs: u64,
    combined: String,
    iso: String,
}

impl ClockCache {
    fn at(&mut self, t: SystemTime) -> (u64, u32) {
        let d = t.duration_since(UNIX_EPOCH).unwrap_or_default();
        let secs = d.as_secs();
        if secs != self.secs || self.combined.is_empty() {
            self.secs = secs;
            let (y, mo, day) = civil_from_days((secs / 86_400) as i64);
            let (h, mi, s) = ((secs / 3600) % 24, (secs / 60) % 60, secs % 60);
            let mon = MONTHS[(mo - 1) as usize];
            self.combined = format!("{day:02}/{mon}/{y}:{h:02}:{mi:02}:{s:02} +0000");
            self.iso = format!("{y}-{mo:02}-{day:02}T{h:02}:{mi:02}:{s:02}");
        }
        (secs, d.subsec_millis())
    }
}

const MONTHS: [&str; 12] = [
    "Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec",
];

/// Days since 1970-01-01 to (year, month, day) in the proleptic Gregorian
/// calendar (Howard Hinnant's `civil_from_days`).
fn civil_from_days(z: i64) -> (i64, u32, u32) {
    let z = z + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = (doy - (153 * mp + 2) / 5 + 1) as u32;
    let m = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
    let y = yoe + era * 400 + i64::from(m <= 2);
    (y, m, d)
}

fn version_str(v: Version) -> &'static str {
    match v {
        Version::HTTP_09 => "HTTP/0.9",
        Version::HTTP_10 => "HTTP/1.0",
        Version::HTTP_2 => "HTTP/2.0",
        Version::HTTP_3 => "HTTP/3.0",
        _ => "HTTP/1.1",
    }
}

/// Bytes inside a quoted combined-format field: `"`, `\` and anything not
/// printable ASCII become `\xHH`, as nginx does, so a client cannot forge
/// fields or lines.
fn quoted(out: &mut Vec<u8>, bytes: &[u8]) {
    for &b in bytes {
        if b == b'"' || b == b'\\' || !(0x20..0x7f).contains(&b) {
            let _ = write!(out, "\\x{b:02X}");
        } else {
            out.push(b);
        }
    }
}

fn header_or_dash(h: &Option<HeaderValue>) -> &[u8] {
    h.as_ref().map_or(b"-", |v| v.as_bytes())
}

/// `%h - - [%t] "%r" %>s %b "%{Referer}i" "%{User-agent}i"`
fn combined(out: &mut Vec<u8>, e: &AccessEntry, clock: &mut ClockCache) {
    clock.at(e.time);
    out.extend_from_slice(e.peer.as_bytes());
    let _ = write!(out, " - - [{}] \"{} ", clock.combined, e.method);
    quoted(out, e.uri.as_bytes());
    let _ = write!(out, " {}\" {} ", version_str(e.version), e.status);
    match e.bytes {
        Some(n) => {
            let _ = write!(out, "{n}");
        }
        None => out.push(b'-'),
    }
    out.extend_from_slice(b" \"");
    quoted(out, header_or_dash(&e.referer));
    out.extend_from_slice(b"\" \"");
    quoted(out, header_or_dash(&e.user_agent));
    out.extend_from_slice(b"\"\n");
}

fn json(out: &mut Vec<u8>, e: &AccessEntry, clock: &mut ClockCache) {
    let (_, ms) = clock.at(e.time);
    let lossy = |h: &Option<HeaderValue>| {
        h.as_ref()
            .map(|v| String::from_utf8_lossy(v.as_bytes()).into_owned())
    };
    let (backend, zone) = match &e.backend {
        Some((addr, zone)) => (Some(addr.to_string()), Some(zone.to_string())),
        None => (None, None),
    };
    let value = serde_json::json!({
        "time": format!("{}.{ms:03}Z", clock.iso),
        "remote": String::from_utf8_lossy(e.peer.as_bytes()),
        "method": e.method.as_str(),
        "host": e.host,
        "uri": e.uri,
        "proto": version_str(e.version),
        "status": e.status,
        "bytes": e.bytes,
        "duration_ms": e.duration.as_secs_f64() * 1000.0,
        "service": &*e.service,
        "backend": backend,
        "zone": zone,
        "request_id": String::from_utf8_lossy(e.request_id.as_bytes()),
        "attempts": e.attempts,
        "outcome": e.outcome,
        "referer": lossy(&e.referer),
        "user_agent": lossy(&e.user_agent),
    });
    // Serialising a `Value` into a Vec cannot fail.
    let _ = serde_json::to_writer(&mut *out, &value);
    out.push(b'\n');
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn civil_dates() {
        assert_eq!(civil_from_days(0), (1970, 1, 1));
        assert_eq!(civil_from_days(11_016), (2000, 2, 29));
        // 2026-12-07
        assert_eq!(civil_from_days(20_794), (2026, 12, 7));
    }

    fn entry() -> AccessEntry {
        AccessEntry {
            time: UNIX_EPOCH + Duration::from_millis(1_796_650_803_250),
            peer: HeaderValue::from_static("10.0.0.1"),
            method: Method::GET,
            host: "web.localhost".into(),
            uri: "/a?\"x\"".into(),
            version: Version::HTTP_11,
            status: 200,
            bytes: Some(12),
            referer: None,
            user_agent: Some(HeaderValue::from_static("curl/8")),
            service: Arc::from("web"),
            backend: Some(("127.0.0.1:9".parse().unwrap(), Arc::from("a"))),
            duration: Duration::from_millis(3),
            request_id: HeaderValue::from_static("rid"),
            attempts: 1,
            outcome: "ok",
        }
    }

    #[test]
    fn combined_line_escapes_quotes() {
        let mut out = Vec::new();
        combined(&mut out, &entry(), &mut ClockCache::default());
        assert_eq!(
            String::from_utf8(out).unwrap(),
            "10.0.0.1 - - [07/Dec/2026:13:40:03 +0000] \"GET /a?\\x22x\\x22 HTTP/1.1\" 200 12 \"-\" \"curl/8\"\n"
        );
    }

    #[test]
    fn json_line_has_every_field() {
        let mut out = Vec::new();
        json(&mut out, &entry(), &mut ClockCache::default());
        let v: serde_json::Value = serde_json::from_slice(&out).unwrap();
        assert_eq!(v["time"], "2026-12-07T13:40:03.250Z");
        assert_eq!(v["uri"], "/a?\"x\"");
        assert_eq!(v["backend"], "127.0.0.1:9");
        assert_eq!(v["referer"], serde_json::Value::Null);
        assert_eq!(v["status"], 200);
    }
}
