//! A plug-in CA for a test mesh: a root and an intermediate it signed, made
//! with the `openssl` CLI (as Istio's certificate tooling does) and written in
//! the layout of Istio's `cacerts` secret, so `ambit-ca --cacerts-dir` signs
//! as the intermediate and every chain ends at a root the CA did not make.

use std::path::Path;
use std::process::Command;

use super::MeshError;

/// Extensions of the intermediate: a CA that may sign leaves.
const INTERMEDIATE_EXT: &str = "basicConstraints=critical,CA:TRUE\n\
keyUsage=critical,keyCertSign,cRLSign,digitalSignature\n\
subjectKeyIdentifier=hash\nauthorityKeyIdentifier=keyid\n";

/// Writes `ca-cert.pem`, `ca-key.pem`, `root-cert.pem` and `cert-chain.pem`
/// (intermediate then root) into `dir`, plus the root's key and scratch files.
pub fn write(dir: &Path, trust_domain: &str) -> Result<(), MeshError> {
    let io = |e| MeshError::io(dir.to_path_buf(), e);
    std::fs::create_dir_all(dir).map_err(io)?;
    std::fs::write(dir.join("intermediate.ext"), INTERMEDIATE_EXT).map_err(io)?;
    let p256 = [
        "-newkey",
        "ec",
        "-pkeyopt",
        "ec_paramgen_curve:P-256",
        "-nodes",
    ];
    let root_subject = format!("/O={trust_domain}/CN=Plug-in root CA");
    let mut root = vec!["req", "-x509", "-new"];
    root.extend(p256);
    root.extend([
        "-keyout",
        "root-key.pem",
        "-out",
        "root-cert.pem",
        "-days",
        "3650",
        "-subj",
        &root_subject,
        "-addext",
        "basicConstraints=critical,CA:TRUE",
        "-addext",
        "keyUsage=critical,keyCertSign,cRLSign",
    ]);
    openssl(dir, &root)?;
    let ca_subject = format!("/O={trust_domain}/CN=Plug-in intermediate CA");
    let mut csr = vec!["req", "-new"];
    csr.extend(p256);
    csr.extend([
        "-keyout",
        "ca-key.pem",
        "-out",
        "ca.csr",
        "-subj",
        &ca_subject,
    ]);
    openssl(dir, &csr)?;
    openssl(
        dir,
        &[
            "x509",
            "-req",
            "-in",
            "ca.csr",
            "-CA",
            "root-cert.pem",
            "-CAkey",
            "root-key.pem",
            "-CAcreateserial",
            "-days",
            "365",
            "-out",
            "ca-cert.pem",
            "-extfile",
            "intermediate.ext",
        ],
    )?;
    let read = |name: &str| std::fs::read_to_string(dir.join(name)).map_err(io);
    let chain = read("ca-cert.pem")? + &read("root-cert.pem")?;
    std::fs::write(dir.join("cert-chain.pem"), chain).map_err(io)
}

fn openssl(dir: &Path, args: &[&str]) -> Result<(), MeshError> {
    let out = Command::new("openssl")
        .current_dir(dir)
        .args(args)
        .output()
        .map_err(|e| MeshError::io("openssl", e))?;
    if out.status.success() {
        return Ok(());
    }
    Err(MeshError::io(
        "openssl",
        std::io::Error::other(format!(
            "openssl {args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        )),
    ))
}
