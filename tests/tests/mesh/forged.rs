//! Clients that lie to analyzer's HBONE port, dialling from the pod outside
//! the mesh (its traffic is not captured on its own node, so it reaches
//! analyzer's agent directly) or from a node's own address: a certificate
//! from another root, a valid certificate of one pod (sleep) presented from
//! another pod's address (legacy's), the same certificate from a node
//! claiming to speak for guestbook's address through `forwarded`, a CONNECT
//! to a pod other than the one dialled, garbage bytes, and a connection that
//! never speaks. Each is refused, and the agent keeps serving honest
//! clients, including a tunnel opened before the attacks.
//!
//! The honest direct client (legacy's own certificate from the real CA) is
//! the control: the same code path succeeds when nothing is forged.

// Fixture code outside #[test] fns: a failure here is a broken test setup.
#![allow(clippy::unwrap_used)]

use std::future::Future;
use std::io::{Read, Write};
use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use ambit_agent::hbone::client::{ClientSettings, Connection};
use ambit_agent::hbone::{ConnectError, ConnectRequest, PlainConnector, TlsConfigs};
use ambit_agent::identity::{TrustBundle, WorkloadCertificate};
use ambit_ca::SpiffeId;
use ambit_ca::authn::BearerToken;
use ambit_ca::client::{CaClient, CaClientConfig};
use ambit_tests::mesh::TRUST_DOMAIN;
use ambit_tests::{Mesh, MeshPod, Netns, require_e2e};
use http::StatusCode;
use rcgen::{
    BasicConstraints, CertificateParams, CertifiedIssuer, DistinguishedName, DnType,
    ExtendedKeyUsagePurpose, IsCa, KeyPair, KeyUsagePurpose, SanType,
};
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use crate::scenario::{ECHO_PORT, Outcome, echo, payload};

/// Runs `make()`'s future on a single-threaded runtime whose thread is in
/// `netns`, so every socket it opens belongs to that namespace.
fn block_on_in<T, F, Fut>(netns: &Netns, make: F) -> T
where
    T: Send,
    F: FnOnce() -> Fut + Send,
    Fut: Future<Output = T>,
{
    netns
        .run(|| {
            tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .unwrap()
                .block_on(make())
        })
        .unwrap()
}

fn spiffe(pod: &MeshPod) -> SpiffeId {
    SpiffeId::new(TRUST_DOMAIN, &pod.namespace, &pod.service_account).unwrap()
}

/// A certificate for `identity` from the mesh's real CA, asked for with
/// node `node`'s bootstrap token (the CA signs only identities of pods on it).
fn issued_by_ca(mesh: &Mesh, node: usize, identity: &SpiffeId) -> Arc<WorkloadCertificate> {
    let key = KeyPair::generate().unwrap();
    let mut params = CertificateParams::default();
    params.distinguished_name = DistinguishedName::new();
    params.subject_alt_names = vec![SanType::URI(identity.to_string().try_into().unwrap())];
    let csr = params.serialize_request(&key).unwrap().pem().unwrap();
    let mut config = CaClientConfig::new(
        format!("https://{}", mesh.ca_addr()),
        mesh.root_cert_pem().unwrap(),
    );
    config.token = Some(BearerToken::new(mesh.token(node).unwrap()));
    let chain = block_on_in(mesh.ca_netns(), || async move {
        CaClient::new(config)
            .unwrap()
            .create_certificate(&csr, Duration::from_secs(3600), identity)
            .await
    })
    .unwrap_or_else(|e| panic!("the CA refused {identity} for node{node}: {e}"));
    let mut ders: Vec<CertificateDer<'static>> = chain
        .iter()
        .map(|pem| CertificateDer::from_pem_slice(pem.as_bytes()).unwrap())
        .collect();
    ders.pop(); // the root
    workload_cert(identity.clone(), ders, &key)
}

fn workload_cert(
    identity: SpiffeId,
    chain: Vec<CertificateDer<'static>>,
    key: &KeyPair,
) -> Arc<WorkloadCertificate> {
    let now = SystemTime::now();
    Arc::new(WorkloadCertificate {
        identity,
        chain,
        key: PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(key.serialize_der())),
        not_before: now - Duration::from_secs(60),
        not_after: now + Duration::from_secs(3600),
    })
}

/// A certificate for `identity` from a root nobody in the mesh trusts.
fn issued_by_stranger(identity: &SpiffeId) -> Arc<WorkloadCertificate> {
    let mut root = CertificateParams::new(Vec::<String>::new()).unwrap();
    root.distinguished_name
        .push(DnType::CommonName, "stranger root");
    root.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    root.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
    let issuer = CertifiedIssuer::self_signed(root, KeyPair::generate().unwrap()).unwrap();
    let key = KeyPair::generate().unwrap();
    let mut leaf = CertificateParams::new(Vec::<String>::new()).unwrap();
    leaf.subject_alt_names = vec![SanType::URI(identity.to_string().try_into().unwrap())];
    leaf.extended_key_usages = vec![
        ExtendedKeyUsagePurpose::ServerAuth,
        ExtendedKeyUsagePurpose::ClientAuth,
    ];
    leaf.key_usages = vec![KeyUsagePurpose::DigitalSignature];
    let cert = leaf.signed_by(&key, &issuer).unwrap();
    workload_cert(identity.clone(), vec![cert.der().clone()], &key)
}

/// Opens one HBONE tunnel from namespace `from` to `dialled`'s 15008
/// presenting `source`, asking for `target` on behalf of `claimed` (the
/// `forwarded` client; the dialling pod's own address unless a test lies),
/// and echoes a payload through it.
fn tunnel(
    mesh: &Mesh,
    from: &Netns,
    source: Arc<WorkloadCertificate>,
    dialled: &MeshPod,
    target: SocketAddr,
    claimed: IpAddr,
) -> Result<(), ConnectError> {
    let root = CertificateDer::from_pem_slice(mesh.root_cert_pem().unwrap().as_bytes()).unwrap();
    let tls = TlsConfigs::new(TrustBundle {
        trust_domain: TRUST_DOMAIN.to_owned(),
        roots: Arc::new(vec![root]),
    })
    .unwrap();
    let request = ConnectRequest {
        source,
        destination: spiffe(dialled),
        hbone_addr: dialled.addr(15008),
        target,
        client: SocketAddr::new(claimed, 40_000),
        service_host: None,
        baggage: None,
    };
    let settings = ClientSettings {
        connect_timeout: Duration::from_secs(5),
        ..ClientSettings::default()
    };
    block_on_in(from, || async move {
        let conn = Connection::connect(&PlainConnector, &tls, &request, &settings).await?;
        let mut stream = conn.open(request.target, request.client, None).await?;
        let sent = payload("direct-hbone", 4096);
        stream.write_all(&sent).await.map_err(io_error)?;
        stream.shutdown().await.map_err(io_error)?;
        let mut back = Vec::new();
        stream.read_to_end(&mut back).await.map_err(io_error)?;
        assert_eq!(back, sent, "echo through a direct tunnel");
        Ok(())
    })
}

fn io_error(e: std::io::Error) -> ConnectError {
    ConnectError::Tls(e)
}

#[test]
fn forged_clients_are_refused_and_the_agent_keeps_serving() {
    if !require_e2e() {
        return;
    }
    let gb = crate::scenario::start();
    let mesh = &gb.mesh;
    let (legacy, analyzer, guestbook) = (gb.pod("legacy"), gb.pod("analyzer"), gb.pod("guestbook"));

    // A mesh connection opened before the attacks, used again after them.
    let mut early = guestbook
        .netns()
        .connect(analyzer.addr(ECHO_PORT))
        .unwrap()
        .unwrap();
    early
        .set_read_timeout(Some(Duration::from_secs(5)))
        .unwrap();
    let mut buf = [0u8; 5];
    early.write_all(b"early").unwrap();
    early.read_exact(&mut buf).unwrap();
    assert_eq!(&buf, b"early");
    // A client that connects and never speaks must not hold the agent up.
    let silent = legacy
        .netns()
        .connect(analyzer.addr(15008))
        .unwrap()
        .unwrap();

    // Control: legacy's own identity, honestly presented, gets through.
    let legacy_cert = issued_by_ca(mesh, 0, &spiffe(legacy));
    tunnel(
        mesh,
        legacy.netns(),
        legacy_cert.clone(),
        analyzer,
        analyzer.addr(ECHO_PORT),
        legacy.ip().into(),
    )
    .unwrap_or_else(|e| panic!("the honest direct client was refused: {e}"));

    // 1. A certificate from another root, claiming a real identity.
    let stranger = issued_by_stranger(&spiffe(legacy));
    let refused = tunnel(
        mesh,
        legacy.netns(),
        stranger,
        analyzer,
        analyzer.addr(ECHO_PORT),
        legacy.ip().into(),
    );
    assert!(
        refused.is_err(),
        "a certificate from another root was accepted"
    );

    // 2. A valid certificate of sleep, presented from legacy's address: a
    // workload only ever speaks for itself, so the pod address the tunnel
    // comes from must be the certificate's, whatever the policy says.
    let sleep_cert = issued_by_ca(mesh, 2, &spiffe(gb.pod("sleep")));
    let refused = tunnel(
        mesh,
        legacy.netns(),
        sleep_cert.clone(),
        analyzer,
        analyzer.addr(ECHO_PORT),
        legacy.ip().into(),
    );
    assert!(
        matches!(refused, Err(ConnectError::Status(StatusCode::UNAUTHORIZED))),
        "sleep's certificate from legacy's address: {refused:?}"
    );

    // 2b. The same certificate from node0's own address (where agents dial
    // from), with a `forwarded` header claiming guestbook's pod. The agent
    // believes a forwarded address only from the identity of the pod that
    // holds it, so it judges the tunnel by its real source (the node) and a
    // policy admitting guestbook's address refuses it; the real guestbook
    // still gets in.
    let by_address = format!(
        "apiVersion: security.istio.io/v1\nkind: AuthorizationPolicy\n\
         metadata: {{name: guestbook-address, namespace: default}}\n\
         spec:\n  selector: {{matchLabels: {{app: analyzer}}}}\n  action: ALLOW\n  \
         rules:\n  - from:\n    - source: {{ipBlocks: [\"{}/32\"]}}\n",
        guestbook.ip()
    );
    mesh.apply(&by_address).unwrap();
    assert_eq!(
        echo(guestbook, analyzer.addr(ECHO_PORT), &payload("real", 1024)),
        Outcome::Allowed
    );
    let refused = tunnel(
        mesh,
        &mesh.node(0).netns,
        sleep_cert,
        analyzer,
        analyzer.addr(ECHO_PORT),
        guestbook.ip().into(),
    );
    assert!(
        matches!(refused, Err(ConnectError::Status(StatusCode::UNAUTHORIZED))),
        "sleep's certificate speaking for guestbook's address: {refused:?}"
    );
    mesh.remove("guestbook-address").unwrap();

    // 3. Dialling analyzer but asking for guestbook.
    let refused = tunnel(
        mesh,
        legacy.netns(),
        legacy_cert,
        analyzer,
        guestbook.addr(ECHO_PORT),
        legacy.ip().into(),
    );
    assert!(
        matches!(refused, Err(ConnectError::Status(StatusCode::BAD_REQUEST))),
        "CONNECT to another pod: {refused:?}"
    );

    // 4. Garbage instead of a TLS ClientHello: the agent hangs up promptly.
    let mut garbage = legacy
        .netns()
        .connect(analyzer.addr(15008))
        .unwrap()
        .unwrap();
    garbage
        .set_read_timeout(Some(Duration::from_secs(5)))
        .unwrap();
    let start = Instant::now();
    let _ = garbage.write_all(&payload("\x16\x03\x01garbage", 8192));
    let mut answer = Vec::new();
    let read = garbage.read_to_end(&mut answer);
    assert!(
        start.elapsed() < Duration::from_secs(4) && answer.len() < 64,
        "garbage on 15008: read {read:?}, {} bytes back after {:?}",
        answer.len(),
        start.elapsed()
    );

    // The agent still serves: a new mesh connection, the early one, and the
    // honest direct client.
    assert_eq!(
        echo(
            guestbook,
            analyzer.addr(ECHO_PORT),
            &payload("after", 65536)
        ),
        Outcome::Allowed
    );
    early.write_all(b"later").unwrap();
    early.read_exact(&mut buf).unwrap();
    assert_eq!(&buf, b"later");
    let again = issued_by_ca(mesh, 0, &spiffe(legacy));
    tunnel(
        mesh,
        legacy.netns(),
        again,
        analyzer,
        analyzer.addr(ECHO_PORT),
        legacy.ip().into(),
    )
    .unwrap();
    drop(silent);
}
