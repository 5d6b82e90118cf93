//! Enrolled pods reach each other across nodes with bytes intact, the fabric
//! carries only TLS between them, tunnels leave from the client pod's own
//! address, the HBONE port presents a chain that verifies against the CA's
//! root and names the pod, and both agents count the connections and bytes
//! exactly, the destination naming the Service the client dialled.

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::time::Duration;

use ambit_tests::mesh::{Samples, guestbook};
use ambit_tests::require_e2e;

use crate::scenario::{
    ECHO_PORT, Guestbook, Outcome, SINK_PORT, echo, eventually, payload, scrape, sink,
};

const OPENED: &str = "istio_tcp_connections_opened_total";
const CLOSED: &str = "istio_tcp_connections_closed_total";
const RECEIVED: &str = "istio_tcp_received_bytes_total";
const SENT: &str = "istio_tcp_sent_bytes_total";

/// One connection as an agent should have counted it: received is
/// client-to-server bytes, sent server-to-client (Istio's convention).
struct Counted<'a> {
    node: usize,
    filter: Vec<(&'a str, &'a str)>,
    received: f64,
    sent: f64,
}

/// `after - before` of the sum over `filter`.
fn delta(before: &Samples, after: &Samples, name: &str, filter: &[(&str, &str)]) -> f64 {
    after.sum(name, filter) - before.sum(name, filter)
}

#[test]
fn enrolled_pods_talk_across_nodes_inside_mtls_and_are_counted() {
    if !require_e2e() {
        return;
    }
    let gb = crate::scenario::start();
    let (guestbook, analyzer, sleep, legacy) = (
        gb.pod("guestbook"),
        gb.pod("analyzer"),
        gb.pod("sleep"),
        gb.pod("legacy"),
    );
    let before = scrape(&gb);
    let wire = gb.mesh.capture_fabric().unwrap();

    // Mesh traffic carrying a marker, echoed across nodes 0 -> 1.
    const SECRET: &str = "AMBIT-MARKER-guestbook-to-analyzer-7f3a9c";
    const ECHO_BYTES: usize = 1 << 20;
    let secret = payload(SECRET, ECHO_BYTES);
    assert_eq!(
        echo(guestbook, analyzer.addr(ECHO_PORT), &secret),
        Outcome::Allowed
    );
    // Bulk, one direction, nodes 2 -> 1; the sink's answer is the other direction.
    const SINK_BYTES: u64 = 3 << 20;
    let (sent, received, answer) = sink(sleep, analyzer.addr(SINK_PORT), SINK_BYTES, 42).unwrap();
    assert_eq!(sent.bytes, SINK_BYTES);
    assert_eq!(
        received, sent,
        "the sink received other bytes than were sent"
    );
    // Control: plaintext from outside the mesh (PERMISSIVE by default) is
    // visible on the wire, so the capture does see payloads.
    const PLAIN: &str = "AMBIT-MARKER-legacy-plaintext-51d0e2";
    let plain = payload(PLAIN, 4096);
    assert_eq!(
        echo(legacy, analyzer.addr(ECHO_PORT), &plain),
        Outcome::Allowed
    );
    let recording = wire.stop().unwrap();

    assert!(
        recording.contains(PLAIN.as_bytes()),
        "the capture missed the plaintext control marker: it proves nothing"
    );
    assert!(
        !recording.contains(SECRET.as_bytes()),
        "the mesh marker crossed the fabric in clear text:\n{}",
        recording.summary("tcp").unwrap()
    );
    let to_hbone = recording
        .count(&format!(
            "tcp and dst host {} and dst port 15008",
            analyzer.ip()
        ))
        .unwrap();
    assert!(
        to_hbone > 10,
        "only {to_hbone} frames reached analyzer's 15008"
    );
    // The tunnel leaves node0 from guestbook's own address (as ztunnel's
    // do), not the node's, and the answers come back to it: the capture
    // rules' transparent-socket divert hands them to the agent.
    let hbone = |src: String, dst: String| {
        recording
            .count(&format!("tcp and src host {src} and dst host {dst}"))
            .unwrap()
    };
    let (pod_ip, an_ip) = (guestbook.ip().to_string(), analyzer.ip().to_string());
    let from_pod = hbone(pod_ip.clone(), format!("{an_ip} and dst port 15008"));
    let answers = hbone(format!("{an_ip} and src port 15008"), pod_ip);
    assert!(
        from_pod > 10 && answers > 10,
        "HBONE from guestbook's address: {from_pod} frames out, {answers} back:\n{}",
        recording.summary("tcp port 15008").unwrap()
    );
    let node0 = gb.mesh.node(0).fabric_ip.to_string();
    let from_node = hbone(node0, format!("{an_ip} and dst port 15008"));
    assert_eq!(from_node, 0, "HBONE left node0 from the node's address");
    let to_app = recording
        .count(&format!(
            "tcp and src host {} and dst port {ECHO_PORT}",
            guestbook.ip()
        ))
        .unwrap();
    assert_eq!(
        to_app, 0,
        "guestbook reached analyzer:{ECHO_PORT} outside the tunnel"
    );

    // The servers saw the real client addresses.
    let peers: Vec<IpAddr> = gb
        .analyzer_echo()
        .served()
        .iter()
        .map(|s| s.peer.ip())
        .collect();
    assert!(peers.contains(&IpAddr::V4(guestbook.ip())), "{peers:?}");
    assert!(peers.contains(&IpAddr::V4(legacy.ip())), "{peers:?}");
    let sink_peers: Vec<IpAddr> = gb
        .analyzer_sink()
        .served()
        .iter()
        .map(|s| s.peer.ip())
        .collect();
    assert_eq!(sink_peers, vec![IpAddr::V4(sleep.ip())]);

    // Both agents counted each connection once, with the exact bytes.
    // Leaked: label filters borrow them for the rest of the test.
    let [gb_id, an_id, sl_id] = [guestbook, analyzer, sleep].map(|p| &*p.spiffe_id().leak());
    let mtls = |reporter: &'static str, src: &'static str| {
        vec![
            ("reporter", reporter),
            ("source_principal", src),
            ("destination_principal", an_id),
            ("connection_security_policy", "mutual_tls"),
        ]
    };
    let (echoed, sunk, answered) = (ECHO_BYTES as f64, SINK_BYTES as f64, answer.len() as f64);
    let expectations = [
        Counted {
            node: 0,
            filter: mtls("source", gb_id),
            received: echoed,
            sent: echoed,
        },
        Counted {
            node: 1,
            filter: mtls("destination", gb_id),
            received: echoed,
            sent: echoed,
        },
        Counted {
            node: 2,
            filter: mtls("source", sl_id),
            received: sunk,
            sent: answered,
        },
        Counted {
            node: 1,
            filter: mtls("destination", sl_id),
            received: sunk,
            sent: answered,
        },
        Counted {
            node: 1,
            filter: vec![
                ("reporter", "destination"),
                ("source_workload", "legacy"),
                ("destination_workload", "analyzer"),
                ("connection_security_policy", "none"),
            ],
            received: plain.len() as f64,
            sent: plain.len() as f64,
        },
    ];
    eventually(Duration::from_secs(5), || {
        let after = scrape(&gb);
        for c in &expectations {
            let got = [OPENED, CLOSED, RECEIVED, SENT]
                .map(|name| delta(&before[c.node], &after[c.node], name, &c.filter));
            if got != [1.0, 1.0, c.received, c.sent] {
                return Err(format!(
                    "node{} {:?}: opened/closed/received/sent = {got:?}, want [1, 1, {}, {}]",
                    c.node, c.filter, c.received, c.sent
                ));
            }
        }
        Ok(())
    });
    // Nothing else was counted: no connection was reported twice or under other labels.
    let after = scrape(&gb);
    for (node, opened) in [(0, 1.0), (1, 3.0), (2, 1.0)] {
        assert_eq!(
            delta(&before[node], &after[node], OPENED, &[]),
            opened,
            "connections opened on node{node}"
        );
    }
    // The access log tells the same story, one line per connection and side.
    let gb_addr = format!("{}:", guestbook.ip());
    for (node, reporter) in [(0, "source"), (1, "destination")] {
        let lines: Vec<_> = gb
            .mesh
            .access_log(node)
            .into_iter()
            .filter(|l| {
                l["src.addr"]
                    .as_str()
                    .is_some_and(|a| a.starts_with(&gb_addr))
            })
            .collect();
        let [line] = lines.as_slice() else {
            panic!("node{node}: not one access line from guestbook: {lines:#?}");
        };
        assert_eq!(line["reporter"], reporter, "{line:#}");
        assert_eq!(line["src.identity"], gb_id, "{line:#}");
        assert_eq!(line["dst.identity"], an_id, "{line:#}");
        assert_eq!(
            line["dst.addr"],
            analyzer.addr(ECHO_PORT).to_string(),
            "{line:#}"
        );
        assert_eq!(line["security"], "mutual_tls", "{line:#}");
        assert_eq!(line["bytes_received"], ECHO_BYTES, "{line:#}");
        assert_eq!(line["bytes_sent"], ECHO_BYTES, "{line:#}");
        assert_eq!(line["decision"], "allow", "{line:#}");
        assert_eq!(line["status"], "closed", "{line:#}");
    }
}

#[test]
fn the_hbone_port_presents_a_chain_to_the_ca_root_naming_the_pod() {
    if !require_e2e() {
        return;
    }
    let gb = crate::scenario::start();
    let analyzer = gb.pod("analyzer");
    let chain = gb
        .mesh
        .presented_chain(gb.pod("legacy"), analyzer.addr(15008))
        .unwrap();
    assert!(
        chain.verified(),
        "{}\n{}",
        chain.verify_result,
        chain.transcript
    );
    assert_eq!(
        chain.leaf_uris,
        vec![analyzer.spiffe_id()],
        "{:#?}",
        chain.details
    );
    let (ok, report) = gb.mesh.verify_chain(&chain.certificates).unwrap();
    assert!(ok, "openssl verify: {report}");
    // The whole chain is sent, as Istio's sidecars send it: leaf, then the CA's root.
    let root = gb.mesh.root_cert_pem().unwrap();
    assert_eq!(chain.certificates.len(), 2, "{:#?}", chain.details);
    assert_eq!(chain.certificates[1].trim(), root.trim());

    // Another pod's port presents that pod's identity, not analyzer's.
    let guestbook = gb.pod("guestbook");
    let other = gb
        .mesh
        .presented_chain(gb.pod("legacy"), guestbook.addr(15008))
        .unwrap();
    assert_eq!(other.leaf_uris, vec![guestbook.spiffe_id()]);
}

/// Two Services in front of analyzer's echo port: a connection counts under
/// the one the client dialled, which only `host=` in `forwarded` tells the
/// destination; a connection to the pod address counts under the first
/// Service whose endpoints serve that port, and one to a port no Service
/// targets under none.
#[test]
fn the_destination_reports_the_service_the_client_dialled() {
    if !require_e2e() {
        return;
    }
    let (vip, canary_vip) = (Ipv4Addr::new(10, 96, 0, 10), Ipv4Addr::new(10, 96, 0, 11));
    let builder = guestbook::builder()
        .service(
            "default",
            "analyzer",
            vip,
            ("app", "analyzer"),
            &[(80, ECHO_PORT)],
        )
        .service(
            "default",
            "canary",
            canary_vip,
            ("app", "analyzer"),
            &[(80, ECHO_PORT)],
        );
    let gb = Guestbook::start_with(builder).unwrap_or_else(|e| panic!("starting the mesh: {e}"));
    let (analyzer, sleep, guestbook) = (gb.pod("analyzer"), gb.pod("sleep"), gb.pod("guestbook"));
    let before = scrape(&gb);
    let data = payload("AMBIT-service-labels", 1024);
    for (from, to) in [
        (sleep, SocketAddr::new(canary_vip.into(), 80)),
        (guestbook, analyzer.addr(ECHO_PORT)),
        (guestbook, analyzer.addr(SINK_PORT)),
    ] {
        assert_eq!(
            echo_or_sink(from, to, &data),
            Outcome::Allowed,
            "{} -> {to}",
            from.name()
        );
    }
    let service = |source: &'static str, svc: &'static str| {
        vec![
            ("reporter", "destination"),
            ("source_workload", source),
            ("destination_workload", "analyzer"),
            ("destination_service", svc),
        ]
    };
    let expected = [
        (service("sleep", "canary.default.svc.cluster.local"), 1.0),
        (service("sleep", "analyzer.default.svc.cluster.local"), 0.0),
        (
            service("guestbook", "analyzer.default.svc.cluster.local"),
            1.0,
        ),
        (service("guestbook", "unknown"), 1.0),
    ];
    eventually(Duration::from_secs(5), || {
        let after = scrape(&gb);
        for (filter, want) in &expected {
            let got = delta(&before[1], &after[1], CLOSED, filter);
            if got != *want {
                return Err(format!("node1 {filter:?}: {got} closed, want {want}"));
            }
        }
        Ok(())
    });
    // The source side names the dialled Service too.
    let after = scrape(&gb);
    let source = [
        ("reporter", "source"),
        ("source_workload", "sleep"),
        ("destination_service", "canary.default.svc.cluster.local"),
    ];
    assert_eq!(delta(&before[2], &after[2], CLOSED, &source), 1.0);
}

/// Echo on the echo port, the sink (which answers its byte count) elsewhere.
fn echo_or_sink(from: &ambit_tests::MeshPod, to: SocketAddr, data: &[u8]) -> Outcome {
    if to.port() == SINK_PORT {
        return match sink(from, to, data.len() as u64, 7) {
            Ok(_) => Outcome::Allowed,
            Err(e) => panic!("sink {to}: {e}"),
        };
    }
    echo(from, to, data)
}
