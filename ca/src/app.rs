//! Composition root: turns a `Cli` into a running CA (keys, signer, authenticator,
//! binding, TLS server) and hands back its bound address and a shutdown handle.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use tokio::net::TcpListener;
use tokio::sync::oneshot;
use tokio::task::JoinHandle;

use crate::api::{CaService, ServerLimits, ServingIdentity};
use crate::authn::Authenticator;
use crate::authn::bootstrap::BootstrapTokens;
use crate::authn::token_review::TokenReviewAuthenticator;
use crate::binding::{IdentityBinding, StateFileBinding};
use crate::cli::Cli;
use crate::keys;
use crate::signer::{Lifetimes, Signer};

/// Longest life of the CA's own serving certificate (a restart issues a new one).
const SERVING_CERT_TTL: Duration = Duration::from_secs(365 * 24 * 3600);

/// A CA serving on a bound socket.
#[derive(Debug)]
pub struct RunningCa {
    pub local_addr: SocketAddr,
    /// PEM root every issued chain ends at.
    pub root_pem: String,
    shutdown: oneshot::Sender<()>,
    server: JoinHandle<Result<(), tonic::transport::Error>>,
    reloader: JoinHandle<()>,
}

impl RunningCa {
    /// Stops accepting, lets in-flight calls finish, and returns.
    pub async fn shutdown(self) -> anyhow::Result<()> {
        let _ = self.shutdown.send(());
        self.reloader.abort();
        self.server.await.context("CA server task")??;
        Ok(())
    }

    /// Waits until the server stops by itself (it only does on error).
    pub async fn wait(&mut self) -> anyhow::Result<()> {
        (&mut self.server).await.context("CA server task")??;
        Ok(())
    }
}

/// Who may call and which identities each node may hold: TokenReview and the
/// cluster's Pods with `--kube`, else the bootstrap tokens and the workloads file.
/// The returned task keeps the binding current; it stops with the CA.
async fn callers(
    cli: &Cli,
) -> anyhow::Result<(
    Arc<dyn Authenticator>,
    Arc<dyn IdentityBinding>,
    JoinHandle<()>,
)> {
    if cli.kube {
        let (authn, pods, watch) = TokenReviewAuthenticator::from_cluster(
            &cli.kube_audience,
            cli.agent_service_account.clone(),
        )
        .await
        .context("connecting to the Kubernetes API for TokenReview and pods")?;
        return Ok((Arc::new(authn), pods, watch));
    }
    let tokens = BootstrapTokens::load(&cli.tokens_file)?;
    let binding = Arc::new(StateFileBinding::load(&cli.workloads)?);
    let reloader = binding.spawn_reloader(cli.workloads_poll);
    Ok((Arc::new(tokens), binding, reloader))
}

/// Loads key material and configuration, binds the listener and starts serving.
pub async fn start(cli: &Cli) -> anyhow::Result<RunningCa> {
    let listener = TcpListener::bind(cli.listen)
        .await
        .with_context(|| format!("binding {}", cli.listen))?;
    start_on(cli, listener).await
}

/// As `start`, on an already bound listener (tests bind port 0).
pub async fn start_on(cli: &Cli, listener: TcpListener) -> anyhow::Result<RunningCa> {
    anyhow::ensure!(
        cli.cert_ttl <= cli.max_cert_ttl,
        "--cert-ttl {:?} exceeds --max-cert-ttl {:?}",
        cli.cert_ttl,
        cli.max_cert_ttl
    );
    let keys = match &cli.cacerts_dir {
        Some(dir) => keys::load_plugged(dir)?,
        None => keys::load_or_generate_root(&cli.state_dir, &cli.trust_domain)?,
    };
    let signer = Arc::new(Signer::new(
        keys,
        cli.trust_domain.clone(),
        Lifetimes {
            default: cli.cert_ttl,
            max: cli.max_cert_ttl,
        },
    ));
    let (authn, binding, reloader) = callers(cli).await?;

    let serving_key = rcgen::KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256)?;
    let serving = signer.issue_serving(&serving_key, &cli.serving_names, SERVING_CERT_TTL)?;
    let identity = ServingIdentity {
        // The root stays out of what the server presents; clients hold it already.
        chain_pem: serving.chain_pem[..serving.chain_pem.len() - 1].concat(),
        key_pem: serving_key.serialize_pem(),
    };
    let root_pem = signer.root_pem().to_string();
    let service = CaService::new(signer, authn, binding);
    let limits = ServerLimits {
        request_timeout: cli.request_timeout,
        ..ServerLimits::default()
    };

    let local_addr = listener.local_addr()?;
    let (shutdown, shutdown_rx) = oneshot::channel::<()>();
    let server = tokio::spawn(crate::api::serve(
        listener,
        service,
        identity,
        limits,
        async move {
            let _ = shutdown_rx.await;
        },
    ));
    tracing::info!(addr = %local_addr, trust_domain = %cli.trust_domain, "CA serving");
    Ok(RunningCa {
        local_addr,
        root_pem,
        shutdown,
        server,
        reloader,
    })
}
