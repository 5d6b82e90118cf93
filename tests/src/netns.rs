//! Network namespaces: creating and deleting them, running commands and
//! long-lived processes inside them, and opening sockets inside them from
//! test code.
//!
//! Commands and child processes enter a namespace through `ip netns exec`,
//! so no `unsafe` `pre_exec` hook is needed. Test code enters a namespace on a
//! dedicated thread that calls `setns(2)`: a socket created there stays in
//! that namespace for its whole life, whichever thread uses it afterwards.

mod process;

pub use process::Process;

use std::ffi::{OsStr, OsString};
use std::fs::File;
use std::io;
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Command, ExitStatus, Output, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use nix::sched::{CloneFlags, setns};
use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;

/// Where `ip netns add` mounts named namespaces.
const NETNS_DIR: &str = "/run/netns";

/// Concurrent first uses of `ip netns add` race on mounting `/run/netns`;
/// serialising creation inside one process avoids that.
static CREATE_LOCK: Mutex<()> = Mutex::new(());

#[derive(Debug, thiserror::Error)]
pub enum NetnsError {
    #[error("cannot run {program}: {source}")]
    Spawn {
        program: String,
        #[source]
        source: io::Error,
    },
    #[error("`{command}` failed ({status}): {stderr}")]
    Command {
        command: String,
        status: ExitStatus,
        stderr: String,
    },
    #[error("cannot enter namespace {netns}: {reason}")]
    Enter { netns: String, reason: String },
    #[error("nothing listens on {addr} in {netns} after {waited:?}")]
    PortTimeout {
        netns: String,
        addr: SocketAddr,
        waited: Duration,
    },
    #[error("process {label} exited ({status}) before {addr} was ready; log tail:\n{log}")]
    ExitedEarly {
        label: String,
        addr: SocketAddr,
        status: ExitStatus,
        log: String,
    },
    #[error("writing sysctl {key} in {netns}: {source}")]
    Sysctl {
        netns: String,
        key: String,
        #[source]
        source: io::Error,
    },
    #[error("log file {path}: {source}")]
    Log {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
}

/// A named network namespace. Clones share it; the namespace that
/// [`Netns::create`] made is deleted (and whatever still runs in it killed)
/// when the last clone is dropped.
#[derive(Clone, Debug)]
pub struct Netns {
    inner: Arc<Inner>,
}

#[derive(Debug)]
struct Inner {
    name: String,
    owned: bool,
}

impl Netns {
    /// Creates the namespace `name` with `ip netns add`; its loopback is left down.
    pub fn create(name: &str) -> Result<Self, NetnsError> {
        {
            let _serial = CREATE_LOCK.lock().unwrap_or_else(|e| e.into_inner());
            run_checked(Command::new("ip").args(["netns", "add", name]))?;
        }
        Ok(Self {
            inner: Arc::new(Inner {
                name: name.to_owned(),
                owned: true,
            }),
        })
    }

    /// Refers to an existing namespace without taking ownership: dropping
    /// the handle leaves the namespace alone.
    pub fn attach(name: &str) -> Self {
        Self {
            inner: Arc::new(Inner {
                name: name.to_owned(),
                owned: false,
            }),
        }
    }

    pub fn name(&self) -> &str {
        &self.inner.name
    }

    /// The bind mount that keeps the namespace alive, usable with `setns`.
    pub fn path(&self) -> PathBuf {
        Path::new(NETNS_DIR).join(&self.inner.name)
    }

    /// Runs `ip -n <ns> <args>` and returns its stdout; fails on a non-zero exit.
    pub fn ip<I, S>(&self, args: I) -> Result<String, NetnsError>
    where
        I: IntoIterator<Item = S>,
        S: AsRef<OsStr>,
    {
        run_checked(Command::new("ip").arg("-n").arg(self.name()).args(args))
    }

    /// Runs a command inside the namespace and returns its raw output,
    /// whatever its exit status.
    pub fn output<I, S>(&self, program: impl AsRef<OsStr>, args: I) -> Result<Output, NetnsError>
    where
        I: IntoIterator<Item = S>,
        S: AsRef<OsStr>,
    {
        let mut cmd = self.exec_command(program.as_ref());
        cmd.args(args);
        let label = describe(&cmd);
        cmd.output().map_err(|source| NetnsError::Spawn {
            program: label,
            source,
        })
    }

    /// Runs a command inside the namespace, fails unless it exits with 0,
    /// and returns its stdout.
    pub fn exec<I, S>(&self, program: impl AsRef<OsStr>, args: I) -> Result<String, NetnsError>
    where
        I: IntoIterator<Item = S>,
        S: AsRef<OsStr>,
    {
        let mut cmd = self.exec_command(program.as_ref());
        cmd.args(args);
        run_checked(&mut cmd)
    }

    /// Starts `cmd` (program, arguments, environment and working directory
    /// are taken from it) as a long-lived process inside the namespace. Its
    /// stdout and stderr go to a log file; it is killed when the returned
    /// [`Process`] is dropped.
    pub fn spawn(&self, cmd: &Command) -> Result<Process, NetnsError> {
        let mut inner = self.exec_command(cmd.get_program());
        inner.args(cmd.get_args());
        for (key, value) in cmd.get_envs() {
            match value {
                Some(value) => inner.env(key, value),
                None => inner.env_remove(key),
            };
        }
        if let Some(dir) = cmd.get_current_dir() {
            inner.current_dir(dir);
        }
        let label = format!(
            "{}:{}",
            self.name(),
            Path::new(cmd.get_program())
                .file_name()
                .unwrap_or(cmd.get_program())
                .to_string_lossy()
        );
        let log_path = process::log_file_path(&label);
        let log = File::create(&log_path).map_err(|source| NetnsError::Log {
            path: log_path.clone(),
            source,
        })?;
        let log_err = log.try_clone().map_err(|source| NetnsError::Log {
            path: log_path.clone(),
            source,
        })?;
        let child = inner
            .stdin(Stdio::null())
            .stdout(log)
            .stderr(log_err)
            .spawn()
            .map_err(|source| NetnsError::Spawn {
                program: describe(&inner),
                source,
            })?;
        Ok(Process::new(child, label, log_path, self.clone()))
    }

    /// Runs `f` on a thread that has entered this namespace, and returns
    /// its result. Sockets created by `f` belong to this namespace for good.
    /// A panic in `f` is propagated to the caller.
    pub fn run<T, F>(&self, f: F) -> Result<T, NetnsError>
    where
        T: Send,
        F: FnOnce() -> T + Send,
    {
        let enter_err = |reason: String| NetnsError::Enter {
            netns: self.name().to_owned(),
            reason,
        };
        let file = File::open(self.path()).map_err(|e| enter_err(e.to_string()))?;
        std::thread::scope(|scope| {
            let handle = scope.spawn(move || {
                setns(&file, CloneFlags::CLONE_NEWNET).map_err(|e| e.to_string())?;
                Ok(f())
            });
            match handle.join() {
                Ok(result) => result.map_err(enter_err),
                Err(panic) => std::panic::resume_unwind(panic),
            }
        })
    }

    /// Binds a TCP listener inside the namespace.
    pub fn bind(&self, addr: SocketAddr) -> Result<io::Result<TcpListener>, NetnsError> {
        self.run(|| TcpListener::bind(addr))
    }

    /// Opens a TCP connection from inside the namespace.
    pub fn connect(&self, addr: SocketAddr) -> Result<io::Result<TcpStream>, NetnsError> {
        self.run(|| TcpStream::connect_timeout(&addr, Duration::from_secs(5)))
    }

    /// Waits until a TCP connection to `addr`, made from inside this
    /// namespace, succeeds.
    pub fn wait_for_port(&self, addr: SocketAddr, timeout: Duration) -> Result<(), NetnsError> {
        let start = Instant::now();
        loop {
            if let Ok(Ok(_)) =
                self.run(|| TcpStream::connect_timeout(&addr, Duration::from_millis(200)))
            {
                return Ok(());
            }
            if start.elapsed() >= timeout {
                return Err(NetnsError::PortTimeout {
                    netns: self.name().to_owned(),
                    addr,
                    waited: start.elapsed(),
                });
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Writes `/proc/sys/<key>` (dotted, e.g. `net.ipv4.ip_forward`) inside
    /// the namespace. Network sysctls resolve against the namespace of the
    /// thread that opens them, so no `sysctl` binary is needed.
    pub fn set_sysctl(&self, key: &str, value: &str) -> Result<(), NetnsError> {
        let path = Path::new("/proc/sys").join(key.replace('.', "/"));
        self.run(|| std::fs::write(&path, value))?
            .map_err(|source| NetnsError::Sysctl {
                netns: self.name().to_owned(),
                key: key.to_owned(),
                source,
            })
    }

    /// Reads `/proc/sys/<key>` inside the namespace.
    pub fn sysctl(&self, key: &str) -> Result<String, NetnsError> {
        let path = Path::new("/proc/sys").join(key.replace('.', "/"));
        self.run(|| std::fs::read_to_string(&path))?
            .map(|v| v.trim().to_owned())
            .map_err(|source| NetnsError::Sysctl {
                netns: self.name().to_owned(),
                key: key.to_owned(),
                source,
            })
    }

    fn exec_command(&self, program: &OsStr) -> Command {
        let mut cmd = Command::new("ip");
        cmd.args(["netns", "exec"]).arg(self.name()).arg(program);
        cmd
    }
}

impl Drop for Inner {
    fn drop(&mut self) {
        if self.owned {
            delete(&self.name);
        }
    }
}

/// Lists the names of all named namespaces.
pub fn list() -> Result<Vec<String>, NetnsError> {
    let out = run_checked(Command::new("ip").args(["netns", "list"]))?;
    // Lines look like `name` or `name (id: 3)`.
    Ok(out
        .lines()
        .filter_map(|line| line.split_whitespace().next())
        .map(str::to_owned)
        .collect())
}

/// Kills whatever still runs inside namespace `name`, then deletes it.
/// Errors are ignored: this runs from `Drop` and from stale-run cleanup.
pub(crate) fn delete(name: &str) {
    if let Ok(out) = Command::new("ip").args(["netns", "pids", name]).output() {
        for pid in String::from_utf8_lossy(&out.stdout).split_whitespace() {
            if let Ok(pid) = pid.parse::<i32>()
                && pid != std::process::id() as i32
            {
                let _ = kill(Pid::from_raw(pid), Signal::SIGKILL);
            }
        }
    }
    let _ = Command::new("ip")
        .args(["netns", "del", name])
        .stderr(Stdio::null())
        .status();
}

fn describe(cmd: &Command) -> String {
    let mut parts: Vec<OsString> = vec![cmd.get_program().to_owned()];
    parts.extend(cmd.get_args().map(OsStr::to_owned));
    parts
        .iter()
        .map(|p| p.to_string_lossy().into_owned())
        .collect::<Vec<_>>()
        .join(" ")
}

/// Runs a command to completion; a non-zero exit is an error carrying stderr.
pub(crate) fn run_checked(cmd: &mut Command) -> Result<String, NetnsError> {
    let command = describe(cmd);
    let out = cmd.output().map_err(|source| NetnsError::Spawn {
        program: command.clone(),
        source,
    })?;
    if !out.status.success() {
        return Err(NetnsError::Command {
            command,
            status: out.status,
            stderr: String::from_utf8_lossy(&out.stderr).trim().to_owned(),
        });
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}
