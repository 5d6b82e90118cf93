//! Where `ambit-agent describe` gets its answer: the state file, read and
//! described here, or a running agent's admin endpoint, which describes
//! from its live state and adds what only it knows (certificates, refusals).

use std::net::SocketAddr;
use std::path::Path;
use std::time::Duration;

use bytes::Bytes;
use http::{Request, StatusCode};
use http_body_util::{BodyExt, Empty};
use hyper_util::rt::TokioIo;

use super::report::{self, Report};
use super::{DescribeError, Subject};
use crate::state::source::FileSource;
use crate::state::{LoadError, LoadOptions};

/// The admin endpoint's path prefix.
pub const ADMIN_PATH: &str = "/describe/";

#[derive(Debug, thiserror::Error)]
pub enum FetchError {
    #[error("cannot load the state: {0}")]
    State(#[from] LoadError),
    #[error(transparent)]
    Describe(#[from] DescribeError),
    #[error("agent admin {addr}: {reason}")]
    Admin { addr: SocketAddr, reason: String },
    #[error("agent admin {addr} answered {status}: {body}")]
    Refused {
        addr: SocketAddr,
        status: StatusCode,
        body: String,
    },
}

/// Describes `subject` from the state at `path`, as `authz check` reads it.
pub fn from_state(
    path: &Path,
    options: LoadOptions,
    subject: &Subject,
    trust_domain: &str,
) -> Result<Report, FetchError> {
    let snapshot = FileSource::new(path, options).load()?;
    Ok(report::describe(&snapshot, subject, trust_domain, None)?)
}

/// Asks the agent whose admin server listens on `addr`.
pub fn from_admin(
    addr: SocketAddr,
    subject: &Subject,
    timeout: Duration,
) -> Result<Report, FetchError> {
    let fail = |reason: String| FetchError::Admin { addr, reason };
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|e| fail(e.to_string()))?;
    let path = format!("{ADMIN_PATH}{}", subject.path());
    let exchange = runtime.block_on(async {
        tokio::time::timeout(timeout, get(addr, &path))
            .await
            .map_err(|_| format!("no answer within {timeout:?}"))?
    });
    let (status, body) = exchange.map_err(fail)?;
    if status != StatusCode::OK {
        return Err(FetchError::Refused {
            addr,
            status,
            body: String::from_utf8_lossy(&body).trim().to_owned(),
        });
    }
    serde_json::from_slice(&body).map_err(|e| fail(format!("unreadable answer: {e}")))
}

/// One HTTP/1.1 GET; the status and the whole body.
async fn get(addr: SocketAddr, path: &str) -> Result<(StatusCode, Bytes), String> {
    let stream = tokio::net::TcpStream::connect(addr)
        .await
        .map_err(|e| format!("connecting: {e}"))?;
    let (mut sender, connection) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
        .await
        .map_err(|e| e.to_string())?;
    tokio::spawn(connection);
    let request = Request::get(path)
        .header(http::header::HOST, addr.to_string())
        .body(Empty::<Bytes>::new())
        .map_err(|e| e.to_string())?;
    let response = sender
        .send_request(request)
        .await
        .map_err(|e| e.to_string())?;
    let status = response.status();
    let body = response
        .into_body()
        .collect()
        .await
        .map_err(|e| e.to_string())?
        .to_bytes();
    Ok((status, body))
}
