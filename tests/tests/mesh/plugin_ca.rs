//! Istio's plug-in CA tutorial, its check run as written: with the CA signing
//! as an intermediate from a `cacerts` directory, `openssl s_client
//! -showcerts` against a mesh pod shows three certificates (leaf,
//! intermediate, root), and the third is the plug-in `root-cert.pem`.

use ambit_tests::mesh::{Mesh, PodSpec};
use ambit_tests::require_e2e;

/// The tutorial's commands, with `kubectl exec` replaced by running them in
/// the client pod's namespace and the Service by the pod's HBONE address.
/// `$ROOT` is the plug-in `root-cert.pem`, `$TARGET` the address.
const TUTORIAL: &str = r#"
openssl s_client -showcerts -connect "$TARGET" < /dev/null > httpbin-proxy-cert.txt 2>/dev/null
sed -n '/-----BEGIN CERTIFICATE-----/{:start /-----END CERTIFICATE-----/!{N;b start};/.*/p}' httpbin-proxy-cert.txt > certs.pem
awk 'BEGIN {counter=0;} /BEGIN CERT/{counter++} { print > "proxy-cert-" counter ".pem"}' < certs.pem
openssl x509 -in "$ROOT" -text -noout > root-cert.crt.txt
openssl x509 -in ./proxy-cert-3.pem -text -noout > pod-root-cert.crt.txt
diff -s root-cert.crt.txt pod-root-cert.crt.txt
"#;

#[test]
fn a_mesh_pod_presents_leaf_intermediate_and_the_plugged_root() {
    if !require_e2e() {
        return;
    }
    let mesh = Mesh::builder()
        .nodes(2)
        .namespace("foo", true)
        .namespace("outside", false)
        .pod(PodSpec::new("httpbin").namespace("foo").node(1))
        .pod(PodSpec::new("sleep").namespace("outside").node(0))
        .plugin_ca()
        .build()
        .unwrap_or_else(|e| panic!("starting the mesh: {e}"));
    let (httpbin, sleep) = (mesh.pod("httpbin"), mesh.pod("sleep"));
    let root = mesh.root_cert_path();
    let scratch = tempfile::tempdir().unwrap();
    let script = format!(
        "cd '{}' && TARGET='{}' ROOT='{}' && {TUTORIAL}",
        scratch.path().display(),
        httpbin.addr(15008),
        root.display()
    );
    let out = sleep.netns().output("sh", ["-c", &script]).unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    let transcript =
        std::fs::read_to_string(scratch.path().join("httpbin-proxy-cert.txt")).unwrap_or_default();
    assert!(
        out.status.success() && stdout.contains("are identical"),
        "the third certificate is not root-cert.pem:\n{stdout}{}\n{transcript}",
        String::from_utf8_lossy(&out.stderr)
    );

    // Exactly three were presented, and the third is the root byte for byte.
    let certs = std::fs::read_to_string(scratch.path().join("certs.pem")).unwrap();
    let blocks: Vec<_> = pem_ders(&certs);
    assert_eq!(blocks.len(), 3, "{transcript}");
    let plugged = std::fs::read_to_string(&root).unwrap();
    assert_eq!(blocks[2], pem_ders(&plugged)[0], "{transcript}");
    let intermediate = std::fs::read_to_string(root.with_file_name("ca-cert.pem")).unwrap();
    assert_eq!(blocks[1], pem_ders(&intermediate)[0], "{transcript}");
    // The leaf names the pod, and the chain verifies against the plugged root.
    let chain = mesh.presented_chain(sleep, httpbin.addr(15008)).unwrap();
    assert_eq!(chain.leaf_uris, vec![httpbin.spiffe_id()]);
    assert!(chain.verified(), "{}", chain.verify_result);
}

/// The DER of each PEM certificate in `text`: what `diff -s` of the
/// normalized blocks compares.
fn pem_ders(text: &str) -> Vec<Vec<u8>> {
    use rustls_pki_types::CertificateDer;
    use rustls_pki_types::pem::PemObject;
    CertificateDer::pem_slice_iter(text.as_bytes())
        .map(|c| c.expect("a PEM certificate").to_vec())
        .collect()
}
