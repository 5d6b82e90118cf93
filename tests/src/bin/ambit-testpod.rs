//! ambit-testpod: the harness's test servers and clients as a separate
//! process, to run inside a pod namespace (`Netns::spawn`).
//!
//! `echo`, `sink`, `count` and `peer` serve until killed and print one line per
//! handled connection (`peer=<addr> bytes=<n> checksum=<hex>`); `send` sends
//! a pattern to a sink, prints what was sent and what the sink received,
//! and exits non-zero if they differ. `http` serves HTTP/1.1 and h2c (see
//! `http_server.rs`).

#[path = "ambit-testpod/http_server.rs"]
mod http_server;

use std::net::{SocketAddr, TcpListener, TcpStream};
use std::time::Duration;

use ambit_tests::traffic::{self, Server, ServerKind};
use anyhow::{Context, bail};
use clap::{Parser, Subcommand};

#[derive(Parser, Debug)]
#[command(version, about = "Ambit test servers and clients for pod namespaces")]
struct Cli {
    #[command(subcommand)]
    command: Cmd,
}

#[derive(Subcommand, Debug)]
enum Cmd {
    /// Echo every byte back.
    Echo(Listen),
    /// Count and checksum everything received, answer the totals at EOF.
    Sink(Listen),
    /// Like sink, without the checksum (raw throughput).
    Count(Listen),
    /// Answer the client address this server saw.
    Peer(Listen),
    /// Send a byte pattern to a sink and compare its report.
    Send(Send),
    /// Answer every HTTP request with a report of what arrived.
    Http(Listen),
    /// Concurrent GETs on one h2c connection, one line per answer.
    H2Client(H2Client),
}

#[derive(clap::Args, Debug)]
struct H2Client {
    /// Server to query.
    #[arg(long, env = "AMBIT_TESTPOD_TO", default_value = "127.0.0.1:8080")]
    to: SocketAddr,
    /// Number of concurrent streams.
    #[arg(long, env = "AMBIT_TESTPOD_STREAMS", default_value_t = 20)]
    streams: usize,
}

#[derive(clap::Args, Debug)]
struct Listen {
    /// Address to listen on.
    #[arg(long, env = "AMBIT_TESTPOD_LISTEN", default_value = "0.0.0.0:8080")]
    listen: SocketAddr,
}

#[derive(clap::Args, Debug)]
struct Send {
    /// Sink to send to.
    #[arg(long, env = "AMBIT_TESTPOD_TO", default_value = "127.0.0.1:8080")]
    to: SocketAddr,
    /// Number of bytes to send.
    #[arg(long, env = "AMBIT_TESTPOD_BYTES", default_value_t = 1 << 20)]
    bytes: u64,
    /// Seed of the byte pattern.
    #[arg(long, env = "AMBIT_TESTPOD_SEED", default_value_t = 1)]
    seed: u64,
}

fn main() -> anyhow::Result<()> {
    match Cli::parse().command {
        Cmd::Echo(l) => serve(l, ServerKind::Echo),
        Cmd::Sink(l) => serve(l, ServerKind::Sink),
        Cmd::Count(l) => serve(l, ServerKind::Count),
        Cmd::Peer(l) => serve(l, ServerKind::Peer),
        Cmd::Send(s) => send(s),
        Cmd::Http(l) => http_server::serve(l.listen),
        Cmd::H2Client(c) => http_server::h2_client(c.to, c.streams),
    }
}

fn serve(listen: Listen, kind: ServerKind) -> anyhow::Result<()> {
    let listener =
        TcpListener::bind(listen.listen).with_context(|| format!("binding {}", listen.listen))?;
    let server = Server::from_listener(listener, kind)?;
    println!("listening kind={kind:?} addr={}", server.local_addr());
    let mut reported = 0;
    loop {
        std::thread::sleep(Duration::from_millis(50));
        let served = server.served();
        for s in &served[reported..] {
            println!("peer={} {}", s.peer, s.received);
        }
        reported = served.len();
    }
}

fn send(send: Send) -> anyhow::Result<()> {
    let stream = TcpStream::connect_timeout(&send.to, Duration::from_secs(5))
        .with_context(|| format!("connecting to {}", send.to))?;
    let exchange = traffic::send_to_sink(stream, send.bytes, send.seed)?;
    println!("sent {}", exchange.sent);
    println!("received {}", exchange.received);
    if !exchange.intact() {
        bail!("sink received different bytes than were sent");
    }
    Ok(())
}
