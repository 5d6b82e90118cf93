//! Bounds on connections that have not finished their handshake: on 15008
//! until TLS and the HTTP/2 preface are done, on 15006 until the pod
//! answered. Such a connection has proven nothing, so a peer must not be
//! able to hold an unbounded number of them: there is a cap for all
//! sources together and one per source address, and each permit is small
//! (an address and a reference), so what a pending connection costs is its
//! socket and task, not buffers.
//!
//! A source is its IP address; IPv6 sources are counted per /64, the block
//! one host usually holds, so an attacker cannot step around the per-source
//! cap by cycling through its own addresses.

use std::collections::HashMap;
use std::net::{IpAddr, Ipv6Addr};
use std::sync::Arc;

use parking_lot::Mutex;

use super::{ListenerLabels, Refusal, globals};

/// The caps of one listener.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct PendingLimits {
    /// Connections in their handshake, all sources together.
    pub global: usize,
    /// Connections in their handshake from one source.
    pub per_source: usize,
}

impl Default for PendingLimits {
    fn default() -> Self {
        Self {
            global: 1024,
            per_source: 128,
        }
    }
}

/// The pending connections of one listener.
#[derive(Debug)]
pub struct Pending {
    listener: &'static str,
    limits: PendingLimits,
    counts: Mutex<Counts>,
}

#[derive(Debug, Default)]
struct Counts {
    total: usize,
    by_source: HashMap<IpAddr, usize>,
}

/// Held while one connection is in its handshake; dropping it ends that.
#[derive(Debug)]
pub struct PendingPermit {
    owner: Arc<Pending>,
    source: IpAddr,
}

impl Pending {
    pub fn new(listener: &'static str, limits: PendingLimits) -> Arc<Self> {
        Arc::new(Self {
            listener,
            limits,
            counts: Mutex::default(),
        })
    }

    pub fn listener(&self) -> &'static str {
        self.listener
    }

    pub fn limits(&self) -> PendingLimits {
        self.limits
    }

    /// A permit for a connection from `source`, or why there is none.
    pub fn begin(self: &Arc<Self>, source: IpAddr) -> Result<PendingPermit, Refusal> {
        let source = source_key(source);
        let mut counts = self.counts.lock();
        if counts.total >= self.limits.global {
            return Err(Refusal::PendingGlobal);
        }
        let from_source = counts.by_source.entry(source).or_default();
        if *from_source >= self.limits.per_source {
            return Err(Refusal::PendingPerSource);
        }
        *from_source += 1;
        counts.total += 1;
        self.gauge(counts.total);
        Ok(PendingPermit {
            owner: self.clone(),
            source,
        })
    }

    /// Connections in their handshake now.
    pub fn len(&self) -> usize {
        self.counts.lock().total
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    fn gauge(&self, total: usize) {
        globals()
            .pending
            .get_or_create(&ListenerLabels {
                listener: self.listener,
            })
            .set(i64::try_from(total).unwrap_or(i64::MAX));
    }
}

impl Drop for PendingPermit {
    fn drop(&mut self) {
        let mut counts = self.owner.counts.lock();
        counts.total = counts.total.saturating_sub(1);
        if let Some(n) = counts.by_source.get_mut(&self.source) {
            *n -= 1;
            if *n == 0 {
                counts.by_source.remove(&self.source);
            }
        }
        self.owner.gauge(counts.total);
    }
}

fn source_key(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V4(_) => ip,
        IpAddr::V6(v6) => match v6.to_ipv4_mapped() {
            Some(v4) => IpAddr::V4(v4),
            None => {
                let prefix = u128::from(v6) & !((1u128 << 64) - 1);
                IpAddr::V6(Ipv6Addr::from(prefix))
            }
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    #[test]
    fn per_source_cap_refuses_only_that_source() {
        let pending = Pending::new(
            "unit",
            PendingLimits {
                global: 10,
                per_source: 2,
            },
        );
        let a1 = pending.begin(ip("10.0.0.1")).unwrap();
        let _a2 = pending.begin(ip("10.0.0.1")).unwrap();
        assert_eq!(
            pending.begin(ip("10.0.0.1")).unwrap_err(),
            Refusal::PendingPerSource
        );
        let _b = pending.begin(ip("10.0.0.2")).unwrap();
        assert_eq!(pending.len(), 3);
        drop(a1);
        let _a3 = pending.begin(ip("10.0.0.1")).unwrap();
    }

    #[test]
    fn global_cap_refuses_everyone_until_a_handshake_ends() {
        let pending = Pending::new(
            "unit",
            PendingLimits {
                global: 2,
                per_source: 2,
            },
        );
        let a = pending.begin(ip("10.0.0.1")).unwrap();
        let _b = pending.begin(ip("10.0.0.2")).unwrap();
        assert_eq!(
            pending.begin(ip("10.0.0.3")).unwrap_err(),
            Refusal::PendingGlobal
        );
        drop(a);
        assert!(pending.begin(ip("10.0.0.3")).is_ok());
    }

    #[test]
    fn ipv6_sources_share_their_64() {
        let pending = Pending::new(
            "unit",
            PendingLimits {
                global: 10,
                per_source: 1,
            },
        );
        let _a = pending.begin(ip("fd00::1")).unwrap();
        assert_eq!(
            pending.begin(ip("fd00::2")).unwrap_err(),
            Refusal::PendingPerSource
        );
        assert!(pending.begin(ip("fd00:0:0:1::1")).is_ok());
        // An IPv4-mapped address is its IPv4 source.
        let _v4 = pending.begin(ip("10.0.0.9")).unwrap();
        assert_eq!(
            pending.begin(ip("::ffff:10.0.0.9")).unwrap_err(),
            Refusal::PendingPerSource
        );
    }
}
