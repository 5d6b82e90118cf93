use super::*;

fn pair(name: &str) -> (String, String) {
    let key = rcgen::KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).unwrap();
    let cert = rcgen::CertificateParams::new(vec![name.to_string()])
        .unwrap()
        .self_signed(&key)
        .unwrap();
    (cert.pem(), key.serialize_pem())
}

#[test]
fn a_matching_pair_is_accepted_and_anything_else_names_the_file() {
    let (cert, key) = pair("ambit-ca");
    let (_, other_key) = pair("other");
    let (c, k) = (Path::new("tls.crt"), Path::new("tls.key"));
    certified_key(c, cert.as_bytes(), k, key.as_bytes()).unwrap();

    let mismatch = certified_key(c, cert.as_bytes(), k, other_key.as_bytes()).unwrap_err();
    assert!(
        matches!(mismatch, ServingError::KeyMismatch { .. }),
        "{mismatch}"
    );
    let empty = certified_key(c, b"", k, key.as_bytes()).unwrap_err();
    assert_eq!(empty.to_string(), "tls.crt: holds no certificate");
    let garbage = certified_key(c, cert.as_bytes(), k, b"garbage").unwrap_err();
    assert!(garbage.to_string().starts_with("tls.key: "), "{garbage}");
}
