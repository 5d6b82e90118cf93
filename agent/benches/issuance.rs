//! End-to-end issuance through the identity manager against an in-process CA over
//! real gRPC/TLS on loopback: key generation and CSR on the "node", the call, CSR
//! checks and signing at the CA, chain checks back at the node.
//!
//! Reports the time to provision 500 identities for one node (a node starting
//! up) and the sustained certificates per second over several such rounds, for a
//! few fetch-concurrency limits. Run: `cargo bench -p ambit-agent --bench issuance`.
// A benchmark is a test program: a broken environment should panic loudly.
#![allow(clippy::unwrap_used)]

use std::time::{Duration, Instant};

use ambit_agent::identity::{IdentityConfig, IdentityManager};
use ambit_ca::SpiffeId;
use ambit_ca::authn::BearerToken;
use ambit_ca::client::{CaClient, CaClientConfig};
use clap::Parser;

const IDENTITIES: usize = 500;
const ROUNDS: usize = 4;
const TOKEN: &str = "token-of-node-a-0123456789";

fn ids() -> Vec<SpiffeId> {
    (0..IDENTITIES)
        .map(|n| SpiffeId::new("cluster.local", "bench", format!("sa-{n}")).unwrap())
        .collect()
}

#[tokio::main]
async fn main() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("tokens.yaml"), format!("node-a: {TOKEN}\n")).unwrap();
    let pods: String = (0..IDENTITIES)
        .map(|n| {
            format!(
                "---\nkind: Pod\nmetadata: {{name: p{n}, namespace: bench}}\nspec: {{nodeName: node-a, serviceAccountName: sa-{n}}}\n"
            )
        })
        .collect();
    std::fs::write(dir.path().join("workloads.yaml"), pods).unwrap();
    let path = |name: &str| dir.path().join(name).display().to_string();
    let cli = ambit_ca::cli::Cli::try_parse_from([
        "ambit-ca".to_string(),
        "--listen".into(),
        "127.0.0.1:0".into(),
        "--metrics-addr".into(),
        "127.0.0.1:0".into(),
        "--state-dir".into(),
        path("state"),
        "--tokens-file".into(),
        path("tokens.yaml"),
        "--workloads".into(),
        path("workloads.yaml"),
        "--log".into(),
        "warn".into(),
    ])
    .unwrap();
    let ca = ambit_ca::app::start(&cli).await.unwrap();
    let ids = ids();

    println!("end-to-end issuance, {IDENTITIES} identities per round, {ROUNDS} rounds");
    println!("| max concurrent fetches | first 500 provisioned | sustained certs/s |");
    println!("|---|---|---|");
    for concurrency in [16, 64, 256] {
        let mut total = Duration::ZERO;
        let mut first = Duration::ZERO;
        for round in 0..ROUNDS {
            let mut client =
                CaClientConfig::new(format!("https://{}", ca.local_addr), ca.root_pem.clone());
            client.token = Some(BearerToken::new(TOKEN));
            let config = IdentityConfig {
                max_concurrent_fetches: concurrency,
                ..IdentityConfig::default()
            };
            let manager = IdentityManager::new(config, CaClient::new(client).unwrap());
            let started = Instant::now();
            manager.track(ids.iter().cloned());
            let results =
                futures::future::join_all(ids.iter().map(|id| manager.certificate(id))).await;
            let elapsed = started.elapsed();
            let failed = results.iter().filter(|r| r.is_err()).count();
            assert_eq!(failed, 0, "{failed} identities failed");
            if round == 0 {
                first = elapsed;
            }
            total += elapsed;
        }
        let rate = (IDENTITIES * ROUNDS) as f64 / total.as_secs_f64();
        println!(
            "| {concurrency} | {:.0} ms | {rate:.0} |",
            first.as_secs_f64() * 1000.0
        );
    }
    ca.shutdown().await.unwrap();
}
