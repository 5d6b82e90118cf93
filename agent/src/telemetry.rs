//! Logging: the tracing subscriber (text or JSON lines), its level filter
//! reloadable at runtime from the admin server, and the target access logs use.
//! The agent's lines go out in batches (`batch`).

mod batch;

use std::io::{self, IsTerminal};
use std::sync::Arc;

use parking_lot::Mutex;
use tracing_subscriber::filter::filter_fn;
use tracing_subscriber::layer::SubscriberExt;
use tracing_subscriber::util::SubscriberInitExt;
use tracing_subscriber::{EnvFilter, Layer, Registry, reload};

/// The tracing target of the one-line-per-connection access log, so it can be
/// filtered on its own (`access=info`) or shipped elsewhere.
pub const ACCESS_LOG_TARGET: &str = "access";

/// How log lines are written.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, clap::ValueEnum)]
pub enum LogFormat {
    /// Human-readable lines.
    #[default]
    Text,
    /// One JSON object per line, for log shippers.
    Json,
}

#[derive(Debug, thiserror::Error)]
pub enum TelemetryError {
    #[error("invalid log filter {directives:?}: {source}")]
    Filter {
        directives: String,
        source: tracing_subscriber::filter::ParseError,
    },
    #[error("log filter cannot be changed: the subscriber is gone: {0}")]
    Reload(#[from] reload::Error),
    #[error("a global tracing subscriber is already installed: {0}")]
    Init(#[from] tracing_subscriber::util::TryInitError),
}

/// Changes the active log filter; cheap to clone, handed to the admin server.
#[derive(Clone)]
pub struct LogHandle {
    reload: reload::Handle<EnvFilter, Registry>,
    current: Arc<Mutex<String>>,
}

impl std::fmt::Debug for LogHandle {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LogHandle")
            .field("current", &*self.current.lock())
            .finish()
    }
}

impl LogHandle {
    /// Replaces the filter with `directives` (`info`, `debug,access=off`, ...). An
    /// invalid filter is refused and the previous one stays.
    pub fn set_filter(&self, directives: &str) -> Result<(), TelemetryError> {
        let filter = parse_filter(directives)?;
        self.reload.reload(filter)?;
        *self.current.lock() = directives.to_string();
        tracing::info!(filter = directives, "log filter changed");
        Ok(())
    }

    /// The directives in force.
    pub fn current(&self) -> String {
        self.current.lock().clone()
    }
}

fn parse_filter(directives: &str) -> Result<EnvFilter, TelemetryError> {
    EnvFilter::builder()
        .parse(directives)
        .map_err(|source| TelemetryError::Filter {
            directives: directives.to_string(),
            source,
        })
}

fn is_access(metadata: &tracing::Metadata<'_>) -> bool {
    metadata.target() == ACCESS_LOG_TARGET
}

/// A subscriber writing to `writer` (no colours), and the handle that changes
/// its filter. `init` installs one globally; tests install one per thread.
pub fn subscriber<W>(
    format: LogFormat,
    directives: &str,
    writer: W,
) -> Result<(impl tracing::Subscriber + Send + Sync + 'static, LogHandle), TelemetryError>
where
    W: for<'w> tracing_subscriber::fmt::MakeWriter<'w> + Clone + Send + Sync + 'static,
{
    build(format, directives, writer, false)
}

fn build<W>(
    format: LogFormat,
    directives: &str,
    writer: W,
    ansi: bool,
) -> Result<(impl tracing::Subscriber + Send + Sync + 'static, LogHandle), TelemetryError>
where
    W: for<'w> tracing_subscriber::fmt::MakeWriter<'w> + Clone + Send + Sync + 'static,
{
    let (filter, reload) = reload::Layer::new(parse_filter(directives)?);
    let output = match format {
        LogFormat::Text => tracing_subscriber::fmt::layer()
            .with_ansi(ansi)
            .with_writer(writer)
            .boxed(),
        LogFormat::Json => {
            // An access line carries every field it needs. Without this
            // split the JSON formatter would re-parse the fields of the
            // enclosing tunnel span for each request the L7 path logs.
            let access = tracing_subscriber::fmt::layer()
                .json()
                .flatten_event(true)
                .with_current_span(false)
                .with_span_list(false)
                .with_writer(writer.clone())
                .with_filter(filter_fn(is_access));
            let rest = tracing_subscriber::fmt::layer()
                .json()
                .flatten_event(true)
                .with_writer(writer)
                .with_filter(filter_fn(|m| !is_access(m)));
            access.and_then(rest).boxed()
        }
    };
    let subscriber = Registry::default().with(filter).with(output);
    let handle = LogHandle {
        reload,
        current: Arc::new(Mutex::new(directives.to_string())),
    };
    Ok((subscriber, handle))
}

pub use batch::batch_this_thread;

/// The process-wide subscriber's writer, for [`flush`].
static STDERR: std::sync::OnceLock<batch::Batched<io::Stderr>> = std::sync::OnceLock::new();

/// Installs the process-wide subscriber, writing to stderr (coloured on a
/// terminal) in batches: a runtime worker's lines wait until a worker is
/// about to park, so the runtime must call [`batch_this_thread`] on its
/// workers and [`flush`] before they park, and the process [`flush`] before
/// it exits.
pub fn init(format: LogFormat, directives: &str) -> Result<LogHandle, TelemetryError> {
    let ansi = io::stderr().is_terminal();
    let writer = STDERR.get_or_init(|| batch::Batched::new(io::stderr()));
    let (subscriber, handle) = build(format, directives, writer.clone(), ansi)?;
    subscriber.try_init()?;
    Ok(handle)
}

/// Writes the log lines that wait.
pub fn flush() {
    if let Some(writer) = STDERR.get() {
        writer.flush();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::metrics::tests::Captured;

    #[test]
    fn text_lines_carry_target_and_fields() {
        let out = Captured::default();
        let (subscriber, handle) =
            subscriber(LogFormat::Text, "warn,access=info", out.clone()).unwrap();
        tracing::subscriber::with_default(subscriber, || {
            tracing::info!(target: ACCESS_LOG_TARGET, bytes_sent = 7u64, "connection closed");
            tracing::info!("hidden by the filter");
        });
        let text = String::from_utf8(out.0.lock().clone()).unwrap();
        assert_eq!(text.lines().count(), 1, "{text}");
        assert!(
            text.contains(" access: connection closed bytes_sent=7"),
            "{text}"
        );
        assert_eq!(handle.current(), "warn,access=info");
    }

    #[test]
    fn json_access_lines_carry_no_span_context_and_other_lines_do() {
        let out = Captured::default();
        let (subscriber, _) = subscriber(LogFormat::Json, "info", out.clone()).unwrap();
        tracing::subscriber::with_default(subscriber, || {
            let span = tracing::info_span!("hbone_inbound", peer = "spiffe://a");
            let _entered = span.enter();
            tracing::info!(target: ACCESS_LOG_TARGET, status = 200u16, "request");
            tracing::info!("tunnel closed");
        });
        let text = String::from_utf8(out.0.lock().clone()).unwrap();
        let lines: Vec<serde_json::Value> = text
            .lines()
            .map(|l| serde_json::from_str(l).unwrap())
            .collect();
        assert_eq!(lines.len(), 2, "{text}");
        assert_eq!(lines[0]["target"], "access", "{text}");
        assert_eq!(lines[0]["status"], 200, "{text}");
        assert!(lines[0].get("span").is_none(), "{text}");
        assert_eq!(lines[1]["span"]["peer"], "spiffe://a", "{text}");
    }

    #[test]
    fn invalid_filters_are_refused() {
        let err = subscriber(LogFormat::Json, "info,x=loud", std::io::sink)
            .err()
            .unwrap();
        assert!(
            err.to_string()
                .starts_with("invalid log filter \"info,x=loud\""),
            "{err}"
        );
    }
}
