//! The agent's connection to the state feed: TCP, TLS verified against the
//! mesh's trust bundle (the server's certificate must name
//! `server_name`), then a hello carrying the agent's node and the token it
//! presents to the CA. Bundle and token are read again on every connection,
//! so rotated files are picked up.

use std::io;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use rustls::ClientConfig;
use rustls_pki_types::ServerName;
use tokio::net::TcpStream;
use tokio_rustls::TlsConnector;
use tokio_rustls::client::TlsStream;

use super::wire::{self, Frame, MAX_FRAME, Position, WireError};

/// How long the server may say nothing: it sends a heartbeat every second.
pub const SILENCE: Duration = Duration::from_secs(5);

/// How long connecting (TCP, TLS, hello) may take.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);

/// Where the feed is and how this agent proves itself to it.
#[derive(Clone, Debug)]
pub struct FeedConfig {
    /// `host:port` of `ambit-agent state-server`.
    pub address: String,
    /// DNS name the server's certificate must carry.
    pub server_name: String,
    /// PEM roots the server's certificate must chain to.
    pub trust_bundle: PathBuf,
    /// The token the agent presents to the CA.
    pub token_file: PathBuf,
    /// This agent's node: the token must be for it.
    pub node: String,
}

#[derive(Debug, thiserror::Error)]
pub enum FeedError {
    #[error("reading {path}: {source}")]
    File { path: PathBuf, source: io::Error },
    #[error("trust bundle {0} holds no usable certificate")]
    NoRoots(PathBuf),
    #[error("{0:?} is not a valid server name")]
    ServerName(String),
    #[error("TLS configuration: {0}")]
    Tls(#[from] rustls::Error),
    #[error("connecting to the state feed at {address}: {source}")]
    Connect { address: String, source: io::Error },
    #[error(transparent)]
    Wire(#[from] WireError),
    #[error("the state feed refused this agent: {0}")]
    Refused(String),
    #[error("the state feed said nothing for {0:?}")]
    Silent(Duration),
    #[error("the state feed closed the connection")]
    Closed,
}

/// An open, authenticated feed.
pub struct FeedConnection {
    stream: TlsStream<TcpStream>,
}

impl FeedConnection {
    /// Connects and says hello, asking to resume from `held`, the state
    /// this agent holds from an earlier connection.
    pub async fn open(config: &FeedConfig, held: Option<Position>) -> Result<Self, FeedError> {
        let connector = TlsConnector::from(client_config(config)?);
        let name = ServerName::try_from(config.server_name.clone())
            .map_err(|_| FeedError::ServerName(config.server_name.clone()))?;
        let token =
            std::fs::read_to_string(&config.token_file).map_err(|source| FeedError::File {
                path: config.token_file.clone(),
                source,
            })?;
        let connect = async {
            let tcp = TcpStream::connect(&config.address).await?;
            tcp.set_nodelay(true)?;
            connector.connect(name, tcp).await
        };
        let mut stream = tokio::time::timeout(CONNECT_TIMEOUT, connect)
            .await
            .unwrap_or_else(|_| Err(io::ErrorKind::TimedOut.into()))
            .map_err(|source| FeedError::Connect {
                address: config.address.clone(),
                source,
            })?;
        let hello = Frame::Hello {
            token: token.trim().to_owned(),
            node: config.node.clone(),
            resume: held,
        };
        wire::write_frame(&mut stream, &hello).await?;
        Ok(Self { stream })
    }

    /// The next frame; an error ends the connection.
    pub async fn next(&mut self) -> Result<Frame, FeedError> {
        let frame = tokio::time::timeout(SILENCE, wire::read_frame(&mut self.stream, MAX_FRAME))
            .await
            .map_err(|_| FeedError::Silent(SILENCE))??;
        match frame {
            None => Err(FeedError::Closed),
            Some(Frame::Refused { reason }) => Err(FeedError::Refused(reason)),
            Some(frame) => Ok(frame),
        }
    }
}

fn client_config(config: &FeedConfig) -> Result<Arc<ClientConfig>, FeedError> {
    let path = &config.trust_bundle;
    let pem = std::fs::read(path).map_err(|source| FeedError::File {
        path: path.clone(),
        source,
    })?;
    let mut roots = rustls::RootCertStore::empty();
    let (added, _) = roots.add_parsable_certificates(
        rustls_pemfile::certs(&mut pem.as_slice()).filter_map(Result::ok),
    );
    if added == 0 {
        return Err(FeedError::NoRoots(path.clone()));
    }
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let tls = ClientConfig::builder_with_provider(provider)
        .with_protocol_versions(&[&rustls::version::TLS13])?
        .with_root_certificates(roots)
        .with_no_client_auth();
    Ok(Arc::new(tls))
}
