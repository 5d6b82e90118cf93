//! The agent's HTTP side doors, on the ports Istio uses:
//!
//! - 15020 `/metrics` (and `/stats/prometheus`): OpenMetrics text for Prometheus;
//! - 15021 `/healthz/ready`: 200 once ready, 503 with the pending tasks otherwise;
//! - 15000 admin: `/config_dump` (JSON from pluggable providers), `/` (a status
//!   page), `/logging` (read the log filter), `/describe/<subject>` (what
//!   `ambit-agent describe --admin` asks);
//! - the control socket (`control.sock` in the run directory): the admin
//!   endpoints plus those that change the agent, `POST /logging` and
//!   `POST /quitquitquit`. A Unix socket in a root-only directory, because
//!   the TCP ports are reachable by every host-network pod of the node.
//!
//! Each server takes a listener the caller bound (so tests use port 0) and a
//! drain watcher, and returns once the drain has started and its connections
//! have finished.

mod config_dump;
mod logging;
mod server;
mod status_page;

use std::sync::Arc;

use http::request::Parts;
use http::{Method, Response, StatusCode};
use prometheus_client::registry::Registry;
use tokio::net::{TcpListener, UnixListener};
use tokio::sync::Notify;

pub use config_dump::{ConfigDump, ConfigSource};
use server::{Body, method_not_allowed, not_found, response, text};

use crate::drain::DrainWatcher;
use crate::metrics::{self, Metrics};
use crate::readiness::Readiness;
use crate::telemetry::LogHandle;

/// Serves the Prometheus endpoint (15020).
pub async fn serve_metrics(listener: TcpListener, registry: Arc<Registry>, drain: DrainWatcher) {
    let handler = Arc::new(move |parts: &Parts| match parts.uri.path() {
        "/metrics" | "/stats/prometheus" => match parts.method {
            Method::GET | Method::HEAD => response(
                StatusCode::OK,
                metrics::OPENMETRICS_CONTENT_TYPE,
                metrics::encode(&registry),
            ),
            _ => method_not_allowed(parts, "GET"),
        },
        _ => not_found(parts),
    });
    server::serve("metrics", listener, drain, handler).await;
}

/// Serves the readiness probe (15021). Once the drain starts the listener
/// closes, which the kubelet sees as not ready too.
pub async fn serve_readiness(listener: TcpListener, readiness: Readiness, drain: DrainWatcher) {
    let draining = drain.clone();
    let handler = Arc::new(move |parts: &Parts| match parts.uri.path() {
        "/healthz/ready" => match parts.method {
            Method::GET | Method::HEAD => readiness_response(&readiness, &draining),
            _ => method_not_allowed(parts, "GET"),
        },
        _ => not_found(parts),
    });
    server::serve("readiness", listener, drain, handler).await;
}

fn readiness_response(readiness: &Readiness, drain: &DrainWatcher) -> Response<Body> {
    if drain.is_draining() {
        return text(StatusCode::SERVICE_UNAVAILABLE, "not ready: draining");
    }
    let pending = readiness.pending_explained();
    if pending.is_empty() {
        text(StatusCode::OK, "ready")
    } else {
        text(
            StatusCode::SERVICE_UNAVAILABLE,
            format!("not ready: {}", pending.join(", ")),
        )
    }
}

/// Answers `GET /describe/<subject>` (`pod/NS/NAME`, `service/NAME.NS`):
/// the report as JSON, or a status and why.
pub trait DescribeSource: Send + Sync + std::fmt::Debug {
    fn describe(&self, subject: &str) -> Result<serde_json::Value, (StatusCode, String)>;
}

/// What the admin server (15000) shows and can change.
#[derive(Clone, Debug)]
pub struct AdminState {
    readiness: Readiness,
    config: ConfigDump,
    logs: Option<LogHandle>,
    metrics: Option<Arc<Metrics>>,
    quit: Option<Arc<Notify>>,
    describe: Option<Arc<dyn DescribeSource>>,
    notices: Option<NoticeSource>,
}

/// [`Notices`] with a `Debug` the state can derive.
#[derive(Clone)]
struct NoticeSource(Notices);

impl std::fmt::Debug for NoticeSource {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("NoticeSource")
    }
}

/// Lines the status page lists under "Notices" (e.g. policy rules that need
/// HTTP), computed on each view.
pub type Notices = Arc<dyn Fn() -> Vec<String> + Send + Sync>;

impl AdminState {
    pub fn new(readiness: Readiness) -> Self {
        Self {
            readiness,
            config: ConfigDump::default(),
            logs: None,
            metrics: None,
            quit: None,
            describe: None,
            notices: None,
        }
    }

    /// Enables `/describe/...`.
    pub fn with_describe(mut self, source: Arc<dyn DescribeSource>) -> Self {
        self.describe = Some(source);
        self
    }

    /// Lists `notices` on the status page.
    pub fn with_notices(mut self, notices: Notices) -> Self {
        self.notices = Some(NoticeSource(notices));
        self
    }

    /// Adds a `/config_dump` section (`workloads`, `services`, `policies`, `certificates`,
    /// `state`...). A closure `|| serde_json::Value` is a `ConfigSource`.
    pub fn with_config(
        mut self,
        section: impl Into<String>,
        source: Arc<dyn ConfigSource>,
    ) -> Self {
        self.config.add(section, source);
        self
    }

    /// Enables `/logging`.
    pub fn with_logging(mut self, logs: LogHandle) -> Self {
        self.logs = Some(logs);
        self
    }

    /// Adds the open connections to `/config_dump` (section `connections`) and the page.
    pub fn with_metrics(mut self, metrics: Arc<Metrics>) -> Self {
        let source = metrics.clone();
        self.config
            .add("connections", Arc::new(move || source.connections_json()));
        self.metrics = Some(metrics);
        self
    }

    /// Enables POST `/quitquitquit`, which wakes `quit` (the caller then drains).
    pub fn with_quit(mut self, quit: Arc<Notify>) -> Self {
        self.quit = Some(quit);
        self
    }
}

/// Serves the admin endpoints (15000).
pub async fn serve_admin(listener: TcpListener, state: AdminState, drain: DrainWatcher) {
    let draining = drain.clone();
    let handler = Arc::new(move |parts: &Parts| route_admin(&state, &draining, parts, false));
    server::serve("admin", listener, drain, handler).await;
}

/// Serves the control socket: the admin endpoints, and those that change
/// the agent.
pub async fn serve_control(listener: UnixListener, state: AdminState, drain: DrainWatcher) {
    let draining = drain.clone();
    let handler = Arc::new(move |parts: &Parts| route_admin(&state, &draining, parts, true));
    server::serve("control", listener, drain, handler).await;
}

fn route_admin(
    state: &AdminState,
    drain: &DrainWatcher,
    parts: &Parts,
    control: bool,
) -> Response<Body> {
    let get_only = |parts: &Parts| !matches!(parts.method, Method::GET | Method::HEAD);
    let changes = matches!(parts.uri.path(), "/logging" | "/quitquitquit") && get_only(parts);
    if changes && !control {
        return text(
            StatusCode::FORBIDDEN,
            format!(
                "{} {} changes the agent: use the control socket in the agent's run directory",
                parts.method,
                parts.uri.path()
            ),
        );
    }
    match parts.uri.path() {
        "/" if get_only(parts) => method_not_allowed(parts, "GET"),
        "/" => response(
            StatusCode::OK,
            "text/html; charset=utf-8",
            status_page::render(state, drain.is_draining()),
        ),
        "/config_dump" if get_only(parts) => method_not_allowed(parts, "GET"),
        "/config_dump" => {
            let body = serde_json::to_vec_pretty(&state.config.render()).unwrap_or_default();
            response(StatusCode::OK, "application/json", body)
        }
        "/logging" => logging::handle(parts, state.logs.as_ref()),
        path if path.starts_with("/describe/") => describe(state, parts, path),
        "/quitquitquit" => match (&state.quit, &parts.method) {
            (None, _) => not_found(parts),
            (Some(quit), &Method::POST) => {
                tracing::info!("shutdown requested through the admin server");
                quit.notify_one();
                text(StatusCode::OK, "shutting down")
            }
            (Some(_), _) => method_not_allowed(parts, "POST"),
        },
        _ => not_found(parts),
    }
}

fn describe(state: &AdminState, parts: &Parts, path: &str) -> Response<Body> {
    let Some(source) = &state.describe else {
        return not_found(parts);
    };
    if !matches!(parts.method, Method::GET | Method::HEAD) {
        return method_not_allowed(parts, "GET");
    }
    let subject = path.trim_start_matches("/describe/");
    match source.describe(subject) {
        Ok(report) => {
            let body = serde_json::to_vec_pretty(&report).unwrap_or_default();
            response(StatusCode::OK, "application/json", body)
        }
        Err((status, why)) => text(status, why),
    }
}

#[cfg(test)]
mod tests;
