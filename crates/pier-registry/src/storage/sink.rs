//! The upload file writer: double-buffered, one blocking task in flight
//! (hash this buffer, then write it) while the next buffer fills, and the
//! bytes written with direct I/O.
//!
//! Why not `BufWriter<tokio::fs::File>`: that copies every byte twice in user
//! space (into the BufWriter, then into tokio's own buffer) and leaves all
//! dirty pages for the final fsync, which then stalls the closing PUT for
//! tens of milliseconds per 64 MiB. Here each full buffer is handed to the
//! blocking pool as is.
//!
//! Why hash here: the digest has to see exactly the bytes written, in order,
//! and hashing is the largest CPU cost of a push. Hashing each buffer in the
//! task that writes it costs one hand-off to the blocking pool per buffer
//! instead of two, and the request's body frames are released as soon as
//! they are copied into the buffer, so hyper reuses its read buffer instead
//! of allocating (and page-faulting in) fresh memory for every frame.
//!
//! Why direct I/O (`O_DIRECT`): a buffered write copies every byte into the
//! page cache and the kernel later writes it out; on the 2-core benchmark
//! machine that copy cost 50-160 ms of CPU per 64 MiB, while a 1 MiB direct
//! write is a DMA from our buffer (64 MiB in ~20 ms, ~10 ms CPU). Direct I/O
//! needs the buffer address, the length and the file offset aligned, so
//! buffers are 4096-aligned and end on aligned offsets, and whatever cannot
//! be aligned (the unaligned start of a resumed chunk, the last partial
//! block) goes through an ordinary file descriptor of the same file. Linux
//! keeps the two coherent (a direct write flushes and drops cached pages of
//! its range). Where direct I/O is not available (tmpfs, some FUSE or
//! network filesystems) everything is buffered and, every
//! `WRITEBACK_BYTES`, the kernel is asked
//! (`sync_file_range(SYNC_FILE_RANGE_WRITE)`, which does not wait) to start
//! writing the range out, so the fsync at commit finds little left to do.
//! Durability is unchanged either way: a direct write may still sit in the
//! device's volatile cache, and only the commit's fsync promises anything.

use std::fs::{File, OpenOptions};
use std::future::Future;
use std::io;
use std::os::fd::AsRawFd;
use std::os::unix::fs::{FileExt, OpenOptionsExt};
use std::path::Path;
use std::pin::Pin;
use std::task::{ready, Context, Poll};

use tokio::io::AsyncWrite;
use tokio::task::JoinHandle;

use super::UploadWrite;
use crate::digest::Hasher;

/// Start writeback every this many buffered bytes.
const WRITEBACK_BYTES: u64 = 8 * 1024 * 1024;
/// Alignment direct I/O needs: 4096 covers 512-byte and 4 KiB logical blocks.
const DIRECT_ALIGN: usize = 4096;

/// The file an upload is written to, opened twice.
pub(super) struct UploadFile {
    /// Ordinary descriptor: unaligned heads and tails, and everything when
    /// `direct` is None.
    pub buffered: File,
    /// The same file opened with `O_DIRECT`, if the filesystem allows it.
    pub direct: Option<File>,
}

impl UploadFile {
    /// Opens an existing upload file for writing. Two opens, not a `dup`:
    /// `O_DIRECT` is a flag of the open file, which a duplicate would share.
    pub(super) fn open(path: &Path) -> io::Result<UploadFile> {
        let buffered = OpenOptions::new().write(true).open(path)?;
        // A filesystem without direct I/O just gets buffered writes.
        let direct = match OpenOptions::new()
            .write(true)
            .custom_flags(libc::O_DIRECT)
            .open(path)
        {
            Ok(f) => Some(f),
            Err(e) => {
                tracing::debug!(error = %e, "no direct I/O for uploads here");
                None
            }
        };
        Ok(UploadFile { buffered, direct })
    }
}

/// A fixed-capacity byte buffer whose first byte is `DIRECT_ALIGN`-aligned.
struct AlignedBuf {
    storage: Vec<u8>,
    start: usize,
    len: usize,
}

impl AlignedBuf {
    fn new(capacity: usize) -> AlignedBuf {
        // Over-allocate by one alignment unit and start at the first aligned
        // byte: safe code, and the heap block does not move with the Vec.
        let storage = vec![0u8; capacity + DIRECT_ALIGN];
        let start = storage.as_ptr().align_offset(DIRECT_ALIGN);
        // align_offset may in theory refuse (usize::MAX); then the buffer is
        // simply never aligned and every write is buffered.
        let start = if start < DIRECT_ALIGN { start } else { 0 };
        AlignedBuf {
            storage,
            start,
            len: 0,
        }
    }

    fn capacity(&self) -> usize {
        self.storage.len() - DIRECT_ALIGN
    }

    fn data(&self) -> &[u8] {
        &self.storage[self.start..self.start + self.len]
    }

    /// Appends as much of `bytes` as fits below `limit`; returns how much.
    fn fill(&mut self, bytes: &[u8], limit: usize) -> usize {
        let room = limit.min(self.capacity()).saturating_sub(self.len);
        let n = room.min(bytes.len());
        let at = self.start + self.len;
        self.storage[at..at + n].copy_from_slice(&bytes[..n]);
        self.len += n;
        n
    }

    fn is_aligned(&self) -> bool {
        (self.storage.as_ptr() as usize + self.start).is_multiple_of(DIRECT_ALIGN)
    }
}

struct Done {
    file: UploadFile,
    hasher: Option<Hasher>,
    buf: AlignedBuf,
    started_writeback_to: u64,
    direct_bytes: u64,
    result: io::Result<()>,
}

enum State {
    Idle {
        file: UploadFile,
        hasher: Option<Hasher>,
        spare: AlignedBuf,
    },
    Busy(JoinHandle<Done>),
    Failed,
}

pub(super) struct UploadFileSink {
    state: State,
    buf: AlignedBuf,
    /// File offset of `buf`'s first byte (every write before it is in flight
    /// or done: writes are positional and strictly in order).
    buf_pos: u64,
    started_writeback_to: u64,
    /// Bytes that went out with direct I/O so far (for the tests).
    direct_bytes: u64,
}

impl UploadFileSink {
    /// Writes start at `offset`; the descriptors' own positions do not
    /// matter. `hasher` sees every byte before it is written.
    pub(super) fn new(
        file: UploadFile,
        offset: u64,
        capacity: usize,
        hasher: Option<Hasher>,
    ) -> UploadFileSink {
        // Keep buffers a whole number of alignment units so full buffers stay aligned.
        let capacity = capacity.div_ceil(DIRECT_ALIGN).max(1) * DIRECT_ALIGN;
        UploadFileSink {
            state: State::Idle {
                file,
                hasher,
                spare: AlignedBuf::new(capacity),
            },
            buf: AlignedBuf::new(capacity),
            buf_pos: offset,
            started_writeback_to: offset,
            direct_bytes: 0,
        }
    }

    #[cfg(test)]
    fn direct_bytes(&self) -> u64 {
        self.direct_bytes
    }

    /// How far `buf` may fill: up to the capacity, except that a buffer that
    /// starts at an unaligned offset stops at the next aligned one, so the
    /// buffers after it can go out with direct I/O.
    fn fill_limit(&self) -> usize {
        let misalignment = (self.buf_pos % DIRECT_ALIGN as u64) as usize;
        self.buf.capacity() - misalignment
    }

    /// Waits for the write in flight, if any; leaves the state Idle.
    fn poll_idle(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
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
                self.started_writeback_to = done.started_writeback_to;
                self.direct_bytes += done.direct_bytes;
                let mut spare = done.buf;
                spare.len = 0;
                match done.result {
                    Ok(()) => {
                        self.state = State::Idle {
                            file: done.file,
                            hasher: done.hasher,
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
        let State::Idle {
            file,
            hasher,
            spare,
        } = std::mem::replace(&mut self.state, State::Failed)
        else {
            return;
        };
        let buf = std::mem::replace(&mut self.buf, spare);
        let at = self.buf_pos;
        self.buf_pos += buf.len as u64;
        let started = self.started_writeback_to;
        self.state = State::Busy(tokio::task::spawn_blocking(move || {
            write_block(file, hasher, buf, at, started)
        }));
    }
}

fn write_block(
    mut file: UploadFile,
    mut hasher: Option<Hasher>,
    buf: AlignedBuf,
    at: u64,
    mut started_writeback_to: u64,
) -> Done {
    let data = buf.data();
    if let Some(h) = &mut hasher {
        h.update(data);
    }
    let mut direct_bytes = 0;
    let mut result = Ok(());
    if let Some(direct) = &file.direct {
        let n = data.len() / DIRECT_ALIGN * DIRECT_ALIGN;
        if n > 0 && at.is_multiple_of(DIRECT_ALIGN as u64) && buf.is_aligned() {
            match direct.write_all_at(&data[..n], at) {
                Ok(()) => direct_bytes = n,
                // The filesystem wants another alignment or no direct I/O at
                // all: (re)write these bytes buffered, and all later ones.
                Err(e)
                    if matches!(
                        e.raw_os_error(),
                        Some(libc::EINVAL) | Some(libc::EOPNOTSUPP)
                    ) =>
                {
                    tracing::debug!(error = %e, "direct write refused; writing this upload buffered");
                    file.direct = None;
                }
                Err(e) => result = Err(e),
            }
        }
    }
    if result.is_ok() && direct_bytes < data.len() {
        result = file
            .buffered
            .write_all_at(&data[direct_bytes..], at + direct_bytes as u64);
        let end = at + data.len() as u64;
        let pending = end.saturating_sub(started_writeback_to);
        if result.is_ok() && file.direct.is_none() && pending >= WRITEBACK_BYTES {
            start_writeback(&file.buffered, started_writeback_to, pending);
            started_writeback_to = end;
        }
    }
    Done {
        file,
        hasher,
        buf,
        started_writeback_to,
        direct_bytes: direct_bytes as u64,
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

impl UploadWrite for UploadFileSink {
    fn take_hasher(mut self: Pin<&mut Self>) -> Option<Hasher> {
        // Only a flushed sink (Idle, nothing buffered) has a hasher that
        // matches the file; a Failed one has lost it on purpose.
        if self.buf.len > 0 {
            return None;
        }
        match &mut self.state {
            State::Idle { hasher, .. } => hasher.take(),
            State::Busy(_) | State::Failed => None,
        }
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
        if data.is_empty() {
            return Poll::Ready(Ok(0));
        }
        loop {
            let limit = this.fill_limit();
            let n = this.buf.fill(data, limit);
            if n > 0 {
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
        if this.buf.len > 0 {
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
    use crate::digest::{Algorithm, Digest};
    use tokio::io::AsyncWriteExt;

    fn pattern(len: u32) -> Vec<u8> {
        (0..len).map(|i| (i % 251) as u8).collect()
    }

    /// Writes `data` in small pieces; checks the hasher saw exactly `data`;
    /// returns how many bytes went out with direct I/O.
    async fn write_through(file: UploadFile, offset: u64, capacity: usize, data: &[u8]) -> u64 {
        let hasher = Some(Algorithm::Sha256.hasher());
        let mut sink = UploadFileSink::new(file, offset, capacity, hasher);
        for chunk in data.chunks(777) {
            sink.write_all(chunk).await.unwrap();
        }
        assert!(
            Pin::new(&mut sink).take_hasher().is_none(),
            "no hasher before the flush"
        );
        sink.flush().await.unwrap();
        let hasher = Pin::new(&mut sink)
            .take_hasher()
            .expect("hasher after flush");
        assert_eq!(hasher.finish(), Digest::of(Algorithm::Sha256, data));
        sink.direct_bytes()
    }

    #[tokio::test]
    async fn writes_everything_in_order_from_an_offset() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("f");
        std::fs::write(&path, b"head").unwrap();
        let buffered = std::fs::OpenOptions::new().write(true).open(&path).unwrap();
        let data = pattern(20_000_000);
        let file = UploadFile {
            buffered,
            direct: None,
        };
        assert_eq!(write_through(file, 4, 1000, &data).await, 0);
        let written = std::fs::read(&path).unwrap();
        assert_eq!(&written[..4], b"head");
        assert!(written[4..] == data[..]);
    }

    /// An unaligned start (a resumed chunk), aligned middle, unaligned tail:
    /// the bytes come back exactly, and the middle went out with direct I/O
    /// where the filesystem of the temporary directory supports it.
    #[tokio::test]
    async fn direct_writes_from_an_unaligned_offset() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("f");
        let head = pattern(5000);
        std::fs::write(&path, &head).unwrap();
        let file = UploadFile::open(&path).unwrap();
        let have_direct = file.direct.is_some();
        let data: Vec<u8> = pattern(9_000_001).into_iter().rev().collect();
        let capacity = 256 * 1024;
        let direct_bytes = write_through(file, head.len() as u64, capacity, &data).await;
        let written = std::fs::read(&path).unwrap();
        assert_eq!(written.len(), head.len() + data.len());
        assert!(written[..head.len()] == head[..]);
        assert!(written[head.len()..] == data[..]);
        if have_direct {
            // All but the first buffer (it starts unaligned and ends at the
            // first aligned offset) and the partial last block.
            let unaligned = (capacity + DIRECT_ALIGN) as u64;
            assert!(
                direct_bytes >= data.len() as u64 - unaligned,
                "{direct_bytes}"
            );
            assert_eq!(direct_bytes % DIRECT_ALIGN as u64, 0);
        }
    }
}
