use std::collections::BTreeMap;
use std::io::Write;
use std::net::SocketAddr;
use std::sync::Arc;

use ambit_ca::SpiffeId;
use parking_lot::Mutex;
use prometheus_client::registry::Registry;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use super::*;
use crate::state::{EndpointGroup, Service, ServicePort, TargetPort, Workload};
use crate::telemetry::{self, LogFormat};

/// One sample of the OpenMetrics text: `name{labels} value`.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct Sample {
    pub name: String,
    pub labels: BTreeMap<String, String>,
    pub value: f64,
}

/// Parses OpenMetrics text into samples; panics on anything malformed, so a
/// broken exposition fails the test rather than being skipped.
pub(crate) fn parse_openmetrics(text: &str) -> Vec<Sample> {
    assert!(text.ends_with("# EOF\n"), "exposition must end with # EOF");
    let mut samples = Vec::new();
    for line in text
        .lines()
        .filter(|l| !l.starts_with('#') && !l.is_empty())
    {
        let (name, rest) = match line.find('{') {
            Some(i) => (&line[..i], &line[i + 1..]),
            None => {
                let (n, v) = line.split_once(' ').expect("sample without value");
                samples.push(Sample {
                    name: n.into(),
                    labels: BTreeMap::new(),
                    value: v.parse().expect("value"),
                });
                continue;
            }
        };
        let mut labels = BTreeMap::new();
        let mut chars = rest.chars().peekable();
        loop {
            let key: String = chars.by_ref().take_while(|c| *c != '=').collect();
            assert_eq!(
                chars.next(),
                Some('"'),
                "label value must be quoted in {line}"
            );
            let mut value = String::new();
            while let Some(c) = chars.next() {
                match c {
                    '\\' => match chars.next() {
                        Some('n') => value.push('\n'),
                        Some(c) => value.push(c),
                        None => panic!("dangling escape in {line}"),
                    },
                    '"' => break,
                    c => value.push(c),
                }
            }
            assert!(
                labels.insert(key.clone(), value).is_none(),
                "duplicate label {key}"
            );
            match chars.next() {
                Some(',') => continue,
                Some('}') => break,
                other => panic!("unexpected {other:?} in {line}"),
            }
        }
        let value: String = chars.collect();
        samples.push(Sample {
            name: name.into(),
            labels,
            value: value.trim().parse().expect("value"),
        });
    }
    samples
}

/// The value of the one sample named `name` whose labels include `want`.
pub(crate) fn value(samples: &[Sample], name: &str, want: &[(&str, &str)]) -> Option<f64> {
    let matching: Vec<&Sample> = samples
        .iter()
        .filter(|s| s.name == name)
        .filter(|s| {
            want.iter()
                .all(|(k, v)| s.labels.get(*k).map(String::as_str) == Some(*v))
        })
        .collect();
    assert!(matching.len() <= 1, "{name} {want:?} matches {matching:#?}");
    matching.first().map(|s| s.value)
}

pub(crate) fn workload(
    name: &str,
    ns: &str,
    sa: &str,
    ip: &str,
    labels: &[(&str, &str)],
) -> Workload {
    Workload {
        uid: format!("uid-{name}"),
        name: name.into(),
        namespace: ns.into(),
        service_account: sa.into(),
        node: "node-a".into(),
        ips: vec![ip.parse().unwrap()],
        labels: labels
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect(),
        enrolled: true,
    }
}

fn addr(s: &str) -> SocketAddr {
    s.parse().unwrap()
}

struct Fixture {
    registry: Registry,
    metrics: Arc<Metrics>,
    guestbook: Workload,
    analyzer: Workload,
    guestbook_id: SpiffeId,
    analyzer_id: SpiffeId,
    service: Service,
}

fn fixture() -> Fixture {
    let mut registry = Registry::default();
    let metrics = Arc::new(Metrics::new(&mut registry));
    Fixture {
        registry,
        metrics,
        guestbook: workload("guestbook", "default", "guestbook", "10.0.1.5", &[]),
        analyzer: workload(
            "analyzer",
            "default",
            "analyzer",
            "10.0.2.7",
            &[("app", "analyzer"), ("version", "v2")],
        ),
        guestbook_id: SpiffeId::new("cluster.local", "default", "guestbook").unwrap(),
        analyzer_id: SpiffeId::new("cluster.local", "default", "analyzer").unwrap(),
        service: Service::new(
            "analyzer".into(),
            "default".into(),
            vec!["10.96.0.10".parse().unwrap()],
            vec![ServicePort {
                name: None,
                port: 80,
                target: TargetPort::Number(8080),
                app_protocol: None,
            }],
            vec![EndpointGroup::new(
                [("10.0.2.7".parse().unwrap(), true)],
                Arc::new([]),
            )],
        ),
    }
}

impl Fixture {
    fn inbound_mtls(&self) -> ConnectionOpen<'_> {
        ConnectionOpen {
            source_workload: Some(&self.guestbook),
            source_identity: Some(&self.guestbook_id),
            destination_workload: Some(&self.analyzer),
            destination_identity: Some(&self.analyzer_id),
            destination_service: Some(&self.service),
            security: SecurityPolicy::MutualTls,
            ..ConnectionOpen::new(
                Reporter::Destination,
                addr("10.0.1.5:40000"),
                addr("10.0.2.7:8080"),
            )
        }
    }

    fn samples(&self) -> Vec<Sample> {
        parse_openmetrics(&encode(&self.registry))
    }
}

const MTLS_INBOUND: &[(&str, &str)] = &[
    ("reporter", "destination"),
    ("source_workload", "guestbook"),
    ("source_workload_namespace", "default"),
    (
        "source_principal",
        "spiffe://cluster.local/ns/default/sa/guestbook",
    ),
    ("source_app", "guestbook"),
    ("source_version", "latest"),
    ("source_cluster", "Kubernetes"),
    ("destination_workload", "analyzer"),
    ("destination_workload_namespace", "default"),
    (
        "destination_principal",
        "spiffe://cluster.local/ns/default/sa/analyzer",
    ),
    ("destination_service", "analyzer.default.svc.cluster.local"),
    ("destination_service_name", "analyzer"),
    ("destination_service_namespace", "default"),
    ("destination_app", "analyzer"),
    ("destination_version", "v2"),
    ("destination_cluster", "Kubernetes"),
    ("request_protocol", "tcp"),
    ("response_flags", "-"),
    ("connection_security_policy", "mutual_tls"),
];

#[test]
fn counters_carry_istio_names_labels_and_exact_values() {
    let f = fixture();
    let first = f.metrics.open_connection(&f.inbound_mtls());
    let second = f.metrics.open_connection(&f.inbound_mtls());
    first.record_received(100);
    first.record_sent(2_000);
    second.record_received(7);
    first.set_decision(
        Decision::Allow,
        "allowed by ALLOW rule",
        Some("default/allow-guestbook".into()),
    );

    let open = f.samples();
    assert_eq!(
        value(&open, "istio_tcp_connections_opened_total", MTLS_INBOUND),
        Some(2.0)
    );
    assert_eq!(
        value(&open, "istio_tcp_connections_closed_total", MTLS_INBOUND),
        None
    );
    assert_eq!(
        value(&open, "istio_tcp_received_bytes_total", MTLS_INBOUND),
        Some(107.0)
    );
    assert_eq!(
        value(&open, "istio_tcp_sent_bytes_total", MTLS_INBOUND),
        Some(2_000.0)
    );
    assert_eq!(
        value(
            &open,
            "ambit_connections_active",
            &[("reporter", "destination")]
        ),
        Some(2.0)
    );

    drop(first);
    second.record_sent(3);
    drop(second);
    // A plaintext outbound connection to an address outside the mesh.
    let outbound = f.metrics.open_connection(&ConnectionOpen {
        source_workload: Some(&f.guestbook),
        ..ConnectionOpen::new(
            Reporter::Source,
            addr("10.0.1.5:40001"),
            addr("192.0.2.1:443"),
        )
    });
    outbound.record_received(5);
    drop(outbound);

    let closed = f.samples();
    assert_eq!(
        value(&closed, "istio_tcp_connections_closed_total", MTLS_INBOUND),
        Some(2.0)
    );
    assert_eq!(
        value(&closed, "istio_tcp_sent_bytes_total", MTLS_INBOUND),
        Some(2_003.0)
    );
    assert_eq!(
        value(
            &closed,
            "ambit_connections_active",
            &[("reporter", "destination")]
        ),
        Some(0.0)
    );
    assert_eq!(
        value(
            &closed,
            "ambit_authorization_decisions_total",
            &[
                ("decision", "allow"),
                ("reason", "allowed by ALLOW rule"),
                ("destination_workload", "analyzer")
            ]
        ),
        Some(1.0)
    );
    let plain = &[
        ("reporter", "source"),
        ("source_workload", "guestbook"),
        ("source_principal", "unknown"),
        ("destination_workload", "unknown"),
        ("destination_workload_namespace", "unknown"),
        ("destination_principal", "unknown"),
        ("destination_service", "unknown"),
        ("destination_cluster", "unknown"),
        ("connection_security_policy", "none"),
    ];
    assert_eq!(
        value(&closed, "istio_tcp_connections_opened_total", plain),
        Some(1.0)
    );
    assert_eq!(
        value(&closed, "istio_tcp_connections_closed_total", plain),
        Some(1.0)
    );
    assert_eq!(
        value(&closed, "istio_tcp_received_bytes_total", plain),
        Some(5.0)
    );

    // Every traffic sample carries exactly Istio's label set.
    let expected: Vec<&str> = {
        let mut v: Vec<&str> = MTLS_INBOUND.iter().map(|(k, _)| *k).collect();
        v.extend([
            "source_canonical_service",
            "source_canonical_revision",
            "destination_canonical_service",
            "destination_canonical_revision",
        ]);
        v.sort_unstable();
        v
    };
    for s in closed.iter().filter(|s| s.name.starts_with("istio_tcp_")) {
        let keys: Vec<&str> = s.labels.keys().map(String::as_str).collect();
        assert_eq!(keys, expected, "{}", s.name);
    }
    let text = encode(&f.registry);
    assert!(text.contains("# TYPE istio_tcp_connections_opened counter\n"));
    assert!(text.contains("# HELP istio_tcp_sent_bytes "));
}

#[test]
fn open_connections_appear_in_the_dump_until_closed() {
    let f = fixture();
    let rec = f.metrics.open_connection(&f.inbound_mtls());
    rec.record_received(42);
    rec.record_authorization(&ambit_policy::Decision {
        allowed: false,
        policy: Some("default/deny-all".into()),
        rule: None,
        reason: ambit_policy::Reason::NoAllowPolicyMatched,
        mtls_mode: ambit_policy::MtlsMode::Strict,
    });
    let dump = f.metrics.connections_json();
    let conns = dump.as_array().unwrap();
    assert_eq!(conns.len(), 1);
    assert_eq!(conns[0]["source"]["workload"], "default/guestbook");
    assert_eq!(conns[0]["destination"]["address"], "10.0.2.7:8080");
    assert_eq!(conns[0]["bytes_received"], 42);
    assert_eq!(conns[0]["decision"], "deny");
    assert_eq!(conns[0]["policy"], "default/deny-all");
    assert_eq!(conns[0]["reason"], "no ALLOW policy matched");
    drop(rec);
    assert_eq!(f.metrics.connections_json(), serde_json::json!([]));
    assert_eq!(
        value(
            &f.samples(),
            "ambit_authorization_decisions_total",
            &[("decision", "deny"), ("reason", "no ALLOW policy matched")]
        ),
        Some(1.0)
    );
    assert_eq!(f.metrics.open_connections(), 0);
}

/// A `MakeWriter` into a shared buffer, to read what the subscriber wrote.
#[derive(Clone, Default)]
pub(crate) struct Captured(pub Arc<Mutex<Vec<u8>>>);

impl Write for Captured {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0.lock().extend_from_slice(buf);
        Ok(buf.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

impl<'w> tracing_subscriber::fmt::MakeWriter<'w> for Captured {
    type Writer = Captured;
    fn make_writer(&'w self) -> Self::Writer {
        self.clone()
    }
}

impl Captured {
    pub(crate) fn json_lines(&self) -> Vec<serde_json::Value> {
        let buf = self.0.lock();
        String::from_utf8_lossy(&buf)
            .lines()
            .map(|l| serde_json::from_str(l).expect("each log line is JSON"))
            .collect()
    }
}

#[tokio::test]
async fn one_access_log_line_per_connection_with_its_facts() {
    let f = fixture();
    let out = Captured::default();
    let (subscriber, _handle) =
        telemetry::subscriber(LogFormat::Json, "access=info", out.clone()).unwrap();
    let _guard = tracing::subscriber::set_default(subscriber);

    let rec = f.metrics.open_connection(&f.inbound_mtls());
    // Bytes flow through the counted client stream, both directions.
    let (client, server) = tokio::io::duplex(1024);
    let mut counted = Counted::new(server, rec.bytes());
    let mut client = client;
    client.write_all(b"hello agent").await.unwrap();
    let mut buf = [0u8; 11];
    counted.read_exact(&mut buf).await.unwrap();
    counted.write_all(b"reply!").await.unwrap();
    rec.set_decision(Decision::Allow, "no ALLOW policies", None);
    rec.set_outcome("server_failed", Some("connection reset by peer"));
    assert!(out.json_lines().is_empty(), "nothing logged while open");
    drop(rec);
    let unauthorized = f.metrics.open_connection(&ConnectionOpen::new(
        Reporter::Destination,
        addr("192.0.2.9:5000"),
        addr("10.0.2.7:8080"),
    ));
    drop(unauthorized);
    let denied = f.metrics.open_connection(&f.inbound_mtls());
    denied.set_decision(
        Decision::Deny,
        "denied by policy",
        Some("default/deny".into()),
    );
    drop(denied);

    let lines: Vec<serde_json::Value> = out
        .json_lines()
        .into_iter()
        .filter(|l| l["target"] == "access")
        .collect();
    assert_eq!(lines.len(), 3, "{lines:#?}");
    let l = &lines[0];
    assert_eq!(l["reporter"], "destination");
    assert_eq!(l["src.workload"], "default/guestbook");
    assert_eq!(
        l["src.identity"],
        "spiffe://cluster.local/ns/default/sa/guestbook"
    );
    assert_eq!(l["src.addr"], "10.0.1.5:40000");
    assert_eq!(l["dst.workload"], "default/analyzer");
    assert_eq!(
        l["dst.identity"],
        "spiffe://cluster.local/ns/default/sa/analyzer"
    );
    assert_eq!(l["dst.addr"], "10.0.2.7:8080");
    assert_eq!(l["dst.service"], "analyzer.default.svc.cluster.local");
    assert_eq!(l["security"], "mutual_tls");
    assert_eq!(l["bytes_received"], 11);
    assert_eq!(l["bytes_sent"], 6);
    assert_eq!(l["decision"], "allow");
    assert_eq!(l["reason"], "no ALLOW policies");
    assert!(l.get("policy").is_none(), "no policy decided: {l}");
    assert!(l["duration_ms"].is_u64());
    assert_eq!(l["status"], "server_failed");
    assert_eq!(l["error"], "connection reset by peer");
    let l = &lines[1];
    assert_eq!(l["src.workload"], "unknown");
    assert_eq!(l["src.identity"], "unknown");
    assert_eq!(l["decision"], "none");
    assert_eq!(l["bytes_received"], 0);
    assert_eq!(l["status"], "unknown");
    assert!(l.get("error").is_none(), "{l}");
    let l = &lines[2];
    assert_eq!(l["decision"], "deny");
    assert_eq!(l["policy"], "default/deny");
    assert_eq!(l["status"], "denied", "refused before it was carried");

    let samples = f.samples();
    assert_eq!(
        value(&samples, "istio_tcp_received_bytes_total", MTLS_INBOUND),
        Some(11.0)
    );
    assert_eq!(
        value(&samples, "istio_tcp_sent_bytes_total", MTLS_INBOUND),
        Some(6.0)
    );
}

/// Cost of the per-connection record; run with
/// `CARGO_PROFILE_DEV_OPT_LEVEL=2 cargo test -p ambit-agent --lib record_cost -- --ignored --nocapture`.
#[test]
#[ignore = "measurement, not a check"]
fn record_cost() {
    let f = fixture();
    let conn = f.inbound_mtls();
    let n = 100_000u32;
    let start = std::time::Instant::now();
    for _ in 0..n {
        drop(f.metrics.open_connection(&conn));
    }
    let per_conn = start.elapsed() / n;
    let rec = f.metrics.open_connection(&conn);
    let bytes = rec.bytes();
    let start = std::time::Instant::now();
    for _ in 0..10 * n {
        bytes.received(1500);
    }
    let per_chunk = start.elapsed() / (10 * n);
    println!("open+close (no subscriber): {per_conn:?}, byte record: {per_chunk:?}");
}

#[test]
fn refusals_and_failures_close_with_istio_response_flags() {
    let f = fixture();
    let flagged = |flag: &'static str| {
        let mut labels = MTLS_INBOUND.to_vec();
        labels.retain(|(k, _)| *k != "response_flags");
        labels.push(("response_flags", flag));
        labels
    };
    let denied = f.metrics.open_connection(&f.inbound_mtls());
    denied.set_decision(
        Decision::Deny,
        "no ALLOW policy matched",
        Some("default/analyzer-access".into()),
    );
    drop(denied);
    let unreachable = f.metrics.open_connection(&f.inbound_mtls());
    unreachable.set_decision(Decision::Allow, "allowed by ALLOW rule", None);
    unreachable.set_outcome("connect_failed", Some("connection refused"));
    drop(unreachable);
    let carried = f.metrics.open_connection(&f.inbound_mtls());
    carried.set_decision(Decision::Allow, "allowed by ALLOW rule", None);
    carried.set_outcome("closed", None);
    drop(carried);

    let samples = f.samples();
    let closed = |flag| {
        value(
            &samples,
            "istio_tcp_connections_closed_total",
            &flagged(flag),
        )
    };
    assert_eq!(closed("DENY"), Some(1.0));
    assert_eq!(closed("CONNECT"), Some(1.0));
    assert_eq!(closed("-"), Some(1.0));
    // Opened before the outcome was known: as ztunnel, all three under "-".
    assert_eq!(
        value(
            &samples,
            "istio_tcp_connections_opened_total",
            &flagged("-")
        ),
        Some(3.0)
    );

    // The refusal is kept for `describe`, under the destination workload.
    let kept = f.metrics.recent_denials("default/analyzer");
    let [denial] = kept.as_slice() else {
        panic!("not one refusal kept: {kept:#?}");
    };
    assert_eq!(denial.direction, "inbound");
    assert_eq!(denial.reason, "no ALLOW policy matched");
    assert_eq!(denial.policy.as_deref(), Some("default/analyzer-access"));
    assert_eq!(denial.peer_workload, "default/guestbook");
    assert_eq!(
        denial.client_identity,
        "spiffe://cluster.local/ns/default/sa/guestbook"
    );
    assert!(f.metrics.recent_denials("default/guestbook").is_empty());
}

#[test]
fn a_pair_resolves_its_series_once_and_a_relabelled_workload_gets_its_own() {
    let f = fixture();
    let get = |conn: &ConnectionOpen<'_>| {
        f.metrics.series.get(
            conn,
            &f.metrics.traffic,
            DEFAULT_CLUSTER_ID,
            "cluster.local",
        )
    };
    let first = get(&f.inbound_mtls());
    assert!(Arc::ptr_eq(&first, &get(&f.inbound_mtls())));

    let mut relabelled = f.analyzer.clone();
    relabelled.labels = relabelled
        .labels
        .iter()
        .map(|(k, v)| (k.clone(), v.clone()))
        .chain([("version".to_string(), "v3".to_string())])
        .collect();
    let other = get(&ConnectionOpen {
        destination_workload: Some(&relabelled),
        ..f.inbound_mtls()
    });
    assert!(!Arc::ptr_eq(&first, &other));
    assert_eq!(other.labels.destination_version, "v3");
    assert_eq!(first.labels.destination_version, "v2");

    let outbound = get(&ConnectionOpen {
        reporter: Reporter::Source,
        ..f.inbound_mtls()
    });
    assert_eq!(outbound.labels.reporter, Reporter::Source);
    assert_eq!(outbound.destination_workload, "default/analyzer");
}
