//! The upload file writer: double-buffered, one blocking write in flight
//! while the next buffer fills, and early writeback.
//!
//! Why not `BufWriter<tokio::fs::File>`: that copies every byte twice in user
//! space (into the BufWriter, then into tokio's own buffer) and leaves all
//! dirty pages for the final fsync, which then stalls the closing PUT for
//! tens of milliseconds per 64 MiB. Here each full buffer is handed to the
//! blocking pool as is, and every `WRITEBACK_BYTES` the kernel is asked
//! (`sync_file_range(SYNC_FILE_RANGE_WRITE)`, which does not wait) to start
//! writing the range out, so the fsync at commit finds little left to do.
//! Durability is unchanged: only the commit's fsync promises anything.

use std::fs::File;
use std::future::Future;
use std::io::{self, Write};
use std::os::fd::AsRawFd;
use std::pin::Pin;
use std::task::{ready, Context, Poll};

use tokio::io::AsyncWrite;
use tokio::task::JoinHandle;

/// Start writeback every this many bytes.
const WRITEBACK_BYTES: u64 = 8 * 1024 * 1024;

struct Done {
    file: File,
    buf: Vec<u8>,
    pos: u64,
    started_writeback_to: u64,
    result: io::Result<()>,
}

enum State {
    Idle { file: File, spare: Vec<u8> },
    Busy(JoinHandle<Done>),
    Failed,
}

pub(super) struct UploadFileSink {
    state: State,
    buf: Vec<u8>,
    capacity: usize,
    /// File offset after the last completed write.
    pos: u64,
    started_writeback_to: u64,
    error: Option<io::Error>,
}

impl UploadFileSink {
    /// `file` must be positioned at `offset`.
    pub(super) fn new(file: File, offset: u64, capacity: usize) -> UploadFileSink {
        UploadFileSink {
            state: State::Idle {
                file,
                spare: Vec::with_capacity(capacity),
            },
            buf: Vec::with_capacity(capacity),
            capacity,
            pos: offset,
            started_writeback_to: offset,
            error: None,
        }
    }

    /// Waits for the write in flight, if any; leaves the state Idle.
    fn poll_idle(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        if let Some(e) = self.error.take() {
            self.state = State::Failed;
            return Poll::Ready(Err(e));
        }
        match &mut self.state {
            State::Idle { .. } => Poll::Ready(Ok(())),
            State::Failed => {
                Poll::Ready(Err(io::Error::other("upload file writer failed earlier")))
            }
            State::Busy(handle) => {
                let done = match ready!(Pin::new(handle).poll(cx)) {
                    Ok(done) => done,
                    Err(join) => {
                        self.state = State::Failed;
                        return Poll::Ready(Err(io::Error::other(format!(
                            "upload write task: {join}"
                        ))));
                    }
                };
                self.pos = done.pos;
                self.started_writeback_to = done.started_writeback_to;
                let mut spare = done.buf;
                spare.clear();
                match done.result {
                    Ok(()) => {
                        self.state = State::Idle {
                            file: done.file,
                            spare,
                        };
                        Poll::Ready(Ok(()))
                    }
                    Err(e) => {
                        self.state = State::Failed;
                        Poll::Ready(Err(e))
                    }
                }
            }
        }
    }

    /// Hands the filled buffer to the blocking pool. The state must be Idle.
    fn start_write(&mut self) {
        let State::Idle { file, spare } = std::mem::replace(&mut self.state, State::Failed) else {
            return;
        };
        let buf = std::mem::replace(&mut self.buf, spare);
        let (pos, started) = (self.pos, self.started_writeback_to);
        self.state = State::Busy(tokio::task::spawn_blocking(move || {
            write_block(file, buf, pos, started)
        }));
    }
}

fn write_block(mut file: File, buf: Vec<u8>, pos: u64, mut started_writeback_to: u64) -> Done {
    let result = file.write_all(&buf);
    let pos = if result.is_ok() {
        pos + buf.len() as u64
    } else {
        pos
    };
    if result.is_ok() && pos - started_writeback_to >= WRITEBACK_BYTES {
        start_writeback(&file, started_writeback_to, pos - started_writeback_to);
        started_writeback_to = pos;
    }
    Done {
        file,
        buf,
        pos,
        started_writeback_to,
        result,
    }
}

/// A hint to the kernel; failure (e.g. a filesystem without support) only
/// means the final fsync does all the work.
fn start_writeback(file: &File, offset: u64, len: u64) {
    let (Ok(offset), Ok(len)) = (i64::try_from(offset), i64::try_from(len)) else {
        return;
    };
    // SAFETY: plain syscall on a file descriptor we own for the duration of the call.
    let rc = unsafe {
        libc::sync_file_range(file.as_raw_fd(), offset, len, libc::SYNC_FILE_RANGE_WRITE)
    };
    if rc != 0 {
        tracing::debug!(error = %io::Error::last_os_error(), "sync_file_range failed; the commit fsync will do it all");
    }
}

impl AsyncWrite for UploadFileSink {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        data: &[u8],
    ) -> Poll<io::Result<usize>> {
        let this = &mut *self;
        if matches!(this.state, State::Failed) {
            return Poll::Ready(Err(io::Error::other("upload file writer failed earlier")));
        }
        loop {
            let room = this.capacity - this.buf.len();
            if room > 0 {
                let n = room.min(data.len());
                this.buf.extend_from_slice(&data[..n]);
                return Poll::Ready(Ok(n));
            }
            // Full: wait for the previous write, then hand this buffer over.
            ready!(this.poll_idle(cx))?;
            this.start_write();
        }
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let this = &mut *self;
        ready!(this.poll_idle(cx))?;
        if !this.buf.is_empty() {
            this.start_write();
            ready!(this.poll_idle(cx))?;
        }
        Poll::Ready(Ok(()))
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        self.poll_flush(cx)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::AsyncWriteExt;

    #[tokio::test]
    async fn writes_everything_in_order_from_an_offset() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("f");
        std::fs::write(&path, b"head").unwrap();
        let mut file = std::fs::OpenOptions::new().write(true).open(&path).unwrap();
        use std::io::Seek;
        file.seek(std::io::SeekFrom::Start(4)).unwrap();
        let mut sink = UploadFileSink::new(file, 4, 1000);
        let data: Vec<u8> = (0..20_000_000u32).map(|i| (i % 251) as u8).collect();
        for chunk in data.chunks(777) {
            sink.write_all(chunk).await.unwrap();
        }
        sink.flush().await.unwrap();
        let written = std::fs::read(&path).unwrap();
        assert_eq!(&written[..4], b"head");
        assert!(written[4..] == data[..]);
    }
}
