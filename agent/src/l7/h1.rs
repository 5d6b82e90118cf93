//! HTTP/1 on the L7 path with no second codec: each request head is read
//! with httparse (hyper's parser), decided, and sent to the pod as it came,
//! rebuilt only when path normalization, RequestAuthentication or an
//! `Upgrade: h2c` changes it. Bodies and answers pass through as bytes,
//! followed only as far as needed to know where each message ends.
//!
//! One task drives both sides, with no channel between them, so a request
//! costs what the L4 byte copy costs plus a parse and a decision; hyper on
//! both sides, as before, cost the destination agent twice the CPU of L4.
//!
//! What passes: keep-alive, pipelined requests (answered in order, one at a
//! time), chunked and sized bodies, interim answers (`100 Continue`), and
//! `Upgrade` (after the pod's `101`, bytes both ways, like WebSocket). What
//! is refused before the pod sees it: heads httparse rejects, framings a pod
//! might read differently (see `head`), heads over 64 KiB.

mod chunked;
mod head;

use std::io;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use ambit_policy::http::Headers;
use bytes::{Buf, BytesMut};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, ReadHalf, WriteHalf};
use tokio::net::TcpStream;
use tokio::net::tcp::{ReadHalf as PodRead, WriteHalf as PodWrite};

use super::L7;
use super::body::RequestLog;
use super::metrics::ConnectionSeries;
use super::request::{self, Deciding, Facts, HeaderView, Refusal};
use super::respond::Local;
use chunked::{ChunkError, Chunked};
use head::{Framing, HeadError, RequestHead, ResponseHead};

/// Room made in a buffer before each read.
const READ_CHUNK: usize = 8 * 1024;
/// Largest request body read (and dropped) after a local answer.
const DRAIN_LIMIT: u64 = request::DRAIN_LIMIT as u64;
/// Interim (1xx) answers passed on before a final one.
const MAX_INTERIM: usize = 8;

/// Serves `client` until it closes, the pod closes, or `stop` fires.
pub async fn connection<D>(
    l7: Arc<L7>,
    facts: Facts,
    client: D,
    mut pod: TcpStream,
    stop: impl Future<Output = ()>,
) -> io::Result<()>
where
    D: AsyncRead + AsyncWrite + Unpin + Send,
{
    let _ = pod.set_nodelay(true);
    let conn = Conn {
        series: Arc::new(ConnectionSeries::new(facts.labels.clone())),
        l7,
        facts,
    };
    let (cr, cw) = tokio::io::split(client);
    let (pr, pw) = pod.split();
    let mut io = Io {
        cr,
        cw,
        pr,
        pw,
        from_client: BytesMut::with_capacity(READ_CHUNK),
        from_pod: BytesMut::with_capacity(READ_CHUNK),
    };
    tokio::select! {
        r = conn.run(&mut io) => r,
        () = stop => Ok(()),
    }
}

/// What is fixed for the connection.
struct Conn {
    l7: Arc<L7>,
    facts: Facts,
    series: Arc<ConnectionSeries>,
}

/// Both sides of the connection and what was read from each but not yet
/// passed on.
struct Io<'p, D> {
    cr: ReadHalf<D>,
    cw: WriteHalf<D>,
    pr: PodRead<'p>,
    pw: PodWrite<'p>,
    from_client: BytesMut,
    from_pod: BytesMut,
}

/// What follows an exchange.
#[derive(Debug, PartialEq, Eq)]
enum Next {
    Request,
    Close,
    /// The pod switched protocols: bytes both ways from now on.
    Tunnel,
}

#[derive(Debug)]
enum ReadError {
    Io(io::Error),
    Head(HeadError),
}

/// Why a body could not be passed on, by side.
#[derive(Debug)]
enum BodyError {
    Read(io::Error),
    Write(io::Error),
    Chunk(ChunkError),
    TooLarge,
}

impl From<BodyError> for io::Error {
    fn from(e: BodyError) -> Self {
        match e {
            BodyError::Read(e) | BodyError::Write(e) => e,
            BodyError::Chunk(e) => io::Error::new(io::ErrorKind::InvalidData, e),
            BodyError::TooLarge => io::Error::new(io::ErrorKind::InvalidData, "body too large"),
        }
    }
}

/// How the pod answered.
enum Answered {
    /// A final answer, passed on whole.
    Response { status: u16, keep_alive: bool },
    /// Nothing usable before its head: the client gets a local answer.
    Failed(Local, String),
}

/// The request headers as the policy engine reads them.
struct RawHeaders<'a>(&'a RequestHead);

impl Headers for RawHeaders<'_> {
    fn joined(&self, name: &str) -> Option<String> {
        let values: Vec<&str> = self
            .0
            .values(name)
            .filter_map(|v| std::str::from_utf8(v).ok())
            .collect();
        (!values.is_empty()).then(|| values.join(","))
    }
}

/// Whether a comma-separated field value lists `token`.
fn lists(value: &[u8], token: &[u8]) -> bool {
    value
        .split(|&b| b == b',')
        .any(|t| t.trim_ascii().eq_ignore_ascii_case(token))
}

async fn read_head<R, H>(
    r: &mut R,
    buf: &mut BytesMut,
    parse: fn(&mut BytesMut) -> Result<Option<H>, HeadError>,
) -> Result<Option<H>, ReadError>
where
    R: AsyncRead + Unpin,
{
    loop {
        if !buf.is_empty()
            && let Some(head) = parse(buf).map_err(ReadError::Head)?
        {
            return Ok(Some(head));
        }
        buf.reserve(READ_CHUNK);
        let n = r.read_buf(buf).await.map_err(ReadError::Io)?;
        if n == 0 {
            return if buf.is_empty() {
                Ok(None)
            } else {
                Err(ReadError::Io(io::ErrorKind::UnexpectedEof.into()))
            };
        }
    }
}

/// Passes one body from `r` (what was already read of it in `buf`) to `w`,
/// after `prefix` (the head, so that a small message goes in one write).
/// Counts the body's bytes without chunk framing into `counted`; with a
/// `limit`, refuses a body larger than it.
async fn pass_body<R, W>(
    r: &mut R,
    w: &mut W,
    buf: &mut BytesMut,
    framing: Framing,
    prefix: &[u8],
    counted: &AtomicU64,
    limit: Option<u64>,
) -> Result<(), BodyError>
where
    R: AsyncRead + Unpin,
    W: AsyncWrite + Unpin,
{
    let mut out = Vec::new();
    let mut pending = prefix;
    let mut chunked = Chunked::default();
    let mut left = match framing {
        Framing::Length(n) => n,
        _ => 0,
    };
    if limit.is_some_and(|l| left > l) {
        return Err(BodyError::TooLarge);
    }
    loop {
        let (take, done) = match framing {
            Framing::None => (0, true),
            Framing::Length(_) => {
                let take = left.min(buf.len() as u64);
                left -= take;
                counted.fetch_add(take, Ordering::Relaxed);
                (take as usize, left == 0)
            }
            Framing::Chunked => {
                let before = chunked.data;
                let take = chunked.advance(buf).map_err(BodyError::Chunk)?;
                counted.fetch_add(chunked.data - before, Ordering::Relaxed);
                if limit.is_some_and(|l| chunked.data > l) {
                    return Err(BodyError::TooLarge);
                }
                (take, chunked.is_done())
            }
            Framing::UntilClose => {
                counted.fetch_add(buf.len() as u64, Ordering::Relaxed);
                (buf.len(), false)
            }
        };
        // The head and the first body bytes go out in one write.
        if !pending.is_empty() && take > 0 {
            out.clear();
            out.extend_from_slice(pending);
            out.extend_from_slice(&buf[..take]);
            w.write_all(&out).await.map_err(BodyError::Write)?;
        } else if !pending.is_empty() {
            w.write_all(pending).await.map_err(BodyError::Write)?;
        } else if take > 0 {
            w.write_all(&buf[..take]).await.map_err(BodyError::Write)?;
        }
        pending = &[];
        buf.advance(take);
        if done {
            return w.flush().await.map_err(BodyError::Write);
        }
        buf.reserve(READ_CHUNK);
        if r.read_buf(buf).await.map_err(BodyError::Read)? == 0 {
            return if framing == Framing::UntilClose {
                w.flush().await.map_err(BodyError::Write)
            } else {
                Err(BodyError::Read(io::ErrorKind::UnexpectedEof.into()))
            };
        }
    }
}

impl Conn {
    async fn run<D>(&self, io: &mut Io<'_, D>) -> io::Result<()>
    where
        D: AsyncRead + AsyncWrite + Unpin + Send,
    {
        loop {
            let head = match self.read_request_head(io).await {
                Ok(Some(head)) => head,
                Ok(None) => return Ok(()),
                Err(ReadError::Io(e)) => return Err(e),
                Err(ReadError::Head(e)) => {
                    let answer = Local::Unreadable(e.status());
                    let mut log = self.log(http::Method::from_bytes(b"-").ok(), "");
                    log.refused(&Refusal::new(answer, e.to_string()));
                    io.cw.write_all(&answer.h1(true)).await?;
                    let _ = io.cw.shutdown().await;
                    return Ok(());
                }
            };
            match self.exchange(head, io).await? {
                Next::Request => {}
                Next::Close => {
                    let _ = io.cw.shutdown().await;
                    return Ok(());
                }
                Next::Tunnel => return tunnel(io).await,
            }
        }
    }

    /// The next request's head: an idle keep-alive connection may wait for
    /// its first byte as long as it likes, the rest must come within the
    /// head timeout.
    async fn read_request_head<D>(
        &self,
        io: &mut Io<'_, D>,
    ) -> Result<Option<RequestHead>, ReadError>
    where
        D: AsyncRead + AsyncWrite + Unpin + Send,
    {
        if io.from_client.is_empty() {
            io.from_client.reserve(READ_CHUNK);
            if io
                .cr
                .read_buf(&mut io.from_client)
                .await
                .map_err(ReadError::Io)?
                == 0
            {
                return Ok(None);
            }
        }
        let limit = self.l7.settings.head_timeout;
        tokio::time::timeout(
            limit,
            read_head(&mut io.cr, &mut io.from_client, RequestHead::parse),
        )
        .await
        .unwrap_or(Err(ReadError::Head(HeadError::TimedOut)))
    }

    fn log(&self, method: Option<http::Method>, host: &str) -> RequestLog {
        RequestLog::new(
            self.l7.clone(),
            self.series.clone(),
            "http",
            method.unwrap_or_default(),
            host.to_owned(),
            self.facts.client,
        )
    }

    /// One request and its answer.
    async fn exchange<D>(&self, head: RequestHead, io: &mut Io<'_, D>) -> io::Result<Next>
    where
        D: AsyncRead + AsyncWrite + Unpin + Send,
    {
        let method = http::Method::from_bytes(head.method().as_bytes()).ok();
        let mut log = self.log(method, head.host());
        let framing = match head.framing() {
            Ok(framing) => framing,
            Err(e) => {
                let refusal = Refusal::new(Local::Unreadable(e.status()), e.to_string());
                return refuse(refusal, &head, Framing::UntilClose, log, io).await;
            }
        };
        let out_head = match self.check(&head, &mut log).await {
            Ok(out) => out,
            Err(refusal) => return refuse(refusal, &head, framing, log, io).await,
        };
        let sent = pass_body(
            &mut io.cr,
            &mut io.pw,
            &mut io.from_client,
            framing,
            out_head.as_deref().unwrap_or(&head.bytes()[..]),
            &log.request_bytes,
            None,
        );
        let answered = answer(
            &mut io.pr,
            &mut io.cw,
            &mut io.from_pod,
            head.method() == "HEAD",
            &log.response_bytes,
        );
        // The request's body and the answer pass at the same time: a pod may
        // answer before it has read the whole body. A client gone mid-body
        // ends the exchange at once; once answered, a body not yet passed on
        // closes the connection.
        let (sent, answered) = {
            tokio::pin!(sent, answered);
            let mut sent_result = None;
            loop {
                tokio::select! {
                    r = &mut sent, if sent_result.is_none() => match r {
                        Err(BodyError::Read(e)) => return Err(e),
                        other => sent_result = Some(other),
                    },
                    a = &mut answered => break (sent_result, a),
                }
            }
        };
        let sent = match sent {
            Some(Ok(())) => true,
            Some(Err(e)) => {
                tracing::debug!(error = ?e, "request body not passed on");
                false
            }
            None => false,
        };
        match answered? {
            Answered::Failed(answer, why) => {
                log.refused(&Refusal::new(answer, why));
                io.cw.write_all(&answer.h1(true)).await?;
                Ok(Next::Close)
            }
            Answered::Response { status, keep_alive } => {
                log.status = status;
                Ok(if status == 101 && head.upgrade().is_some() {
                    Next::Tunnel
                } else if sent && keep_alive && head.keep_alive() {
                    Next::Request
                } else {
                    Next::Close
                })
            }
        }
    }

    /// Decides the request; the head the pod is to receive, if it differs
    /// from the one that arrived.
    async fn check(
        &self,
        head: &RequestHead,
        log: &mut RequestLog,
    ) -> Result<Option<Vec<u8>>, Refusal> {
        let deciding = Deciding::start(&self.l7, &self.facts, log, head.target())?;
        // `Upgrade: h2c` would turn the connection into HTTP/2 frames that no
        // request check sees; the pod is asked in HTTP/1 instead, as Envoy
        // does.
        let h2c = head.upgrade().is_some_and(|u| lists(u, b"h2c"));
        let skip: &[&str] = if h2c {
            &["upgrade", "http2-settings"]
        } else {
            &[]
        };
        let jwt = deciding.jwt();
        if !jwt.is_empty() {
            let mut parts = head
                .to_parts()
                .map_err(|e| Refusal::new(Local::Unreadable(e.status()), e.to_string()))?;
            let auth = self
                .l7
                .jwt
                .authenticate(&jwt, &mut parts)
                .await
                .map_err(|why| Refusal::new(Local::BadToken, why))?;
            deciding.decide(&self.facts, log, &HeaderView(&parts.headers), auth.as_ref())?;
            if auth.is_some() {
                // Verification may have removed the token and added claims.
                for name in skip {
                    parts.headers.remove(*name);
                }
                return Ok(Some(head::head_from_parts(&parts, &log.path, head.minor)));
            }
        } else {
            deciding.decide(&self.facts, log, &RawHeaders(head), None)?;
        }
        // The pod sees the path that was authorized.
        if log.path == head.target() && !h2c {
            Ok(None)
        } else {
            Ok(Some(head.rewritten(&log.path, skip)))
        }
    }
}

/// Answers a request the agent refused, then reads past its body if that
/// is small enough for the connection to serve the next request.
async fn refuse<D>(
    refusal: Refusal,
    head: &RequestHead,
    framing: Framing,
    mut log: RequestLog,
    io: &mut Io<'_, D>,
) -> io::Result<Next>
where
    D: AsyncRead + AsyncWrite + Unpin + Send,
{
    log.refused(&refusal);
    // A client waiting for `100 Continue` may or may not send its body now:
    // only closing leaves no doubt where the next request starts.
    let drain = match framing {
        Framing::None => true,
        Framing::Length(n) => n <= DRAIN_LIMIT && !head.expects_continue(),
        Framing::Chunked => !head.expects_continue(),
        Framing::UntilClose => false,
    };
    let close = !drain || !head.keep_alive();
    io.cw.write_all(&refusal.answer.h1(close)).await?;
    io.cw.flush().await?;
    drop(log);
    if close {
        return Ok(Next::Close);
    }
    let dropped = pass_body(
        &mut io.cr,
        &mut tokio::io::sink(),
        &mut io.from_client,
        framing,
        &[],
        &AtomicU64::new(0),
        Some(DRAIN_LIMIT),
    )
    .await;
    Ok(match dropped {
        Ok(()) => Next::Request,
        Err(_) => Next::Close,
    })
}

/// Reads the pod's answer to one request and passes it on: interim answers,
/// then the final one with its body.
async fn answer<W>(
    pr: &mut PodRead<'_>,
    cw: &mut W,
    buf: &mut BytesMut,
    to_head: bool,
    counted: &AtomicU64,
) -> io::Result<Answered>
where
    W: AsyncWrite + Unpin,
{
    for _ in 0..=MAX_INTERIM {
        let head = match read_head(pr, buf, ResponseHead::parse).await {
            Ok(Some(head)) => head,
            Ok(None) => {
                let why = "the pod closed the connection before answering".to_owned();
                return Ok(Answered::Failed(Local::Upstream, why));
            }
            Err(ReadError::Io(e)) => {
                return Ok(Answered::Failed(Local::Upstream, format!("upstream: {e}")));
            }
            Err(ReadError::Head(e)) => {
                return Ok(Answered::Failed(
                    Local::BadGateway,
                    format!("upstream: {e}"),
                ));
            }
        };
        if (100..200).contains(&head.code) && head.code != 101 {
            cw.write_all(head.bytes()).await?;
            cw.flush().await?;
            continue;
        }
        let framing = match head.framing(to_head) {
            Ok(framing) => framing,
            Err(e) => {
                return Ok(Answered::Failed(
                    Local::BadGateway,
                    format!("upstream: {e}"),
                ));
            }
        };
        pass_body(pr, cw, buf, framing, head.bytes(), counted, None).await?;
        return Ok(Answered::Response {
            status: head.code,
            keep_alive: head.keep_alive() && framing != Framing::UntilClose,
        });
    }
    let why = format!("upstream: more than {MAX_INTERIM} interim answers");
    Ok(Answered::Failed(Local::BadGateway, why))
}

/// After a `101`: what each side sent past the exchange, then bytes both
/// ways until both have closed.
async fn tunnel<D>(io: &mut Io<'_, D>) -> io::Result<()>
where
    D: AsyncRead + AsyncWrite + Unpin + Send,
{
    io.pw.write_all(&io.from_client).await?;
    io.cw.write_all(&io.from_pod).await?;
    io.cw.flush().await?;
    io.from_client.clear();
    io.from_pod.clear();
    let up = async {
        tokio::io::copy(&mut io.cr, &mut io.pw).await?;
        io.pw.shutdown().await
    };
    let down = async {
        tokio::io::copy(&mut io.pr, &mut io.cw).await?;
        io.cw.shutdown().await
    };
    tokio::try_join!(up, down).map(drop)
}

#[cfg(test)]
mod tests;
