//! The rule set against a real kernel: each test runs on a thread moved into
//! a network namespace of its own (unshare), so the iptables and ip commands
//! it spawns see an empty node. Needs root; skipped (with a message) without.

use std::collections::BTreeSet;
use std::net::IpAddr;

use nix::sched::{CloneFlags, unshare};

use super::*;

/// Runs `f` on a thread in a fresh network namespace; `None` when the
/// namespace cannot be made (not root).
fn in_private_netns<T: Send + 'static>(f: impl FnOnce() -> T + Send + 'static) -> Option<T> {
    std::thread::spawn(move || {
        if let Err(error) = unshare(CloneFlags::CLONE_NEWNET) {
            eprintln!("skipping: cannot unshare a network namespace: {error}");
            return None;
        }
        Some(f())
    })
    .join()
    .unwrap()
}

fn ips(list: &[&str]) -> BTreeSet<IpAddr> {
    list.iter().map(|s| s.parse().unwrap()).collect()
}

/// The script's output, without the `#` comment lines iptables-save adds
/// (they carry a timestamp, so two saves of the same rules differ there).
fn sh(script: &str) -> String {
    let out = Command::new("sh").arg("-c").arg(script).output().unwrap();
    assert!(out.status.success(), "{script}: {out:?}");
    String::from_utf8(out.stdout)
        .unwrap()
        .lines()
        .filter(|l| !l.starts_with('#'))
        .map(|l| format!("{l}\n"))
        .collect()
}

fn lifecycle(backend: Backend) {
    let save = format!("iptables-{backend}-save -t mangle");
    // Someone else's rule, which nothing of ours may touch.
    sh(&format!(
        "iptables-{backend} -w -t mangle -A PREROUTING -i eth9 -j MARK --set-xmark 0x4000/0x4000"
    ));
    let capture = Capture::new(RuleConfig::default(), backend, vec![Family::V4]);

    let first = capture.install(&ips(&["10.1.0.2", "10.1.0.3"])).unwrap();
    assert!(first.base_written);
    assert_eq!(first.added.len(), 2);
    let text = sh(&save);
    assert_eq!(text.matches("-j TPROXY").count(), 3, "{text}");
    assert_eq!(text.matches("-j AMBIT-CAPTURE-").count(), 6, "{text}");
    let filter = format!("iptables-{backend}-save -t filter");
    let guard = sh(&filter);
    assert!(
        guard.contains("-A AMBIT-FORWARD -p tcp -m connmark --mark 0x111/0xfff -j REJECT --reject-with tcp-reset"),
        "{guard}"
    );
    assert_eq!(guard.matches("-j AMBIT-FORWARD").count(), 1, "{guard}");
    assert!(sh("ip -4 rule show").contains("fwmark 0x111/0xfff lookup 133"));
    assert!(sh("ip -4 route show table 133").starts_with("local default dev lo"));

    // A restart (or a repeat) changes nothing and duplicates nothing.
    let again = capture.install(&ips(&["10.1.0.2", "10.1.0.3"])).unwrap();
    assert!(again.is_noop(), "{again:?}");
    assert_eq!(sh(&save), text);
    assert_eq!(sh(&filter), guard);
    assert_eq!(sh("ip -4 rule show").matches("lookup 133").count(), 1);

    // Removing a pod removes its rules only.
    let removed = capture.reconcile(&ips(&["10.1.0.2"])).unwrap();
    assert_eq!(removed.removed, ["AMBIT-POD-0a010003"]);
    let text = sh(&save);
    assert!(!text.contains("10.1.0.3"), "{text}");
    assert_eq!(text.matches("-j AMBIT-CAPTURE-").count(), 3, "{text}");

    // Closing keeps every pod rule and the socket divert, drops TPROXY.
    capture.close().unwrap();
    let closed = sh(&save);
    assert!(!closed.contains("TPROXY"), "{closed}");
    assert!(closed.contains("-s 10.1.0.2/32"), "{closed}");
    assert!(closed.contains("--transparent"), "{closed}");
    assert_eq!(capture.status().unwrap()[0].mode, Some(Mode::Closed));
    // The next agent's install serves again.
    capture.install(&ips(&["10.1.0.2"])).unwrap();
    assert_eq!(sh(&save), text);
    assert_eq!(capture.status().unwrap()[0].mode, Some(Mode::Serving));

    // A stray second entry jump (a crash half-way) is repaired.
    sh(&format!(
        "iptables-{backend} -w -t mangle -I PREROUTING 1 -j AMBIT-PREROUTING"
    ));
    let repaired = capture.install(&ips(&["10.1.0.2"])).unwrap();
    assert!(repaired.base_written);
    assert_eq!(sh(&save).matches("-j AMBIT-PREROUTING").count(), 1);

    let status = capture.status().expect("status");
    let v4 = &status[0];
    assert_eq!(v4.pods, [ip("10.1.0.2")]);
    assert_eq!(
        (v4.entry_jumps, v4.policy_rules, v4.local_route, v4.guard),
        (1, 1, true, true)
    );

    capture.uninstall().unwrap();
    let text = sh(&save);
    assert!(!text.contains("AMBIT"), "{text}");
    assert!(!sh(&filter).contains("AMBIT"));
    assert!(text.contains("-A PREROUTING -i eth9 -j MARK --set-xmark 0x4000/0x4000"));
    assert!(!sh("ip -4 rule show").contains("lookup 133"));
    assert!(capture.status().unwrap().iter().all(FamilyStatus::is_clean));
    // Uninstalling twice is fine.
    capture.uninstall().unwrap();
}

fn ip(s: &str) -> IpAddr {
    s.parse().unwrap()
}

#[test]
fn nft_backend_lifecycle() {
    in_private_netns(|| lifecycle(Backend::Nft));
}

#[test]
fn legacy_backend_lifecycle() {
    in_private_netns(|| lifecycle(Backend::Legacy));
}

#[test]
fn detection_prefers_the_backend_holding_rules() {
    in_private_netns(|| {
        sh("iptables-legacy -w -t filter -A INPUT -i eth9 -j ACCEPT");
        assert_eq!(Backend::detect().unwrap(), Backend::Legacy);
    });
    in_private_netns(|| {
        sh("iptables-nft -w -t filter -A INPUT -i eth9 -j ACCEPT");
        assert_eq!(Backend::detect().unwrap(), Backend::Nft);
    });
}

#[test]
fn ipv6_rules_install_and_uninstall() {
    in_private_netns(|| {
        let capture = Capture::new(
            RuleConfig::default(),
            Backend::Nft,
            vec![Family::V4, Family::V6],
        );
        capture.install(&ips(&["10.1.0.2", "fd00::2"])).unwrap();
        let v6 = sh("ip6tables-nft-save -t mangle");
        assert!(v6.contains("-s fd00::2/128"), "{v6}");
        assert!(!v6.contains("10.1.0.2"));
        assert!(sh("ip -6 route show table 133").contains("local"));
        capture.uninstall().unwrap();
        assert!(!sh("ip6tables-nft-save -t mangle").contains("AMBIT"));
        assert!(!sh("ip6tables-nft-save -t filter").contains("AMBIT"));
    });
}
