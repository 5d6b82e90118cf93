//! The pod behind a test HBONE server: the CONNECT target, dialled as plain
//! TCP with no checks (the tests that use it check the tunnel, not the pod).

use std::net::SocketAddr;

use ambit_agent::hbone::{Refusal, Upstream};
use tokio::net::TcpStream;

/// Dials `target`; an unreachable pod is the server's 503.
pub async fn dial(target: SocketAddr) -> Result<Upstream<()>, Refusal> {
    let stream = TcpStream::connect(target)
        .await
        .map_err(Refusal::Unreachable)?;
    Ok(Upstream {
        stream,
        connection: (),
        close: None,
        l7: None,
    })
}
