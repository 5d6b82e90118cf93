//! Workload identities held by this node: keys generated here, certificates
//! issued by the CA, the trust bundle they are checked against.
//!
//! - `certificate`: the key + chain the data path presents, and the trust bundle.
//! - `ca_client`: the CA seam (`CertificateIssuer`) and one issuance end to end.
//! - `token_file`: the CA bearer token, re-read for each request.
//! - `rotating_ca_client`: the real issuer, following the token file and the roots.
//! - `bundle_watch`: the trust bundle file followed for root rotations.
//! - `renewal`: when to renew and how to back off.
//! - `manager`: per-identity renewal tasks, the cache callers read, status.

mod bundle_watch;
pub mod ca_client;
mod certificate;
mod manager;
pub mod renewal;
mod rotating_ca_client;
mod source;
mod token_file;

pub use bundle_watch::{BundleStatus, BundleWatch, TrustBundleFile};
pub use ca_client::{CertificateIssuer, FetchError, IssueError};
pub use certificate::{
    BundleDefect, ChainError, TrustBundle, TrustBundleError, WorkloadCertificate,
};
pub use manager::{
    CertificateState, IdentityConfig, IdentityError, IdentityManager, IdentityStatus,
};
pub use rotating_ca_client::RotatingCaClient;
pub use source::CertificateSource;
pub use token_file::{TokenError, TokenFile};
