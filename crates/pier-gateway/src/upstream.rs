//! The gateway's own HTTP/1.1 client: writes a request on a backend
//! connection and reads the response, inside the task of the client
//! connection that asked.
//!
//! Why not hyper's client connection: hyper runs every backend connection as
//! a task of its own and hands each request and response across a channel
//! and a oneshot, so one proxied request woke three tasks and went through a
//! second dispatcher. Here the request is written and the response head read
//! by the request's own future, and the response body is read by the client
//! connection's task as it writes it out. The backend side of a request costs
//! two syscalls and no task switch.
//!
//! What it checks, because a response is the backend's input to us:
//! - the head must parse as HTTP/1.x (httparse), within
//!   [`MAX_RESPONSE_HEAD_BYTES`] and [`MAX_RESPONSE_HEADERS`];
//! - framing must be unambiguous: `Transfer-Encoding` together with
//!   `Content-Length`, or differing `Content-Length` values, is refused
//!   (response smuggling), never guessed at;
//! - chunk sizes and chunk line endings are checked as they are decoded.
//!
//! A connection is reused only when its response ended exactly where its
//! framing said, the backend spoke HTTP/1.1 and did not say
//! `Connection: close`.

use std::io;
use std::io::Write as _;
use std::pin::Pin;
use std::task::{ready, Context, Poll};

use bytes::{Buf, Bytes, BytesMut};
use http::header::{self, HeaderMap, HeaderName, HeaderValue};
use http::{Method, StatusCode, Version};
use http_body::{Body, Frame, SizeHint};
use tokio::io::AsyncWriteExt;
use tokio::net::TcpStream;

use crate::body::{BodyTooLarge, BoxError, UpstreamBody};
use crate::headers::Forwarding;
use crate::pool::Conn;

/// A backend's response head may not be larger than this (nginx's default
/// buffer for it is 4 or 8 KiB). Offsets within a head fit in a u16.
pub(crate) const MAX_RESPONSE_HEAD_BYTES: usize = 32 * 1024;
/// Nor have more header fields than this.
pub(crate) const MAX_RESPONSE_HEADERS: usize = 128;
/// A chunk-size line or the trailer section may not be longer than this.
const MAX_CHUNK_LINE_BYTES: usize = 4 * 1024;
const MAX_TRAILER_BYTES: usize = 16 * 1024;
/// Room made in the read buffer before each read of a head.
const READ_RESERVE_BYTES: usize = 8 * 1024;
/// At most this much room for a read of a body: large bodies then move in
/// few syscalls, small ones never get a large buffer.
const BODY_READ_MAX_BYTES: usize = 64 * 1024;
/// A request body up to this size is written together with the head.
const COALESCE_BODY_BYTES: usize = 16 * 1024;

/// One backend connection: its socket and the bytes read from it that no
/// response consumed yet.
pub(crate) struct Wire {
    pub(crate) io: TcpStream,
    pub(crate) rbuf: BytesMut,
    /// It carried a request before. A connection that breaks before the
    /// first response byte of a later request was most likely closed by the
    /// backend while idle, just as the request went out.
    pub(crate) reused: bool,
}

impl Wire {
    pub(crate) fn new(io: TcpStream) -> Self {
        Wire {
            io,
            rbuf: BytesMut::new(),
            reused: false,
        }
    }

    /// Whether an idle connection can take a request: nothing arrived on it
    /// while it was idle (no close, no stray bytes). Costs a syscall only
    /// when the socket has signalled readiness since the last response.
    pub(crate) fn idle_usable(&mut self) -> bool {
        if !self.rbuf.is_empty() {
            return false;
        }
        let mut cx = Context::from_waker(std::task::Waker::noop());
        match self.io.poll_read_ready(&mut cx) {
            Poll::Pending => true,
            Poll::Ready(Err(_)) => false,
            Poll::Ready(Ok(())) => {
                let mut probe = [0u8; 1];
                matches!(self.io.try_read(&mut probe), Err(e) if e.kind() == io::ErrorKind::WouldBlock)
            }
        }
    }

    /// Reads once, with room for at least `want` bytes (clamped to
    /// [`READ_RESERVE_BYTES`, `BODY_READ_MAX_BYTES`]).
    fn poll_fill(&mut self, cx: &mut Context<'_>, want: usize) -> Poll<io::Result<usize>> {
        let want = want.clamp(READ_RESERVE_BYTES, BODY_READ_MAX_BYTES);
        if self.rbuf.capacity() - self.rbuf.len() < want / 4 {
            self.rbuf.reserve(want);
        }
        tokio_util::io::poll_read_buf(Pin::new(&mut self.io), cx, &mut self.rbuf)
    }

    async fn fill(&mut self) -> io::Result<usize> {
        std::future::poll_fn(|cx| self.poll_fill(cx, READ_RESERVE_BYTES)).await
    }
}

/// Why an exchange with a backend failed.
#[derive(Debug, thiserror::Error)]
pub(crate) enum ExchangeError {
    /// The connection broke before any byte of a response arrived (on a
    /// [`Wire::reused`] connection: most likely closed while idle).
    #[error("the connection closed before any response byte")]
    Broken,
    /// It broke in the middle of the response head.
    #[error("the connection broke in the middle of the response head")]
    Reset,
    /// The backend answered something that is not a valid HTTP/1.1
    /// response, or whose framing is ambiguous.
    #[error("invalid response: {0}")]
    Invalid(&'static str),
    #[error(transparent)]
    TooLarge(BodyTooLarge),
    #[error("{0}")]
    ClientBody(BoxError),
}

/// How a response body is delimited.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Framing {
    Empty,
    Length(u64),
    Chunked,
    /// Until the backend closes: the connection cannot be reused.
    Close,
    /// 101 Switching Protocols: the connection now belongs to a tunnel.
    Upgrade,
}

pub(crate) struct ResponseHead {
    pub(crate) parts: http::response::Parts,
    pub(crate) framing: Framing,
    pub(crate) keep_alive: bool,
}

/// How the request body is framed for the backend.
pub(crate) enum RequestFraming {
    None,
    Length(u64),
    Chunked,
}

/// Writes the request and reads the response head. The caller bounds it
/// with the response-header timeout. `head` is the request head from
/// [`encode_head`]; `chunked` says whether it announced a chunked body.
pub(crate) async fn exchange(
    wire: &mut Wire,
    method: &Method,
    head: &[u8],
    chunked: bool,
    body: UpstreamBody,
) -> Result<ResponseHead, ExchangeError> {
    wire.reused = true;
    match send_request(wire, head, chunked, body).await {
        Ok(()) => read_head(wire, method == Method::HEAD).await,
        // The backend may have answered (say, 413) and closed before taking
        // the whole body: its answer is still worth reading.
        Err(SendError::Io) => {
            read_head(wire, method == Method::HEAD)
                .await
                .map(|head| ResponseHead {
                    keep_alive: false,
                    ..head
                })
        }
        Err(SendError::TooLarge(e)) => Err(ExchangeError::TooLarge(e)),
        Err(SendError::ClientBody(e)) => Err(ExchangeError::ClientBody(e)),
    }
}

enum SendError {
    Io,
    TooLarge(BodyTooLarge),
    ClientBody(BoxError),
}

fn body_error(e: BoxError) -> SendError {
    match e.downcast::<BodyTooLarge>() {
        Ok(too_large) => SendError::TooLarge(*too_large),
        Err(e) => SendError::ClientBody(e),
    }
}

async fn send_request(
    wire: &mut Wire,
    head: &[u8],
    chunked: bool,
    mut body: UpstreamBody,
) -> Result<(), SendError> {
    match &mut body {
        UpstreamBody::Empty => wire.io.write_all(head).await.map_err(|_| SendError::Io),
        UpstreamBody::Full(data) => {
            let data = data.take().unwrap_or_default();
            if data.len() <= COALESCE_BODY_BYTES {
                let whole = [head, &data[..]].concat();
                wire.io.write_all(&whole).await.map_err(|_| SendError::Io)
            } else {
                wire.io.write_all(head).await.map_err(|_| SendError::Io)?;
                wire.io.write_all(&data).await.map_err(|_| SendError::Io)
            }
        }
        UpstreamBody::Stream { .. } => {
            wire.io.write_all(head).await.map_err(|_| SendError::Io)?;
            // Boxed: streamed bodies are the rare case, and inline its
            // future would enlarge every request's.
            Box::pin(send_streamed(wire, &mut body, chunked)).await
        }
    }
}

async fn send_streamed(
    wire: &mut Wire,
    body: &mut UpstreamBody,
    chunked: bool,
) -> Result<(), SendError> {
    // Chunk-size lines and the trailer section are built here.
    let mut scratch = Vec::new();
    loop {
        let frame = std::future::poll_fn(|cx| Pin::new(&mut *body).poll_frame(cx)).await;
        match frame {
            None => break,
            Some(Err(e)) => return Err(body_error(e)),
            Some(Ok(frame)) => match frame.into_data() {
                Ok(data) => {
                    if data.is_empty() {
                        continue;
                    }
                    if chunked {
                        scratch.clear();
                        let _ = write!(scratch, "{:x}\r\n", data.len());
                        wire.io
                            .write_all(&scratch)
                            .await
                            .map_err(|_| SendError::Io)?;
                        wire.io.write_all(&data).await.map_err(|_| SendError::Io)?;
                        wire.io
                            .write_all(b"\r\n")
                            .await
                            .map_err(|_| SendError::Io)?;
                    } else {
                        wire.io.write_all(&data).await.map_err(|_| SendError::Io)?;
                    }
                }
                Err(frame) => {
                    if let (true, Ok(trailers)) = (chunked, frame.into_trailers()) {
                        scratch.clear();
                        scratch.extend_from_slice(b"0\r\n");
                        for (name, value) in &trailers {
                            push_field(&mut scratch, name, value);
                        }
                        scratch.extend_from_slice(b"\r\n");
                        return wire.io.write_all(&scratch).await.map_err(|_| SendError::Io);
                    }
                }
            },
        }
    }
    if chunked {
        wire.io
            .write_all(b"0\r\n\r\n")
            .await
            .map_err(|_| SendError::Io)?;
    }
    Ok(())
}

fn push_field(out: &mut Vec<u8>, name: &HeaderName, value: &HeaderValue) {
    out.extend_from_slice(name.as_str().as_bytes());
    out.extend_from_slice(b": ");
    out.extend_from_slice(value.as_bytes());
    out.extend_from_slice(b"\r\n");
}

/// The request line and header section. Framing headers are never copied
/// from the client: the framing written here is the gateway's own.
pub(crate) fn encode_head(
    out: &mut Vec<u8>,
    method: &Method,
    path_and_query: &str,
    headers: &HeaderMap,
    forwarding: &Forwarding,
    framing: &RequestFraming,
) {
    out.clear();
    out.extend_from_slice(method.as_str().as_bytes());
    out.push(b' ');
    out.extend_from_slice(path_and_query.as_bytes());
    out.extend_from_slice(b" HTTP/1.1\r\n");
    for (name, value) in headers {
        if *name == header::CONTENT_LENGTH
            || *name == header::TRANSFER_ENCODING
            || forwarding.skips(name)
        {
            continue;
        }
        push_field(out, name, value);
    }
    for (name, value) in forwarding.fields() {
        out.extend_from_slice(name.as_bytes());
        out.extend_from_slice(b": ");
        out.extend_from_slice(value.as_bytes());
        out.extend_from_slice(b"\r\n");
    }
    match framing {
        RequestFraming::None => {}
        RequestFraming::Length(n) => {
            let _ = write!(out, "content-length: {n}\r\n");
        }
        RequestFraming::Chunked => out.extend_from_slice(b"transfer-encoding: chunked\r\n"),
    }
    out.extend_from_slice(b"\r\n");
}

async fn read_head(wire: &mut Wire, head_request: bool) -> Result<ResponseHead, ExchangeError> {
    let mut got_bytes = !wire.rbuf.is_empty();
    loop {
        if !wire.rbuf.is_empty() {
            if let Some(head) = parse_head(&mut wire.rbuf, head_request)? {
                return Ok(head);
            }
            if wire.rbuf.len() >= MAX_RESPONSE_HEAD_BYTES {
                return Err(ExchangeError::Invalid("response head too large"));
            }
        }
        match wire.fill().await {
            Ok(0) | Err(_) if !got_bytes => return Err(ExchangeError::Broken),
            Ok(0) | Err(_) => return Err(ExchangeError::Reset),
            Ok(_) => got_bytes = true,
        }
    }
}

/// Parses a complete response head off the front of `buf`, skipping
/// interim (1xx other than 101) responses. `None`: more bytes are needed.
fn parse_head(
    buf: &mut BytesMut,
    head_request: bool,
) -> Result<Option<ResponseHead>, ExchangeError> {
    loop {
        // Offsets of each field's name and value within the head (which is
        // at most MAX_RESPONSE_HEAD_BYTES, so they fit in u16).
        let mut ranges = [(0u16, 0u16, 0u16, 0u16); MAX_RESPONSE_HEADERS];
        let (len, code, minor, count) = {
            // Uninitialised: httparse writes only the fields it found, and
            // initialising 128 of them would cost more than parsing.
            let mut fields = [const { std::mem::MaybeUninit::<httparse::Header<'_>>::uninit() };
                MAX_RESPONSE_HEADERS];
            let mut resp = httparse::Response::new(&mut []);
            let parsed = httparse::ParserConfig::default().parse_response_with_uninit_headers(
                &mut resp,
                buf,
                &mut fields,
            );
            let len = match parsed {
                Ok(httparse::Status::Complete(n)) => n,
                Ok(httparse::Status::Partial) => return Ok(None),
                Err(httparse::Error::TooManyHeaders) => {
                    return Err(ExchangeError::Invalid("too many response header fields"))
                }
                Err(_) => return Err(ExchangeError::Invalid("malformed response head")),
            };
            if len > MAX_RESPONSE_HEAD_BYTES {
                return Err(ExchangeError::Invalid("response head too large"));
            }
            let base = buf.as_ptr() as usize;
            let count = resp.headers.len();
            for (slot, h) in ranges.iter_mut().zip(resp.headers.iter()) {
                let name = h.name.as_ptr() as usize - base;
                let value = h.value.as_ptr() as usize - base;
                *slot = (
                    name as u16,
                    (name + h.name.len()) as u16,
                    value as u16,
                    (value + h.value.len()) as u16,
                );
            }
            (
                len,
                resp.code.unwrap_or(0),
                resp.version.unwrap_or(0),
                count,
            )
        };
        let status = StatusCode::from_u16(code)
            .map_err(|_| ExchangeError::Invalid("invalid response status code"))?;
        if status.is_informational() && status != StatusCode::SWITCHING_PROTOCOLS {
            // 100 Continue, 103 Early Hints: not forwarded.
            buf.advance(len);
            if buf.is_empty() {
                return Ok(None);
            }
            continue;
        }
        let head = buf.split_to(len).freeze();
        return build_head(&head, &ranges[..count], status, minor, head_request).map(Some);
    }
}

fn build_head(
    head: &Bytes,
    ranges: &[(u16, u16, u16, u16)],
    status: StatusCode,
    minor: u8,
    head_request: bool,
) -> Result<ResponseHead, ExchangeError> {
    // One more for the `X-Request-Id` the proxy adds, so that insert never
    // grows the map.
    let mut headers = HeaderMap::with_capacity(ranges.len() + 1);
    let mut content_length: Option<u64> = None;
    let mut transfer_encoding = false;
    let mut chunked_last = false;
    let mut close = minor == 0;
    for &(ns, ne, vs, ve) in ranges {
        let name = HeaderName::from_bytes(&head[ns as usize..ne as usize])
            .map_err(|_| ExchangeError::Invalid("invalid response header name"))?;
        let value = HeaderValue::from_maybe_shared(head.slice(vs as usize..ve as usize))
            .map_err(|_| ExchangeError::Invalid("invalid response header value"))?;
        if name == header::CONTENT_LENGTH {
            let n = parse_content_length(value.as_bytes())
                .ok_or(ExchangeError::Invalid("invalid response Content-Length"))?;
            if content_length.is_some_and(|m| m != n) {
                return Err(ExchangeError::Invalid(
                    "conflicting response Content-Length",
                ));
            }
            content_length = Some(n);
        } else if name == header::TRANSFER_ENCODING {
            transfer_encoding = true;
            chunked_last = value
                .as_bytes()
                .rsplit(|&b| b == b',')
                .next()
                .is_some_and(|t| t.trim_ascii().eq_ignore_ascii_case(b"chunked"));
        } else if name == header::CONNECTION {
            for token in value.as_bytes().split(|&b| b == b',') {
                let token = token.trim_ascii();
                if token.eq_ignore_ascii_case(b"close") {
                    close = true;
                } else if minor == 0 && token.eq_ignore_ascii_case(b"keep-alive") {
                    close = false;
                }
            }
        }
        headers.append(name, value);
    }
    let framing = if status == StatusCode::SWITCHING_PROTOCOLS {
        Framing::Upgrade
    } else if head_request || status == StatusCode::NO_CONTENT || status == StatusCode::NOT_MODIFIED
    {
        Framing::Empty
    } else if transfer_encoding {
        if content_length.is_some() {
            return Err(ExchangeError::Invalid(
                "response has both Transfer-Encoding and Content-Length",
            ));
        }
        if chunked_last {
            Framing::Chunked
        } else {
            Framing::Close
        }
    } else {
        match content_length {
            Some(n) => Framing::Length(n),
            None => Framing::Close,
        }
    };
    let keep_alive = !close && framing != Framing::Close && framing != Framing::Upgrade;
    let mut parts = http::Response::new(()).into_parts().0;
    parts.status = status;
    parts.version = if minor == 0 {
        Version::HTTP_10
    } else {
        Version::HTTP_11
    };
    parts.headers = headers;
    Ok(ResponseHead {
        parts,
        framing,
        keep_alive,
    })
}

/// `1*DIGIT`, or a list of identical such values (RFC 9110 §8.6).
fn parse_content_length(v: &[u8]) -> Option<u64> {
    let mut out: Option<u64> = None;
    for part in v.split(|&b| b == b',') {
        let part = part.trim_ascii();
        if part.is_empty() || part.len() > 19 || !part.iter().all(u8::is_ascii_digit) {
            return None;
        }
        let n = part
            .iter()
            .fold(0u64, |acc, d| acc * 10 + u64::from(d - b'0'));
        if out.is_some_and(|m| m != n) {
            return None;
        }
        out = Some(n);
    }
    out
}

/// Where the reader is in a body.
#[derive(Clone, Copy, Debug)]
enum BodyState {
    Length(u64),
    ChunkSize,
    ChunkData(u64),
    ChunkEnd,
    Trailers,
    UntilClose,
    Done,
}

/// A backend's response body, read straight off its connection. When it
/// ends cleanly, [`ResponseBody::take_reusable`] hands the connection back
/// for the pool.
pub(crate) struct ResponseBody {
    conn: Option<Conn>,
    state: BodyState,
    keep_alive: bool,
}

#[derive(Debug, thiserror::Error)]
#[error("backend response body: {0}")]
pub(crate) struct UpstreamBodyError(&'static str);

impl ResponseBody {
    pub(crate) fn new(conn: Conn, framing: Framing, keep_alive: bool) -> Self {
        let state = match framing {
            Framing::Empty | Framing::Upgrade | Framing::Length(0) => BodyState::Done,
            Framing::Length(n) => BodyState::Length(n),
            Framing::Chunked => BodyState::ChunkSize,
            Framing::Close => BodyState::UntilClose,
        };
        ResponseBody {
            conn: Some(conn),
            state,
            keep_alive,
        }
    }

    /// The connection, when the body was read to its end and nothing about
    /// it forbids another request.
    pub(crate) fn take_reusable(&mut self) -> Option<Conn> {
        if !self.keep_alive || !matches!(self.state, BodyState::Done) {
            return None;
        }
        self.conn.take().filter(|c| c.wire.rbuf.is_empty())
    }

    pub(crate) fn ended(&self) -> bool {
        matches!(self.state, BodyState::Done)
    }

    fn fail(&mut self, why: &'static str) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        self.state = BodyState::Done;
        self.keep_alive = false;
        self.conn = None;
        Poll::Ready(Some(Err(Box::new(UpstreamBodyError(why)))))
    }
}

impl Body for ResponseBody {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        let this = self.get_mut();
        loop {
            let state = this.state;
            if let BodyState::Done = state {
                return Poll::Ready(None);
            }
            let Some(wire) = this.conn.as_mut().map(|c| &mut c.wire) else {
                return Poll::Ready(None);
            };
            let buf = &mut wire.rbuf;
            match state {
                BodyState::Done => return Poll::Ready(None),
                BodyState::Length(rem) | BodyState::ChunkData(rem) if !buf.is_empty() => {
                    let take = (buf.len() as u64).min(rem) as usize;
                    let data = buf.split_to(take).freeze();
                    let left = rem - take as u64;
                    this.state = match (state, left) {
                        (BodyState::Length(_), 0) => BodyState::Done,
                        (BodyState::Length(_), n) => BodyState::Length(n),
                        (_, 0) => BodyState::ChunkEnd,
                        (_, n) => BodyState::ChunkData(n),
                    };
                    return Poll::Ready(Some(Ok(Frame::data(data))));
                }
                BodyState::UntilClose if !buf.is_empty() => {
                    let data = buf.split().freeze();
                    return Poll::Ready(Some(Ok(Frame::data(data))));
                }
                BodyState::ChunkSize => {
                    if let Some(pos) = find_crlf(buf) {
                        let size = match parse_chunk_size(&buf[..pos]) {
                            Some(n) => n,
                            None => return this.fail("invalid chunk size line"),
                        };
                        buf.advance(pos + 2);
                        this.state = if size == 0 {
                            BodyState::Trailers
                        } else {
                            BodyState::ChunkData(size)
                        };
                        continue;
                    }
                    if buf.len() > MAX_CHUNK_LINE_BYTES {
                        return this.fail("chunk size line too long");
                    }
                }
                BodyState::ChunkEnd if buf.len() >= 2 => {
                    if &buf[..2] != b"\r\n" {
                        return this.fail("chunk not followed by CRLF");
                    }
                    buf.advance(2);
                    this.state = BodyState::ChunkSize;
                    continue;
                }
                BodyState::Trailers => {
                    if buf.starts_with(b"\r\n") {
                        buf.advance(2);
                        this.state = BodyState::Done;
                        return Poll::Ready(None);
                    }
                    if let Some(end) = find_subslice(buf, b"\r\n\r\n") {
                        let block = buf.split_to(end + 4).freeze();
                        this.state = BodyState::Done;
                        return match parse_trailers(&block) {
                            Some(t) if t.is_empty() => Poll::Ready(None),
                            Some(t) => Poll::Ready(Some(Ok(Frame::trailers(t)))),
                            None => this.fail("malformed trailer section"),
                        };
                    }
                    if buf.len() > MAX_TRAILER_BYTES {
                        return this.fail("trailer section too large");
                    }
                }
                _ => {}
            }
            // Nothing decodable is buffered: read more.
            let want = match this.state {
                BodyState::Length(n) | BodyState::ChunkData(n) => {
                    usize::try_from(n).unwrap_or(usize::MAX)
                }
                BodyState::UntilClose => BODY_READ_MAX_BYTES,
                _ => READ_RESERVE_BYTES,
            };
            match ready!(wire.poll_fill(cx, want)) {
                Ok(0) => {
                    if let BodyState::UntilClose = this.state {
                        this.state = BodyState::Done;
                        this.conn = None;
                        return Poll::Ready(None);
                    }
                    return this.fail("backend closed the connection before the body ended");
                }
                Ok(_) => {}
                Err(_) => return this.fail("reading from the backend failed"),
            }
        }
    }

    fn is_end_stream(&self) -> bool {
        matches!(self.state, BodyState::Done)
    }

    fn size_hint(&self) -> SizeHint {
        match self.state {
            BodyState::Done => SizeHint::with_exact(0),
            BodyState::Length(n) => SizeHint::with_exact(n),
            _ => SizeHint::default(),
        }
    }
}

fn find_crlf(buf: &[u8]) -> Option<usize> {
    buf.windows(2).position(|w| w == b"\r\n")
}

fn find_subslice(buf: &[u8], needle: &[u8]) -> Option<usize> {
    buf.windows(needle.len()).position(|w| w == needle)
}

/// `chunk-size [ chunk-ext ]`: hex digits, then anything after `;` ignored.
fn parse_chunk_size(line: &[u8]) -> Option<u64> {
    let digits = line
        .split(|&b| b == b';')
        .next()
        .unwrap_or_default()
        .trim_ascii();
    if digits.is_empty() || digits.len() > 15 {
        return None;
    }
    digits.iter().try_fold(0u64, |acc, &d| {
        let v = (d as char).to_digit(16)?;
        Some(acc * 16 + u64::from(v))
    })
}

fn parse_trailers(block: &[u8]) -> Option<HeaderMap> {
    let mut fields = [httparse::EMPTY_HEADER; 32];
    match httparse::parse_headers(block, &mut fields) {
        Ok(httparse::Status::Complete((_, parsed))) => {
            let mut map = HeaderMap::with_capacity(parsed.len());
            for f in parsed {
                let name = HeaderName::from_bytes(f.name.as_bytes()).ok()?;
                let value = HeaderValue::from_bytes(f.value).ok()?;
                // Framing and routing fields have no meaning as trailers.
                if name == header::CONTENT_LENGTH
                    || name == header::TRANSFER_ENCODING
                    || name == header::HOST
                {
                    continue;
                }
                map.append(name, value);
            }
            Some(map)
        }
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn head(raw: &str, head_request: bool) -> Result<Option<ResponseHead>, ExchangeError> {
        let mut buf = BytesMut::from(raw.as_bytes());
        parse_head(&mut buf, head_request)
    }

    #[test]
    fn framing_follows_rfc_9112() {
        let h = head("HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\n", false)
            .unwrap()
            .unwrap();
        assert_eq!(h.framing, Framing::Length(5));
        assert!(h.keep_alive);
        let h = head("HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\n", true)
            .unwrap()
            .unwrap();
        assert_eq!(h.framing, Framing::Empty);
        let h = head(
            "HTTP/1.1 200 OK\r\nTransfer-Encoding: gzip, chunked\r\n\r\n",
            false,
        )
        .unwrap()
        .unwrap();
        assert_eq!(h.framing, Framing::Chunked);
        let h = head("HTTP/1.1 200 OK\r\n\r\n", false).unwrap().unwrap();
        assert_eq!(h.framing, Framing::Close);
        assert!(!h.keep_alive);
        let h = head("HTTP/1.0 200 OK\r\nContent-Length: 1\r\n\r\n", false)
            .unwrap()
            .unwrap();
        assert!(!h.keep_alive);
        let h = head(
            "HTTP/1.1 204 No Content\r\nConnection: close\r\n\r\n",
            false,
        )
        .unwrap()
        .unwrap();
        assert_eq!(h.framing, Framing::Empty);
        assert!(!h.keep_alive);
        assert!(head("HTTP/1.1 200 OK\r\nContent-Length: 5\r\n", false)
            .unwrap()
            .is_none());
    }

    #[test]
    fn ambiguous_or_malformed_responses_are_refused() {
        for raw in [
            "HTTP/1.1 200 OK\r\nContent-Length: 5\r\nTransfer-Encoding: chunked\r\n\r\n",
            "HTTP/1.1 200 OK\r\nContent-Length: 5\r\nContent-Length: 6\r\n\r\n",
            "HTTP/1.1 200 OK\r\nContent-Length: -1\r\n\r\n",
            "HTTP/1.1 200 OK\r\nContent-Length: 5, 6\r\n\r\n",
            "HTTP/1.1 99 Odd\r\n\r\n",
            "SMTP ready\r\n\r\n",
        ] {
            assert!(
                matches!(head(raw, false), Err(ExchangeError::Invalid(_))),
                "{raw:?} was accepted"
            );
        }
        let h = head("HTTP/1.1 200 OK\r\nContent-Length: 7, 7\r\n\r\n", false)
            .unwrap()
            .unwrap();
        assert_eq!(h.framing, Framing::Length(7));
    }

    #[test]
    fn interim_responses_are_skipped() {
        let mut buf = BytesMut::from(
            &b"HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 103 Early Hints\r\nLink: </a>\r\n\r\nHTTP/1.1 201 Created\r\nContent-Length: 0\r\n\r\n"[..],
        );
        let h = parse_head(&mut buf, false).unwrap().unwrap();
        assert_eq!(h.parts.status, StatusCode::CREATED);
        assert!(buf.is_empty());
    }

    #[test]
    fn request_head_has_the_gateways_own_framing() {
        let mut headers = HeaderMap::new();
        headers.insert(header::HOST, HeaderValue::from_static("web.localhost"));
        headers.insert(header::CONTENT_LENGTH, HeaderValue::from_static("999"));
        headers.append("x-a", HeaderValue::from_static("1"));
        headers.append("x-a", HeaderValue::from_static("2"));
        let mut out = Vec::new();
        let scan = crate::headers::RequestScan::of(&headers);
        let ip = HeaderValue::from_static("10.0.0.9");
        let id = HeaderValue::from_static("r1");
        let host = HeaderValue::from_static("web.localhost");
        let fwd = Forwarding::new(&headers, &scan, &ip, &host, false, &id, false);
        encode_head(
            &mut out,
            &Method::POST,
            "/p?q=1",
            &headers,
            &fwd,
            &RequestFraming::Chunked,
        );
        assert_eq!(
            String::from_utf8(out).unwrap(),
            "POST /p?q=1 HTTP/1.1\r\nhost: web.localhost\r\nx-a: 1\r\nx-a: 2\r\n\
             x-forwarded-for: 10.0.0.9\r\nx-forwarded-proto: http\r\nx-forwarded-host: web.localhost\r\n\
             x-request-id: r1\r\ntransfer-encoding: chunked\r\n\r\n"
        );
    }

    #[test]
    fn chunk_sizes() {
        assert_eq!(parse_chunk_size(b"1a"), Some(26));
        assert_eq!(parse_chunk_size(b"1A;ext=1"), Some(26));
        assert_eq!(parse_chunk_size(b""), None);
        assert_eq!(parse_chunk_size(b"xyz"), None);
        assert_eq!(parse_chunk_size(b"ffffffffffffffff"), None);
    }
}
