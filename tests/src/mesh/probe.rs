//! Probes that tell an allowed connection from a refused one by what the
//! application sees, the way a user would: bytes echoed back whole, or a
//! connection that fails or ends early.

use std::io::{Read, Write};
use std::net::{Shutdown, SocketAddr};
use std::time::{Duration, Instant};

use crate::traffic::{self, Pattern, TrafficError, Transfer};

use super::MeshPod;

/// How long one probe may wait on a socket.
const IO_TIMEOUT: Duration = Duration::from_secs(10);

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
    let stream = match from.netns().connect(to) {
        Ok(Ok(s)) => s,
        Ok(Err(e)) => return refused(format!("connect: {e}")),
        Err(e) => return refused(format!("entering {}: {e}", from.name())),
    };
    let prepared = stream
        .set_read_timeout(Some(IO_TIMEOUT))
        .and_then(|()| stream.set_write_timeout(Some(IO_TIMEOUT)))
        .and_then(|()| stream.try_clone());
    let mut writer = match prepared {
        Ok(w) => w,
        Err(e) => return refused(format!("socket: {e}")),
    };
    let mut reader = stream;
    let (received, read, sent) = std::thread::scope(|scope| {
        let sender = scope.spawn(move || {
            writer.write_all(payload)?;
            writer.shutdown(Shutdown::Write)
        });
        let mut received = Vec::with_capacity(payload.len());
        let read = reader.read_to_end(&mut received);
        let sent = sender
            .join()
            .unwrap_or_else(|_| Err(std::io::Error::other("sender panicked")));
        (received, read, sent)
    });
    match (read, sent) {
        (Ok(_), Ok(())) if received == payload => Outcome::Allowed,
        (read, sent) => refused(format!(
            "{} of {} bytes echoed (read: {read:?}, write: {sent:?})",
            received.len(),
            payload.len()
        )),
    }
}

/// Sends `bytes` bytes of a pattern to the sink at `to`; returns what was
/// sent and the sink's report line exactly as read (newline included).
pub fn sink(
    from: &MeshPod,
    to: SocketAddr,
    bytes: u64,
    seed: u64,
) -> Result<(Transfer, Transfer, String), TrafficError> {
    let mut stream = from.netns().connect(to)??;
    stream.set_read_timeout(Some(IO_TIMEOUT))?;
    stream.set_write_timeout(Some(IO_TIMEOUT))?;
    let sent = traffic::send_pattern(&mut stream, bytes, seed)?;
    stream.shutdown(Shutdown::Write)?;
    let mut answer = String::new();
    stream.read_to_string(&mut answer)?;
    let received = answer
        .trim()
        .parse()
        .map_err(|_| TrafficError::Answer(answer.clone()))?;
    Ok((sent, received, answer))
}

/// A payload of `len` bytes starting with `marker`, the rest a pattern.
pub fn payload(marker: &str, len: usize) -> Vec<u8> {
    let mut out = marker.as_bytes().to_vec();
    let mut rest = vec![0u8; len.saturating_sub(out.len())];
    Pattern::new(len as u64).fill(&mut rest);
    out.extend(rest);
    out
}
