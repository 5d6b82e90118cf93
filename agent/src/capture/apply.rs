//! Running the rule set against the kernel: picking the iptables backend the
//! node uses, installing idempotently (a start after a crash repairs rather
//! than duplicates), reconciling pod by pod, uninstalling only what is Ambit's,
//! and reporting what is installed.
//!
//! Every change goes through one `iptables-restore --noflush` transaction per
//! family, so a reader of the table sees the old rules or the new ones.
//! These calls block (they run child processes); async callers use
//! `spawn_blocking`.

pub mod plan;

use std::collections::BTreeSet;
use std::fmt;
use std::io::Write;
use std::net::IpAddr;
use std::process::{Command, Stdio};
use std::str::FromStr;

use serde::Serialize;

use super::rules::{BASE_TAG, BaseRules, Family, Mode, PodRules, PolicyRouting, RuleConfig};
pub use plan::{Installed, Plan};

/// Which iptables implementation writes the rules. Both may be present on a
/// node; rules written with the wrong one are ignored by the other tooling
/// (and can be shadowed by the other's rules), so we use the node's.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Backend {
    Nft,
    Legacy,
}

/// The `--iptables-backend` choice: a backend, or detection.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub enum BackendChoice {
    #[default]
    Auto,
    Fixed(Backend),
}

impl FromStr for BackendChoice {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "auto" => Ok(Self::Auto),
            "nft" => Ok(Self::Fixed(Backend::Nft)),
            "legacy" => Ok(Self::Fixed(Backend::Legacy)),
            other => Err(format!(
                "unknown iptables backend {other:?}; expected auto, nft or legacy"
            )),
        }
    }
}

impl fmt::Display for BackendChoice {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Auto => f.write_str("auto"),
            Self::Fixed(b) => b.fmt(f),
        }
    }
}

impl fmt::Display for Backend {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Self::Nft => "nft",
            Self::Legacy => "legacy",
        })
    }
}

impl Backend {
    /// `iptables-nft-restore`, `ip6tables-legacy-save`, ...
    fn tool(self, family: Family, suffix: &str) -> String {
        let base = match family {
            Family::V4 => "iptables",
            Family::V6 => "ip6tables",
        };
        format!("{base}-{self}{suffix}")
    }

    /// Prefers the backend that already holds rules (the node's network
    /// plugin and kube-proxy wrote them); when neither does, the backend
    /// the plain `iptables` command uses.
    pub fn detect() -> Result<Self, ApplyError> {
        let count = |backend: Backend| -> Option<usize> {
            let out = run(&backend.tool(Family::V4, "-save"), &[], None).ok()?;
            Some(out.lines().filter(|l| l.starts_with("-A ")).count())
        };
        match (count(Self::Nft), count(Self::Legacy)) {
            (Some(n), Some(l)) if l > n => Ok(Self::Legacy),
            (Some(n), Some(_)) if n > 0 => Ok(Self::Nft),
            (Some(_), Some(_)) => Ok(Self::system_default()),
            (Some(_), None) => Ok(Self::Nft),
            (None, Some(_)) => Ok(Self::Legacy),
            (None, None) => Err(ApplyError::NoIptables),
        }
    }

    fn system_default() -> Self {
        match run("iptables", &["--version"], None) {
            Ok(v) if v.contains("legacy") => Self::Legacy,
            _ => Self::Nft,
        }
    }
}

impl BackendChoice {
    pub fn resolve(self) -> Result<Backend, ApplyError> {
        match self {
            Self::Auto => Backend::detect(),
            Self::Fixed(b) => Ok(b),
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum ApplyError {
    #[error("neither iptables-nft nor iptables-legacy is installed")]
    NoIptables,
    #[error("could not run {command}: {source}")]
    Spawn {
        command: String,
        source: std::io::Error,
    },
    #[error("{command} failed ({status}): {stderr}")]
    Failed {
        command: String,
        status: String,
        stderr: String,
    },
}

/// What a reconcile changed, for the log.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Applied {
    pub base_written: bool,
    pub added: Vec<IpAddr>,
    pub updated: Vec<IpAddr>,
    pub removed: Vec<String>,
}

impl Applied {
    pub fn is_noop(&self) -> bool {
        !self.base_written
            && self.added.is_empty()
            && self.updated.is_empty()
            && self.removed.is_empty()
    }
}

/// What `capture status` reports for one family.
#[derive(Clone, Debug, Serialize, PartialEq, Eq)]
pub struct FamilyStatus {
    pub family: String,
    pub backend: Backend,
    pub chains: Vec<String>,
    pub entry_jumps: usize,
    pub pods: Vec<IpAddr>,
    /// Whether the capture chains steer to an agent (`serving`) or only
    /// mark connections for the guard (`closed`); `None` when the base is
    /// missing or not what this configuration writes.
    pub mode: Option<Mode>,
    /// The filter-table guard that resets captured connections being forwarded.
    pub guard: bool,
    pub policy_rules: usize,
    pub local_route: bool,
}

impl FamilyStatus {
    /// Nothing of Ambit left in this family.
    pub fn is_clean(&self) -> bool {
        self.chains.is_empty()
            && self.entry_jumps == 0
            && !self.guard
            && self.policy_rules == 0
            && !self.local_route
    }
}

/// The node's capture: rules for the enrolled local pods of some families.
#[derive(Clone, Debug)]
pub struct Capture {
    cfg: RuleConfig,
    backend: Backend,
    families: Vec<Family>,
}

impl Capture {
    pub fn new(cfg: RuleConfig, backend: Backend, families: Vec<Family>) -> Self {
        Self {
            cfg,
            backend,
            families,
        }
    }

    pub fn backend(&self) -> Backend {
        self.backend
    }

    /// Policy routing, the guard and the rules for `pods`, serving; safe
    /// to repeat (a start after a crash adopts what is there).
    pub fn install(&self, pods: &BTreeSet<IpAddr>) -> Result<Applied, ApplyError> {
        for family in &self.families {
            self.install_routing(*family)?;
        }
        self.reconcile(pods)
    }

    /// Brings the rules to exactly `pods`, serving, touching only pods that
    /// changed. The guard is made current first, so a pod is never captured
    /// without it.
    pub fn reconcile(&self, pods: &BTreeSet<IpAddr>) -> Result<Applied, ApplyError> {
        self.apply(Some(pods), Mode::Serving)
    }

    /// No agent will serve: captured SYNs are reset from now on, and the
    /// pods' rules and the socket divert (for connections still carried)
    /// stay as they are.
    pub fn close(&self) -> Result<Applied, ApplyError> {
        self.apply(None, Mode::Closed)
    }

    /// `pods` of `None` keeps the pods that are installed.
    fn apply(&self, pods: Option<&BTreeSet<IpAddr>>, mode: Mode) -> Result<Applied, ApplyError> {
        let mut applied = Applied::default();
        for family in &self.families {
            let filter = self.installed_table(*family, "filter")?;
            if let Some(script) = plan::plan_guard(&self.cfg, &filter) {
                self.restore(*family, &script)?;
                applied.base_written = true;
            }
            let installed = self.installed(*family)?;
            let ips = match pods {
                Some(pods) => pods.clone(),
                None => installed.pods(),
            };
            let wanted: Vec<PodRules> = ips
                .iter()
                .filter(|ip| Family::of(**ip) == *family)
                .map(|ip| PodRules::new(&self.cfg, *ip))
                .collect();
            let plan = plan::plan(&self.cfg, *family, mode, &installed, &wanted);
            if !plan.is_empty() {
                self.restore(*family, &plan.script)?;
            }
            applied.base_written |= plan.base_written;
            applied.added.extend(plan.added);
            applied.updated.extend(plan.updated);
            applied.removed.extend(plan.removed);
        }
        Ok(applied)
    }

    /// Removes every Ambit chain, jump, policy rule and route, and nothing else.
    pub fn uninstall(&self) -> Result<(), ApplyError> {
        for family in [Family::V4, Family::V6] {
            let Ok(installed) = self.installed(family) else {
                // No ip6tables on this node: nothing of ours can be there.
                continue;
            };
            let script = plan::plan_uninstall(&installed, "mangle");
            if !script.is_empty() {
                self.restore(family, &script)?;
            }
            // The guard goes last: until the capture is gone it still resets.
            let filter = self.installed_table(family, "filter")?;
            let script = plan::plan_uninstall(&filter, "filter");
            if !script.is_empty() {
                self.restore(family, &script)?;
            }
            let routing = PolicyRouting::new(&self.cfg, family);
            for _ in 0..self.policy_rule_count(&routing)? {
                ip(family, &routing.rule_delete())?;
            }
            if self.local_route(family) {
                let table = self.cfg.route_table.to_string();
                ip(family, &["route", "flush", "table", &table])?;
            }
        }
        Ok(())
    }

    pub fn status(&self) -> Result<Vec<FamilyStatus>, ApplyError> {
        let mut out = Vec::new();
        for family in [Family::V4, Family::V6] {
            let Ok(installed) = self.installed(family) else {
                continue;
            };
            let routing = PolicyRouting::new(&self.cfg, family);
            let filter = self.installed_table(family, "filter")?;
            let mode = [Mode::Serving, Mode::Closed].into_iter().find(|mode| {
                let base = BaseRules::new(&self.cfg, family, *mode);
                installed.entry_jumps.iter().any(|j| {
                    j.tag
                        .as_ref()
                        .is_some_and(|(k, v)| k == BASE_TAG && *v == base.fingerprint)
                })
            });
            out.push(FamilyStatus {
                family: family.to_string(),
                backend: self.backend,
                chains: installed.chains.iter().cloned().collect(),
                entry_jumps: installed.entry_jumps.len(),
                pods: installed.pods().into_iter().collect(),
                mode,
                guard: plan::plan_guard(&self.cfg, &filter).is_none(),
                policy_rules: self.policy_rule_count(&routing)?,
                local_route: self.local_route(family),
            });
        }
        Ok(out)
    }

    fn install_routing(&self, family: Family) -> Result<(), ApplyError> {
        let routing = PolicyRouting::new(&self.cfg, family);
        match self.policy_rule_count(&routing)? {
            0 => ip(family, &routing.rule)?,
            1 => String::new(),
            extra => {
                for _ in 1..extra {
                    ip(family, &routing.rule_delete())?;
                }
                String::new()
            }
        };
        if family == Family::V6 {
            // The IPv6 local route needs loopback up.
            ip(family, &["link", "set", "lo", "up"])?;
        }
        ip(family, &routing.route)?;
        Ok(())
    }

    /// Whether our table holds its local route (a table that was never
    /// created makes `ip` fail, which means no).
    fn local_route(&self, family: Family) -> bool {
        let table = self.cfg.route_table.to_string();
        ip(family, &["route", "show", "table", &table])
            .is_ok_and(|routes| routes.lines().any(|l| l.starts_with("local")))
    }

    fn policy_rule_count(&self, routing: &PolicyRouting) -> Result<usize, ApplyError> {
        let rules = ip(routing.family, &["rule", "show"])?;
        Ok(rules
            .lines()
            .filter(|l| l.contains(&routing.rule_signature))
            .count())
    }

    pub fn installed(&self, family: Family) -> Result<Installed, ApplyError> {
        self.installed_table(family, "mangle")
    }

    fn installed_table(&self, family: Family, table: &str) -> Result<Installed, ApplyError> {
        let save = run(&self.backend.tool(family, "-save"), &["-t", table], None)?;
        Ok(Installed::parse_table(&save, table))
    }

    fn restore(&self, family: Family, script: &str) -> Result<(), ApplyError> {
        tracing::debug!(%family, backend = %self.backend, script, "iptables-restore");
        run(
            &self.backend.tool(family, "-restore"),
            &["-w", "5", "--noflush"],
            Some(script),
        )
        .map(drop)
    }
}

fn ip<S: AsRef<str>>(family: Family, args: &[S]) -> Result<String, ApplyError> {
    let mut all = vec![family.ip_flag()];
    all.extend(args.iter().map(AsRef::as_ref));
    run("ip", &all, None)
}

fn run(program: &str, args: &[&str], stdin: Option<&str>) -> Result<String, ApplyError> {
    let command = format!("{program} {}", args.join(" "));
    let spawn_err = |source| ApplyError::Spawn {
        command: command.clone(),
        source,
    };
    let mut child = Command::new(program)
        .args(args)
        .stdin(if stdin.is_some() {
            Stdio::piped()
        } else {
            Stdio::null()
        })
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(spawn_err)?;
    if let (Some(input), Some(mut pipe)) = (stdin, child.stdin.take()) {
        pipe.write_all(input.as_bytes()).map_err(spawn_err)?;
    }
    let out = child.wait_with_output().map_err(spawn_err)?;
    if !out.status.success() {
        return Err(ApplyError::Failed {
            command,
            status: out.status.to_string(),
            stderr: String::from_utf8_lossy(&out.stderr).trim().to_owned(),
        });
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

#[cfg(test)]
mod tests;
