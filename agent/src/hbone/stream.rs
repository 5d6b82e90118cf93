//! One tunnelled TCP connection as bytes: an HTTP/2 CONNECT stream exposed as
//! `AsyncRead + AsyncWrite`, and the two-way copy between it and a socket.
//!
//! TCP semantics map onto the stream as RFC 9113 §8.5 describes: our write
//! shutdown sends END_STREAM, the peer's END_STREAM reads as EOF, and a reset
//! stream (RST_STREAM other than NO_ERROR) reads and writes as a reset connection.
//! Flow-control credit is returned only once the bytes have been handed to the
//! reader, so a slow consumer slows the sender down instead of growing buffers.
//!
//! A peer that answered completely may reset with NO_ERROR to say it wants no
//! more of the request (RFC 9113 §8.1): the copy treats that as the peer
//! closing its read side, a normal end, not as a failure.

use std::future::Future;
use std::io;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll, ready};

use bytes::{Buf, Bytes, BytesMut};
use futures::FutureExt;
use h2::{RecvStream, SendStream};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, ReadBuf};

/// Largest DATA payload queued per write. Each write is copied into its own
/// buffer; staying under the allocator's mmap threshold (128 KiB) keeps those
/// buffers on the heap instead of mapping and faulting in fresh pages each time.
const MAX_DATA_CHUNK: usize = 64 * 1024;

/// Something held for as long as either half of a stream lives (the client uses
/// it to count a connection's open streams).
pub(crate) type StreamGuard = Arc<dyn Send + Sync>;

/// A CONNECT stream carrying one tunnelled connection.
pub struct H2Stream {
    reader: H2Reader,
    writer: H2Writer,
}

/// The receiving half: DATA frames from the peer, EOF at END_STREAM.
pub struct H2Reader {
    recv: RecvStream,
    pending: Bytes,
    _guard: Option<StreamGuard>,
}

/// The sending half: DATA frames to the peer, END_STREAM on shutdown.
pub struct H2Writer {
    send: SendStream<Bytes>,
    ended: bool,
    _guard: Option<StreamGuard>,
}

impl std::fmt::Debug for H2Stream {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("H2Stream")
            .field("stream_id", &self.writer.send.stream_id().as_u32())
            .finish_non_exhaustive()
    }
}

impl H2Stream {
    pub(crate) fn new(
        send: SendStream<Bytes>,
        recv: RecvStream,
        guard: Option<StreamGuard>,
    ) -> Self {
        Self {
            reader: H2Reader {
                recv,
                pending: Bytes::new(),
                _guard: guard.clone(),
            },
            writer: H2Writer {
                send,
                ended: false,
                _guard: guard,
            },
        }
    }

    /// A stream from its h2 halves, for callers driving h2 themselves.
    pub fn from_parts(send: SendStream<Bytes>, recv: RecvStream) -> Self {
        Self::new(send, recv, None)
    }

    /// Splits into halves that can be driven from different tasks, without locking.
    pub fn into_split(self) -> (H2Reader, H2Writer) {
        (self.reader, self.writer)
    }
}

impl AsyncRead for H2Stream {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        Pin::new(&mut self.reader).poll_read(cx, buf)
    }
}

impl AsyncWrite for H2Stream {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.writer).poll_write(cx, buf)
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.writer).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.writer).poll_shutdown(cx)
    }
}

impl H2Reader {
    /// The next bytes from the peer as h2 received them (no copy); `None` at
    /// END_STREAM. Credit for them goes back only through [`Self::release`].
    async fn next_data(&mut self) -> io::Result<Option<Bytes>> {
        if !self.pending.is_empty() {
            return Ok(Some(std::mem::take(&mut self.pending)));
        }
        match std::future::poll_fn(|cx| self.recv.poll_data(cx)).await {
            Some(Ok(data)) => Ok(Some(data)),
            Some(Err(e)) => read_error(e).map(|()| None),
            None => Ok(None),
        }
    }

    /// Gives the peer credit for `n` bytes handed on.
    fn release(&mut self, n: usize) {
        let _ = self.recv.flow_control().release_capacity(n);
    }
}

impl AsyncRead for H2Reader {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        while self.pending.is_empty() {
            match ready!(self.recv.poll_data(cx)) {
                Some(Ok(data)) => self.pending = data,
                Some(Err(e)) => return Poll::Ready(read_error(e)),
                None => return Poll::Ready(Ok(())),
            }
        }
        let n = self.pending.len().min(buf.remaining());
        buf.put_slice(&self.pending[..n]);
        self.pending.advance(n);
        // Credit goes back only for bytes the reader took.
        let _ = self.recv.flow_control().release_capacity(n);
        Poll::Ready(Ok(()))
    }
}

impl AsyncWrite for H2Writer {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        if buf.is_empty() {
            return Poll::Ready(Ok(0));
        }
        let n = ready!(self.poll_granted(cx, buf.len().min(MAX_DATA_CHUNK)))?;
        match self
            .send
            .send_data(Bytes::copy_from_slice(&buf[..n]), false)
        {
            Ok(()) => Poll::Ready(Ok(n)),
            Err(_) => self.poll_reset_error(cx),
        }
    }

    fn poll_flush(self: Pin<&mut Self>, _cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        // The connection task writes frames out as soon as they are queued.
        Poll::Ready(Ok(()))
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        if self.ended {
            return Poll::Ready(Ok(()));
        }
        self.ended = true;
        match self.send.send_data(Bytes::new(), true) {
            Ok(()) => Poll::Ready(Ok(())),
            Err(_) => self.poll_reset_error(cx),
        }
    }
}

impl H2Writer {
    /// Waits for flow-control credit and returns how much of `wanted` may be sent now.
    fn poll_granted(&mut self, cx: &mut Context<'_>, wanted: usize) -> Poll<io::Result<usize>> {
        if self.ended {
            return Poll::Ready(Err(io::ErrorKind::BrokenPipe.into()));
        }
        self.send.reserve_capacity(wanted);
        // `poll_capacity` only wakes on an increase, so capacity already granted
        // (left over from a previous write) must be taken without polling.
        let mut granted = self.send.capacity();
        if granted == 0 {
            granted = match ready!(self.send.poll_capacity(cx)) {
                Some(Ok(n)) => n,
                // The stream closed or was reset; the reset reason says which.
                Some(Err(_)) | None => return self.poll_reset_error(cx),
            };
        }
        Poll::Ready(Ok(granted.min(wanted)))
    }

    /// Queues as much of `data` as the peer's credit allows, without copying
    /// it; what was queued is split off the front of `data`.
    fn poll_send(&mut self, cx: &mut Context<'_>, data: &mut Bytes) -> Poll<io::Result<()>> {
        let n = ready!(self.poll_granted(cx, data.len()))?;
        match self.send.send_data(data.split_to(n), false) {
            Ok(()) => Poll::Ready(Ok(())),
            Err(_) => self.poll_reset_error(cx),
        }
    }

    fn poll_reset_error<T>(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<T>> {
        let err = match ready!(self.send.poll_reset(cx)) {
            Ok(reason) => io::Error::new(io::ErrorKind::ConnectionReset, h2::Error::from(reason)),
            Err(e) => h2_to_io(e),
        };
        Poll::Ready(Err(err))
    }
}

fn read_error(e: h2::Error) -> io::Result<()> {
    // A peer that resets with NO_ERROR after sending everything ended cleanly.
    if e.reason() == Some(h2::Reason::NO_ERROR) && e.is_remote() {
        return Ok(());
    }
    Err(h2_to_io(e))
}

/// Whether a write failed because the peer reset the stream with NO_ERROR:
/// it needs no more of what we send, which is no failure of the connection.
fn is_clean_reset(e: &io::Error) -> bool {
    e.get_ref()
        .and_then(|inner| inner.downcast_ref::<h2::Error>())
        .is_some_and(|h2| h2.reason() == Some(h2::Reason::NO_ERROR))
}

fn h2_to_io(e: h2::Error) -> io::Error {
    if e.is_io() {
        return e
            .into_io()
            .unwrap_or_else(|| io::ErrorKind::ConnectionReset.into());
    }
    io::Error::new(io::ErrorKind::ConnectionReset, e)
}

/// What a two-way copy moved, and how it ended.
#[derive(Debug)]
pub struct Transfer {
    /// Bytes read from the first endpoint and written to the second.
    pub forward: u64,
    /// Bytes read from the second endpoint and written to the first.
    pub backward: u64,
    /// The first error either direction met; `Ok` when both ended with EOF.
    pub result: io::Result<()>,
}

/// Buffer sizing: small first, growing while reads keep filling the buffer
/// (bulk transfers). The buffer is only taken once the socket is readable and
/// given back after a read that did not fill half of it, so an idle
/// connection holds none.
const INITIAL_BUFFER: usize = 8 * 1024;
const MAX_BUFFER: usize = 256 * 1024;

/// A socket read half that can say when it has bytes (or EOF) waiting, so the
/// copy takes its read buffer only then. Sources that cannot tell (in-memory
/// streams in tests) use the default: always ready.
pub trait ReadReady: AsyncRead + Unpin {
    /// Whether [`poll_read_ready`](Self::poll_read_ready) waits for the
    /// socket; if not, a read is awaited holding its buffer.
    const TELLS: bool = false;

    fn poll_read_ready(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let _ = cx;
        Poll::Ready(Ok(()))
    }
}

impl ReadReady for tokio::net::tcp::ReadHalf<'_> {
    const TELLS: bool = true;

    fn poll_read_ready(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let stream: &tokio::net::TcpStream = (*self).as_ref();
        stream.poll_read_ready(cx)
    }
}

impl ReadReady for tokio::net::tcp::OwnedReadHalf {
    const TELLS: bool = true;

    fn poll_read_ready(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let stream: &tokio::net::TcpStream = (*self).as_ref();
        stream.poll_read_ready(cx)
    }
}

impl<T: AsyncRead> ReadReady for tokio::io::ReadHalf<T> {}

/// Copies both ways between a tunnel and a socket until both directions
/// reached EOF (each EOF is passed on as a write shutdown, so half-closed
/// connections keep working), either failed (which ends both), or `stop`
/// completes (`ConnectionAborted`). `forward` counts tunnel to socket. Counts
/// are exact however it ends.
///
/// Bytes are not copied in user space beyond what TLS needs: socket reads land
/// in the buffer h2 sends, and DATA frames are written to the socket as
/// received, their credit returned once written.
pub async fn copy_bidirectional<R, W>(
    tunnel: (H2Reader, H2Writer),
    socket: (R, W),
    stop: impl Future<Output = ()>,
) -> Transfer
where
    R: ReadReady,
    W: AsyncWrite + Unpin,
{
    let (mut tunnel_read, mut tunnel_write) = tunnel;
    let (mut socket_read, mut socket_write) = socket;
    let mut forward = 0;
    let mut backward = 0;
    let copy = futures::future::try_join(
        tunnel_to_socket(&mut tunnel_read, &mut socket_write, &mut forward),
        socket_to_tunnel(&mut socket_read, &mut tunnel_write, &mut backward),
    );
    let result = tokio::select! {
        result = copy => result.map(|_| ()),
        () = stop => Err(io::Error::new(io::ErrorKind::ConnectionAborted, "tunnel closed by caller")),
    };
    Transfer {
        forward,
        backward,
        result,
    }
}

async fn tunnel_to_socket<W>(
    reader: &mut H2Reader,
    writer: &mut W,
    copied: &mut u64,
) -> io::Result<()>
where
    W: AsyncWrite + Unpin,
{
    while let Some(data) = reader.next_data().await? {
        writer.write_all(&data).await?;
        reader.release(data.len());
        *copied += data.len() as u64;
    }
    writer.shutdown().await
}

async fn socket_to_tunnel<R>(
    reader: &mut R,
    writer: &mut H2Writer,
    copied: &mut u64,
) -> io::Result<()>
where
    R: ReadReady,
{
    match socket_into_tunnel(reader, writer, copied).await {
        // The peer wants nothing more: what the socket still sends is
        // dropped, as a TCP server that closed would drop it.
        Err(e) if is_clean_reset(&e) => Ok(()),
        result => result,
    }
}

async fn socket_into_tunnel<R>(
    reader: &mut R,
    writer: &mut H2Writer,
    copied: &mut u64,
) -> io::Result<()>
where
    R: ReadReady,
{
    let mut buf = BytesMut::new();
    let mut size = INITIAL_BUFFER;
    loop {
        if buf.capacity() == 0 {
            std::future::poll_fn(|cx| reader.poll_read_ready(cx)).await?;
        }
        buf.reserve(size);
        // One attempt, not a wait: readiness can be stale (a socket just
        // accepted reads as ready before any byte came), and waiting in the
        // read would hold the buffer for as long as the connection idles.
        // The attempt's `WouldBlock` clears the stale readiness.
        let n = if R::TELLS {
            let Some(read) = reader.read_buf(&mut buf).now_or_never() else {
                buf = BytesMut::new();
                continue;
            };
            read?
        } else {
            reader.read_buf(&mut buf).await?
        };
        if n == 0 {
            return writer.shutdown().await;
        }
        let mut chunk = buf.split().freeze();
        while !chunk.is_empty() {
            std::future::poll_fn(|cx| writer.poll_send(cx, &mut chunk)).await?;
        }
        *copied += n as u64;
        if n >= size && size < MAX_BUFFER {
            size *= 2;
        }
        if n < size / 2 {
            // Not a bulk transfer: wait for the next bytes without a buffer.
            buf = BytesMut::new();
        }
    }
}

#[cfg(test)]
mod tests;
