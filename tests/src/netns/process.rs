//! Long-lived processes started inside a namespace: their log files, waiting
//! for them to listen, stopping them, and killing them on drop.

use std::io;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, ExitStatus};
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;

use super::{Netns, NetnsError};

/// A process running inside a namespace; killed when dropped. When the
/// dropping thread is panicking (a failing test), the tail of the process's
/// log is printed so the failure can be understood.
#[derive(Debug)]
pub struct Process {
    child: Child,
    label: String,
    log_path: PathBuf,
    netns: Netns,
}

impl Process {
    pub(super) fn new(child: Child, label: String, log_path: PathBuf, netns: Netns) -> Self {
        Self {
            child,
            label,
            log_path,
            netns,
        }
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// `<namespace>:<program>`, for messages.
    pub fn label(&self) -> &str {
        &self.label
    }

    pub fn log_path(&self) -> &Path {
        &self.log_path
    }

    /// Everything the process wrote to stdout and stderr so far.
    pub fn log(&self) -> String {
        std::fs::read_to_string(&self.log_path).unwrap_or_default()
    }

    /// Has the process exited, and how?
    pub fn try_wait(&mut self) -> io::Result<Option<ExitStatus>> {
        self.child.try_wait()
    }

    /// Waits until `addr` accepts connections from the process's namespace,
    /// failing fast with the process's log if it exits first.
    pub fn wait_for_port(&mut self, addr: SocketAddr, timeout: Duration) -> Result<(), NetnsError> {
        let start = Instant::now();
        loop {
            if let Ok(Some(status)) = self.child.try_wait() {
                return Err(NetnsError::ExitedEarly {
                    label: self.label.clone(),
                    addr,
                    status,
                    log: tail(&self.log(), 40),
                });
            }
            let left = timeout.saturating_sub(start.elapsed());
            match self
                .netns
                .wait_for_port(addr, left.min(Duration::from_millis(250)))
            {
                Ok(()) => return Ok(()),
                Err(err @ NetnsError::PortTimeout { .. }) if left.is_zero() => return Err(err),
                Err(NetnsError::PortTimeout { .. }) => {}
                Err(err) => return Err(err),
            }
        }
    }

    /// Sends `signal` and returns at once.
    pub fn signal(&self, signal: Signal) {
        let _ = kill(Pid::from_raw(self.child.id() as i32), signal);
    }

    /// Waits up to `timeout` for the process to exit by itself.
    pub fn wait_exit(&mut self, timeout: Duration) -> io::Result<Option<ExitStatus>> {
        let start = Instant::now();
        loop {
            if let Some(status) = self.child.try_wait()? {
                return Ok(Some(status));
            }
            if start.elapsed() > timeout {
                return Ok(None);
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Asks the process to stop with SIGTERM, waits up to `grace`, then kills it.
    pub fn stop(mut self, grace: Duration) -> io::Result<ExitStatus> {
        let pid = Pid::from_raw(self.child.id() as i32);
        let _ = kill(pid, Signal::SIGTERM);
        let start = Instant::now();
        while start.elapsed() < grace {
            if let Some(status) = self.child.try_wait()? {
                return Ok(status);
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        self.child.kill()?;
        self.child.wait()
    }
}

impl Drop for Process {
    fn drop(&mut self) {
        if let Ok(None) = self.child.try_wait() {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
        if std::thread::panicking() {
            eprintln!(
                "---- log of {} ({}) ----\n{}\n---- end of log ----",
                self.label,
                self.log_path.display(),
                tail(&self.log(), 60)
            );
        }
    }
}

pub(super) fn log_file_path(label: &str) -> PathBuf {
    static SEQ: AtomicU64 = AtomicU64::new(0);
    let dir = std::env::temp_dir().join("ambit-tests");
    let _ = std::fs::create_dir_all(&dir);
    let n = SEQ.fetch_add(1, Ordering::Relaxed);
    dir.join(format!("{}-{n}.log", label.replace([':', '/'], "_")))
}

fn tail(text: &str, lines: usize) -> String {
    let all: Vec<&str> = text.lines().collect();
    all[all.len().saturating_sub(lines)..].join("\n")
}
