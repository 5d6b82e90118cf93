//! The namespace cluster itself: pods reach each other across nodes and on
//! one node with bytes intact, servers see real pod IPs, nothing leads out,
//! teardown leaves nothing behind, and parallel clusters do not collide.

use std::net::{IpAddr, SocketAddr};
use std::process::Command;
use std::time::Duration;

use ambit_tests::traffic::{self, Server, ServerKind};
use ambit_tests::{Cluster, Pod, netns, require_e2e};

const MB: u64 = 1 << 20;

fn addr(pod: &Pod, port: u16) -> SocketAddr {
    SocketAddr::new(IpAddr::V4(pod.ip), port)
}

fn connect(from: &Pod, to: SocketAddr) -> std::net::TcpStream {
    from.netns
        .connect(to)
        .expect("enter namespace")
        .unwrap_or_else(|e| panic!("{} -> {to}: {e}", from.name))
}

#[test]
fn bulk_bytes_arrive_intact_across_nodes_and_on_one_node() {
    if !require_e2e() {
        return;
    }
    let cluster = Cluster::builder()
        .nodes(2)
        .pods_per_node(2)
        .build()
        .unwrap();
    let server_pod = cluster.pod(1, 0);
    let sink = Server::start(&server_pod.netns, addr(server_pod, 9000), ServerKind::Sink).unwrap();
    let echo = Server::start(&server_pod.netns, addr(server_pod, 9001), ServerKind::Echo).unwrap();

    for (client, seed) in [(cluster.pod(0, 0), 1), (cluster.pod(1, 1), 2)] {
        let to_sink = traffic::send_to_sink(connect(client, sink.local_addr()), 4 * MB, seed)
            .unwrap_or_else(|e| panic!("{} to sink: {e}", client.name));
        assert_eq!(to_sink.sent.bytes, 4 * MB);
        assert_eq!(to_sink.received, to_sink.sent, "sink from {}", client.name);

        let echoed = traffic::echo_through(connect(client, echo.local_addr()), 3 * MB, seed + 10)
            .unwrap_or_else(|e| panic!("{} through echo: {e}", client.name));
        assert_eq!(echoed.received.bytes, 3 * MB);
        assert_eq!(echoed.received, echoed.sent, "echo for {}", client.name);
    }
    // Different seeds give different streams: the comparison is not vacuous.
    let served = sink.served();
    assert_eq!(served.len(), 2);
    assert_ne!(served[0].received.checksum, served[1].received.checksum);
}

#[test]
fn servers_see_the_client_pod_ip() {
    if !require_e2e() {
        return;
    }
    let mut cluster = Cluster::builder()
        .nodes(2)
        .pods_per_node(2)
        .build()
        .unwrap();
    let analyzer = cluster.add_pod(1, "analyzer").unwrap();
    assert_eq!(analyzer.ip.to_string(), "10.244.1.4");
    assert!(
        cluster.add_pod(0, "analyzer").is_err(),
        "duplicate pod name"
    );
    assert!(cluster.add_pod(0, "Bad_Name").is_err(), "invalid pod name");

    let peer = Server::start(&analyzer.netns, addr(&analyzer, 9002), ServerKind::Peer).unwrap();
    for client in [cluster.pod(0, 0), cluster.pod(0, 1), cluster.pod(1, 0)] {
        let seen = traffic::ask_peer(connect(client, peer.local_addr())).unwrap();
        assert_eq!(
            seen.ip(),
            IpAddr::V4(client.ip),
            "seen from {}",
            client.name
        );
    }
    let seen: Vec<IpAddr> = peer.served().iter().map(|s| s.peer.ip()).collect();
    assert_eq!(seen.len(), 3);
    assert!(seen.contains(&IpAddr::V4(cluster.pod(0, 1).ip)));
}

#[test]
fn addressing_follows_the_plan_and_nothing_leads_out() {
    if !require_e2e() {
        return;
    }
    let cluster = Cluster::builder()
        .nodes(3)
        .pods_per_node(1)
        .build()
        .unwrap();
    for node in cluster.nodes() {
        assert_eq!(node.fabric_ip.octets(), [10, 240, 0, node.index as u8 + 1]);
        assert_eq!(
            node.pod_cidr.to_string(),
            format!("10.244.{}.0/24", node.index)
        );
        assert_eq!(node.netns.sysctl("net.ipv4.ip_forward").unwrap(), "1");
        assert_eq!(
            node.netns.sysctl("net.ipv4.conf.eth0.rp_filter").unwrap(),
            "0"
        );
        let out = node.netns.ip(["route", "get", "192.0.2.1"]);
        assert!(out.is_err(), "node {} routes outside: {out:?}", node.name);
        let lo = node.netns.ip(["-o", "link", "show", "lo"]).unwrap();
        assert!(lo.contains("UP"), "{lo}");
    }
    let pod = cluster.pod(2, 0);
    assert_eq!(pod.ip.to_string(), "10.244.2.2");
    let routes = pod.netns.ip(["route", "show"]).unwrap();
    assert!(
        routes.contains("default via 10.244.2.1 dev eth0"),
        "{routes}"
    );
    let veth = cluster
        .node(2)
        .netns
        .ip(["-d", "-o", "link", "show", &pod.node_veth])
        .unwrap();
    assert!(veth.contains("veth"), "{veth}");
    assert!(
        veth.contains(&format!("link-netns {}", pod.netns.name())),
        "{veth}"
    );
    // Traffic to a non-pod address dies at the node.
    let stray = pod.netns.run(|| {
        std::net::TcpStream::connect_timeout(
            &"192.0.2.1:80".parse().unwrap(),
            Duration::from_secs(1),
        )
    });
    assert!(stray.unwrap().is_err());
}

#[test]
fn teardown_leaves_no_namespace_veth_bridge_or_process() {
    if !require_e2e() {
        return;
    }
    let (prefix, tag, node_ns_inode) = {
        let cluster = Cluster::builder()
            .nodes(2)
            .pods_per_node(2)
            .build()
            .unwrap();
        let prefix = cluster.netns_prefix().to_owned();
        let tag = cluster.interface_tag().to_owned();
        let ours: Vec<String> = netns::list()
            .unwrap()
            .into_iter()
            .filter(|n| n.starts_with(&prefix))
            .collect();
        assert_eq!(ours.len(), 1 + 2 + 4, "{ours:?}");
        let bridge = cluster
            .fabric()
            .ip(["-o", "link", "show", "type", "bridge"])
            .unwrap();
        assert!(bridge.contains(&format!("{tag}b")), "{bridge}");

        // A separate process serving in a pod is killed by teardown too.
        let pod = cluster.pod(0, 1);
        let bin = ambit_tests::bin_path("ambit-testpod").unwrap();
        let mut cmd = Command::new(bin);
        cmd.args(["echo", "--listen", &addr(pod, 9003).to_string()]);
        let mut process = pod.netns.spawn(&cmd).unwrap();
        let pid = process.pid();
        process
            .wait_for_port(addr(pod, 9003), Duration::from_secs(10))
            .unwrap();
        let echoed =
            traffic::echo_through(connect(cluster.pod(1, 0), addr(pod, 9003)), MB, 5).unwrap();
        assert!(echoed.intact());
        drop(process);
        assert!(
            !std::path::Path::new(&format!("/proc/{pid}")).exists(),
            "testpod still runs"
        );

        let inode = std::fs::metadata(cluster.node(0).netns.path()).map(|m| {
            use std::os::unix::fs::MetadataExt;
            m.ino()
        });
        (prefix, tag, inode.unwrap())
    };
    let left: Vec<String> = netns::list()
        .unwrap()
        .into_iter()
        .filter(|n| n.starts_with(&prefix))
        .collect();
    assert!(left.is_empty(), "namespaces left: {left:?}");
    let links = Command::new("ip")
        .args(["-o", "link", "show"])
        .output()
        .unwrap();
    let links = String::from_utf8_lossy(&links.stdout);
    assert!(
        !links.contains(&tag),
        "links left in the root namespace: {links}"
    );
    // No process is still inside a cluster namespace.
    let inside: Vec<String> = std::fs::read_dir("/proc")
        .unwrap()
        .filter_map(|e| e.ok())
        .filter(|e| {
            std::fs::read_link(e.path().join("ns/net"))
                .is_ok_and(|l| l.to_string_lossy() == format!("net:[{node_ns_inode}]"))
        })
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .collect();
    assert!(inside.is_empty(), "processes left in node0: {inside:?}");
}

#[test]
fn parallel_clusters_do_not_collide() {
    if !require_e2e() {
        return;
    }
    let run = |seed: u64| {
        let cluster = Cluster::builder()
            .nodes(2)
            .pods_per_node(1)
            .build()
            .unwrap();
        let server_pod = cluster.pod(1, 0);
        let sink =
            Server::start(&server_pod.netns, addr(server_pod, 9000), ServerKind::Sink).unwrap();
        let exchange =
            traffic::send_to_sink(connect(cluster.pod(0, 0), sink.local_addr()), 2 * MB, seed)
                .unwrap();
        assert!(exchange.intact());
        // Only this cluster's client reached this sink.
        assert_eq!(sink.served().len(), 1);
        cluster.netns_prefix().to_owned()
    };
    let (a, b) = std::thread::scope(|s| {
        let a = s.spawn(|| run(1));
        let b = s.spawn(|| run(2));
        (a.join().unwrap(), b.join().unwrap())
    });
    assert_ne!(a, b);
}

#[test]
fn a_panicking_test_still_tears_down() {
    if !require_e2e() {
        return;
    }
    let prefix = std::sync::Mutex::new(String::new());
    let result = std::panic::catch_unwind(|| {
        let cluster = Cluster::builder()
            .nodes(2)
            .pods_per_node(1)
            .build()
            .unwrap();
        *prefix.lock().unwrap() = cluster.netns_prefix().to_owned();
        panic!("simulated test failure");
    });
    assert!(result.is_err());
    let prefix = prefix.into_inner().unwrap();
    assert!(!prefix.is_empty());
    let left: Vec<String> = netns::list()
        .unwrap()
        .into_iter()
        .filter(|n| n.starts_with(&prefix))
        .collect();
    assert!(left.is_empty(), "namespaces left after a panic: {left:?}");
}
