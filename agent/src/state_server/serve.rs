//! One stream per agent: TLS, the agent's hello and its token, then the
//! full state and every batch after it, with a heartbeat each second.

use std::io;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use ambit_ca::authn::{Authenticator, BearerToken};
use tokio::io::{AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::broadcast::Receiver;
use tokio::sync::broadcast::error::RecvError;
use tokio_rustls::TlsAcceptor;

use super::metrics::FeedMetrics;
use super::mirror::{Batch, Mirror, Start, Subscription};
use crate::state::StateStore;
use crate::state::source::feed::wire::{self, Frame, Position, WireError};

/// How long an agent has to finish TLS and say hello.
const HELLO_TIMEOUT: Duration = Duration::from_secs(10);
/// A hello is a token and a node name.
const HELLO_LIMIT: usize = 64 * 1024;
/// How long one write may wait for an agent that does not read.
const WRITE_TIMEOUT: Duration = Duration::from_secs(30);
const HEARTBEAT: Duration = Duration::from_secs(1);

/// What every agent's stream shares.
pub struct Feeding {
    pub mirror: Arc<Mirror>,
    pub authn: Arc<dyn Authenticator>,
    pub acceptor: TlsAcceptor,
    /// The server's own state, for its staleness.
    pub store: StateStore,
    pub metrics: FeedMetrics,
}

#[derive(Debug, thiserror::Error)]
enum StreamError {
    #[error(transparent)]
    Wire(#[from] WireError),
    #[error("timed out")]
    TimedOut,
    #[error("refused: {0}")]
    Refused(String),
}

impl From<io::Error> for StreamError {
    fn from(e: io::Error) -> Self {
        Self::Wire(e.into())
    }
}

/// Accepts agents until the listener fails; dropping it ends every stream.
pub async fn serve(listener: TcpListener, feeding: Arc<Feeding>) -> io::Result<()> {
    let mut streams = tokio::task::JoinSet::new();
    loop {
        let (tcp, peer) = tokio::select! {
            accepted = listener.accept() => accepted?,
            Some(_) = streams.join_next() => continue,
        };
        let feeding = feeding.clone();
        streams.spawn(async move {
            match feeding.agent(tcp).await {
                Ok(()) => tracing::debug!(%peer, "agent left"),
                Err(error) => tracing::info!(%peer, %error, "agent stream ended"),
            }
        });
    }
}

impl Feeding {
    async fn agent(&self, tcp: TcpStream) -> Result<(), StreamError> {
        let _ = tcp.set_nodelay(true);
        let hello = async {
            let mut tls = self.acceptor.accept(tcp).await?;
            let hello = wire::read_frame(&mut tls, HELLO_LIMIT).await?;
            Ok::<_, StreamError>((tls, hello))
        };
        let (mut tls, hello) = tokio::time::timeout(HELLO_TIMEOUT, hello)
            .await
            .map_err(|_| StreamError::TimedOut)??;
        let Some(Frame::Hello {
            token,
            node,
            resume,
        }) = hello
        else {
            self.metrics.refused.inc();
            return refuse(&mut tls, "expected a hello".into()).await;
        };
        let refusal = match self.authn.authenticate(&BearerToken::new(token)).await {
            Ok(known) if known.as_str() == node => None,
            Ok(known) => Some(format!("the token is node {known}'s, not {node}'s")),
            Err(error) => Some(error.to_string()),
        };
        if let Some(reason) = refusal {
            self.metrics.refused.inc();
            return refuse(&mut tls, reason).await;
        }
        tracing::info!(%node, "agent connected");
        self.metrics.agents.inc();
        let streamed = self.stream(tls, resume).await;
        self.metrics.agents.dec();
        tracing::info!(%node, "agent disconnected");
        streamed
    }

    async fn stream<S>(&self, tls: S, resume: Option<Position>) -> Result<(), StreamError>
    where
        S: tokio::io::AsyncRead + AsyncWrite + Unpin,
    {
        let (mut read, mut write) = tokio::io::split(tls);
        let (mut revision, mut batches) = self.start(&mut write, resume).await?;
        let mut beat = tokio::time::interval(HEARTBEAT);
        let mut byte = [0u8; 1];
        loop {
            tokio::select! {
                batch = batches.recv() => match batch {
                    Ok(batch) if batch.revision > revision => {
                        self.send_batch(&mut write, &batch).await?;
                        revision = batch.revision;
                    }
                    Ok(_) => {}
                    Err(RecvError::Lagged(missed)) => {
                        tracing::warn!(missed, "agent fell behind; sending it the full state again");
                        (revision, batches) = self.start(&mut write, None).await?;
                    }
                    Err(RecvError::Closed) => return Ok(()),
                },
                _ = beat.tick() => {
                    let behind_ms = self.store.staleness(SystemTime::now()).as_millis();
                    let frame = wire::encode(&Frame::Heartbeat {
                        revision: self.mirror.revision(),
                        behind_ms: u64::try_from(behind_ms).unwrap_or(u64::MAX),
                    })?;
                    self.send(&mut write, &frame).await?;
                }
                // An agent says nothing after its hello: any byte or the end
                // of its stream ends it.
                _ = read.read(&mut byte) => return Ok(()),
            }
        }
    }

    /// Brings the agent from `held` to now: the batches it missed, or the
    /// full state. Returns the revision it is at and the batches to follow.
    async fn start<W: AsyncWrite + Unpin>(
        &self,
        write: &mut W,
        held: Option<Position>,
    ) -> Result<(u64, Receiver<Arc<Batch>>), StreamError> {
        let Subscription {
            start,
            revision,
            batches,
        } = self.mirror.subscribe(held)?;
        match start {
            Start::Full(full) => {
                self.metrics.full_states.inc();
                for frame in full.iter() {
                    self.send(write, frame).await?;
                }
            }
            Start::Resumed { from, missed } => {
                self.metrics.resumed.inc();
                tracing::info!(from, to = revision, batches = missed.len(), "agent resumed");
                self.send(write, &wire::encode(&Frame::Resumed { revision: from })?)
                    .await?;
                for batch in &missed {
                    self.send_batch(write, batch).await?;
                }
                let synced = Frame::Synced {
                    revision,
                    epoch: self.mirror.epoch(),
                };
                self.send(write, &wire::encode(&synced)?).await?;
            }
        }
        Ok((revision, batches))
    }

    async fn send_batch<W: AsyncWrite + Unpin>(
        &self,
        write: &mut W,
        batch: &Batch,
    ) -> Result<(), StreamError> {
        for frame in &batch.frames {
            self.send(write, frame).await?;
        }
        Ok(())
    }

    async fn send<W: AsyncWrite + Unpin>(
        &self,
        write: &mut W,
        frame: &[u8],
    ) -> Result<(), StreamError> {
        tokio::time::timeout(WRITE_TIMEOUT, async {
            write.write_all(frame).await?;
            write.flush().await
        })
        .await
        .map_err(|_| StreamError::TimedOut)??;
        self.metrics.sent_bytes.inc_by(frame.len() as u64);
        Ok(())
    }
}

async fn refuse<S: AsyncWrite + Unpin>(tls: &mut S, reason: String) -> Result<(), StreamError> {
    tracing::warn!(%reason, "agent refused");
    let _ = wire::write_frame(
        tls,
        &Frame::Refused {
            reason: reason.clone(),
        },
    )
    .await;
    let _ = tls.shutdown().await;
    Err(StreamError::Refused(reason))
}
