//! HTTP-level authorization end to end, in the destination agent, on a
//! namespace cluster with the real CA and agents, a real HTTP server in the
//! pod (`ambit-testpod http`) and curl as the client.
//!
//! - `guestbook`: Istio's exercise (STRICT mesh-wide, then a `methods: POST`
//!   rule): POST 200, GET 403 `RBAC: access denied`, another identity 403;
//!   allow-nothing 403 on every request; the same rule on a port that is not
//!   HTTP is refused at L4 with the load warning, the `authz check` reason
//!   and the status-page entry.
//! - `protocol`: keep-alive, pipelining, a chunked upload, a WebSocket
//!   upgrade and h2c with concurrent streams through the L7 path, bytes
//!   verified by the pod's report.
//! - `jwt`: RequestAuthentication with a key server: valid 200, bad
//!   signature 401, expired 401, no token 403, other issuer 401, a `when`
//!   on a claim, and the key server down at start (fail closed, then
//!   recover).
//!
//! Each test builds its own mesh. They need root, iproute2, iptables, curl
//! and python3, and the `ambit-agent`, `ambit-ca` and `ambit-testpod`
//! binaries built beside this test.

#[path = "l7/guestbook.rs"]
mod guestbook;
#[path = "l7/jwt.rs"]
mod jwt;
#[path = "l7/protocol.rs"]
mod protocol;
#[path = "l7/support.rs"]
mod support;
