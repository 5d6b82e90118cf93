//! Test servers and clients placeable in any pod: TCP echo, a bulk sink
//! that counts and checksums what it receives, a server that reports the
//! peer address it saw, and the matching clients.
//!
//! Everything is blocking std I/O on plain threads, independent of any
//! async runtime, so the same code serves in-process (a listener bound via
//! [`Netns::bind`]) and in the `ambit-testpod` binary.
//!
//! Wire protocols:
//! - echo: every byte is written back; EOF from the client is answered by EOF.
//! - sink: reads to EOF, then answers one line `bytes=<n> checksum=<hex>`.
//! - count: like sink but without the checksum (`checksum=0`), for raw
//!   throughput measurements where hashing would be the bottleneck.
//! - peer: answers one line `<ip>:<port>` (the peer it saw) and closes.

pub mod checksum;

use std::io::{self, BufRead, BufReader, Read, Write};
use std::net::{Shutdown, SocketAddr, TcpListener, TcpStream};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;

pub use checksum::{Checksum, Pattern, Transfer};

use crate::netns::{Netns, NetnsError};

/// Buffer size for bulk reads and writes.
const CHUNK: usize = 64 * 1024;

#[derive(Debug, thiserror::Error)]
pub enum TrafficError {
    #[error(transparent)]
    Netns(#[from] NetnsError),
    #[error("binding {addr}: {source}")]
    Bind {
        addr: SocketAddr,
        #[source]
        source: io::Error,
    },
    #[error(transparent)]
    Io(#[from] io::Error),
    #[error("malformed answer from server: {0:?}")]
    Answer(String),
}

/// What a [`Server`] does with each connection.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ServerKind {
    Echo,
    Sink,
    Count,
    Peer,
}

/// Record of one connection a server handled.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Served {
    /// The client address as the server saw it.
    pub peer: SocketAddr,
    /// What the server received (for echo: also what it sent back).
    pub received: Transfer,
}

/// A TCP server handling each connection on its own thread. Dropping it
/// stops accepting; connections in progress finish on their own.
#[derive(Debug)]
pub struct Server {
    kind: ServerKind,
    addr: SocketAddr,
    listener: Arc<TcpListener>,
    served: Arc<Mutex<Vec<Served>>>,
    accept: Option<JoinHandle<()>>,
}

impl Server {
    /// Binds `addr` inside `netns` and starts serving.
    pub fn start(netns: &Netns, addr: SocketAddr, kind: ServerKind) -> Result<Self, TrafficError> {
        let listener = netns
            .bind(addr)?
            .map_err(|source| TrafficError::Bind { addr, source })?;
        Self::from_listener(listener, kind)
    }

    /// Serves on an already bound listener (whatever namespace it is in).
    pub fn from_listener(listener: TcpListener, kind: ServerKind) -> Result<Self, TrafficError> {
        let addr = listener.local_addr()?;
        let listener = Arc::new(listener);
        let served = Arc::new(Mutex::new(Vec::new()));
        let accept = {
            let listener = Arc::clone(&listener);
            let served = Arc::clone(&served);
            std::thread::Builder::new()
                .name(format!("{kind:?}-accept"))
                .spawn(move || accept_loop(&listener, kind, &served))?
        };
        Ok(Self {
            kind,
            addr,
            listener,
            served,
            accept: Some(accept),
        })
    }

    pub fn kind(&self) -> ServerKind {
        self.kind
    }

    pub fn local_addr(&self) -> SocketAddr {
        self.addr
    }

    /// Connections fully handled so far, in completion order.
    pub fn served(&self) -> Vec<Served> {
        self.served
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }

    /// Blocks until the accept loop ends (it runs until the server is dropped).
    pub fn join(mut self) {
        if let Some(accept) = self.accept.take() {
            let _ = accept.join();
        }
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        // Shutting down a listening socket wakes a blocked accept() on Linux.
        let _ = socket2::SockRef::from(&*self.listener).shutdown(Shutdown::Both);
        if let Some(accept) = self.accept.take() {
            let _ = accept.join();
        }
    }
}

fn accept_loop(listener: &TcpListener, kind: ServerKind, served: &Arc<Mutex<Vec<Served>>>) {
    loop {
        let (stream, peer) = match listener.accept() {
            Ok(conn) => conn,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            // The listener was shut down (or is broken): stop serving.
            Err(_) => return,
        };
        if kind == ServerKind::Peer {
            // One short write to a fresh socket never blocks: answering on
            // the accept thread keeps connection-rate measurements about
            // TCP, not about thread creation.
            let _ = handle(stream, peer, kind, served);
            continue;
        }
        let served = Arc::clone(served);
        let spawned = std::thread::Builder::new()
            .name(format!("{kind:?}-conn"))
            .spawn(move || {
                let _ = stream.set_nodelay(true);
                let _ = handle(stream, peer, kind, &served);
            });
        if spawned.is_err() {
            return;
        }
    }
}

/// Serves one connection. The record is stored before the server's final
/// answer, so a client that has read the answer finds its connection in
/// [`Server::served`].
fn handle(
    mut stream: TcpStream,
    peer: SocketAddr,
    kind: ServerKind,
    served: &Mutex<Vec<Served>>,
) -> io::Result<()> {
    let record = |received| {
        served
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .push(Served { peer, received });
    };
    match kind {
        ServerKind::Peer => {
            record(Transfer::default());
            writeln!(stream, "{peer}")?;
        }
        ServerKind::Sink => {
            let received = drain(&mut stream)?;
            record(received);
            writeln!(stream, "{received}")?;
        }
        ServerKind::Count => {
            let received = count(&mut stream)?;
            record(received);
            writeln!(stream, "{received}")?;
        }
        ServerKind::Echo => {
            let mut sum = Checksum::new();
            let mut buf = vec![0u8; CHUNK];
            loop {
                let n = match stream.read(&mut buf) {
                    Ok(0) => break,
                    Ok(n) => n,
                    Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                    Err(e) => return Err(e),
                };
                sum.update(&buf[..n]);
                stream.write_all(&buf[..n])?;
            }
            record(sum.finish());
        }
    }
    stream.shutdown(Shutdown::Write)
}

/// Reads `reader` to EOF, counting and checksumming.
pub fn drain(reader: &mut impl Read) -> io::Result<Transfer> {
    let mut sum = Checksum::new();
    let mut buf = vec![0u8; CHUNK];
    loop {
        match reader.read(&mut buf) {
            Ok(0) => return Ok(sum.finish()),
            Ok(n) => sum.update(&buf[..n]),
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
}

/// Reads `reader` to EOF, only counting.
pub fn count(reader: &mut impl Read) -> io::Result<Transfer> {
    let mut bytes = 0u64;
    let mut buf = vec![0u8; 4 * CHUNK];
    loop {
        match reader.read(&mut buf) {
            Ok(0) => {
                return Ok(Transfer { bytes, checksum: 0 });
            }
            Ok(n) => bytes += n as u64,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
}

/// Writes `bytes` bytes of the pattern for `seed`, returning what was sent.
pub fn send_pattern(writer: &mut impl Write, bytes: u64, seed: u64) -> io::Result<Transfer> {
    let mut pattern = Pattern::new(seed);
    let mut sum = Checksum::new();
    let mut buf = vec![0u8; CHUNK];
    let mut left = bytes;
    while left > 0 {
        let n = usize::try_from(left).map_or(CHUNK, |l| l.min(CHUNK));
        pattern.fill(&mut buf[..n]);
        sum.update(&buf[..n]);
        writer.write_all(&buf[..n])?;
        left -= n as u64;
    }
    Ok(sum.finish())
}

/// Result of sending to a sink or through an echo server.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Exchange {
    pub sent: Transfer,
    /// What the sink reported, or what came back from the echo server.
    pub received: Transfer,
}

impl Exchange {
    pub fn intact(&self) -> bool {
        self.sent == self.received
    }
}

/// Sends `bytes` bytes to a sink server, half-closes, and reads its report.
pub fn send_to_sink(
    mut stream: TcpStream,
    bytes: u64,
    seed: u64,
) -> Result<Exchange, TrafficError> {
    let sent = send_pattern(&mut stream, bytes, seed)?;
    stream.shutdown(Shutdown::Write)?;
    let received = read_report(stream)?;
    Ok(Exchange { sent, received })
}

/// Reads the one-line report a sink or count server sends after EOF.
pub fn read_report(stream: TcpStream) -> Result<Transfer, TrafficError> {
    let mut line = String::new();
    BufReader::new(stream).read_line(&mut line)?;
    line.trim()
        .parse()
        .map_err(|_| TrafficError::Answer(line.clone()))
}

/// Sends `bytes` bytes through an echo server while reading them back on
/// another thread (both directions must flow at once, or buffers fill up).
pub fn echo_through(stream: TcpStream, bytes: u64, seed: u64) -> Result<Exchange, TrafficError> {
    let mut writer = stream.try_clone()?;
    let sender = std::thread::spawn(move || -> io::Result<Transfer> {
        let sent = send_pattern(&mut writer, bytes, seed)?;
        writer.shutdown(Shutdown::Write)?;
        Ok(sent)
    });
    let mut reader = stream;
    let received = drain(&mut reader)?;
    let sent = sender
        .join()
        .map_err(|_| io::Error::other("sender thread panicked"))??;
    Ok(Exchange { sent, received })
}

/// Asks a peer server which address it saw this connection come from.
pub fn ask_peer(stream: TcpStream) -> Result<SocketAddr, TrafficError> {
    let mut line = String::new();
    BufReader::new(stream).read_line(&mut line)?;
    line.trim()
        .parse()
        .map_err(|_| TrafficError::Answer(line.clone()))
}
