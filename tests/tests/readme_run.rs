//! The README's "Run" commands, as printed: the `ambit-ca` and
//! `ambit-agent run` blocks start a CA and an agent in a network namespace
//! of their own (where `ambit-ca` resolves, through `/etc/netns/<ns>/hosts`,
//! as a cluster's DNS would make it), `describe service ... --admin` asks the
//! running agent, and the control socket's `curl ... quitquitquit` stops it.
//!
//! The only changes to the text: the README's absolute host paths
//! (`/var/lib/ambit-ca`, `/var/run/ambit`) are moved under a temporary
//! directory, and the agent gets its run directory from `AMBIT_RUN_DIR`
//! rather than its default, so the test leaves nothing on the host.

// Helpers here are test code too; clippy only sees `#[test]` functions as such.
#![allow(clippy::unwrap_used)]

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use ambit_tests::mesh::http::get;
use ambit_tests::{Netns, bin_path, require_e2e};

const TOKEN: &str = "readme-run-token-0123456789";
const WAIT: Duration = Duration::from_secs(30);

fn workspace() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .map(Path::to_path_buf)
        .unwrap()
}

/// The first `sh` block after the heading `heading`, continuation lines
/// joined, as one command line.
fn block_after(readme: &str, heading: &str) -> String {
    let after = readme
        .split_once(&format!("\n{heading}\n"))
        .unwrap_or_else(|| panic!("README.md has no {heading:?}"))
        .1;
    let block = after
        .split_once("```sh\n")
        .and_then(|(_, rest)| rest.split_once("\n```"))
        .unwrap_or_else(|| panic!("no sh block under {heading:?}"))
        .0;
    block.replace("\\\n", " ")
}

/// The inline `curl --unix-socket ...` command of the agent's section.
fn control_curl(readme: &str) -> String {
    let at = readme
        .find("`curl --unix-socket")
        .expect("README.md's control socket example");
    readme[at + 1..].split('`').next().unwrap().to_owned()
}

/// The line of `describe` that asks a running agent.
fn describe_admin(readme: &str) -> String {
    readme
        .lines()
        .find(|l| l.starts_with("ambit-agent describe") && l.contains("--admin"))
        .expect("README.md's describe --admin example")
        .split(" #")
        .next()
        .unwrap()
        .trim()
        .to_owned()
}

/// Splits a README command line into a program path and its arguments.
fn command(line: &str, dir: &Path, host_paths: &[(&str, PathBuf)]) -> Command {
    let mut line = line.to_owned();
    for (from, to) in host_paths {
        line = line.replace(from, &to.display().to_string());
    }
    let mut words = line.split_whitespace();
    let program = words.next().unwrap();
    let mut cmd = Command::new(bin_path(program).unwrap());
    cmd.args(words).current_dir(dir);
    cmd
}

fn wait(what: &str, mut done: impl FnMut() -> bool) {
    let deadline = Instant::now() + WAIT;
    while !done() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// `/etc/netns/<ns>/hosts`, which `ip netns exec` mounts over `/etc/hosts`.
struct Hosts(PathBuf);

impl Hosts {
    fn write(netns: &Netns, content: &str) -> Self {
        let dir = Path::new("/etc/netns").join(netns.name());
        std::fs::create_dir_all(&dir).unwrap();
        std::fs::write(dir.join("hosts"), content).unwrap();
        Self(dir)
    }
}

impl Drop for Hosts {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

#[test]
fn the_readme_run_commands_start_a_ca_and_an_agent_and_stop_it() {
    if !require_e2e() {
        return;
    }
    let readme = std::fs::read_to_string(workspace().join("README.md")).unwrap();
    let (ca_line, agent_line) = (
        block_after(&readme, "### The CA"),
        block_after(&readme, "### The agent"),
    );
    assert!(ca_line.starts_with("ambit-ca "), "{ca_line}");
    assert!(agent_line.starts_with("ambit-agent run "), "{agent_line}");

    // What the commands name: the state folder, tokens.yaml, the node's token.
    let work = tempfile::tempdir().unwrap();
    let dir = work.path();
    let fixture = workspace().join("agent/tests/fixtures/readme-http/state");
    std::fs::create_dir(dir.join("state")).unwrap();
    for entry in std::fs::read_dir(&fixture).unwrap() {
        let entry = entry.unwrap();
        std::fs::copy(entry.path(), dir.join("state").join(entry.file_name())).unwrap();
    }
    std::fs::write(dir.join("tokens.yaml"), format!("node-a: {TOKEN}\n")).unwrap();
    std::fs::write(dir.join("node-a.token"), TOKEN).unwrap();
    let host_paths = [
        ("/var/lib/ambit-ca", dir.join("var/lib/ambit-ca")),
        ("/var/run/ambit", dir.join("var/run/ambit")),
    ];

    let netns = Netns::create(&format!("ambit-rr{}", std::process::id())).unwrap();
    netns.ip(["link", "set", "lo", "up"]).unwrap();
    let _hosts = Hosts::write(&netns, "127.0.0.1 localhost ambit-ca\n");

    let mut ca = netns.spawn(&command(&ca_line, dir, &host_paths)).unwrap();
    ca.wait_for_port("127.0.0.1:15012".parse().unwrap(), WAIT)
        .unwrap();
    // "`<state-dir>/root-cert.pem` is the file to give the agents."
    let root = host_paths[0].1.join("root-cert.pem");
    wait("the CA's root certificate", || root.is_file());
    std::fs::copy(&root, dir.join("root-cert.pem")).unwrap();

    let mut agent_cmd = command(&agent_line, dir, &host_paths);
    agent_cmd.env("AMBIT_RUN_DIR", &host_paths[1].1);
    let mut agent = netns.spawn(&agent_cmd).unwrap();
    let readiness: SocketAddr = "127.0.0.1:15021".parse().unwrap();
    wait("the agent ready (certificate from the CA)", || {
        get(&netns, readiness, "/healthz/ready").is_ok_and(|r| r.status == 200)
    });
    assert!(
        agent
            .log()
            .contains("spiffe://cluster.local/ns/default/sa/guestbook"),
        "the agent holds no certificate for guestbook:\n{}",
        agent.log()
    );

    // describe, asking the running agent through its admin port.
    let describe = describe_admin(&readme);
    let args: Vec<&str> = describe.split_whitespace().skip(1).collect();
    let out = netns
        .output(bin_path("ambit-agent").unwrap(), &args)
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{describe}: {out:?}");
    assert!(stdout.contains("analyzer.default"), "{stdout}");
    assert!(stdout.contains("10.96.0.20"), "{stdout}");

    // The control socket stops it.
    let mut curl = control_curl(&readme);
    for (from, to) in &host_paths {
        curl = curl.replace(from, &to.display().to_string());
    }
    let out = netns.output("sh", ["-c", &curl]).unwrap();
    assert!(out.status.success(), "{curl}: {out:?}");
    assert_eq!(String::from_utf8_lossy(&out.stdout).trim(), "shutting down");
    let status = agent.wait_exit(WAIT).unwrap();
    assert!(
        status.is_some_and(|s| s.success()),
        "{status:?}\n{}",
        agent.log()
    );
    assert!(
        ca.try_wait().unwrap().is_none(),
        "the CA exited:\n{}",
        ca.log()
    );
}
