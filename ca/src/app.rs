//! Composition root: turns a `Cli` into a running CA (keys, signer, authenticator,
//! binding, TLS server) and hands back its bound address and a shutdown handle.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use tokio::net::TcpListener;
use tokio::sync::oneshot;
use tokio::task::JoinHandle;

use prometheus_client::registry::Registry;

use crate::api::{CaService, ServeError, ServerLimits};
use crate::authn::Authenticator;
use crate::authn::bootstrap::FollowedTokens;
use crate::authn::token_review::TokenReviewAuthenticator;
use crate::binding::{IdentityBinding, StateFileBinding};
use crate::cli::Cli;
use crate::keys;
use crate::metrics::CaMetrics;
use crate::serving::{FollowedServingCert, ServingCert};
use crate::signer::{Lifetimes, Signer};

/// Longest life of the CA's own serving certificate (a restart issues a new one).
const SERVING_CERT_TTL: Duration = Duration::from_secs(365 * 24 * 3600);

/// A CA serving on a bound socket.
#[derive(Debug)]
pub struct RunningCa {
    pub local_addr: SocketAddr,
    /// Where `/metrics` is served.
    pub metrics_addr: SocketAddr,
    /// PEM root every issued chain ends at.
    pub root_pem: String,
    shutdown: oneshot::Sender<()>,
    server: JoinHandle<Result<(), ServeError>>,
    reloader: JoinHandle<()>,
    metrics: JoinHandle<()>,
    /// Keeps following the serving certificate files, when they are used.
    _serving: Option<FollowedServingCert>,
}

impl RunningCa {
    /// Stops accepting, lets in-flight calls finish, and returns.
    pub async fn shutdown(self) -> anyhow::Result<()> {
        let _ = self.shutdown.send(());
        self.reloader.abort();
        self.metrics.abort();
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
    metrics: &CaMetrics,
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
    let tokens = FollowedTokens::start(
        &cli.tokens_file,
        cli.files_poll,
        Some(metrics.reload_hook("tokens")),
    )
    .await?;
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
    let mut registry = Registry::default();
    let metrics = CaMetrics::new(&mut registry);
    metrics.set_ca_cert_expiry(signer.issuer_not_after());
    let (authn, binding, reloader) = callers(cli, &metrics).await?;

    let (identity, followed) = serving_cert(cli, &signer, &metrics).await?;
    let root_pem = signer.root_pem().to_string();
    let service = CaService::new(signer, authn, binding).with_metrics(metrics);
    let limits = ServerLimits {
        request_timeout: cli.request_timeout,
        ..ServerLimits::default()
    };
    let (metrics_addr, metrics) = crate::metrics::bind(cli.metrics_addr, Arc::new(registry))
        .await
        .with_context(|| format!("binding --metrics-addr {}", cli.metrics_addr))?;

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
        metrics_addr,
        root_pem,
        shutdown,
        server,
        reloader,
        metrics,
        _serving: followed,
    })
}

/// The certificate the CA serves with: from `--serving-cert`/`--serving-key`,
/// followed, or else issued by the CA to itself for `--serving-names`.
async fn serving_cert(
    cli: &Cli,
    signer: &Signer,
    metrics: &CaMetrics,
) -> anyhow::Result<(ServingCert, Option<FollowedServingCert>)> {
    if let (Some(cert), Some(key)) = (&cli.serving_cert, &cli.serving_key) {
        let followed = FollowedServingCert::start(
            cert,
            key,
            cli.files_poll,
            Some(metrics.reload_hook("serving_certificate")),
        )
        .await?;
        return Ok((followed.cert.clone(), Some(followed)));
    }
    let key = rcgen::KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256)?;
    let issued = signer.issue_serving(&key, &cli.serving_names, SERVING_CERT_TTL)?;
    // The root stays out of what the server presents; clients hold it already.
    let chain = issued.chain_pem[..issued.chain_pem.len() - 1].concat();
    Ok((ServingCert::fixed(&chain, &key.serialize_pem())?, None))
}
