//! What a TLS client sees on a pod's HBONE port, asked of `openssl`
//! itself rather than of the Rust TLS stack under test: `s_client` run
//! inside a pod's namespace, and `x509`/`verify` on what it printed.

use std::net::SocketAddr;
use std::path::Path;
use std::process::{Command, Stdio};

use crate::netns::Netns;

use super::MeshError;

/// The chain a server presented and openssl's judgement of it.
#[derive(Clone, Debug)]
pub struct PresentedChain {
    /// `s_client`'s whole stdout.
    pub transcript: String,
    /// The certificates as sent, leaf first (PEM).
    pub certificates: Vec<String>,
    /// `Verify return code: 0 (ok)` or what openssl said instead.
    pub verify_result: String,
    /// URI SANs of the leaf (`spiffe://...`).
    pub leaf_uris: Vec<String>,
    /// `openssl x509 -subject -issuer -dates` of each certificate.
    pub details: Vec<String>,
}

impl PresentedChain {
    pub fn verified(&self) -> bool {
        self.verify_result == "Verify return code: 0 (ok)"
    }
}

/// Runs `openssl s_client` from `netns` against `addr` (ALPN h2, no client
/// certificate), verifying against the PEM roots at `root`.
pub fn s_client(netns: &Netns, addr: SocketAddr, root: &Path) -> Result<PresentedChain, MeshError> {
    let out = netns.output(
        "openssl",
        [
            "s_client".as_ref(),
            "-connect".as_ref(),
            addr.to_string().as_ref(),
            "-CAfile".as_ref(),
            root.as_os_str(),
            "-showcerts".as_ref(),
            "-alpn".as_ref(),
            "h2".as_ref(),
            "-tls1_3".as_ref(),
        ] as [&std::ffi::OsStr; 9],
    )?;
    let transcript = String::from_utf8_lossy(&out.stdout).into_owned();
    let certificates = pem_blocks(&transcript);
    let verify_result = transcript
        .lines()
        .map(str::trim)
        .find(|l| l.starts_with("Verify return code:"))
        .unwrap_or("no verify result")
        .to_owned();
    let leaf_uris = match certificates.first() {
        Some(leaf) => x509(leaf, &["-noout", "-ext", "subjectAltName"])?
            .split([',', '\n'])
            .filter_map(|s| s.trim().strip_prefix("URI:").map(str::to_owned))
            .collect(),
        None => Vec::new(),
    };
    let details = certificates
        .iter()
        .map(|c| x509(c, &["-noout", "-subject", "-issuer", "-dates"]))
        .collect::<Result<_, _>>()?;
    Ok(PresentedChain {
        transcript,
        certificates,
        verify_result,
        leaf_uris,
        details,
    })
}

/// `openssl verify` of `chain` (leaf first) against the roots at `root`,
/// independent of s_client: returns openssl's output and whether it said OK.
pub fn verify(chain: &[String], root: &Path, scratch: &Path) -> Result<(bool, String), MeshError> {
    let io = |e| MeshError::io(scratch.to_path_buf(), e);
    std::fs::create_dir_all(scratch).map_err(io)?;
    let leaf = scratch.join("leaf.pem");
    let untrusted = scratch.join("untrusted.pem");
    std::fs::write(&leaf, chain.first().map_or("", String::as_str)).map_err(io)?;
    std::fs::write(&untrusted, chain.get(1..).unwrap_or_default().concat()).map_err(io)?;
    let mut cmd = Command::new("openssl");
    cmd.arg("verify").arg("-CAfile").arg(root);
    if chain.len() > 1 {
        cmd.arg("-untrusted").arg(&untrusted);
    }
    let out = cmd.arg(&leaf).output().map_err(io)?;
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    Ok((out.status.success() && text.contains(": OK"), text))
}

fn x509(pem: &str, args: &[&str]) -> Result<String, MeshError> {
    use std::io::Write;
    let io = |e| MeshError::io("openssl x509", e);
    let mut child = Command::new("openssl")
        .arg("x509")
        .args(args)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(io)?;
    if let Some(mut stdin) = child.stdin.take() {
        stdin.write_all(pem.as_bytes()).map_err(io)?;
    }
    let out = child.wait_with_output().map_err(io)?;
    Ok(String::from_utf8_lossy(&out.stdout).trim().to_owned())
}

/// The `-----BEGIN CERTIFICATE-----` blocks of `text`, in order.
fn pem_blocks(text: &str) -> Vec<String> {
    const BEGIN: &str = "-----BEGIN CERTIFICATE-----";
    const END: &str = "-----END CERTIFICATE-----";
    let mut out = Vec::new();
    let mut rest = text;
    while let Some(start) = rest.find(BEGIN) {
        let Some(len) = rest[start..].find(END) else {
            break;
        };
        let end = start + len + END.len();
        out.push(format!("{}\n", &rest[start..end]));
        rest = &rest[end..];
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn finds_pem_blocks_in_a_transcript() {
        let t = "Certificate chain\n 0 s:\n-----BEGIN CERTIFICATE-----\nAAA\n-----END CERTIFICATE-----\n 1 s:\n-----BEGIN CERTIFICATE-----\nBBB\n-----END CERTIFICATE-----\n---\n";
        let blocks = pem_blocks(t);
        assert_eq!(blocks.len(), 2);
        assert!(blocks[1].contains("BBB") && blocks[1].ends_with("-----\n"));
    }
}
