//! The CA credentials of `run`, all followed while the agent runs: the trust
//! bundle file (root rotations), the token file (re-read for each CA request,
//! since the kubelet rotates projected tokens), the CA client built on both and
//! the identity manager that uses it; and their config dump sections.

use std::sync::Arc;

use anyhow::Context;
use serde_json::json;

use crate::admin::AdminState;
use crate::cli::RunArgs;
use crate::identity::{
    BundleWatch, IdentityConfig, IdentityManager, RotatingCaClient, TokenFile, TrustBundleFile,
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
        ..IdentityConfig::new(roots)
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
    let path = credentials.bundle.path().display().to_string();
    let ca = credentials.ca.clone();
    state
        .with_config(
            "trust_bundle",
            Arc::new(move || {
                let status = bundle.borrow();
                json!({
                    "path": path,
                    "roots": status.bundle.roots.len(),
                    "sha256_fingerprints": status.bundle.fingerprints(),
                    "generation": status.generation,
                    "rejected": status.rejected,
                    "last_error": status.last_error,
                })
            }),
        )
        .with_config(
            "ca_token",
            Arc::new(move || {
                let file = ca.token_file();
                json!({
                    "path": file.path().display().to_string(),
                    "last_error": file.last_error(),
                })
            }),
        )
}
