//! CSR -> certificate chain. The signer checks the request (size, PEM, DER, its
//! own signature, key type, that its only SAN is the identity the caller may
//! have) and then issues a leaf whose every field the CA chose: the SPIFFE URI
//! SAN, the validity window, key usages for TLS client and server.
//!
//! It knows nothing about callers; `api` decides which identity is allowed and
//! hands it in.

use std::time::{Duration, SystemTime};

use rcgen::{
    CertificateParams, DistinguishedName, ExtendedKeyUsagePurpose, IsCa, KeyUsagePurpose, SanType,
    SubjectPublicKeyInfo,
};
use x509_parser::certification_request::X509CertificationRequest;
use x509_parser::extensions::{GeneralName, ParsedExtension};
use x509_parser::prelude::FromDer;
use x509_parser::public_key::PublicKey;

use crate::SpiffeId;
use crate::keys::CaKeys;

/// Largest PEM CSR accepted. A P-256 CSR is about 500 bytes, RSA-4096 under 2 KiB.
pub const MAX_CSR_BYTES: usize = 8 * 1024;

/// Issued certificates start a little in the past so peers whose clock lags
/// slightly still accept them; at most this much, and at most a tenth of the lifetime.
const MAX_BACKDATE: Duration = Duration::from_secs(30);

/// Why a CSR was not signed. All but `Internal` are the caller's fault.
#[derive(Debug, thiserror::Error)]
pub enum SignError {
    #[error("CSR is {0} bytes; the limit is {MAX_CSR_BYTES}")]
    TooLarge(usize),
    #[error("CSR is not a PEM CERTIFICATE REQUEST: {0}")]
    NotPem(String),
    #[error("CSR is not a valid PKCS#10 request: {0}")]
    Malformed(String),
    #[error("CSR signature does not verify with its own public key")]
    BadSignature,
    #[error("unsupported CSR key {0}; use ECDSA P-256 or P-384, or RSA 2048 to 4096 bits")]
    UnsupportedKey(String),
    #[error("CSR must request exactly the SAN {expected}; it requests [{found}]")]
    WrongSan { expected: String, found: String },
    #[error("identity {identity} is not in this CA's trust domain {trust_domain}")]
    ForeignTrustDomain {
        identity: String,
        trust_domain: String,
    },
    #[error("signing failed: {0}")]
    Internal(#[from] rcgen::Error),
}

/// Validity policy for issued certificates.
#[derive(Clone, Debug)]
pub struct Lifetimes {
    /// Used when the caller asks for none.
    pub default: Duration,
    /// Longer requests are shortened to this.
    pub max: Duration,
}

/// An issued chain.
#[derive(Clone, Debug)]
pub struct Issued {
    /// PEM, leaf first, root last.
    pub chain_pem: Vec<String>,
    pub not_after: SystemTime,
}

/// Signs workload CSRs with the CA's key.
#[derive(Debug)]
pub struct Signer {
    keys: CaKeys,
    trust_domain: String,
    lifetimes: Lifetimes,
}

impl Signer {
    pub fn new(keys: CaKeys, trust_domain: impl Into<String>, lifetimes: Lifetimes) -> Self {
        Self {
            keys,
            trust_domain: trust_domain.into(),
            lifetimes,
        }
    }

    pub fn trust_domain(&self) -> &str {
        &self.trust_domain
    }

    /// The CA chain above issued leaves, PEM, root last.
    pub fn ca_chain_pem(&self) -> &[String] {
        &self.keys.chain_pem
    }

    pub fn root_pem(&self) -> &str {
        self.keys.root_pem()
    }

    /// When the certificate the CA signs with expires.
    pub fn issuer_not_after(&self) -> SystemTime {
        self.keys.issuer_not_after
    }

    /// Issues a certificate for `identity` to the key in `csr_pem`. `requested`
    /// is the caller's wish, shortened to the configured maximum.
    pub fn sign(
        &self,
        csr_pem: &str,
        identity: &SpiffeId,
        requested: Option<Duration>,
    ) -> Result<Issued, SignError> {
        if identity.trust_domain() != self.trust_domain {
            return Err(SignError::ForeignTrustDomain {
                identity: identity.to_string(),
                trust_domain: self.trust_domain.clone(),
            });
        }
        let public_key = check_csr(csr_pem, identity)?;
        let ttl = requested
            .filter(|d| !d.is_zero())
            .unwrap_or(self.lifetimes.default)
            .min(self.lifetimes.max);
        self.issue(&public_key, vec![SanType::URI(uri(identity)?)], ttl, false)
    }

    /// Issues the CA's own TLS serving certificate for `names`: an entry that
    /// parses as an IP address becomes an IP SAN (so clients that dial the CA by
    /// address can check it), anything else a DNS SAN.
    pub fn issue_serving(
        &self,
        key: &rcgen::KeyPair,
        names: &[String],
        ttl: Duration,
    ) -> Result<Issued, SignError> {
        let sans = names
            .iter()
            .map(|n| match n.parse::<std::net::IpAddr>() {
                Ok(ip) => Ok(SanType::IpAddress(ip)),
                Err(_) => rcgen::string::Ia5String::try_from(n.as_str())
                    .map(SanType::DnsName)
                    .map_err(SignError::from),
            })
            .collect::<Result<Vec<_>, _>>()?;
        self.issue(key, sans, ttl, true)
    }

    fn issue(
        &self,
        public_key: &impl rcgen::PublicKeyData,
        sans: Vec<SanType>,
        ttl: Duration,
        server_only: bool,
    ) -> Result<Issued, SignError> {
        let now = SystemTime::now();
        let not_after = (now + ttl).min(self.keys.issuer_not_after);
        let backdate = MAX_BACKDATE.min(ttl / 10);

        let mut params = CertificateParams::default();
        // An empty subject makes rcgen mark the SAN critical, as RFC 5280 requires.
        params.distinguished_name = DistinguishedName::new();
        params.subject_alt_names = sans;
        params.is_ca = IsCa::ExplicitNoCa;
        params.key_usages = vec![
            KeyUsagePurpose::DigitalSignature,
            KeyUsagePurpose::KeyEncipherment,
        ];
        params.extended_key_usages = if server_only {
            vec![ExtendedKeyUsagePurpose::ServerAuth]
        } else {
            vec![
                ExtendedKeyUsagePurpose::ServerAuth,
                ExtendedKeyUsagePurpose::ClientAuth,
            ]
        };
        params.use_authority_key_identifier_extension = true;
        params.serial_number = Some(crate::serial::random_serial());
        params.not_before = (now - backdate).into();
        params.not_after = not_after.into();
        let cert = params.signed_by(public_key, &self.keys.issuer)?;

        let mut chain_pem = Vec::with_capacity(1 + self.keys.chain_pem.len());
        chain_pem.push(cert.pem());
        chain_pem.extend(self.keys.chain_pem.iter().cloned());
        Ok(Issued {
            chain_pem,
            not_after,
        })
    }
}

fn uri(identity: &SpiffeId) -> Result<rcgen::string::Ia5String, SignError> {
    Ok(rcgen::string::Ia5String::try_from(identity.to_string())?)
}

/// The identity a CSR asks for: its one URI SAN, for callers that do not name
/// the identity in the request metadata.
pub fn csr_identity(csr_pem: &str) -> Result<SpiffeId, SignError> {
    let der = csr_der(csr_pem)?;
    let csr = parse_csr(&der)?;
    match requested_sans(&csr).as_slice() {
        [one] => one.parse().map_err(|e: crate::spiffe::SpiffeIdError| {
            SignError::Malformed(format!("CSR SAN is not a workload identity: {e}"))
        }),
        other => Err(SignError::Malformed(format!(
            "CSR must request exactly one SPIFFE URI SAN; it requests [{}]",
            other.join(", ")
        ))),
    }
}

fn csr_der(csr_pem: &str) -> Result<Vec<u8>, SignError> {
    if csr_pem.len() > MAX_CSR_BYTES {
        return Err(SignError::TooLarge(csr_pem.len()));
    }
    let block = pem::parse(csr_pem).map_err(|e| SignError::NotPem(e.to_string()))?;
    if !matches!(
        block.tag(),
        "CERTIFICATE REQUEST" | "NEW CERTIFICATE REQUEST"
    ) {
        return Err(SignError::NotPem(format!(
            "PEM block is {:?}, not CERTIFICATE REQUEST",
            block.tag()
        )));
    }
    Ok(block.into_contents())
}

fn parse_csr(der: &[u8]) -> Result<X509CertificationRequest<'_>, SignError> {
    let (rest, csr) =
        X509CertificationRequest::from_der(der).map_err(|e| SignError::Malformed(e.to_string()))?;
    if !rest.is_empty() {
        return Err(SignError::Malformed(format!(
            "{} trailing bytes after the request",
            rest.len()
        )));
    }
    Ok(csr)
}

fn requested_sans(csr: &X509CertificationRequest) -> Vec<String> {
    let mut sans = Vec::new();
    for ext in csr.requested_extensions().into_iter().flatten() {
        if let ParsedExtension::SubjectAlternativeName(san) = ext {
            sans.extend(san.general_names.iter().map(|n| match n {
                GeneralName::URI(u) => (*u).to_string(),
                other => other.to_string(),
            }));
        }
    }
    sans
}

/// Parses and checks a CSR; returns its public key.
fn check_csr(csr_pem: &str, identity: &SpiffeId) -> Result<SubjectPublicKeyInfo, SignError> {
    let der = csr_der(csr_pem)?;
    let csr = parse_csr(&der)?;

    let spki = &csr.certification_request_info.subject_pki;
    let public_key = SubjectPublicKeyInfo::from_der(spki.raw)
        .map_err(|_| SignError::UnsupportedKey(spki.algorithm.algorithm.to_id_string()))?;
    let alg = rcgen::PublicKeyData::algorithm(&public_key);
    let rsa_bits = match spki.parsed() {
        Ok(PublicKey::RSA(rsa)) => Some(rsa.key_size()),
        _ => None,
    };
    let supported = alg == &rcgen::PKCS_ECDSA_P256_SHA256
        || alg == &rcgen::PKCS_ECDSA_P384_SHA384
        || rsa_bits.is_some_and(|bits| (2048..=4096).contains(&bits));
    if !supported {
        return Err(SignError::UnsupportedKey(match rsa_bits {
            Some(bits) => format!("RSA-{bits}"),
            None => format!("{alg:?}"),
        }));
    }
    csr.verify_signature()
        .map_err(|_| SignError::BadSignature)?;

    let sans = requested_sans(&csr);
    let expected = identity.to_string();
    if sans.len() != 1 || sans[0] != expected {
        return Err(SignError::WrongSan {
            expected,
            found: sans.join(", "),
        });
    }
    Ok(public_key)
}

#[cfg(test)]
mod tests;
