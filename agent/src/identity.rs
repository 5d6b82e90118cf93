//! Workload identities held by this node: keys generated here, certificates
//! issued by the CA, the trust bundle they are checked against.

mod certificate;

pub use certificate::{TrustBundle, WorkloadCertificate};
