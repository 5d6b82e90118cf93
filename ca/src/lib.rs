//! ambit-ca: the certificate authority that issues SPIFFE workload certificates
//! over Istio's CA gRPC API, and the client the agent uses to ask it.
#![forbid(unsafe_code)]
