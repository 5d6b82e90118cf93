//! Decisions per second over 10,000 AuthorizationPolicies in 1,000 namespaces
//! (plus mesh-wide and per-namespace PeerAuthentications), on one core.
//!
//! `cargo bench -p ambit-policy --bench eval`; criterion's `thrpt` line is
//! decisions/s, and the bench prints ns/decision from its own timing loop too.

use std::collections::BTreeMap;
use std::hint::black_box;
use std::net::IpAddr;
use std::time::Instant;

use ambit_policy::{Connection, PolicySet, Target};
use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use serde_json::{Value, json};

const NAMESPACES: usize = 1_000;
const POLICIES_PER_NAMESPACE: usize = 10;
const PROBES: usize = 4_096;

fn policy(ns: &str, name: &str, spec: Value) -> Value {
    json!({
        "apiVersion": "security.istio.io/v1",
        "kind": "AuthorizationPolicy",
        "metadata": {"name": name, "namespace": ns},
        "spec": spec,
    })
}

fn build() -> PolicySet {
    let mut b = PolicySet::builder("istio-system");
    let mut add = |v: Value| b.add(&v).expect("bench policy is valid");
    add(policy(
        "istio-system",
        "deny-bad-net",
        json!({"action": "DENY", "rules": [{"from": [{"source": {"ipBlocks": ["203.0.113.0/24", "2001:db8:bad::/48"]}}]}]}),
    ));
    add(json!({
        "apiVersion": "security.istio.io/v1", "kind": "PeerAuthentication",
        "metadata": {"name": "default", "namespace": "istio-system"},
        "spec": {"mtls": {"mode": "STRICT"}},
    }));
    for n in 0..NAMESPACES {
        let ns = format!("ns-{n}");
        let next = format!("ns-{}", (n + 1) % NAMESPACES);
        for k in 0..POLICIES_PER_NAMESPACE {
            let app = format!("app-{k}");
            let spec = match k {
                // Per-app ALLOW policies: callers by principal, namespace or network.
                0..=5 => json!({
                    "selector": {"matchLabels": {"app": app}},
                    "rules": [
                        {"from": [{"source": {"principals": [format!("cluster.local/ns/{ns}/sa/client-{k}"), "cluster.local/ns/ops/*"]}}],
                         "to": [{"operation": {"ports": ["8080", "8443"]}}]},
                        {"from": [{"source": {"namespaces": [next.clone()], "notPrincipals": ["*/sa/intern"]}}]},
                        {"from": [{"source": {"ipBlocks": ["10.200.0.0/16"]}}],
                         "when": [{"key": "destination.port", "values": ["9090"]}]},
                    ],
                }),
                6 => json!({
                    "selector": {"matchLabels": {"app": app, "tier": "backend"}},
                    "action": "DENY",
                    "rules": [{"to": [{"operation": {"ports": ["22", "23"]}}]}],
                }),
                7 => json!({
                    "action": "DENY",
                    "rules": [{"from": [{"source": {"notNamespaces": [ns.clone(), next.clone(), "ops"]}}],
                               "to": [{"operation": {"ports": ["5432"]}}]}],
                }),
                8 => json!({
                    "action": "AUDIT",
                    "rules": [{"to": [{"operation": {"ports": ["8080"]}}]}],
                }),
                _ => json!({
                    "selector": {"matchLabels": {"app": app}},
                    "rules": [{"when": [{"key": "source.ip", "values": ["10.0.0.0/8", "fd00::/8"]}]}],
                }),
            };
            add(policy(&ns, &format!("policy-{k}"), spec));
        }
        if n % 10 == 0 {
            add(json!({
                "apiVersion": "security.istio.io/v1", "kind": "PeerAuthentication",
                "metadata": {"name": "default", "namespace": ns},
                "spec": {"mtls": {"mode": "PERMISSIVE"}},
            }));
        }
    }
    b.build()
}

struct Probe {
    ns: String,
    labels: BTreeMap<String, String>,
    principal: Option<String>,
    src_ns: Option<String>,
    src_ip: IpAddr,
    port: u16,
}

/// A deterministic spread of callers and destinations (simple LCG, no rand
/// dependency) that reaches every decision path.
fn probes(dst_namespaces: usize) -> Vec<Probe> {
    let mut x: u64 = 0x9e37_79b9_7f4a_7c15;
    let mut next = move || {
        x = x
            .wrapping_mul(6_364_136_223_846_793_005)
            .wrapping_add(1_442_695_040_888_963_407);
        (x >> 33) as usize
    };
    (0..PROBES)
        .map(|_| {
            // Destinations spread evenly over `dst_namespaces` namespaces.
            let n = (next() % dst_namespaces) * (NAMESPACES / dst_namespaces);
            let k = next() % 11;
            let mut labels = BTreeMap::from([
                ("app".to_string(), format!("app-{k}")),
                ("version".to_string(), "v1".to_string()),
                ("pod-template-hash".to_string(), format!("{:x}", next())),
            ]);
            if next() % 2 == 0 {
                labels.insert("tier".into(), "backend".into());
            }
            let caller_ns = match next() % 4 {
                0 => format!("ns-{n}"),
                1 => format!("ns-{}", (n + 1) % NAMESPACES),
                2 => "ops".to_string(),
                _ => format!("ns-{}", next() % NAMESPACES),
            };
            let plaintext = next() % 8 == 0;
            let principal = (!plaintext)
                .then(|| format!("cluster.local/ns/{caller_ns}/sa/client-{}", next() % 8));
            let src_ip: IpAddr = match next() % 5 {
                0 => format!("10.200.{}.{}", next() % 256, next() % 256),
                1 => format!("203.0.113.{}", next() % 256),
                2 => format!("fd00::{:x}", next() % 65536),
                _ => format!("10.{}.{}.{}", next() % 256, next() % 256, next() % 256),
            }
            .parse()
            .expect("generated address");
            let port = [8080, 8443, 9090, 22, 5432, 80][next() % 6];
            Probe {
                ns: format!("ns-{n}"),
                labels,
                src_ns: principal.as_ref().map(|_| caller_ns),
                principal,
                src_ip,
                port,
            }
        })
        .collect()
}

fn decide_all(set: &PolicySet, probes: &[Probe]) -> usize {
    let dst_ip: IpAddr = "10.1.2.3".parse().expect("literal address");
    let mut allowed = 0;
    for p in probes {
        let d = set.evaluate(
            &Target {
                namespace: &p.ns,
                labels: &p.labels,
            },
            &Connection {
                src_ip: p.src_ip,
                src_principal: p.principal.as_deref(),
                src_namespace: p.src_ns.as_deref(),
                dst_ip,
                dst_port: p.port,
                mtls: p.principal.is_some(),
            },
        );
        allowed += usize::from(black_box(d).allowed);
    }
    allowed
}

/// Nanoseconds this thread has run on a CPU (Linux schedstat), if readable.
fn thread_cpu_ns() -> Option<u64> {
    let stat = std::fs::read_to_string("/proc/thread-self/schedstat").ok()?;
    stat.split_whitespace().next()?.parse().ok()
}

/// Times `probes` in a plain loop, so the figure is printed even where
/// criterion's report is not read. On a shared machine wall time includes time
/// spent waiting for a core; the thread's on-CPU time is the one-core cost.
fn report(name: &str, set: &PolicySet, probes: &[Probe]) {
    let allowed = decide_all(set, probes);
    let rounds = 200;
    let decisions = (rounds * probes.len()) as f64;
    let cpu_start = thread_cpu_ns();
    let start = Instant::now();
    for _ in 0..rounds {
        black_box(decide_all(set, probes));
    }
    let wall = start.elapsed().as_nanos() as f64 / decisions;
    print!(
        "{name}: {allowed}/{} allowed; wall {wall:.0} ns/decision ({:.2} M/s)",
        probes.len(),
        1_000.0 / wall
    );
    match (cpu_start, thread_cpu_ns()) {
        (Some(a), Some(b)) => {
            let cpu = (b - a) as f64 / decisions;
            println!(
                "; on-CPU {cpu:.0} ns/decision ({:.2} M decisions/s on one core)",
                1_000.0 / cpu
            );
        }
        _ => println!(),
    }
}

fn bench(c: &mut Criterion) {
    let set = build();
    assert_eq!(
        set.len(),
        2 + NAMESPACES * POLICIES_PER_NAMESPACE + NAMESPACES / 10
    );
    println!("{} policies in {} namespaces", set.len(), NAMESPACES + 1);
    // Every namespace equally (the worst case for caches), and the handful of
    // namespaces whose pods one node hosts (what a node agent decides for).
    let spread = probes(NAMESPACES);
    let node_local = probes(25);
    report("spread over 1000 namespaces", &set, &spread);
    report("node-local, 25 namespaces", &set, &node_local);

    let mut group = c.benchmark_group("evaluate");
    group.throughput(Throughput::Elements(PROBES as u64));
    group.bench_function("spread_1000_namespaces", |b| {
        b.iter(|| decide_all(&set, &spread))
    });
    group.bench_function("node_local_25_namespaces", |b| {
        b.iter(|| decide_all(&set, &node_local))
    });
    group.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
