//! `ambit-agent describe`, run the way an operator runs it: against the
//! state file, or inside a node's namespace against that node's agent
//! (its admin port, 127.0.0.1:15000 there).

use std::net::SocketAddr;

use super::{ADMIN_PORT, Mesh, MeshError, TRUST_DOMAIN};
use crate::bin_path;

/// What one `describe` run printed and how it exited.
#[derive(Clone, Debug)]
pub struct Described {
    pub code: Option<i32>,
    pub stdout: String,
    pub stderr: String,
}

impl Described {
    /// The JSON printed with `--output json`.
    pub fn json(&self) -> Result<serde_json::Value, MeshError> {
        serde_json::from_str(&self.stdout)
            .map_err(|e| MeshError::Describe(format!("printed no JSON ({e}): {self:?}")))
    }
}

impl Mesh {
    /// Runs `ambit-agent describe <kind> <name>`: against node `agent`'s
    /// agent from inside its namespace, or against the state file with
    /// `None`; `--output json` when `json`.
    pub fn describe(
        &self,
        agent: Option<usize>,
        kind: &str,
        name: &str,
        json: bool,
    ) -> Result<Described, MeshError> {
        let bin = bin_path("ambit-agent")?;
        let mut args: Vec<String> = vec!["describe".into(), kind.into(), name.into()];
        args.extend(["--trust-domain".into(), TRUST_DOMAIN.into()]);
        if json {
            args.extend(["--output".into(), "json".into()]);
        }
        let output = match agent {
            Some(index) => {
                let admin = SocketAddr::from(([127, 0, 0, 1], ADMIN_PORT));
                args.extend(["--admin".into(), admin.to_string()]);
                self.node(index).netns.output(&bin, &args)?
            }
            None => {
                args.push("--state".into());
                args.push(self.state_path().display().to_string());
                std::process::Command::new(&bin)
                    .args(&args)
                    .env_remove("AMBIT_ROOT_NAMESPACE")
                    .env_remove("AMBIT_DESCRIBE_ADMIN")
                    .output()
                    .map_err(|e| MeshError::Describe(e.to_string()))?
            }
        };
        Ok(Described {
            code: output.status.code(),
            stdout: String::from_utf8_lossy(&output.stdout).into_owned(),
            stderr: String::from_utf8_lossy(&output.stderr).into_owned(),
        })
    }
}
