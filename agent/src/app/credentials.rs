//! The CA credentials of `run`, all followed while the agent runs: the trust
//! bundle file (root rotations), the token file (re-read for each CA request,
//! since the kubelet rotates projected tokens), the CA client built on both and
//! the identity manager that uses it; and their config dump sections.

use std::path::Path;
use std::sync::Arc;

use anyhow::Context;
use serde_json::{Value, json};

use crate::admin::AdminState;
use crate::cli::RunArgs;
use crate::identity::{
    BundleStatus, BundleWatch, IdentityConfig, IdentityManager, RotatingCaClient, TokenFile,
    TrustBundleFile,
};

/// What `app::mesh` builds on.
pub(super) struct Credentials {
    pub identities: Arc<IdentityManager>,
    pub ca: Arc<RotatingCaClient>,
    /// Dropping it stops following the trust bundle file.
    pub bundle: BundleWatch,
}

pub(super) async fn start(args: &RunArgs) -> anyhow::Result<Credentials> {
    let flags = &args.mesh;
    let bundle = TrustBundleFile::new(&flags.trust_bundle, &args.trust_domain)
        .start()
        .await
        .context("reading the trust bundle")?;
    let roots = bundle.current().bundle;
    let address = if flags.ca_address.contains("://") {
        flags.ca_address.clone()
    } else {
        format!("https://{}", flags.ca_address)
    };
    let mut config = ambit_ca::client::CaClientConfig::new(address, String::new());
    config.server_name = flags.ca_server_name.clone();
    let ca = RotatingCaClient::new(config, &roots, TokenFile::new(&flags.token_file))
        .context("configuring the CA client")?;
    // Read once now so a missing token stops the start with a clear error,
    // instead of every certificate request failing later.
    ca.token_file()
        .token()
        .await
        .context("reading the CA token")?;
    let ca = Arc::new(ca);
    let config = IdentityConfig {
        requested_lifetime: flags.cert_ttl,
        ..IdentityConfig::default()
    };
    let identities = IdentityManager::with_issuer(config, ca.clone());
    Ok(Credentials {
        identities,
        ca,
        bundle,
    })
}

/// Adds the `trust_bundle` and `ca_token` sections (never the token itself).
pub(super) fn config_dump(state: AdminState, credentials: &Credentials) -> AdminState {
    let bundle = credentials.bundle.subscribe();
    let path = credentials.bundle.path().to_owned();
    let ca = credentials.ca.clone();
    state
        .with_config(
            "trust_bundle",
            Arc::new(move || bundle_json(&bundle.borrow(), &path)),
        )
        .with_config("ca_token", Arc::new(move || token_json(ca.token_file())))
}

fn bundle_json(status: &BundleStatus, path: &Path) -> Value {
    json!({
        "path": path.display().to_string(),
        "roots": status.bundle.roots.len(),
        "sha256_fingerprints": status.bundle.fingerprints(),
        "generation": status.generation,
        "rejected": status.rejected,
        "last_error": status.last_error,
    })
}

fn token_json(file: &TokenFile) -> Value {
    json!({
        "path": file.path().display().to_string(),
        "last_error": file.last_error(),
    })
}

#[cfg(test)]
mod tests {
    use std::time::{Duration, Instant};

    use clap::Parser;

    use super::*;
    use crate::cli::{Cli, Command};
    use crate::identity::TrustBundle;

    fn root_pem(name: &str) -> String {
        let mut params = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
        params
            .distinguished_name
            .push(rcgen::DnType::CommonName, name);
        params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
        params
            .self_signed(&rcgen::KeyPair::generate().unwrap())
            .unwrap()
            .pem()
    }

    fn run_args(dir: &Path) -> RunArgs {
        let (bundle, token) = (dir.join("roots.pem"), dir.join("token"));
        let cli = Cli::try_parse_from([
            "ambit-agent",
            "run",
            "--node",
            "node-a",
            "--ca-address",
            "127.0.0.1:1",
            "--trust-bundle",
            bundle.to_str().unwrap(),
            "--token-file",
            token.to_str().unwrap(),
        ])
        .unwrap();
        let Command::Run(run) = cli.command else {
            panic!("not run");
        };
        *run
    }

    #[tokio::test]
    async fn dump_follows_the_bundle_and_never_shows_the_token() {
        let dir = tempfile::tempdir().unwrap();
        let args = run_args(dir.path());
        let (a, b) = (root_pem("a"), root_pem("b"));
        std::fs::write(&args.mesh.trust_bundle, &a).unwrap();

        let error = start(&args).await.err().unwrap();
        let message = format!("{error:#}");
        assert!(message.contains("reading the CA token"), "{message}");

        std::fs::write(&args.mesh.token_file, "secret-token-value").unwrap();
        let credentials = start(&args).await.unwrap();
        let token = token_json(credentials.ca.token_file());
        assert!(!token.to_string().contains("secret-token-value"));
        assert_eq!(token["last_error"], Value::Null);

        let path = credentials.bundle.path();
        let dump = bundle_json(&credentials.bundle.current(), path);
        assert_eq!(dump["roots"], 1);
        std::fs::write(&args.mesh.trust_bundle, format!("{a}{b}")).unwrap();
        let deadline = Instant::now() + Duration::from_secs(10);
        while credentials.bundle.current().generation == 0 {
            assert!(Instant::now() < deadline, "bundle change not seen");
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        let dump = bundle_json(&credentials.bundle.current(), path);
        let both = TrustBundle::from_pem(format!("{a}{b}").as_bytes(), "cluster.local").unwrap();
        assert_eq!(dump["roots"], 2);
        assert_eq!(dump["generation"], 1);
        assert_eq!(
            dump["sha256_fingerprints"],
            serde_json::to_value(both.fingerprints()).unwrap()
        );
    }
}
