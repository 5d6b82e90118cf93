//! Enrolled pods reach each other across nodes with bytes intact, the fabric
//! carries only TLS between them, the HBONE port presents a chain that
//! verifies against the CA's root and names the pod, and both agents count
//! the connections and bytes exactly.

use std::net::IpAddr;
use std::time::Duration;

use ambit_tests::mesh::Samples;
use ambit_tests::require_e2e;

use crate::scenario::{ECHO_PORT, Outcome, SINK_PORT, echo, eventually, payload, scrape, sink};

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
