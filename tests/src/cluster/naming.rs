//! Names of a cluster's namespaces and interfaces, and removal of what a
//! crashed earlier run left behind.
//!
//! Namespace names are `ambit-<pid>-<seq>-<role>`: the PID keeps parallel
//! processes apart, the per-process sequence number keeps parallel tests in
//! one process apart, and a dead PID marks a namespace as stale. Interface
//! names are limited to 15 bytes, so they carry a short tag
//! `a<pid>x<seq base36>` instead; they live inside the cluster's own
//! namespaces, and the tag makes a leak into any other namespace
//! recognisable.

use std::sync::Once;
use std::sync::atomic::{AtomicU32, Ordering};

use crate::netns;

const NETNS_PREFIX: &str = "ambit-";
/// Linux's IFNAMSIZ minus the terminating NUL.
pub const MAX_IFNAME: usize = 15;

/// The names of one cluster.
#[derive(Clone, Debug)]
pub struct ClusterNames {
    netns_prefix: String,
    tag: String,
}

impl ClusterNames {
    /// Allocates the next cluster's names in this process.
    pub fn next() -> Self {
        static SEQ: AtomicU32 = AtomicU32::new(0);
        let seq = SEQ.fetch_add(1, Ordering::Relaxed);
        let pid = std::process::id();
        Self {
            netns_prefix: format!("{NETNS_PREFIX}{pid}-{seq}-"),
            tag: format!("a{pid}x{}", base36(seq)),
        }
    }

    /// `ambit-<pid>-<seq>-`: every namespace of the cluster starts with it.
    pub fn netns_prefix(&self) -> &str {
        &self.netns_prefix
    }

    pub fn netns(&self, role: &str) -> String {
        format!("{}{role}", self.netns_prefix)
    }

    /// Short tag carried by every interface name the cluster creates.
    pub fn tag(&self) -> &str {
        &self.tag
    }

    /// An interface name `<tag><suffix>`, or `None` if it would exceed 15 bytes.
    pub fn ifname(&self, suffix: &str) -> Option<String> {
        let name = format!("{}{suffix}", self.tag);
        (name.len() <= MAX_IFNAME).then_some(name)
    }
}

/// Deletes, once per process, namespaces named by this harness whose
/// creating process is gone (and kills anything still running in them).
pub fn remove_stale_once() {
    static ONCE: Once = Once::new();
    ONCE.call_once(|| {
        let Ok(names) = netns::list() else { return };
        for name in names {
            if let Some(pid) = owner_pid(&name)
                && !pid_alive(pid)
            {
                tracing::info!(netns = %name, pid, "removing namespace of a dead run");
                netns::delete(&name);
            }
        }
    });
}

/// The PID encoded in a harness namespace name.
fn owner_pid(name: &str) -> Option<u32> {
    let rest = name.strip_prefix(NETNS_PREFIX)?;
    let (pid, _) = rest.split_once('-')?;
    pid.parse().ok()
}

fn pid_alive(pid: u32) -> bool {
    std::path::Path::new(&format!("/proc/{pid}")).exists()
}

fn base36(mut n: u32) -> String {
    const DIGITS: &[u8; 36] = b"0123456789abcdefghijklmnopqrstuvwxyz";
    let mut out = Vec::new();
    loop {
        out.push(DIGITS[(n % 36) as usize]);
        n /= 36;
        if n == 0 {
            break;
        }
    }
    out.reverse();
    String::from_utf8_lossy(&out).into_owned()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn owner_pid_parses_harness_names_only() {
        assert_eq!(owner_pid("ambit-1234-0-node0"), Some(1234));
        assert_eq!(owner_pid("ambit-77-12-fabric"), Some(77));
        assert_eq!(owner_pid("ambit-x-0-node0"), None);
        assert_eq!(owner_pid("other-1234-0-node0"), None);
    }

    #[test]
    fn names_are_distinct_and_short() {
        let a = ClusterNames::next();
        let b = ClusterNames::next();
        assert_ne!(a.netns_prefix(), b.netns_prefix());
        assert_ne!(a.tag(), b.tag());
        let longest = a.ifname("p999").expect("fits");
        assert!(longest.len() <= MAX_IFNAME, "{longest}");
        assert_eq!(base36(0), "0");
        assert_eq!(base36(36 * 36 + 35), "10z");
    }
}
