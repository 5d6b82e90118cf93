//! What the agents spent, read from `/proc`: CPU time (user + system, all
//! threads) and resident memory. The benchmark charges every figure with the
//! agents' CPU seconds, so a faster row that burns more CPU is visible.

use anyhow::Context;

/// CPU time a process has used, split by where it ran.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct CpuTime {
    /// Seconds in user space.
    pub user: f64,
    /// Seconds in the kernel (system calls, and the softirq work they run).
    pub system: f64,
}

impl CpuTime {
    pub fn total(self) -> f64 {
        self.user + self.system
    }
}

impl std::ops::Sub for CpuTime {
    type Output = Self;
    fn sub(self, rhs: Self) -> Self {
        Self {
            user: self.user - rhs.user,
            system: self.system - rhs.system,
        }
    }
}

impl std::iter::Sum for CpuTime {
    fn sum<I: Iterator<Item = Self>>(iter: I) -> Self {
        iter.fold(Self::default(), |a, b| Self {
            user: a.user + b.user,
            system: a.system + b.system,
        })
    }
}

/// CPU seconds (user + system) process `pid` has used so far.
pub fn cpu_seconds(pid: u32) -> anyhow::Result<f64> {
    Ok(cpu_time(pid)?.total())
}

/// CPU time process `pid` (all its threads) has used so far.
pub fn cpu_time(pid: u32) -> anyhow::Result<CpuTime> {
    let path = format!("/proc/{pid}/stat");
    let stat = std::fs::read_to_string(&path).with_context(|| format!("reading {path}"))?;
    parse_stat(&stat).with_context(|| format!("parsing {path}"))
}

/// utime and stime from the text of `/proc/<pid>/stat`.
fn parse_stat(stat: &str) -> anyhow::Result<CpuTime> {
    // The command name may hold spaces; the fields counted from 3 follow its ')'.
    let rest = stat.rsplit_once(')').map(|(_, r)| r).unwrap_or_default();
    let fields: Vec<&str> = rest.split_whitespace().collect();
    let ticks = |i: usize| -> anyhow::Result<f64> {
        let field = fields.get(i).context("too few fields")?;
        Ok(field.parse::<f64>()?)
    };
    // utime and stime are fields 14 and 15, in USER_HZ (100 on Linux).
    Ok(CpuTime {
        user: ticks(11)? / 100.0,
        system: ticks(12)? / 100.0,
    })
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

    /// CPU time of all the agents together.
    pub fn cpu_time(&self) -> anyhow::Result<CpuTime> {
        self.pids.iter().map(|&pid| cpu_time(pid)).sum()
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stat_fields_count_from_the_command_names_last_parenthesis() {
        // A command name with a space and a ')' in it, as a thread may set.
        let stat = "42 (ambit (a) b) S 1 42 42 0 -1 4194560 900 0 0 0 250 75 0 0 20 0 3 0";
        let cpu = parse_stat(stat).unwrap();
        assert_eq!(
            cpu,
            CpuTime {
                user: 2.5,
                system: 0.75
            }
        );
        assert!(parse_stat("42 (x) S 1 2").is_err());
    }
}
