use super::*;

fn ip(s: &str) -> IpAddr {
    s.parse().unwrap()
}

#[test]
fn pod_rules_send_syns_to_the_capture_chains_outbound_hbone_inbound() {
    let pod = PodRules::new(&RuleConfig::default(), ip("10.1.0.2"));
    assert_eq!(pod.chain, "AMBIT-POD-0a010002");
    assert_eq!(
        pod.rules,
        vec![
            "-A AMBIT-POD-0a010002 -s 10.1.0.2/32 -p tcp -m tcp --syn -j AMBIT-CAPTURE-OUT",
            "-A AMBIT-POD-0a010002 -d 10.1.0.2/32 -p tcp -m tcp --dport 15008 --syn -j AMBIT-CAPTURE-HBONE",
            "-A AMBIT-POD-0a010002 -d 10.1.0.2/32 -p tcp -m tcp --syn -j AMBIT-CAPTURE-IN",
        ]
    );
    let [out, inb] = pod.jumps();
    assert_eq!(
        out,
        format!(
            "-A AMBIT-OUTBOUND -s 10.1.0.2/32 -m comment --comment \"ambit-pod {}\" -j AMBIT-POD-0a010002",
            pod.fingerprint
        )
    );
    assert!(inb.starts_with("-A AMBIT-INBOUND -d 10.1.0.2/32 "));
}

#[test]
fn base_skips_agent_traffic_and_local_addresses_and_diverts_owned_sockets_but_not_syns() {
    let base = BaseRules::new(&RuleConfig::default(), Family::V4, Mode::Serving);
    assert_eq!(
        base.rules,
        vec![
            "-A AMBIT-PREROUTING -m mark --mark 0x539/0xfff -j RETURN",
            "-A AMBIT-PREROUTING -p tcp -m tcp ! --syn -m socket --transparent -j AMBIT-DIVERT",
            "-A AMBIT-PREROUTING -m addrtype --dst-type LOCAL -j RETURN",
            "-A AMBIT-PREROUTING -j AMBIT-OUTBOUND",
            "-A AMBIT-PREROUTING -j AMBIT-INBOUND",
            "-A AMBIT-DIVERT -j MARK --set-xmark 0x111/0xfff",
            "-A AMBIT-DIVERT -j ACCEPT",
            "-A AMBIT-CAPTURE-OUT -j CONNMARK --set-xmark 0x111/0xfff",
            "-A AMBIT-CAPTURE-OUT -p tcp -j TPROXY --on-port 15001 --on-ip 0.0.0.0 --tproxy-mark 0x111/0xfff",
            "-A AMBIT-CAPTURE-HBONE -j CONNMARK --set-xmark 0x111/0xfff",
            "-A AMBIT-CAPTURE-HBONE -p tcp -j TPROXY --on-port 15008 --on-ip 0.0.0.0 --tproxy-mark 0x111/0xfff",
            "-A AMBIT-CAPTURE-IN -j CONNMARK --set-xmark 0x111/0xfff",
            "-A AMBIT-CAPTURE-IN -p tcp -j TPROXY --on-port 15006 --on-ip 0.0.0.0 --tproxy-mark 0x111/0xfff",
        ]
    );
    assert!(
        base.entry_jump()
            .starts_with("-I PREROUTING 1 -m comment --comment \"ambit-base ")
    );
    assert!(base.entry_jump().ends_with("-j AMBIT-PREROUTING"));
}

#[test]
fn closed_mode_marks_captured_connections_but_steers_nothing() {
    let cfg = RuleConfig::default();
    let serving = BaseRules::new(&cfg, Family::V4, Mode::Serving);
    let closed = BaseRules::new(&cfg, Family::V4, Mode::Closed);
    assert_ne!(serving.fingerprint, closed.fingerprint);
    assert!(closed.rules.iter().all(|r| !r.contains("TPROXY")));
    assert_eq!(
        closed
            .rules
            .iter()
            .filter(|r| r.contains("CONNMARK"))
            .count(),
        3
    );
    // Everything else, the socket divert above all, stays as it was.
    let not_tproxy: Vec<_> = serving
        .rules
        .iter()
        .filter(|r| !r.contains("TPROXY"))
        .collect();
    assert_eq!(not_tproxy, closed.rules.iter().collect::<Vec<_>>());
}

#[test]
fn guard_resets_forwarded_packets_of_captured_connections() {
    let guard = GuardRules::new(&RuleConfig::default());
    assert_eq!(
        guard.rules,
        [
            "-A AMBIT-FORWARD -p tcp -m connmark --mark 0x111/0xfff -j REJECT --reject-with tcp-reset"
        ]
    );
    let script = guard.render(&["-D FORWARD -j AMBIT-FORWARD".to_owned()]);
    assert_eq!(
        script,
        format!(
            "*filter\n-D FORWARD -j AMBIT-FORWARD\n:AMBIT-FORWARD - [0:0]\n{}\n\
             -I FORWARD 1 -m comment --comment \"ambit-guard {}\" -j AMBIT-FORWARD\nCOMMIT\n",
            guard.rules[0], guard.fingerprint
        )
    );
}

#[test]
fn ports_and_marks_come_from_the_config() {
    let cfg = RuleConfig {
        ports: CapturePorts {
            outbound: 25001,
            inbound_plain: 25006,
            hbone: 25008,
        },
        tproxy_mark: "0x20/0xf0".parse().unwrap(),
        skip_mark: "0x40/0xf0".parse().unwrap(),
        ..RuleConfig::default()
    };
    let pod = PodRules::new(&cfg, ip("10.1.0.2"));
    assert!(pod.rules[1].contains("--dport 25008 --syn"));
    let base = BaseRules::new(&cfg, Family::V4, Mode::Serving)
        .rules
        .join("\n");
    assert!(base.contains("--on-port 25001 --on-ip 0.0.0.0 --tproxy-mark 0x20/0xf0"));
    assert!(base.contains("--on-port 25008"));
    assert!(base.contains("--on-port 25006"));
    assert!(base.contains("-m mark --mark 0x40/0xf0 -j RETURN"));
    // A different rule set has a different fingerprint, so apply rewrites it.
    assert_ne!(
        pod.fingerprint,
        PodRules::new(&RuleConfig::default(), ip("10.1.0.2")).fingerprint
    );
}

#[test]
fn ipv6_pods_get_v6_prefixes_and_short_chain_names() {
    let pod = PodRules::new(&RuleConfig::default(), ip("fd00:10:1::2"));
    assert_eq!(pod.family(), Family::V6);
    assert!(pod.chain.starts_with("AMBIT-POD-"));
    assert!(pod.chain.len() <= 28, "{}", pod.chain);
    assert!(pod.rules[0].contains("-s fd00:10:1::2/128"));
    let base = BaseRules::new(&RuleConfig::default(), Family::V6, Mode::Serving);
    assert!(base.rules.iter().any(|r| r.contains("--on-ip ::")));
    assert_ne!(pod.chain, pod_chain(ip("fd00:10:1::3")));
}

#[test]
fn fresh_render_declares_every_chain_and_commits() {
    let cfg = RuleConfig::default();
    let pods = [
        PodRules::new(&cfg, ip("10.1.0.2")),
        PodRules::new(&cfg, ip("10.1.0.3")),
    ];
    let text = render_fresh(&cfg, Family::V4, &pods);
    assert!(text.starts_with("*mangle\n:AMBIT-PREROUTING - [0:0]\n"));
    assert!(text.ends_with("-j AMBIT-PREROUTING\nCOMMIT\n"));
    assert_eq!(text.matches(":AMBIT-POD-").count(), 2);
    assert_eq!(text.matches("-j TPROXY").count(), 3);
    assert_eq!(text.matches("-j AMBIT-CAPTURE-").count(), 6);
    // Each pod's chain is declared before the jumps into it.
    let decl = text.find(":AMBIT-POD-0a010003").unwrap();
    let jump = text.find("-j AMBIT-POD-0a010003").unwrap();
    assert!(decl < jump);
}

#[test]
fn policy_routing_delivers_marked_packets_locally() {
    let cfg = RuleConfig::default();
    let v4 = PolicyRouting::new(&cfg, Family::V4);
    assert_eq!(
        v4.rule,
        [
            "rule",
            "add",
            "fwmark",
            "0x111/0xfff",
            "lookup",
            "133",
            "pref",
            "32000"
        ]
    );
    assert_eq!(v4.rule_delete()[1], "del");
    assert_eq!(
        v4.route,
        [
            "route",
            "replace",
            "local",
            "0.0.0.0/0",
            "dev",
            "lo",
            "table",
            "133"
        ]
    );
    assert_eq!(v4.rule_signature, "fwmark 0x111/0xfff lookup 133");
    assert_eq!(PolicyRouting::new(&cfg, Family::V6).route[3], "::/0");
}

#[test]
fn marks_parse_with_and_without_masks() {
    assert_eq!("0x111/0xfff".parse(), Ok(Mark::new(0x111, 0xfff)));
    assert_eq!("1337".parse(), Ok(Mark::new(1337, u32::MAX)));
    assert_eq!(Mark::new(0x539, 0xfff).to_string(), "0x539/0xfff");
    assert_eq!(
        "0x1000/0xfff".parse::<Mark>(),
        Err(MarkError::OutsideMask {
            value: 0x1000,
            mask: 0xfff
        })
    );
    assert_eq!("0".parse::<Mark>(), Err(MarkError::Zero));
    assert!(matches!(
        "abc".parse::<Mark>(),
        Err(MarkError::NotANumber(_))
    ));
}
