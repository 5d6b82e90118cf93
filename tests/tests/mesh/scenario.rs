//! What the scenario tests share beyond the harness's guestbook mesh: the
//! mesh started or the test failed, scrapes of every agent, and waiting for
//! counters that land a moment after the application saw a close.

// Fixture code outside #[test] fns: a failure here is a broken test setup.
#![allow(clippy::unwrap_used)]

use std::time::{Duration, Instant};

use ambit_tests::mesh::Samples;
pub use ambit_tests::mesh::guestbook::{ECHO_PORT, Guestbook, SINK_PORT};
pub use ambit_tests::mesh::probe::{Outcome, echo, payload, sink};

/// A refusal must reach the application this fast ("promptly").
pub const PROMPT: Duration = Duration::from_secs(3);

pub fn start() -> Guestbook {
    Guestbook::start().unwrap_or_else(|e| panic!("starting the guestbook mesh: {e}"))
}

/// Scrapes every node's agent.
pub fn scrape(gb: &Guestbook) -> Vec<Samples> {
    (0..gb.mesh.cluster().nodes().len())
        .map(|i| {
            gb.mesh
                .metrics(i)
                .unwrap_or_else(|e| panic!("metrics of node{i}: {e}"))
        })
        .collect()
}

/// Polls `check` until it returns `Ok`, for up to `timeout`; panics with
/// the last error otherwise.
pub fn eventually<T>(timeout: Duration, mut check: impl FnMut() -> Result<T, String>) -> T {
    let start = Instant::now();
    loop {
        match check() {
            Ok(v) => return v,
            Err(e) if start.elapsed() > timeout => panic!("after {timeout:?}: {e}"),
            Err(_) => std::thread::sleep(Duration::from_millis(50)),
        }
    }
}
