//! Reading what the kernel holds (iptables-save output) and working out the
//! iptables-restore transaction that turns it into the desired rule set. Pure:
//! the commands themselves run in `apply`.

use std::collections::{BTreeMap, BTreeSet};
use std::net::IpAddr;

use crate::capture::rules::{
    BASE_CHAINS, BASE_TAG, BaseRules, CHAIN_PREFIX, Family, GUARD_CHAIN, GUARD_TAG, GuardRules,
    INBOUND_CHAIN, Mode, OUTBOUND_CHAIN, POD_TAG, PodRules, RuleConfig, push_lines,
};

/// One `-A` line of iptables-save, with the parts the plan looks at.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SavedRule {
    /// The line as saved; with `-A` turned into `-D` it deletes the rule.
    pub line: String,
    pub chain: String,
    pub target: Option<String>,
    /// The first word and the rest of the `--comment`, e.g. ("ambit-pod", fp).
    pub tag: Option<(String, String)>,
    /// `-s` (outbound jumps) or `-d` (inbound jumps) address, prefix removed.
    pub addr: Option<IpAddr>,
}

impl SavedRule {
    fn parse(line: &str) -> Option<Self> {
        let words = split_words(line);
        let mut it = words.iter();
        if it.next().map(String::as_str) != Some("-A") {
            return None;
        }
        let chain = it.next()?.clone();
        let mut rule = Self {
            line: line.to_owned(),
            chain,
            target: None,
            tag: None,
            addr: None,
        };
        while let Some(word) = it.next() {
            match word.as_str() {
                "-j" | "-g" => rule.target = it.next().cloned(),
                "--comment" => {
                    rule.tag = it.next().map(|c| match c.split_once(' ') {
                        Some((k, v)) => (k.to_owned(), v.to_owned()),
                        None => (c.clone(), String::new()),
                    })
                }
                "-s" | "-d" => {
                    rule.addr = it
                        .next()
                        .and_then(|a| a.split('/').next())
                        .and_then(|a| a.parse().ok())
                }
                _ => {}
            }
        }
        Some(rule)
    }

    pub fn delete_line(&self) -> String {
        format!("-D{}", &self.line[2..])
    }

    fn targets_ambit(&self) -> bool {
        self.target
            .as_deref()
            .is_some_and(|t| t.starts_with(CHAIN_PREFIX))
    }
}

/// Splits a saved rule into words, honouring the double quotes iptables-save
/// puts around comments with spaces (and its `\"` escapes inside them).
fn split_words(line: &str) -> Vec<String> {
    let mut words = Vec::new();
    let mut cur = String::new();
    let mut quoted = false;
    let mut chars = line.chars();
    let mut in_word = false;
    while let Some(c) = chars.next() {
        match c {
            '\\' if quoted => {
                if let Some(next) = chars.next() {
                    cur.push(next);
                }
            }
            '"' => {
                quoted = !quoted;
                in_word = true;
            }
            c if c.is_whitespace() && !quoted => {
                if in_word {
                    words.push(std::mem::take(&mut cur));
                    in_word = false;
                }
            }
            c => {
                cur.push(c);
                in_word = true;
            }
        }
    }
    if in_word {
        words.push(cur);
    }
    words
}

/// What one family's mangle (or filter) table holds of Ambit.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Installed {
    /// Ambit chains that exist.
    pub chains: BTreeSet<String>,
    /// Rules in chains that are not Ambit's that jump into Ambit's
    /// (normally exactly one: PREROUTING -> AMBIT-PREROUTING, or
    /// FORWARD -> AMBIT-FORWARD in the filter table).
    pub entry_jumps: Vec<SavedRule>,
    /// Rules of AMBIT-OUTBOUND and AMBIT-INBOUND.
    pub pod_jumps: Vec<SavedRule>,
    /// Rules of the fixed chains, to tell a complete base from a damaged one.
    pub base_rule_count: usize,
}

impl Installed {
    /// Parses iptables-save output; only the mangle table is looked at.
    pub fn parse(save: &str) -> Self {
        Self::parse_table(save, "mangle")
    }

    /// Parses the part of iptables-save output that is `table`.
    pub fn parse_table(save: &str, table: &str) -> Self {
        let mut out = Self::default();
        let mut in_table = false;
        for line in save.lines().map(str::trim) {
            if let Some(name) = line.strip_prefix('*') {
                in_table = name == table;
                continue;
            }
            if !in_table {
                continue;
            }
            if let Some(decl) = line.strip_prefix(':') {
                let name = decl.split_whitespace().next().unwrap_or_default();
                if name.starts_with(CHAIN_PREFIX) {
                    out.chains.insert(name.to_owned());
                }
                continue;
            }
            let Some(rule) = SavedRule::parse(line) else {
                continue;
            };
            if rule.chain == OUTBOUND_CHAIN || rule.chain == INBOUND_CHAIN {
                out.pod_jumps.push(rule);
            } else if BASE_CHAINS.contains(&rule.chain.as_str()) || rule.chain == GUARD_CHAIN {
                out.base_rule_count += 1;
            } else if !rule.chain.starts_with(CHAIN_PREFIX) && rule.targets_ambit() {
                out.entry_jumps.push(rule);
            }
        }
        out
    }

    pub fn is_empty(&self) -> bool {
        self.chains.is_empty() && self.entry_jumps.is_empty()
    }

    /// The pods whose jumps are present (outbound side), as installed.
    pub fn pods(&self) -> BTreeSet<IpAddr> {
        self.pod_jumps
            .iter()
            .filter(|r| r.chain == OUTBOUND_CHAIN)
            .filter_map(|r| r.addr)
            .collect()
    }
}

/// A transaction and what it changes.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Plan {
    /// iptables-restore input (`--noflush`); empty when nothing is to be done.
    pub script: String,
    pub base_written: bool,
    pub added: Vec<IpAddr>,
    pub updated: Vec<IpAddr>,
    pub removed: Vec<String>,
}

impl Plan {
    pub fn is_empty(&self) -> bool {
        self.script.is_empty()
    }
}

/// The transaction bringing `installed` to the rule set for `pods` in
/// `mode`, leaving untouched every pod whose chain and both jumps are
/// already current.
pub fn plan(
    cfg: &RuleConfig,
    family: Family,
    mode: Mode,
    installed: &Installed,
    pods: &[PodRules],
) -> Plan {
    let mut body = String::new();
    let mut plan = Plan::default();
    let base = BaseRules::new(cfg, family, mode);

    for chain in [OUTBOUND_CHAIN, INBOUND_CHAIN] {
        if !installed.chains.contains(chain) {
            body.push_str(&format!(":{chain} - [0:0]\n"));
        }
    }
    let base_current = BASE_CHAINS.iter().all(|c| installed.chains.contains(*c))
        && installed.base_rule_count == base.rules.len()
        && installed.entry_is("PREROUTING", BASE_TAG, &base.fingerprint);
    if !base_current {
        for jump in &installed.entry_jumps {
            body.push_str(&jump.delete_line());
            body.push('\n');
        }
        // Declaring an existing chain in a --noflush transaction flushes it.
        for chain in BASE_CHAINS {
            body.push_str(&format!(":{chain} - [0:0]\n"));
        }
        push_lines(&mut body, &base.rules);
        body.push_str(&base.entry_jump());
        body.push('\n');
        plan.base_written = true;
    }

    let mut jumps_by_chain: BTreeMap<&str, Vec<&SavedRule>> = BTreeMap::new();
    for jump in &installed.pod_jumps {
        let chain = jump.target.as_deref().unwrap_or_default();
        jumps_by_chain.entry(chain).or_default().push(jump);
    }
    let wanted: BTreeSet<&str> = pods.iter().map(|p| p.chain.as_str()).collect();

    for pod in pods {
        let existing = jumps_by_chain.get(pod.chain.as_str());
        let current = installed.chains.contains(&pod.chain)
            && existing.is_some_and(|jumps| {
                let tagged = |chain: &str| {
                    jumps.iter().any(|j| {
                        j.chain == chain
                            && j.tag
                                .as_ref()
                                .is_some_and(|(k, v)| k == POD_TAG && *v == pod.fingerprint)
                    })
                };
                jumps.len() == 2 && tagged(OUTBOUND_CHAIN) && tagged(INBOUND_CHAIN)
            });
        if current {
            continue;
        }
        for jump in existing.into_iter().flatten() {
            body.push_str(&jump.delete_line());
            body.push('\n');
        }
        body.push_str(&format!(":{} - [0:0]\n", pod.chain));
        push_lines(&mut body, &pod.rules);
        push_lines(&mut body, &pod.jumps());
        if installed.chains.contains(&pod.chain) || existing.is_some() {
            plan.updated.push(pod.ip);
        } else {
            plan.added.push(pod.ip);
        }
    }

    // Pod chains no longer wanted: their jumps first, then the chain.
    let stale: BTreeSet<&str> = installed
        .chains
        .iter()
        .map(String::as_str)
        .chain(jumps_by_chain.keys().copied())
        .filter(|c| is_pod_chain(c) && !wanted.contains(c))
        .collect();
    for chain in stale {
        for jump in jumps_by_chain.get(chain).into_iter().flatten() {
            body.push_str(&jump.delete_line());
            body.push('\n');
        }
        if installed.chains.contains(chain) {
            body.push_str(&format!("-F {chain}\n-X {chain}\n"));
        }
        plan.removed.push(chain.to_owned());
    }

    if !body.is_empty() {
        plan.script = format!("*mangle\n{body}COMMIT\n");
    }
    plan
}

/// The filter transaction that makes the guard current, or `None` when it is.
pub fn plan_guard(cfg: &RuleConfig, installed: &Installed) -> Option<String> {
    let guard = GuardRules::new(cfg);
    let current = installed.chains.len() == 1
        && installed.chains.contains(GUARD_CHAIN)
        && installed.base_rule_count == guard.rules.len()
        && installed.entry_is("FORWARD", GUARD_TAG, &guard.fingerprint);
    if current {
        return None;
    }
    let stale: Vec<String> = installed
        .entry_jumps
        .iter()
        .map(SavedRule::delete_line)
        .collect();
    Some(guard.render(&stale))
}

impl Installed {
    /// Exactly one entry jump, from `chain`, tagged `tag fingerprint`.
    fn entry_is(&self, chain: &str, tag: &str, fingerprint: &str) -> bool {
        matches!(self.entry_jumps.as_slice(),
            [only] if only.chain == chain
                && only.tag.as_ref().is_some_and(|(k, v)| k == tag && v == fingerprint))
    }
}

/// The transaction removing every Ambit rule and chain of `table`, and
/// nothing else.
pub fn plan_uninstall(installed: &Installed, table: &str) -> String {
    if installed.is_empty() {
        return String::new();
    }
    let mut body = format!("*{table}\n");
    for jump in &installed.entry_jumps {
        body.push_str(&jump.delete_line());
        body.push('\n');
    }
    // Flush all before deleting any: chains refer to one another.
    for chain in &installed.chains {
        body.push_str(&format!("-F {chain}\n"));
    }
    for chain in &installed.chains {
        body.push_str(&format!("-X {chain}\n"));
    }
    body.push_str("COMMIT\n");
    body
}

fn is_pod_chain(chain: &str) -> bool {
    chain.starts_with(CHAIN_PREFIX)
        && !BASE_CHAINS.contains(&chain)
        && ![OUTBOUND_CHAIN, INBOUND_CHAIN].contains(&chain)
}

#[cfg(test)]
mod tests;
