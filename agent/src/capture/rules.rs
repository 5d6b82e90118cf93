//! The capture rule set as data: which chains and rules the mangle and filter
//! tables must hold for a set of enrolled local pods, and the policy routing
//! that delivers TPROXYed packets locally. Rendering is pure so every rule is
//! unit-tested as text; `apply` compares it with what the kernel holds and
//! runs the difference.
//!
//! Layout of the mangle table (one layout per address family):
//!
//! ```text
//! PREROUTING      -> AMBIT-PREROUTING            (one jump, inserted first)
//! AMBIT-PREROUTING: skip-marked packets RETURN; non-SYN packets of a
//!                   transparent socket the agent owns -> AMBIT-DIVERT;
//!                   the node's own addresses RETURN (host services stay
//!                   reachable); then AMBIT-OUTBOUND, then AMBIT-INBOUND
//! AMBIT-DIVERT:     set the TPROXY mark, ACCEPT (policy routing delivers locally)
//! AMBIT-OUTBOUND:   -s <pod> -> AMBIT-POD-<id>   (one jump per pod)
//! AMBIT-INBOUND:    -d <pod> -> AMBIT-POD-<id>   (one jump per pod)
//! AMBIT-POD-<id>:   SYN from the pod -> AMBIT-CAPTURE-OUT; SYN to <pod>:15008
//!                   -> AMBIT-CAPTURE-HBONE; SYN to the pod -> AMBIT-CAPTURE-IN
//! AMBIT-CAPTURE-*:  connmark the connection as captured; while an agent
//!                   serves ([`Mode::Serving`]), TPROXY to its listener
//! ```
//!
//! and of the filter table:
//!
//! ```text
//! FORWARD         -> AMBIT-FORWARD               (one jump, inserted first)
//! AMBIT-FORWARD:    a packet of a captured connection that is being
//!                   forwarded was not taken by the agent: REJECT with a reset
//! ```
//!
//! Why it fails closed: only SYNs are captured, and every captured connection
//! carries the connmark for its life. A packet of such a connection can only
//! leave the node through the agent's socket; if it is about to be forwarded
//! instead (no agent serves, [`Mode::Closed`], or the agent's socket is gone)
//! the guard resets it, so nothing of an enrolled pod crosses the fabric in
//! plaintext. Connections that were open before a pod was enrolled carry no
//! connmark and their packets are no SYNs, so enrolling does not cut them;
//! captured connections keep reaching the agent's socket through the
//! socket divert after the pod is unenrolled, so unenrolling does not cut
//! them either.
//!
//! The socket divert skips SYNs so that a SYN reusing the 4-tuple of one of
//! the agent's TIME_WAIT sockets reaches TPROXY, which knows how to reopen
//! it, instead of being answered by the TIME_WAIT socket with a bare ACK.
//!
//! Outbound jumps come before inbound ones so a connection between two
//! enrolled pods of the node is captured as the client's outbound. Each pod
//! owns one chain and two jumps, and every jump carries a fingerprint of the
//! pod's rules, so adding, changing or removing a pod touches only its rules.

use std::fmt;
use std::net::IpAddr;
use std::str::FromStr;

/// Chain names. Every chain Ambit creates starts with [`CHAIN_PREFIX`], which
/// is how uninstall finds them and how it leaves everyone else's alone.
pub const CHAIN_PREFIX: &str = "AMBIT-";
pub const PREROUTING_CHAIN: &str = "AMBIT-PREROUTING";
pub const DIVERT_CHAIN: &str = "AMBIT-DIVERT";
pub const OUTBOUND_CHAIN: &str = "AMBIT-OUTBOUND";
pub const INBOUND_CHAIN: &str = "AMBIT-INBOUND";
pub const CAPTURE_OUT_CHAIN: &str = "AMBIT-CAPTURE-OUT";
pub const CAPTURE_HBONE_CHAIN: &str = "AMBIT-CAPTURE-HBONE";
pub const CAPTURE_IN_CHAIN: &str = "AMBIT-CAPTURE-IN";
/// The filter-table chain that resets captured connections being forwarded.
pub const GUARD_CHAIN: &str = "AMBIT-FORWARD";
/// The mangle chains that are not per pod, in declaration order.
pub const BASE_CHAINS: [&str; 5] = [
    PREROUTING_CHAIN,
    DIVERT_CHAIN,
    CAPTURE_OUT_CHAIN,
    CAPTURE_HBONE_CHAIN,
    CAPTURE_IN_CHAIN,
];
const POD_CHAIN_PREFIX: &str = "AMBIT-POD-";

/// Comment tags: the jump from PREROUTING carries `ambit-base <fp>`, each pod
/// jump `ambit-pod <fp>`, so `apply` can tell a current rule from a stale one.
pub const BASE_TAG: &str = "ambit-base";
pub const POD_TAG: &str = "ambit-pod";
/// The jump from FORWARD carries `ambit-guard <fp>`.
pub const GUARD_TAG: &str = "ambit-guard";

/// Whether an agent serves the captured connections. The pods' rules are the
/// same in both modes; only the capture chains' TPROXY rules differ.
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Mode {
    /// Captured SYNs are TPROXYed to the agent's listeners.
    Serving,
    /// No agent serves: captured SYNs are connmarked only and the filter
    /// guard answers them with a reset.
    Closed,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Family {
    V4,
    V6,
}

impl Family {
    pub fn of(ip: IpAddr) -> Self {
        match ip {
            IpAddr::V4(_) => Self::V4,
            IpAddr::V6(_) => Self::V6,
        }
    }

    fn host_prefix(self) -> u8 {
        match self {
            Self::V4 => 32,
            Self::V6 => 128,
        }
    }

    fn any(self) -> &'static str {
        match self {
            Self::V4 => "0.0.0.0",
            Self::V6 => "::",
        }
    }

    /// The destination of the catch-all local route in the TPROXY table.
    pub fn default_route(self) -> &'static str {
        match self {
            Self::V4 => "0.0.0.0/0",
            Self::V6 => "::/0",
        }
    }

    /// The `ip` flag selecting this family.
    pub fn ip_flag(self) -> &'static str {
        match self {
            Self::V4 => "-4",
            Self::V6 => "-6",
        }
    }
}

impl fmt::Display for Family {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Self::V4 => "ipv4",
            Self::V6 => "ipv6",
        })
    }
}

/// A netfilter mark with the bits it owns, printed and parsed as `0x111/0xfff`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct Mark {
    pub value: u32,
    pub mask: u32,
}

impl Mark {
    pub const fn new(value: u32, mask: u32) -> Self {
        Self { value, mask }
    }
}

impl fmt::Display for Mark {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:#x}/{:#x}", self.value, self.mask)
    }
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum MarkError {
    #[error("mark {0:?} is not a number (decimal or 0x-prefixed hex)")]
    NotANumber(String),
    #[error("mark {value:#x} has bits outside its mask {mask:#x}")]
    OutsideMask { value: u32, mask: u32 },
    #[error("mark must not be zero")]
    Zero,
}

fn parse_u32(s: &str) -> Result<u32, MarkError> {
    let s = s.trim();
    let parsed = match s.strip_prefix("0x").or_else(|| s.strip_prefix("0X")) {
        Some(hex) => u32::from_str_radix(hex, 16),
        None => s.parse(),
    };
    parsed.map_err(|_| MarkError::NotANumber(s.to_owned()))
}

impl FromStr for Mark {
    type Err = MarkError;

    /// `VALUE[/MASK]`; without a mask the mark owns all 32 bits.
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let (value, mask) = match s.split_once('/') {
            Some((v, m)) => (parse_u32(v)?, parse_u32(m)?),
            None => (parse_u32(s)?, u32::MAX),
        };
        if value == 0 {
            return Err(MarkError::Zero);
        }
        if value & !mask != 0 {
            return Err(MarkError::OutsideMask { value, mask });
        }
        Ok(Self { value, mask })
    }
}

/// The listener ports the rules steer to.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct CapturePorts {
    pub outbound: u16,
    pub inbound_plain: u16,
    pub hbone: u16,
}

impl Default for CapturePorts {
    fn default() -> Self {
        Self {
            outbound: 15001,
            inbound_plain: 15006,
            hbone: 15008,
        }
    }
}

/// Everything the rules depend on besides the pods.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct RuleConfig {
    pub ports: CapturePorts,
    /// Set by TPROXY and matched by the policy route that delivers locally.
    pub tproxy_mark: Mark,
    /// Carried by every socket the agent opens; the rules let it pass.
    pub skip_mark: Mark,
    /// Set on the conntrack entry of every captured connection; the filter
    /// guard resets such connections when they are about to be forwarded.
    pub capture_connmark: Mark,
    pub route_table: u32,
    pub rule_priority: u32,
}

impl Default for RuleConfig {
    fn default() -> Self {
        Self {
            ports: CapturePorts::default(),
            tproxy_mark: Mark::new(0x111, 0xfff),
            skip_mark: Mark::new(0x539, 0xfff),
            capture_connmark: Mark::new(0x111, 0xfff),
            route_table: 133,
            rule_priority: 32000,
        }
    }
}

/// One enrolled local pod address and its rules.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PodRules {
    pub ip: IpAddr,
    pub chain: String,
    /// The pod chain's rules, as `-A` lines for iptables-restore.
    pub rules: Vec<String>,
    /// Identifies `rules`; carried by the jumps so a changed rule set is noticed.
    pub fingerprint: String,
}

impl PodRules {
    pub fn new(cfg: &RuleConfig, ip: IpAddr) -> Self {
        let family = Family::of(ip);
        let chain = pod_chain(ip);
        let host = format!("{ip}/{}", family.host_prefix());
        let rules = vec![
            format!("-A {chain} -s {host} -p tcp -m tcp --syn -j {CAPTURE_OUT_CHAIN}"),
            format!(
                "-A {chain} -d {host} -p tcp -m tcp --dport {} --syn -j {CAPTURE_HBONE_CHAIN}",
                cfg.ports.hbone
            ),
            format!("-A {chain} -d {host} -p tcp -m tcp --syn -j {CAPTURE_IN_CHAIN}"),
        ];
        let fingerprint = fingerprint(&rules);
        Self {
            ip,
            chain,
            rules,
            fingerprint,
        }
    }

    pub fn family(&self) -> Family {
        Family::of(self.ip)
    }

    /// The two jumps into the pod chain, outbound first.
    pub fn jumps(&self) -> [String; 2] {
        let host = format!("{}/{}", self.ip, self.family().host_prefix());
        let tag = format!("-m comment --comment \"{POD_TAG} {}\"", self.fingerprint);
        [
            format!("-A {OUTBOUND_CHAIN} -s {host} {tag} -j {}", self.chain),
            format!("-A {INBOUND_CHAIN} -d {host} {tag} -j {}", self.chain),
        ]
    }
}

/// `AMBIT-POD-0a010002` for 10.1.0.2; IPv6 addresses are too long for the
/// 28-character chain name limit, so they are named by a hash.
pub fn pod_chain(ip: IpAddr) -> String {
    match ip {
        IpAddr::V4(v4) => format!("{POD_CHAIN_PREFIX}{:08x}", u32::from(v4)),
        IpAddr::V6(v6) => format!("{POD_CHAIN_PREFIX}{:016x}", fnv1a(&v6.octets())),
    }
}

/// The fixed chains: their rules, and the fingerprint the PREROUTING jump carries.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct BaseRules {
    pub rules: Vec<String>,
    pub fingerprint: String,
}

impl BaseRules {
    pub fn new(cfg: &RuleConfig, family: Family, mode: Mode) -> Self {
        let mut rules = vec![
            format!(
                "-A {PREROUTING_CHAIN} -m mark --mark {} -j RETURN",
                cfg.skip_mark
            ),
            format!(
                "-A {PREROUTING_CHAIN} -p tcp -m tcp ! --syn -m socket --transparent -j {DIVERT_CHAIN}"
            ),
            format!("-A {PREROUTING_CHAIN} -m addrtype --dst-type LOCAL -j RETURN"),
            format!("-A {PREROUTING_CHAIN} -j {OUTBOUND_CHAIN}"),
            format!("-A {PREROUTING_CHAIN} -j {INBOUND_CHAIN}"),
            format!("-A {DIVERT_CHAIN} -j MARK --set-xmark {}", cfg.tproxy_mark),
            format!("-A {DIVERT_CHAIN} -j ACCEPT"),
        ];
        let p = cfg.ports;
        for (chain, port) in [
            (CAPTURE_OUT_CHAIN, p.outbound),
            (CAPTURE_HBONE_CHAIN, p.hbone),
            (CAPTURE_IN_CHAIN, p.inbound_plain),
        ] {
            rules.push(format!(
                "-A {chain} -j CONNMARK --set-xmark {}",
                cfg.capture_connmark
            ));
            if mode == Mode::Serving {
                rules.push(format!(
                    "-A {chain} -p tcp -j TPROXY --on-port {port} --on-ip {} --tproxy-mark {}",
                    family.any(),
                    cfg.tproxy_mark
                ));
            }
        }
        let fingerprint = fingerprint(&rules);
        Self { rules, fingerprint }
    }

    /// The jump from the built-in chain, inserted at the top.
    pub fn entry_jump(&self) -> String {
        format!(
            "-I PREROUTING 1 -m comment --comment \"{BASE_TAG} {}\" -j {PREROUTING_CHAIN}",
            self.fingerprint
        )
    }
}

/// The filter-table guard: its chain's rules and the jump from FORWARD.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct GuardRules {
    pub rules: Vec<String>,
    pub fingerprint: String,
}

impl GuardRules {
    pub fn new(cfg: &RuleConfig) -> Self {
        let rules = vec![format!(
            "-A {GUARD_CHAIN} -p tcp -m connmark --mark {} -j REJECT --reject-with tcp-reset",
            cfg.capture_connmark
        )];
        let fingerprint = fingerprint(&rules);
        Self { rules, fingerprint }
    }

    pub fn entry_jump(&self) -> String {
        format!(
            "-I FORWARD 1 -m comment --comment \"{GUARD_TAG} {}\" -j {GUARD_CHAIN}",
            self.fingerprint
        )
    }

    /// The whole filter transaction writing the guard, given the jumps into
    /// it that are there now (removed first, so the result has exactly one).
    pub fn render(&self, stale_jumps: &[String]) -> String {
        let mut out = String::from("*filter\n");
        push_lines(&mut out, stale_jumps);
        out.push_str(&format!(":{GUARD_CHAIN} - [0:0]\n"));
        push_lines(&mut out, &self.rules);
        out.push_str(&self.entry_jump());
        out.push_str("\nCOMMIT\n");
        out
    }
}

/// The whole desired mangle table content for one family, as a single
/// iptables-restore transaction onto an empty node. `apply` only uses it when
/// nothing of Ambit is installed; otherwise it runs a per-pod difference.
pub fn render_fresh(cfg: &RuleConfig, family: Family, pods: &[PodRules]) -> String {
    let base = BaseRules::new(cfg, family, Mode::Serving);
    let mut out = String::from("*mangle\n");
    for chain in BASE_CHAINS.iter().chain(&[OUTBOUND_CHAIN, INBOUND_CHAIN]) {
        out.push_str(&format!(":{chain} - [0:0]\n"));
    }
    push_lines(&mut out, &base.rules);
    for pod in pods {
        out.push_str(&format!(":{} - [0:0]\n", pod.chain));
        push_lines(&mut out, &pod.rules);
        push_lines(&mut out, &pod.jumps());
    }
    out.push_str(&base.entry_jump());
    out.push_str("\nCOMMIT\n");
    out
}

pub(crate) fn push_lines(out: &mut String, lines: &[String]) {
    for line in lines {
        out.push_str(line);
        out.push('\n');
    }
}

/// The policy routing for one family: packets carrying the TPROXY mark are
/// looked up in a table whose only route delivers everything locally.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PolicyRouting {
    pub family: Family,
    /// `ip` arguments (after the family flag) adding the rule.
    pub rule: Vec<String>,
    /// `ip` arguments replacing the local route (idempotent by itself).
    pub route: Vec<String>,
    /// The fragment `ip rule show` prints for our rule.
    pub rule_signature: String,
}

impl PolicyRouting {
    pub fn new(cfg: &RuleConfig, family: Family) -> Self {
        let table = cfg.route_table.to_string();
        let mark = cfg.tproxy_mark.to_string();
        let rule = ["rule", "add", "fwmark", &mark, "lookup", &table]
            .into_iter()
            .map(String::from)
            .chain(["pref".to_owned(), cfg.rule_priority.to_string()])
            .collect();
        let route = [
            "route",
            "replace",
            "local",
            family.default_route(),
            "dev",
            "lo",
            "table",
            &table,
        ]
        .into_iter()
        .map(String::from)
        .collect();
        Self {
            family,
            rule,
            route,
            rule_signature: format!("fwmark {mark} lookup {table}"),
        }
    }

    /// `ip` arguments deleting one instance of the rule.
    pub fn rule_delete(&self) -> Vec<String> {
        let mut args = self.rule.clone();
        args[1] = "del".to_owned();
        args
    }
}

/// Short, stable identity of a rule list (FNV-1a, not a security hash: it
/// only has to notice that the rules we would write differ from the ones there).
fn fingerprint(lines: &[String]) -> String {
    format!("{:016x}", fnv1a(lines.join("\n").as_bytes()))
}

fn fnv1a(bytes: &[u8]) -> u64 {
    bytes.iter().fold(0xcbf2_9ce4_8422_2325, |h, b| {
        (h ^ u64::from(*b)).wrapping_mul(0x0000_0100_0000_01b3)
    })
}

#[cfg(test)]
mod tests;
