//! The agent's descriptor budget: raising the open-file limit at start, and
//! refusing new connections before the descriptor table fills up, so that
//! the readiness and metrics servers, dials of connections already admitted
//! and the connections in flight always find a descriptor.
//!
//! Linux hands out the lowest free descriptor, so the number of a freshly
//! accepted or created socket tells, for free, how full the table is: if it
//! is at or above a threshold, every descriptor below is in use. Accepted
//! connections are refused (reset) from `limit - reserve` on, dials from
//! `limit - reserve / 2` on; the last `reserve / 2` descriptors are for the
//! HTTP servers, pipes and the spare descriptor that lets an accept loop take
//! a connection off the backlog to refuse it even when the table is full
//! (EMFILE on accept would otherwise leave the client hanging and the loop
//! spinning).
//!
//! The budget is process-wide, as the limit is. Refusals are counted in
//! `ambit_connections_refused_total{listener, reason}` (also used by the
//! pre-authentication bounds) and warned about at most every few seconds.

pub mod pending;

use std::fs::File;
use std::io;
use std::os::fd::{AsRawFd, RawFd};
use std::sync::OnceLock;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use nix::sys::resource::{Resource, getrlimit, setrlimit};
use parking_lot::Mutex;
use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use tokio::net::{TcpListener, TcpStream};

use crate::socket;

/// Descriptors kept back from accepted connections: a sixteenth of the
/// limit, at least 64 (the HTTP servers, a burst of dials, pipes).
const MIN_RESERVE: u64 = 64;
/// How often a refusal warning may be logged; the rest are counted.
const WARN_EVERY: Duration = Duration::from_secs(5);

/// The open-file limits after [`raise_nofile`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct NofileLimits {
    pub soft: u64,
    pub hard: u64,
    /// The soft limit before raising.
    pub was: u64,
}

/// Raises the soft RLIMIT_NOFILE to the hard limit (the container runtime's
/// default soft limit, often 1024, is far below what a node's connections
/// need), sets the budget from the result and logs it.
pub fn raise_nofile() -> io::Result<NofileLimits> {
    let (was, hard) = getrlimit(Resource::RLIMIT_NOFILE)?;
    let soft = if was < hard {
        match setrlimit(Resource::RLIMIT_NOFILE, hard, hard) {
            Ok(()) => hard,
            Err(error) => {
                tracing::warn!(%error, soft = was, hard, "could not raise the open-file limit");
                was
            }
        }
    } else {
        was
    };
    let budget = Budget::init(soft);
    tracing::info!(
        soft,
        hard,
        was,
        accept_below = budget.accept_below,
        dial_below = budget.dial_below,
        "open-file limit"
    );
    Ok(NofileLimits { soft, hard, was })
}

/// Thresholds derived from the soft limit.
#[derive(Debug)]
struct Budget {
    limit: u64,
    accept_below: u64,
    dial_below: u64,
}

impl Budget {
    fn for_limit(limit: u64) -> Self {
        let reserve = (limit / 16).max(MIN_RESERVE).min(limit / 2);
        Self {
            limit,
            accept_below: limit - reserve,
            dial_below: limit - reserve / 2,
        }
    }

    fn init(limit: u64) -> &'static Self {
        let budget = BUDGET.get_or_init(|| Self::for_limit(limit));
        globals()
            .limit
            .set(i64::try_from(budget.limit).unwrap_or(i64::MAX));
        budget
    }

    /// The budget in force: set by [`raise_nofile`], else from the current limit.
    fn current() -> &'static Self {
        BUDGET.get_or_init(|| {
            let limit = getrlimit(Resource::RLIMIT_NOFILE).map_or(1024, |(soft, _)| soft);
            Self::for_limit(limit)
        })
    }
}

static BUDGET: OnceLock<Budget> = OnceLock::new();

fn over(fd: RawFd, below: u64) -> bool {
    u64::try_from(fd).is_ok_and(|fd| fd >= below)
}

/// Whether an accepted connection holding `fd` must be refused.
pub fn accept_over_budget(fd: &impl AsRawFd) -> bool {
    over(fd.as_raw_fd(), Budget::current().accept_below)
}

/// Whether a socket just created for a dial must be given up.
pub fn dial_over_budget(fd: &impl AsRawFd) -> bool {
    over(fd.as_raw_fd(), Budget::current().dial_below)
}

/// The error a dial refused by the budget fails with.
pub fn budget_exhausted() -> io::Error {
    io::Error::other("descriptor budget exhausted")
}

/// Whether `error` says the process or the system ran out of descriptors.
pub fn is_out_of_descriptors(error: &io::Error) -> bool {
    matches!(
        error.raw_os_error(),
        Some(code) if code == nix::libc::EMFILE || code == nix::libc::ENFILE
    )
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct RefusalLabels {
    pub listener: &'static str,
    pub reason: &'static str,
}

/// Why a connection was refused before it was served.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Refusal {
    /// The descriptor budget is spent (or the table is full).
    Descriptors,
    /// Too many connections still in their handshake, all sources together.
    PendingGlobal,
    /// Too many connections from this source still in their handshake.
    PendingPerSource,
    /// The handshake did not finish in time.
    HandshakeTimeout,
}

impl Refusal {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Descriptors => "descriptors",
            Self::PendingGlobal => "pending_global",
            Self::PendingPerSource => "pending_per_source",
            Self::HandshakeTimeout => "handshake_timeout",
        }
    }
}

/// Process-wide metric families of this module and the pending bounds.
#[derive(Debug, Default)]
pub struct Globals {
    pub refused: Family<RefusalLabels, Counter>,
    pub limit: Gauge,
    pub pending: Family<ListenerLabels, Gauge>,
    last_warn: AtomicU64,
    suppressed: AtomicU64,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ListenerLabels {
    pub listener: &'static str,
}

/// The families, created once; the metrics registry registers clones.
pub fn globals() -> &'static Globals {
    static GLOBALS: OnceLock<Globals> = OnceLock::new();
    GLOBALS.get_or_init(Globals::default)
}

/// Counts a refusal and warns, at most every [`WARN_EVERY`], with how many
/// went unlogged since.
pub fn refused(listener: &'static str, reason: Refusal, peer: Option<std::net::SocketAddr>) {
    let g = globals();
    g.refused
        .get_or_create(&RefusalLabels {
            listener,
            reason: reason.as_str(),
        })
        .inc();
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX));
    let last = g.last_warn.load(Ordering::Relaxed);
    let due = now.saturating_sub(last) >= WARN_EVERY.as_millis() as u64;
    if due
        && g.last_warn
            .compare_exchange(last, now, Ordering::Relaxed, Ordering::Relaxed)
            .is_ok()
    {
        let suppressed = g.suppressed.swap(0, Ordering::Relaxed);
        tracing::warn!(
            listener,
            reason = reason.as_str(),
            peer = ?peer,
            suppressed,
            "refusing new connections"
        );
    } else {
        g.suppressed.fetch_add(1, Ordering::Relaxed);
    }
}

/// A descriptor held back so that an accept loop facing EMFILE can still
/// take one connection off the backlog and reset it.
static SPARE: Mutex<Option<File>> = Mutex::new(None);

/// Opens the spare descriptor (idempotent); call at start.
pub fn keep_spare() {
    let mut spare = SPARE.lock();
    if spare.is_none() {
        *spare = File::open("/dev/null").ok();
    }
}

/// Handles a failed `accept` on `listener`. Out of descriptors: the spare
/// is given up, one pending connection accepted and reset, and the spare
/// taken back, so the client learns at once and the loop does not spin on
/// a backlog it cannot empty. Other errors (and a missing spare) back off
/// briefly. Always returns promptly.
pub async fn accept_failed(listener: &TcpListener, listener_name: &'static str, error: io::Error) {
    if !is_out_of_descriptors(&error) {
        tracing::warn!(listener = listener_name, %error, "accept failed");
        tokio::time::sleep(Duration::from_millis(10)).await;
        return;
    }
    refused(listener_name, Refusal::Descriptors, None);
    let had_spare = SPARE.lock().take().is_some();
    if had_spare {
        // The backlog is readable (that is why accept ran), so this does not wait.
        if let Ok(Ok((stream, _))) =
            tokio::time::timeout(Duration::from_millis(1), listener.accept()).await
        {
            socket::reset(stream);
        }
        keep_spare();
    }
    // Without a spare, or if the table is still full: let descriptors free up.
    if SPARE.lock().is_none() {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Refuses an accepted connection if it is over the budget: counted,
/// reset. Returns the stream when it may be served.
pub fn admit_accepted(stream: TcpStream, listener: &'static str) -> Option<TcpStream> {
    if accept_over_budget(&stream) {
        refused(listener, Refusal::Descriptors, stream.peer_addr().ok());
        socket::reset(stream);
        return None;
    }
    Some(stream)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reserve_is_a_sixteenth_with_a_floor() {
        let small = Budget::for_limit(1024);
        assert_eq!((small.accept_below, small.dial_below), (960, 992));
        let big = Budget::for_limit(65536);
        assert_eq!((big.accept_below, big.dial_below), (61440, 63488));
        // A tiny limit still leaves half for accepts.
        let tiny = Budget::for_limit(100);
        assert_eq!((tiny.accept_below, tiny.dial_below), (50, 75));
    }

    #[test]
    fn descriptor_errors_are_recognized() {
        assert!(is_out_of_descriptors(&io::Error::from_raw_os_error(
            nix::libc::EMFILE
        )));
        assert!(is_out_of_descriptors(&io::Error::from_raw_os_error(
            nix::libc::ENFILE
        )));
        assert!(!is_out_of_descriptors(&io::Error::from(
            io::ErrorKind::ConnectionRefused
        )));
    }

    #[test]
    fn refusals_are_counted_per_listener_and_reason() {
        let before = globals()
            .refused
            .get_or_create(&RefusalLabels {
                listener: "unit",
                reason: "descriptors",
            })
            .get();
        refused("unit", Refusal::Descriptors, None);
        refused("unit", Refusal::Descriptors, None);
        let after = globals()
            .refused
            .get_or_create(&RefusalLabels {
                listener: "unit",
                reason: "descriptors",
            })
            .get();
        assert_eq!(after - before, 2);
    }
}
