//! Lingering reads: a handler that answers before reading the request body (413 for an
//! oversized upload, 401 before a large PUT) would otherwise make hyper close the connection
//! with unread bytes in the socket. The kernel then resets the connection, and a client still
//! writing its body sees "broken pipe" instead of the answer. Like nginx's lingering close,
//! the rest of the body is read and thrown away before the answer goes out — bounded in
//! bytes and time, so a client cannot hold the connection open with it.

use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::Duration;

use axum::body::{Body, Bytes};
use http_body::{Body as HttpBody, Frame, SizeHint};
use http_body_util::BodyExt;

/// At most this many unread body bytes are drained after the answer.
pub const LINGER_MAX_BYTES: u64 = 16 * 1024 * 1024;
/// Draining stops after this long.
pub const LINGER_TIMEOUT: Duration = Duration::from_secs(5);

/// The request body as the handler sees it; the original stays shared with [`Linger`].
pub struct SharedBody(Arc<Mutex<Body>>);

/// What is left of a request body once its handler has answered.
pub struct Linger(Arc<Mutex<Body>>);

/// Splits `body` into the handler's view and the part kept for draining.
pub fn share(body: Body) -> (SharedBody, Linger) {
    let shared = Arc::new(Mutex::new(body));
    (SharedBody(shared.clone()), Linger(shared))
}

impl HttpBody for SharedBody {
    type Data = Bytes;
    type Error = axum::Error;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, axum::Error>>> {
        let mut body = match self.0.lock() {
            Ok(b) => b,
            Err(poisoned) => poisoned.into_inner(),
        };
        Pin::new(&mut *body).poll_frame(cx)
    }

    fn is_end_stream(&self) -> bool {
        self.0.lock().map(|b| b.is_end_stream()).unwrap_or(true)
    }

    fn size_hint(&self) -> SizeHint {
        self.0.lock().map(|b| b.size_hint()).unwrap_or_default()
    }
}

impl Linger {
    /// Reads and discards what the handler left unread, if that is small enough to be worth it.
    /// Does nothing while the handler still holds the body (a body streamed after the answer).
    pub async fn drain(self) {
        let Ok(mutex) = Arc::try_unwrap(self.0) else {
            return;
        };
        let mut body = match mutex.into_inner() {
            Ok(b) => b,
            Err(poisoned) => poisoned.into_inner(),
        };
        if body.is_end_stream() {
            return;
        }
        // A declared length beyond the bound: close at once, as without lingering.
        if body
            .size_hint()
            .upper()
            .is_some_and(|n| n > LINGER_MAX_BYTES)
        {
            return;
        }
        let drain = async {
            let mut read: u64 = 0;
            while let Some(frame) = body.frame().await {
                let Ok(frame) = frame else { return };
                if let Some(data) = frame.data_ref() {
                    read += data.len() as u64;
                    if read > LINGER_MAX_BYTES {
                        return;
                    }
                }
            }
        };
        let _ = tokio::time::timeout(LINGER_TIMEOUT, drain).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn unread_body_is_drained_after_the_handler_drops_it() {
        let (handler_view, linger) = share(Body::from(vec![7u8; 1000]));
        drop(handler_view);
        linger.drain().await;
    }

    #[tokio::test]
    async fn handler_reads_through_the_shared_body() {
        let (handler_view, _linger) = share(Body::from("hello"));
        let bytes = Body::new(handler_view).collect().await.unwrap().to_bytes();
        assert_eq!(&bytes[..], b"hello");
    }
}
