//! The CA's own TLS: the certificate it serves with, and the TLS accept loop
//! in front of the gRPC server.
//!
//! The serving certificate is either issued by the CA to itself at start, or
//! read from `--serving-cert`/`--serving-key` (a cert-manager or Kubernetes
//! Secret volume, say) and followed like the tokens file, so a renewed
//! certificate is served to new connections without a restart and a bad edit
//! keeps the last good pair. TLS is terminated here rather than by tonic
//! because tonic's server TLS takes one fixed identity; here each handshake
//! asks a resolver for the pair in force.

use std::io;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use arc_swap::ArcSwap;
use rustls::server::{ClientHello, ResolvesServerCert};
use rustls::sign::CertifiedKey;
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::mpsc;
use tokio_rustls::TlsAcceptor;
use tokio_rustls::server::TlsStream;
use tonic::transport::server::{Connected, TcpConnectInfo};
use x509_parser::prelude::{FromDer, X509Certificate};

use crate::follow::{FileSet, FollowError, Followed, OutcomeHook};

/// Why a serving certificate and key cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum ServingError {
    #[error("{}: {reason}", path.display())]
    File { path: PathBuf, reason: String },
    #[error("serving key does not match the serving certificate ({})", path.display())]
    KeyMismatch { path: PathBuf },
    #[error("TLS configuration: {0}")]
    Tls(#[from] rustls::Error),
}

/// The pair served to new connections; swapped when the files change.
#[derive(Clone, Debug)]
pub struct ServingCert {
    current: Arc<ArcSwap<CertifiedKey>>,
}

impl ServingCert {
    /// A fixed pair (the one the CA issued itself).
    pub fn fixed(chain_pem: &str, key_pem: &str) -> Result<Self, ServingError> {
        let key = certified_key(
            Path::new("<issued>"),
            chain_pem.as_bytes(),
            Path::new("<issued>"),
            key_pem.as_bytes(),
        )?;
        Ok(Self {
            current: Arc::new(ArcSwap::from_pointee(key)),
        })
    }

    /// The TLS server configuration: ALPN h2 (gRPC), no client certificate
    /// (callers prove who they are with a bearer token).
    pub fn server_config(&self) -> Result<rustls::ServerConfig, ServingError> {
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let mut config = rustls::ServerConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()?
            .with_no_client_auth()
            .with_cert_resolver(Arc::new(self.clone()));
        config.alpn_protocols = vec![b"h2".to_vec()];
        Ok(config)
    }
}

impl ResolvesServerCert for ServingCert {
    fn resolve(&self, _hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        Some(self.current.load_full())
    }
}

/// The serving certificate and key files, followed.
#[derive(Debug)]
pub struct FollowedServingCert {
    pub cert: ServingCert,
    followed: Followed<CertifiedKey>,
}

impl FollowedServingCert {
    /// Loads the pair (unusable files are an error) and follows both files.
    pub async fn start(
        cert_path: &Path,
        key_path: &Path,
        poll: Duration,
        hook: Option<OutcomeHook>,
    ) -> Result<Self, FollowError<ServingError>> {
        let (cert_owned, key_owned) = (cert_path.to_path_buf(), key_path.to_path_buf());
        let followed = FileSet::new(
            "serving certificate",
            vec![cert_owned.clone(), key_owned.clone()],
        )
        .with_poll_interval(poll)
        .start(
            move |files| {
                let empty = Vec::new();
                let cert = files.first().unwrap_or(&empty);
                let key = files.get(1).unwrap_or(&empty);
                certified_key(&cert_owned, cert, &key_owned, key)
            },
            hook,
        )
        .await?;
        tracing::info!(cert = %cert_path.display(), key = %key_path.display(), "serving certificate loaded");
        Ok(Self {
            cert: ServingCert {
                current: followed.current(),
            },
            followed,
        })
    }

    pub fn subscribe(&self) -> tokio::sync::watch::Receiver<crate::follow::FollowStatus> {
        self.followed.subscribe()
    }
}

/// Parses and checks a PEM chain (leaf first) and its PEM private key.
fn certified_key(
    cert_path: &Path,
    cert_pem: &[u8],
    key_path: &Path,
    key_pem: &[u8],
) -> Result<CertifiedKey, ServingError> {
    let file = |path: &Path, reason: String| ServingError::File {
        path: path.to_path_buf(),
        reason,
    };
    let chain = CertificateDer::pem_slice_iter(cert_pem)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| file(cert_path, format!("not PEM certificates: {e}")))?;
    let leaf = chain
        .first()
        .ok_or_else(|| file(cert_path, "holds no certificate".into()))?;
    let (_, parsed) = X509Certificate::from_der(leaf.as_ref())
        .map_err(|e| file(cert_path, format!("not an X.509 certificate: {e}")))?;
    if !parsed.validity().is_valid() {
        return Err(file(
            cert_path,
            format!(
                "certificate is not valid now (valid {} to {})",
                parsed.validity().not_before,
                parsed.validity().not_after
            ),
        ));
    }
    let key = PrivateKeyDer::from_pem_slice(key_pem)
        .map_err(|e| file(key_path, format!("not a PEM private key: {e}")))?;
    let signing = rustls::crypto::ring::sign::any_supported_type(&key)
        .map_err(|e| file(key_path, format!("unusable private key: {e}")))?;
    let certified = CertifiedKey::new(chain, signing);
    certified
        .keys_match()
        .map_err(|_| ServingError::KeyMismatch {
            path: key_path.to_path_buf(),
        })?;
    Ok(certified)
}

/// A TLS connection as the gRPC server sees it: tonic reads the peer address
/// through `Connected`, which it implements for TLS streams only behind a
/// feature this crate does not need otherwise.
pub struct TlsConnection(TlsStream<TcpStream>);

impl Connected for TlsConnection {
    type ConnectInfo = TcpConnectInfo;

    fn connect_info(&self) -> Self::ConnectInfo {
        self.0.get_ref().0.connect_info()
    }
}

impl AsyncRead for TlsConnection {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        Pin::new(&mut self.0).poll_read(cx, buf)
    }
}

impl AsyncWrite for TlsConnection {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.0).poll_write(cx, buf)
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.0).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.0).poll_shutdown(cx)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.0).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.0.is_write_vectored()
    }
}

/// Accepts on `listener` and hands completed TLS handshakes to the returned
/// channel. Each handshake runs in its own task under `timeout`, so a client
/// that stalls mid-handshake holds up nobody else. Accepting stops when the
/// receiver is dropped.
pub fn accept_tls(
    listener: TcpListener,
    config: rustls::ServerConfig,
    timeout: Duration,
) -> mpsc::Receiver<Result<TlsConnection, io::Error>> {
    let acceptor = TlsAcceptor::from(Arc::new(config));
    let (tx, rx) = mpsc::channel(64);
    tokio::spawn(async move {
        loop {
            let (tcp, peer) = tokio::select! {
                () = tx.closed() => return,
                accepted = listener.accept() => match accepted {
                    Ok(accepted) => accepted,
                    Err(error) => {
                        // Out of descriptors, say: back off instead of spinning.
                        tracing::warn!(%error, "accept failed");
                        tokio::time::sleep(Duration::from_millis(100)).await;
                        continue;
                    }
                },
            };
            // No TCP keepalive: the gRPC server's HTTP/2 PINGs (every 30 s,
            // 10 s to answer) already find peers that went away.
            let _ = tcp.set_nodelay(true);
            let (acceptor, tx) = (acceptor.clone(), tx.clone());
            tokio::spawn(async move {
                match tokio::time::timeout(timeout, acceptor.accept(tcp)).await {
                    Ok(Ok(tls)) => {
                        let _ = tx.send(Ok(TlsConnection(tls))).await;
                    }
                    Ok(Err(error)) => handshake_failed(peer, &error.to_string()),
                    Err(_) => handshake_failed(peer, "timed out"),
                }
            });
        }
    });
    rx
}

fn handshake_failed(peer: SocketAddr, reason: &str) {
    tracing::debug!(%peer, reason, "TLS handshake failed");
}

#[cfg(test)]
mod tests;
