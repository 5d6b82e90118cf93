use std::time::{Duration, SystemTime};

use rcgen::{CertificateParams, DistinguishedName, KeyPair, SanType};
use x509_parser::prelude::*;

use super::*;
use crate::keys;

fn signer(dir: &std::path::Path, max: Duration) -> Signer {
    let keys = keys::load_or_generate_root(dir, "cluster.local").unwrap();
    Signer::new(
        keys,
        "cluster.local",
        Lifetimes {
            default: Duration::from_secs(3600),
            max,
        },
    )
}

fn csr_with(key: &KeyPair, sans: &[&str]) -> String {
    let mut params = CertificateParams::default();
    params.distinguished_name = DistinguishedName::new();
    params.subject_alt_names = sans
        .iter()
        .map(|s| SanType::URI(rcgen::string::Ia5String::try_from(*s).unwrap()))
        .collect();
    params.serialize_request(key).unwrap().pem().unwrap()
}

fn id() -> SpiffeId {
    "spiffe://cluster.local/ns/shop/sa/cart".parse().unwrap()
}

fn p256() -> KeyPair {
    KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).unwrap()
}

#[test]
fn issues_leaf_with_only_the_identity() {
    let dir = tempfile::tempdir().unwrap();
    let signer = signer(dir.path(), Duration::from_secs(7200));
    let key = p256();
    let issued = signer
        .sign(
            &csr_with(&key, &[&id().to_string()]),
            &id(),
            Some(Duration::from_secs(600)),
        )
        .unwrap();
    assert_eq!(issued.chain_pem.len(), 2);
    assert_eq!(issued.chain_pem[1], signer.root_pem());

    let der = ::pem::parse(&issued.chain_pem[0]).unwrap().into_contents();
    let (_, cert) = X509Certificate::from_der(&der).unwrap();
    assert!(cert.subject().as_raw().len() <= 2, "subject must be empty");
    let san = cert.subject_alternative_name().unwrap().unwrap();
    assert!(san.critical);
    assert_eq!(
        san.value.general_names,
        vec![GeneralName::URI("spiffe://cluster.local/ns/shop/sa/cart")]
    );
    let ku = cert.key_usage().unwrap().unwrap().value;
    assert!(ku.digital_signature() && ku.key_encipherment() && !ku.key_cert_sign());
    let eku = cert.extended_key_usage().unwrap().unwrap().value;
    assert!(eku.server_auth && eku.client_auth);
    assert!(!cert.is_ca());
    assert_eq!(
        cert.public_key().raw,
        rcgen::PublicKeyData::subject_public_key_info(&key).as_slice()
    );
    let lifetime = cert.validity().not_after.timestamp()
        - SystemTime::now()
            .duration_since(SystemTime::UNIX_EPOCH)
            .unwrap()
            .as_secs() as i64;
    assert!((595..=601).contains(&lifetime), "lifetime {lifetime}");

    let root_der = ::pem::parse(signer.root_pem()).unwrap().into_contents();
    let (_, root) = X509Certificate::from_der(&root_der).unwrap();
    cert.verify_signature(Some(root.public_key())).unwrap();
}

#[test]
fn caps_and_defaults_lifetime() {
    let dir = tempfile::tempdir().unwrap();
    let signer = signer(dir.path(), Duration::from_secs(1800));
    let now = SystemTime::now();
    let csr = csr_with(&p256(), &[&id().to_string()]);
    let capped = signer
        .sign(&csr, &id(), Some(Duration::from_secs(999_999)))
        .unwrap();
    let secs = capped.not_after.duration_since(now).unwrap().as_secs();
    assert!((1798..=1800).contains(&secs), "{secs}");
    let default = signer.sign(&csr, &id(), None).unwrap();
    let secs = default.not_after.duration_since(now).unwrap().as_secs();
    assert!(
        (1798..=1800).contains(&secs),
        "default 3600 capped to max: {secs}"
    );
}

#[test]
fn refuses_each_bad_input() {
    let dir = tempfile::tempdir().unwrap();
    let signer = signer(dir.path(), Duration::from_secs(7200));
    let good = csr_with(&p256(), &[&id().to_string()]);

    let too_big = format!("{good}{}", "x".repeat(MAX_CSR_BYTES));
    assert!(matches!(
        signer.sign(&too_big, &id(), None),
        Err(SignError::TooLarge(_))
    ));
    assert!(matches!(
        signer.sign("hello", &id(), None),
        Err(SignError::NotPem(_))
    ));
    let cert_block = ::pem::encode(&::pem::Pem::new("CERTIFICATE", vec![1, 2, 3]));
    assert!(matches!(
        signer.sign(&cert_block, &id(), None),
        Err(SignError::NotPem(_))
    ));
    let garbage = ::pem::encode(&::pem::Pem::new(
        "CERTIFICATE REQUEST",
        vec![0x30, 3, 1, 2, 3],
    ));
    assert!(matches!(
        signer.sign(&garbage, &id(), None),
        Err(SignError::Malformed(_))
    ));

    let mut der = ::pem::parse(&good).unwrap().into_contents();
    let last = der.len() - 1;
    der[last] ^= 0x01;
    let tampered = ::pem::encode(&::pem::Pem::new("CERTIFICATE REQUEST", der));
    assert!(matches!(
        signer.sign(&tampered, &id(), None),
        Err(SignError::BadSignature)
    ));

    let ed = KeyPair::generate_for(&rcgen::PKCS_ED25519).unwrap();
    let ed_csr = csr_with(&ed, &[&id().to_string()]);
    assert!(matches!(
        signer.sign(&ed_csr, &id(), None),
        Err(SignError::UnsupportedKey(_))
    ));

    let other = csr_with(&p256(), &["spiffe://cluster.local/ns/shop/sa/admin"]);
    assert!(matches!(
        signer.sign(&other, &id(), None),
        Err(SignError::WrongSan { .. })
    ));
    let extra = csr_with(
        &p256(),
        &[&id().to_string(), "spiffe://cluster.local/ns/x/sa/y"],
    );
    assert!(matches!(
        signer.sign(&extra, &id(), None),
        Err(SignError::WrongSan { .. })
    ));
    let none = csr_with(&p256(), &[]);
    assert!(matches!(
        signer.sign(&none, &id(), None),
        Err(SignError::WrongSan { .. })
    ));

    let foreign: SpiffeId = "spiffe://other.domain/ns/shop/sa/cart".parse().unwrap();
    let csr = csr_with(&p256(), &[&foreign.to_string()]);
    assert!(matches!(
        signer.sign(&csr, &foreign, None),
        Err(SignError::ForeignTrustDomain { .. })
    ));
}

#[test]
fn reads_identity_from_csr() {
    let csr = csr_with(&p256(), &[&id().to_string()]);
    assert_eq!(csr_identity(&csr).unwrap(), id());
    let two = csr_with(&p256(), &[&id().to_string(), &id().to_string()]);
    assert!(csr_identity(&two).is_err());
}

#[test]
fn serving_names_that_are_addresses_become_ip_sans() {
    let dir = tempfile::tempdir().unwrap();
    let signer = signer(dir.path(), Duration::from_secs(3600));
    let names = ["ambit-ca", "10.96.0.12", "fd00::12"].map(String::from);
    let issued = signer
        .issue_serving(&p256(), &names, Duration::from_secs(60))
        .unwrap();
    let der = ::pem::parse(&issued.chain_pem[0]).unwrap().into_contents();
    let (_, cert) = X509Certificate::from_der(&der).unwrap();
    let sans: Vec<String> = cert
        .subject_alternative_name()
        .unwrap()
        .unwrap()
        .value
        .general_names
        .iter()
        .map(|n| match n {
            GeneralName::DNSName(d) => format!("DNS:{d}"),
            GeneralName::IPAddress(ip) => format!("IP:{}", ip.len()),
            other => format!("other:{other}"),
        })
        .collect();
    assert_eq!(sans, ["DNS:ambit-ca", "IP:4", "IP:16"]);
}
