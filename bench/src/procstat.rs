//! What the agents spent, read from `/proc`: CPU time (user + system, all
//! threads) and resident memory. The benchmark charges every figure with the
//! agents' CPU seconds, so a faster row that burns more CPU is visible.

use anyhow::Context;

/// CPU seconds (user + system) process `pid` has used so far.
pub fn cpu_seconds(pid: u32) -> anyhow::Result<f64> {
    let path = format!("/proc/{pid}/stat");
    let stat = std::fs::read_to_string(&path).with_context(|| format!("reading {path}"))?;
    // The command name may hold spaces; the fields counted from 3 follow its ')'.
    let rest = stat.rsplit_once(')').map(|(_, r)| r).unwrap_or_default();
    let fields: Vec<&str> = rest.split_whitespace().collect();
    let ticks = |i: usize| -> anyhow::Result<f64> {
        let field = fields.get(i).with_context(|| format!("short {path}"))?;
        Ok(field.parse::<f64>()?)
    };
    // utime and stime are fields 14 and 15, in USER_HZ (100 on Linux).
    Ok((ticks(11)? + ticks(12)?) / 100.0)
}

/// Resident set size of process `pid`, in MiB.
pub fn rss_mib(pid: u32) -> anyhow::Result<f64> {
    let path = format!("/proc/{pid}/status");
    let status = std::fs::read_to_string(&path).with_context(|| format!("reading {path}"))?;
    let kib = status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.split_whitespace().next()?.parse::<f64>().ok())
        .with_context(|| format!("no VmRSS in {path}"))?;
    Ok(kib / 1024.0)
}

/// Open file descriptors of process `pid`.
pub fn open_fds(pid: u32) -> anyhow::Result<usize> {
    let path = format!("/proc/{pid}/fd");
    Ok(std::fs::read_dir(&path)
        .with_context(|| format!("listing {path}"))?
        .count())
}

/// The agents whose cost is charged to each row.
#[derive(Debug, Clone)]
pub struct Agents {
    pids: Vec<u32>,
}

impl Agents {
    pub fn new(pids: Vec<u32>) -> Self {
        Self { pids }
    }

    pub fn pids(&self) -> &[u32] {
        &self.pids
    }

    /// CPU seconds of all the agents together.
    pub fn cpu_seconds(&self) -> anyhow::Result<f64> {
        self.pids.iter().map(|&pid| cpu_seconds(pid)).sum()
    }

    /// Each agent's resident set, in MiB, in the order of [`Self::pids`].
    pub fn rss_mib(&self) -> anyhow::Result<Vec<f64>> {
        self.pids.iter().map(|&pid| rss_mib(pid)).collect()
    }
}

/// Raises this process's soft open-file limit to the hard one: holding
/// thousands of idle connections needs it, and the hard limit cannot be
/// raised here.
pub fn raise_nofile() -> anyhow::Result<u64> {
    use nix::sys::resource::{Resource, getrlimit, setrlimit};
    let (soft, hard) = getrlimit(Resource::RLIMIT_NOFILE).context("getrlimit")?;
    if soft < hard {
        setrlimit(Resource::RLIMIT_NOFILE, hard, hard).context("setrlimit")?;
    }
    Ok(hard)
}
