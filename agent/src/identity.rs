//! Workload identities held by this node: keys generated here, certificates
//! issued by the CA, the trust bundle they are checked against.
//!
//! - `certificate`: the key + chain the data path presents, and the trust bundle.
//! - `ca_client`: the CA seam (`CertificateIssuer`) and one issuance end to end.
//! - `renewal`: when to renew and how to back off.
//! - `manager`: per-identity renewal tasks, the cache callers read, status.

pub mod ca_client;
mod certificate;
mod manager;
pub mod renewal;

pub use ca_client::{CertificateIssuer, FetchError};
pub use certificate::{ChainError, TrustBundle, TrustBundleError, WorkloadCertificate};
pub use manager::{
    CertificateState, IdentityConfig, IdentityError, IdentityManager, IdentityStatus,
};
