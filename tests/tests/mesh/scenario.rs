//! The guestbook scenario's cluster, and probes that tell an allowed
//! connection from a refused one by what the application sees.
//!
//! Three nodes: `guestbook` (node 0), `analyzer` (node 1) and `sleep`
//! (node 2) in the enrolled namespace `default`, each with its own service
//! account, plus `legacy` in the unenrolled namespace `outside` on node 0.
//! Analyzer serves echo on 8080 and a byte-counting sink on 9000; guestbook
//! serves echo on 8080.

// Fixture code outside #[test] fns: a failure here is a broken test setup.
#![allow(clippy::unwrap_used, dead_code)]

use std::io::{Read, Write};
use std::net::{Shutdown, SocketAddr, TcpStream};
use std::time::{Duration, Instant};

use ambit_tests::mesh::Samples;
use ambit_tests::traffic::{Server, ServerKind};
use ambit_tests::{Mesh, MeshPod, PodSpec};

pub const ECHO_PORT: u16 = 8080;
pub const SINK_PORT: u16 = 9000;
/// A refusal must reach the application this fast ("promptly").
pub const PROMPT: Duration = Duration::from_secs(3);

/// The mesh and the servers placed in it.
pub struct Guestbook {
    pub servers: Vec<Server>,
    pub mesh: Mesh,
}

impl Guestbook {
    pub fn start() -> Self {
        let mesh = Mesh::builder()
            .nodes(3)
            .namespace("default", true)
            .namespace("outside", false)
            .pod(
                PodSpec::new("guestbook")
                    .service_account("guestbook")
                    .label("app", "guestbook")
                    .node(0),
            )
            .pod(
                PodSpec::new("analyzer")
                    .service_account("analyzer")
                    .label("app", "analyzer")
                    .node(1),
            )
            .pod(
                PodSpec::new("sleep")
                    .service_account("sleep")
                    .label("app", "sleep")
                    .node(2),
            )
            .pod(
                PodSpec::new("legacy")
                    .namespace("outside")
                    .service_account("legacy")
                    .label("app", "legacy")
                    .node(0),
            )
            .build()
            .unwrap_or_else(|e| panic!("starting the mesh: {e}"));
        let analyzer = mesh.pod("analyzer");
        let guestbook = mesh.pod("guestbook");
        let servers = vec![
            Server::start(analyzer.netns(), analyzer.addr(ECHO_PORT), ServerKind::Echo).unwrap(),
            Server::start(analyzer.netns(), analyzer.addr(SINK_PORT), ServerKind::Sink).unwrap(),
            Server::start(
                guestbook.netns(),
                guestbook.addr(ECHO_PORT),
                ServerKind::Echo,
            )
            .unwrap(),
        ];
        Self { servers, mesh }
    }

    pub fn pod(&self, name: &str) -> &MeshPod {
        self.mesh.pod(name)
    }

    pub fn analyzer_echo(&self) -> &Server {
        &self.servers[0]
    }

    pub fn analyzer_sink(&self) -> &Server {
        &self.servers[1]
    }

    /// Scrapes every node's agent.
    pub fn scrape(&self) -> Vec<Samples> {
        (0..3)
            .map(|i| {
                self.mesh
                    .metrics(i)
                    .unwrap_or_else(|e| panic!("metrics of node{i}: {e}"))
            })
            .collect()
    }
}

/// What the application saw.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Outcome {
    /// The echo came back byte for byte.
    Allowed,
    /// Connecting failed, or the connection ended before the echo was
    /// complete; says how and after how long.
    Refused { how: String, after: Duration },
}

impl Outcome {
    pub fn allowed(&self) -> bool {
        matches!(self, Outcome::Allowed)
    }
}

/// Sends `payload` from `from` to the echo server at `to`, reading the echo
/// back while writing, and judges the outcome.
pub fn echo(from: &MeshPod, to: SocketAddr, payload: &[u8]) -> Outcome {
    let start = Instant::now();
    let refused = |how: String| Outcome::Refused {
        how,
        after: start.elapsed(),
    };
    let stream = match from.netns().connect(to).unwrap() {
        Ok(s) => s,
        Err(e) => return refused(format!("connect: {e}")),
    };
    stream
        .set_read_timeout(Some(Duration::from_secs(10)))
        .unwrap();
    stream
        .set_write_timeout(Some(Duration::from_secs(10)))
        .unwrap();
    let mut writer = stream.try_clone().unwrap();
    let mut reader = stream;
    let received = std::thread::scope(|scope| {
        let sender = scope.spawn(|| {
            writer.write_all(payload)?;
            writer.shutdown(Shutdown::Write)
        });
        let mut received = Vec::with_capacity(payload.len());
        let read = reader.read_to_end(&mut received);
        let sent = sender.join().unwrap();
        (received, read, sent)
    });
    match received {
        (received, Ok(_), Ok(())) if received == payload => Outcome::Allowed,
        (received, read, sent) => refused(format!(
            "{} of {} bytes echoed (read: {read:?}, write: {sent:?})",
            received.len(),
            payload.len()
        )),
    }
}

/// Sends `bytes` bytes to the sink at `to` and returns `(sent, answer)`:
/// what was sent and the sink's report line as read, newline included.
pub fn sink(from: &MeshPod, to: SocketAddr, bytes: u64, seed: u64) -> (u64, String) {
    let mut stream: TcpStream = from
        .netns()
        .connect(to)
        .unwrap()
        .unwrap_or_else(|e| panic!("{} -> {to}: {e}", from.name()));
    stream
        .set_read_timeout(Some(Duration::from_secs(10)))
        .unwrap();
    let sent = ambit_tests::traffic::send_pattern(&mut stream, bytes, seed).unwrap();
    stream.shutdown(Shutdown::Write).unwrap();
    let mut answer = String::new();
    stream.read_to_string(&mut answer).unwrap();
    let report: ambit_tests::traffic::Transfer = answer
        .trim()
        .parse()
        .unwrap_or_else(|_| panic!("sink answered {answer:?}"));
    assert_eq!(report, sent, "the sink received other bytes than were sent");
    (sent.bytes, answer)
}

/// A payload of `len` bytes starting with `marker`, the rest a pattern.
pub fn payload(marker: &str, len: usize) -> Vec<u8> {
    let mut out = marker.as_bytes().to_vec();
    let mut pattern = ambit_tests::traffic::Pattern::new(len as u64);
    let mut rest = vec![0u8; len.saturating_sub(out.len())];
    pattern.fill(&mut rest);
    out.extend(rest);
    out
}

/// Polls `check` until it returns `Ok`, for up to `timeout`; returns the
/// last error otherwise. Counters of a closing connection land a moment
/// after the application has seen the close.
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
