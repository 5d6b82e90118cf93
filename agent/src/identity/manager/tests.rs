use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};

use crate::identity::IssueError;
use ambit_ca::client::CaClientError;
use ambit_ca::signer::{Lifetimes, Signer};
use futures::future::BoxFuture;

use super::*;

/// Signs in-process with a real CA signer; counts calls and concurrency, and
/// can be switched to fail like an unreachable CA.
struct FakeCa {
    signer: Signer,
    calls: AtomicUsize,
    in_flight: AtomicUsize,
    max_in_flight: AtomicUsize,
    down: AtomicBool,
    delay: Duration,
}

impl FakeCa {
    fn new(dir: &std::path::Path, lifetime: Duration, delay: Duration) -> Arc<Self> {
        let keys = ambit_ca::keys::load_or_generate_root(dir, "cluster.local").unwrap();
        let signer = Signer::new(
            keys,
            "cluster.local",
            Lifetimes {
                default: lifetime,
                max: lifetime,
            },
        );
        Arc::new(Self {
            signer,
            calls: AtomicUsize::new(0),
            in_flight: AtomicUsize::new(0),
            max_in_flight: AtomicUsize::new(0),
            down: AtomicBool::new(false),
            delay,
        })
    }
}

impl CertificateIssuer for Arc<FakeCa> {
    fn create_certificate<'a>(
        &'a self,
        csr_pem: &'a str,
        validity: Duration,
        identity: &'a SpiffeId,
    ) -> BoxFuture<'a, Result<Vec<String>, IssueError>> {
        Box::pin(async move {
            self.calls.fetch_add(1, Ordering::SeqCst);
            let now = self.in_flight.fetch_add(1, Ordering::SeqCst) + 1;
            self.max_in_flight.fetch_max(now, Ordering::SeqCst);
            tokio::time::sleep(self.delay).await;
            self.in_flight.fetch_sub(1, Ordering::SeqCst);
            if self.down.load(Ordering::SeqCst) {
                return Err(CaClientError::Status {
                    code: tonic::Code::Unavailable,
                    message: "connection refused".into(),
                }
                .into());
            }
            let issued = self.signer.sign(csr_pem, identity, Some(validity)).unwrap();
            Ok(issued.chain_pem)
        })
    }
}

fn id(n: usize) -> SpiffeId {
    SpiffeId::new("cluster.local", "ns", format!("sa-{n}")).unwrap()
}

fn config(max_concurrent: usize) -> IdentityConfig {
    IdentityConfig {
        max_concurrent_fetches: max_concurrent,
        backoff: Backoff {
            initial: Duration::from_millis(50),
            max: Duration::from_millis(200),
        },
        ..IdentityConfig::default()
    }
}

#[tokio::test]
async fn concurrent_callers_share_one_fetch() {
    let dir = tempfile::tempdir().unwrap();
    let ca = FakeCa::new(
        dir.path(),
        Duration::from_secs(3600),
        Duration::from_millis(100),
    );
    let manager = IdentityManager::new(config(8), Arc::clone(&ca));
    let one = id(1);
    let calls = (0..50).map(|_| manager.certificate(&one));
    let certs = futures::future::join_all(calls).await;
    assert_eq!(ca.calls.load(Ordering::SeqCst), 1);
    let first = certs[0].as_ref().unwrap();
    assert_eq!(first.identity, id(1));
    assert_eq!(first.chain.len(), 2, "leaf and root, as issued");
    for c in &certs {
        assert!(Arc::ptr_eq(c.as_ref().unwrap(), first));
    }
}

#[tokio::test]
async fn many_identities_are_bounded_and_all_provisioned() {
    let dir = tempfile::tempdir().unwrap();
    let ca = FakeCa::new(
        dir.path(),
        Duration::from_secs(3600),
        Duration::from_millis(5),
    );
    let manager = IdentityManager::new(config(8), Arc::clone(&ca));
    manager.track((0..500).map(id));
    let certs = futures::future::join_all((0..500).map(|n| {
        let manager = Arc::clone(&manager);
        async move { manager.certificate(&id(n)).await }
    }))
    .await;
    assert!(certs.iter().all(Result::is_ok));
    assert_eq!(ca.calls.load(Ordering::SeqCst), 500);
    assert!(ca.max_in_flight.load(Ordering::SeqCst) <= 8);
    let status = manager.status();
    assert_eq!(status.len(), 500);
    assert!(
        status
            .iter()
            .all(|s| s.state == CertificateState::Ready && s.issued == 1)
    );
}

#[tokio::test]
async fn departed_identities_are_dropped() {
    let dir = tempfile::tempdir().unwrap();
    let ca = FakeCa::new(dir.path(), Duration::from_secs(3600), Duration::ZERO);
    let manager = IdentityManager::new(config(8), Arc::clone(&ca));
    manager.track([id(1), id(2)]);
    manager.certificate(&id(1)).await.unwrap();
    manager.certificate(&id(2)).await.unwrap();
    manager.track([id(2)]);
    let held: Vec<String> = manager.status().into_iter().map(|s| s.identity).collect();
    assert_eq!(held, vec![id(2).to_string()]);

    // A caller waiting on an identity that is then dropped is told so.
    ca.down.store(true, Ordering::SeqCst);
    let waiting = {
        let manager = Arc::clone(&manager);
        tokio::spawn(async move { manager.certificate(&id(3)).await })
    };
    tokio::time::sleep(Duration::from_millis(20)).await;
    manager.track([id(2)]);
    let result = waiting.await.unwrap();
    assert!(
        matches!(
            result,
            Err(IdentityError::Dropped(_)) | Err(IdentityError::Unavailable { .. })
        ),
        "{result:?}"
    );
}

#[tokio::test]
async fn ca_outage_keeps_the_current_certificate_and_reports_it() {
    let dir = tempfile::tempdir().unwrap();
    // X.509 times have one-second resolution, so lifetimes here are whole seconds.
    let ca = FakeCa::new(dir.path(), Duration::from_secs(4), Duration::ZERO);
    let manager = IdentityManager::new(config(8), Arc::clone(&ca));
    let first = manager.certificate(&id(1)).await.unwrap();
    ca.down.store(true, Ordering::SeqCst);
    // Renewal (at about half the remaining life) fails; the current certificate
    // is still served meanwhile.
    let remaining = first.not_after.duration_since(SystemTime::now()).unwrap();
    tokio::time::sleep(remaining.mul_f64(0.6) + Duration::from_millis(300)).await;
    let served = manager.certificate(&id(1)).await.unwrap();
    assert!(Arc::ptr_eq(&first, &served));
    let status = &manager.status()[0];
    assert_eq!(status.state, CertificateState::Degraded);
    assert!(
        status
            .last_error
            .as_deref()
            .unwrap()
            .contains("connection refused")
    );

    // Once it expires, callers get the error rather than an expired certificate.
    let remaining = first.not_after.duration_since(SystemTime::now()).unwrap();
    tokio::time::sleep(remaining + Duration::from_millis(100)).await;
    let err = manager.certificate(&id(1)).await.unwrap_err();
    assert!(err.to_string().contains("connection refused"), "{err}");
    assert_eq!(manager.status()[0].state, CertificateState::Unavailable);

    // The CA comes back: recovered without intervention.
    ca.down.store(false, Ordering::SeqCst);
    tokio::time::sleep(Duration::from_millis(400)).await;
    let renewed = manager.certificate(&id(1)).await.unwrap();
    assert!(renewed.not_after > first.not_after);
    assert_eq!(manager.status()[0].state, CertificateState::Ready);
}
