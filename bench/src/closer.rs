//! The connection-rate server: every accepted connection gets one byte and is
//! closed at once, so the server closes first and TIME_WAIT lands on its side
//! (the client's ports are free again as soon as it has read EOF).
//!
//! Several threads accept on the one listener: a single accept loop, doing the
//! write and the close as well, caps the rate below what the client can open.

use std::io::Write;
use std::net::{Shutdown, SocketAddr, TcpListener};
use std::sync::Arc;
use std::thread::JoinHandle;

use ambit_tests::Netns;
use anyhow::Context;

const ACCEPT_THREADS: usize = 4;

/// Serves until dropped.
pub struct Closer {
    listener: Arc<TcpListener>,
    threads: Vec<JoinHandle<()>>,
}

impl Closer {
    pub fn start(netns: &Netns, addr: SocketAddr) -> anyhow::Result<Self> {
        let listener = netns
            .bind(addr)?
            .with_context(|| format!("binding {addr} in {}", netns.name()))?;
        let listener = Arc::new(listener);
        let threads = (0..ACCEPT_THREADS)
            .map(|i| {
                let listener = Arc::clone(&listener);
                std::thread::Builder::new()
                    .name(format!("closer-{i}"))
                    .spawn(move || accept_loop(&listener))
                    .context("starting an accept thread")
            })
            .collect::<anyhow::Result<Vec<_>>>()?;
        Ok(Self { listener, threads })
    }
}

fn accept_loop(listener: &TcpListener) {
    loop {
        match listener.accept() {
            Ok((mut stream, _)) => {
                // One byte into a fresh socket's buffer never blocks; the drop
                // that follows sends the FIN.
                let _ = stream.write_all(b"x");
            }
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
            Err(e) if e.raw_os_error() == Some(nix::libc::EMFILE) => {}
            // Shut down by `drop`, or broken: stop.
            Err(_) => return,
        }
    }
}

impl Drop for Closer {
    fn drop(&mut self) {
        // Shutting a listening socket down wakes every thread blocked in accept().
        let _ = socket2::SockRef::from(&*self.listener).shutdown(Shutdown::Both);
        for thread in self.threads.drain(..) {
            let _ = thread.join();
        }
    }
}
