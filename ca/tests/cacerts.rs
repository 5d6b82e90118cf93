//! The CA running as an intermediate plugged in from Istio's `cacerts` layout,
//! made with the openssl CLI: chains end at the plugged root, and inconsistent
//! files stop the CA with an error naming the file.
// Test helpers outside #[test] fns panic on a broken environment by design.
#![allow(clippy::unwrap_used)]

#[path = "fixture/ca.rs"]
mod fixture;

use std::path::Path;
use std::process::Command;
use std::time::Duration;

use fixture::*;

fn openssl(dir: &Path, args: &[&str]) {
    let out = Command::new("openssl")
        .current_dir(dir)
        .args(args)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "openssl {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

fn make_root(dir: &Path, name: &str) {
    openssl(
        dir,
        &[
            "req",
            "-x509",
            "-new",
            "-newkey",
            "ec",
            "-pkeyopt",
            "ec_paramgen_curve:P-256",
            "-nodes",
            "-keyout",
            &format!("{name}-key.pem"),
            "-out",
            &format!("{name}-cert.pem"),
            "-days",
            "3650",
            "-subj",
            &format!("/O=cluster.local/CN={name}"),
            "-addext",
            "basicConstraints=critical,CA:TRUE",
            "-addext",
            "keyUsage=critical,keyCertSign,cRLSign",
        ],
    );
}

/// Writes a consistent cacerts directory: root, and an intermediate it signed.
fn make_cacerts(dir: &Path) {
    make_root(dir, "root");
    std::fs::write(
        dir.join("ext.cnf"),
        "basicConstraints=critical,CA:TRUE\nkeyUsage=critical,keyCertSign,cRLSign,digitalSignature\nsubjectKeyIdentifier=hash\nauthorityKeyIdentifier=keyid\n",
    )
    .unwrap();
    openssl(
        dir,
        &[
            "req",
            "-new",
            "-newkey",
            "ec",
            "-pkeyopt",
            "ec_paramgen_curve:P-256",
            "-nodes",
            "-keyout",
            "ca-key.pem",
            "-out",
            "ca.csr",
            "-subj",
            "/O=cluster.local/CN=Intermediate",
        ],
    );
    openssl(
        dir,
        &[
            "x509",
            "-req",
            "-in",
            "ca.csr",
            "-CA",
            "root-cert.pem",
            "-CAkey",
            "root-key.pem",
            "-CAcreateserial",
            "-days",
            "365",
            "-out",
            "ca-cert.pem",
            "-extfile",
            "ext.cnf",
        ],
    );
    let chain = std::fs::read_to_string(dir.join("ca-cert.pem")).unwrap()
        + &std::fs::read_to_string(dir.join("root-cert.pem")).unwrap();
    std::fs::write(dir.join("cert-chain.pem"), chain).unwrap();
}

fn der(pem_text: &str) -> Vec<u8> {
    pem::parse(pem_text).unwrap().into_contents()
}

#[tokio::test]
async fn chain_ends_at_the_plugged_root() {
    let dir = tempfile::tempdir().unwrap();
    let cacerts = dir.path().join("cacerts");
    std::fs::create_dir(&cacerts).unwrap();
    make_cacerts(&cacerts);
    let ca = start(&cli(
        dir.path(),
        &["--cacerts-dir", cacerts.to_str().unwrap()],
    ))
    .await;
    let root_file = std::fs::read_to_string(cacerts.join("root-cert.pem")).unwrap();
    assert_eq!(der(&ca.root_pem), der(&root_file));

    let chain = client(&ca, Some(TOKEN_A))
        .create_certificate(&csr_for(&cart()), Duration::from_secs(600), &cart())
        .await
        .unwrap();
    assert_eq!(chain.len(), 3, "leaf, intermediate, root");
    assert_eq!(
        der(&chain[1]),
        der(&std::fs::read_to_string(cacerts.join("ca-cert.pem")).unwrap())
    );
    assert_eq!(der(&chain[2]), der(&root_file));
    assert_eq!(uri_sans(&chain[0]), vec![cart().to_string()]);
    openssl_verify(dir.path(), &root_file, &chain).unwrap();
    // No self-generated root was created.
    assert!(!dir.path().join("state").join("root-key.pem").exists());
    ca.shutdown().await.unwrap();
}

async fn start_error(dir: &Path, cacerts: &Path) -> String {
    let config = cli(dir, &["--cacerts-dir", cacerts.to_str().unwrap()]);
    format!("{:#}", ambit_ca::app::start(&config).await.unwrap_err())
}

#[tokio::test]
async fn inconsistent_files_stop_the_ca_naming_the_file() {
    let dir = tempfile::tempdir().unwrap();
    let cacerts = dir.path().join("cacerts");
    std::fs::create_dir(&cacerts).unwrap();
    make_cacerts(&cacerts);

    // Key that does not match ca-cert.pem.
    make_root(&cacerts, "stray");
    std::fs::copy(cacerts.join("ca-key.pem"), cacerts.join("ca-key.good")).unwrap();
    std::fs::copy(cacerts.join("stray-key.pem"), cacerts.join("ca-key.pem")).unwrap();
    let err = start_error(dir.path(), &cacerts).await;
    assert!(
        err.contains("ca-key.pem") && err.contains("does not match"),
        "{err}"
    );
    std::fs::copy(cacerts.join("ca-key.good"), cacerts.join("ca-key.pem")).unwrap();

    // A root that did not sign the CA certificate.
    std::fs::copy(
        cacerts.join("root-cert.pem"),
        cacerts.join("root-cert.good"),
    )
    .unwrap();
    std::fs::copy(
        cacerts.join("stray-cert.pem"),
        cacerts.join("root-cert.pem"),
    )
    .unwrap();
    std::fs::copy(cacerts.join("ca-cert.pem"), cacerts.join("cert-chain.pem")).unwrap();
    let err = start_error(dir.path(), &cacerts).await;
    assert!(
        err.contains("ca-cert.pem") && err.contains("not signed by"),
        "{err}"
    );
    std::fs::copy(
        cacerts.join("root-cert.good"),
        cacerts.join("root-cert.pem"),
    )
    .unwrap();

    // Missing file.
    std::fs::remove_file(cacerts.join("cert-chain.pem")).unwrap();
    let err = start_error(dir.path(), &cacerts).await;
    assert!(err.contains("cert-chain.pem"), "{err}");
    std::fs::copy(cacerts.join("ca-cert.pem"), cacerts.join("cert-chain.pem")).unwrap();

    // Expired CA certificate (signed by the real root, so only expiry is wrong).
    std::fs::write(
        cacerts.join("ext.cnf"),
        "basicConstraints=critical,CA:TRUE\nkeyUsage=critical,keyCertSign\n",
    )
    .unwrap();
    openssl(
        &cacerts,
        &[
            "x509",
            "-req",
            "-in",
            "ca.csr",
            "-CA",
            "root-cert.pem",
            "-CAkey",
            "root-key.pem",
            "-CAcreateserial",
            "-days",
            "-1",
            "-out",
            "ca-cert.pem",
            "-extfile",
            "ext.cnf",
        ],
    );
    let err = start_error(dir.path(), &cacerts).await;
    assert!(
        err.contains("ca-cert.pem") && err.contains("not valid now"),
        "{err}"
    );
}
