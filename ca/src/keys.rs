//! The CA's signing key and certificate chain: either a self-generated root kept
//! in the state directory, or an intermediate plugged in from files laid out like
//! Istio's `cacerts` secret.
//!
//! Everything read from disk is checked before the CA serves: a key that does not
//! match its certificate, a CA certificate not signed by the root, or an expired CA
//! stops start-up with an error naming the file.

use std::fs;
use std::io::Write;
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use rcgen::{
    BasicConstraints, CertificateParams, DistinguishedName, DnType, IsCa, Issuer, KeyPair,
    KeyUsagePurpose, PublicKeyData,
};
use rustls_pki_types::CertificateDer;
use rustls_pki_types::pem::PemObject;
use x509_parser::certificate::X509Certificate;
use x509_parser::prelude::FromDer;

/// File names of the self-generated root inside the state directory.
pub const ROOT_CERT_FILE: &str = "root-cert.pem";
pub const ROOT_KEY_FILE: &str = "root-key.pem";

/// File names of Istio's `cacerts` layout.
pub const CA_CERT_FILE: &str = "ca-cert.pem";
pub const CA_KEY_FILE: &str = "ca-key.pem";
pub const CA_ROOT_FILE: &str = "root-cert.pem";
pub const CA_CHAIN_FILE: &str = "cert-chain.pem";

/// Lifetime of a self-generated root.
const ROOT_LIFETIME: Duration = Duration::from_secs(10 * 365 * 24 * 3600);

#[derive(Debug, thiserror::Error)]
pub enum KeyError {
    #[error("{}: {reason}", path.display())]
    File { path: PathBuf, reason: String },
    #[error("generating the root: {0}")]
    Generate(#[from] rcgen::Error),
}

impl KeyError {
    fn file(path: &Path, reason: impl Into<String>) -> Self {
        Self::File {
            path: path.to_path_buf(),
            reason: reason.into(),
        }
    }
}

/// The key and certificates the CA signs with.
pub struct CaKeys {
    /// Signs leaf certificates.
    pub issuer: Issuer<'static, KeyPair>,
    /// PEM, the issuing certificate first and the root last (one entry when the
    /// issuer is the root). Appended to every issued leaf.
    pub chain_pem: Vec<String>,
    /// When the issuing certificate expires; no leaf outlives it.
    pub issuer_not_after: SystemTime,
}

impl std::fmt::Debug for CaKeys {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CaKeys")
            .field("chain_len", &self.chain_pem.len())
            .field("issuer_not_after", &self.issuer_not_after)
            .finish_non_exhaustive()
    }
}

impl CaKeys {
    /// The root every issued chain ends at, PEM.
    pub fn root_pem(&self) -> &str {
        self.chain_pem
            .last()
            .map(String::as_str)
            .unwrap_or_default()
    }
}

/// Loads the root from `state_dir`, generating it (and the directory) on first start.
pub fn load_or_generate_root(state_dir: &Path, trust_domain: &str) -> Result<CaKeys, KeyError> {
    let cert_path = state_dir.join(ROOT_CERT_FILE);
    let key_path = state_dir.join(ROOT_KEY_FILE);
    if !cert_path.exists() && !key_path.exists() {
        generate_root(state_dir, trust_domain)?;
        tracing::info!(dir = %state_dir.display(), "generated a new root");
    } else {
        tracing::info!(dir = %state_dir.display(), "reusing the root");
    }
    let meta = fs::metadata(&key_path).map_err(|e| KeyError::file(&key_path, e.to_string()))?;
    if meta.permissions().mode() & 0o077 != 0 {
        return Err(KeyError::file(
            &key_path,
            "private key is readable by group or others; chmod 600 it",
        ));
    }
    let cert = read_certs(&cert_path)?.into_iter().next();
    let cert = cert.ok_or_else(|| KeyError::file(&cert_path, "holds no certificate"))?;
    let key = read_key(&key_path)?;
    let parsed = parse(&cert_path, &cert)?;
    check_key_matches(&key_path, &key, &parsed)?;
    check_ca_usable(&cert_path, &parsed)?;
    check_signed_by(&cert_path, &parsed, &cert_path, &parsed)?;
    let issuer_not_after = not_after(&parsed);
    let issuer = Issuer::from_ca_cert_der(&cert, key)
        .map_err(|e| KeyError::file(&cert_path, e.to_string()))?;
    Ok(CaKeys {
        issuer,
        chain_pem: vec![to_pem(&cert)],
        issuer_not_after,
    })
}

fn generate_root(state_dir: &Path, trust_domain: &str) -> Result<(), KeyError> {
    fs::create_dir_all(state_dir).map_err(|e| KeyError::file(state_dir, e.to_string()))?;
    fs::set_permissions(state_dir, fs::Permissions::from_mode(0o700))
        .map_err(|e| KeyError::file(state_dir, e.to_string()))?;
    let key = KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256)?;
    let mut params = CertificateParams::default();
    let mut dn = DistinguishedName::new();
    dn.push(DnType::OrganizationName, trust_domain);
    dn.push(DnType::CommonName, "Ambit root CA");
    params.distinguished_name = dn;
    params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    params.key_usages = vec![
        KeyUsagePurpose::KeyCertSign,
        KeyUsagePurpose::CrlSign,
        KeyUsagePurpose::DigitalSignature,
    ];
    let now = SystemTime::now();
    params.not_before = (now - Duration::from_secs(3600)).into();
    params.not_after = (now + ROOT_LIFETIME).into();
    params.serial_number = Some(crate::serial::random_serial());
    let cert = params.self_signed(&key)?;
    // Key first, written private from the start: a crash between the two writes
    // leaves a key without a cert, which the next start reports instead of
    // silently replacing the root that issued live certificates.
    write_private(&state_dir.join(ROOT_KEY_FILE), &key.serialize_pem())?;
    write_public(&state_dir.join(ROOT_CERT_FILE), &cert.pem())?;
    Ok(())
}

/// Loads a plugged-in intermediate from Istio's `cacerts` layout in `dir`.
pub fn load_plugged(dir: &Path) -> Result<CaKeys, KeyError> {
    let ca_cert_path = dir.join(CA_CERT_FILE);
    let ca_key_path = dir.join(CA_KEY_FILE);
    let root_path = dir.join(CA_ROOT_FILE);
    let chain_path = dir.join(CA_CHAIN_FILE);

    let ca_cert = read_certs(&ca_cert_path)?.into_iter().next();
    let ca_cert = ca_cert.ok_or_else(|| KeyError::file(&ca_cert_path, "holds no certificate"))?;
    let root = read_certs(&root_path)?.into_iter().next();
    let root = root.ok_or_else(|| KeyError::file(&root_path, "holds no certificate"))?;
    let chain = read_certs(&chain_path)?;
    let key = read_key(&ca_key_path)?;

    let ca_parsed = parse(&ca_cert_path, &ca_cert)?;
    let root_parsed = parse(&root_path, &root)?;
    check_key_matches(&ca_key_path, &key, &ca_parsed)?;
    check_ca_usable(&ca_cert_path, &ca_parsed)?;
    check_ca_usable(&root_path, &root_parsed)?;
    check_signed_by(&root_path, &root_parsed, &root_path, &root_parsed)?;

    // cert-chain.pem holds the CA certificate and intermediates, sometimes the
    // root too. Walk it from the CA certificate up to the root, checking each link.
    let intermediates: Vec<&CertificateDer<'static>> = chain
        .iter()
        .filter(|c| c.as_ref() != ca_cert.as_ref() && c.as_ref() != root.as_ref())
        .collect();
    let mut path = vec![ca_cert.clone()];
    let mut child_path = ca_cert_path.clone();
    let mut child = ca_parsed.clone();
    for next in &intermediates {
        let next_parsed = parse(&chain_path, next)?;
        check_ca_usable(&chain_path, &next_parsed)?;
        check_signed_by(&child_path, &child, &chain_path, &next_parsed)?;
        path.push((*next).clone());
        child_path = chain_path.clone();
        child = next_parsed;
    }
    check_signed_by(&child_path, &child, &root_path, &root_parsed)?;
    path.push(root.clone());

    let issuer_not_after = not_after(&ca_parsed);
    let issuer = Issuer::from_ca_cert_der(&ca_cert, key)
        .map_err(|e| KeyError::file(&ca_cert_path, e.to_string()))?;
    tracing::info!(dir = %dir.display(), chain_len = path.len(), "using plugged-in CA");
    Ok(CaKeys {
        issuer,
        chain_pem: path.iter().map(to_pem).collect(),
        issuer_not_after,
    })
}

fn read_certs(path: &Path) -> Result<Vec<CertificateDer<'static>>, KeyError> {
    let bytes = fs::read(path).map_err(|e| KeyError::file(path, e.to_string()))?;
    let certs = CertificateDer::pem_slice_iter(&bytes)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| KeyError::file(path, format!("not PEM certificates: {e}")))?;
    Ok(certs)
}

fn read_key(path: &Path) -> Result<KeyPair, KeyError> {
    let pem = fs::read_to_string(path).map_err(|e| KeyError::file(path, e.to_string()))?;
    KeyPair::from_pem(&pem).map_err(|e| {
        KeyError::file(
            path,
            format!(
                "not a usable PKCS#8 private key ({e}); convert with `openssl pkcs8 -topk8 -nocrypt`"
            ),
        )
    })
}

fn parse<'a>(path: &Path, der: &'a CertificateDer<'_>) -> Result<X509Certificate<'a>, KeyError> {
    X509Certificate::from_der(der.as_ref())
        .map(|(_, c)| c)
        .map_err(|e| KeyError::file(path, format!("not an X.509 certificate: {e}")))
}

fn check_key_matches(
    key_path: &Path,
    key: &KeyPair,
    cert: &X509Certificate,
) -> Result<(), KeyError> {
    if key.subject_public_key_info() != cert.public_key().raw {
        return Err(KeyError::file(
            key_path,
            "private key does not match the CA certificate",
        ));
    }
    Ok(())
}

fn check_ca_usable(path: &Path, cert: &X509Certificate) -> Result<(), KeyError> {
    if !cert.is_ca() {
        return Err(KeyError::file(
            path,
            "certificate is not a CA (basicConstraints)",
        ));
    }
    if !cert.validity().is_valid() {
        return Err(KeyError::file(
            path,
            format!(
                "certificate is not valid now (valid {} to {})",
                cert.validity().not_before,
                cert.validity().not_after
            ),
        ));
    }
    Ok(())
}

fn check_signed_by(
    child_path: &Path,
    child: &X509Certificate,
    parent_path: &Path,
    parent: &X509Certificate,
) -> Result<(), KeyError> {
    if child.issuer() != parent.subject()
        || child.verify_signature(Some(parent.public_key())).is_err()
    {
        return Err(KeyError::file(
            child_path,
            format!(
                "certificate {} is not signed by {} ({})",
                child.subject(),
                parent.subject(),
                parent_path.display()
            ),
        ));
    }
    Ok(())
}

fn not_after(cert: &X509Certificate) -> SystemTime {
    let secs = cert.validity().not_after.timestamp();
    UNIX_EPOCH + Duration::from_secs(u64::try_from(secs).unwrap_or(0))
}

pub(crate) fn to_pem(der: &CertificateDer<'_>) -> String {
    pem::encode_config(
        &pem::Pem::new("CERTIFICATE", der.as_ref()),
        pem::EncodeConfig::new().set_line_ending(pem::LineEnding::LF),
    )
}

fn write_private(path: &Path, contents: &str) -> Result<(), KeyError> {
    let mut f = fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(path)
        .map_err(|e| KeyError::file(path, e.to_string()))?;
    f.write_all(contents.as_bytes())
        .and_then(|()| f.sync_all())
        .map_err(|e| KeyError::file(path, e.to_string()))
}

fn write_public(path: &Path, contents: &str) -> Result<(), KeyError> {
    let tmp = path.with_extension("pem.tmp");
    fs::write(&tmp, contents)
        .and_then(|()| fs::rename(&tmp, path))
        .map_err(|e| KeyError::file(path, e.to_string()))
}

#[cfg(test)]
mod tests;
