//! A throwaway root and a serving certificate it signs, as PEM: what a
//! server needs (the state server) and what its clients trust.

use rcgen::{
    BasicConstraints, CertificateParams, CertifiedIssuer, DnType, ExtendedKeyUsagePurpose, IsCa,
    KeyPair, KeyUsagePurpose,
};

/// A root, and a leaf for `server_name` signed by it.
#[derive(Clone, Debug)]
pub struct ServingPki {
    pub root_pem: String,
    pub chain_pem: String,
    pub key_pem: String,
}

impl ServingPki {
    pub fn new(server_name: &str) -> Result<Self, rcgen::Error> {
        let mut root = CertificateParams::new(Vec::<String>::new())?;
        root.distinguished_name
            .push(DnType::CommonName, "ambit test root");
        root.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        root.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
        let issuer = CertifiedIssuer::self_signed(root, KeyPair::generate()?)?;
        let key = KeyPair::generate()?;
        let mut leaf = CertificateParams::new(vec![server_name.to_owned()])?;
        leaf.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
        leaf.key_usages = vec![KeyUsagePurpose::DigitalSignature];
        let cert = leaf.signed_by(&key, &issuer)?;
        Ok(Self {
            root_pem: issuer.pem(),
            chain_pem: cert.pem(),
            key_pem: key.serialize_pem(),
        })
    }
}
