use std::os::unix::fs::PermissionsExt;

use super::*;

#[test]
fn root_is_generated_once_and_reused() {
    let dir = tempfile::tempdir().unwrap();
    let state = dir.path().join("state");
    let first = load_or_generate_root(&state, "cluster.local").unwrap();
    let mode = fs::metadata(state.join(ROOT_KEY_FILE))
        .unwrap()
        .permissions()
        .mode();
    assert_eq!(mode & 0o777, 0o600);
    let again = load_or_generate_root(&state, "cluster.local").unwrap();
    assert_eq!(first.root_pem(), again.root_pem());
    assert_eq!(first.chain_pem.len(), 1);
}

#[test]
fn refuses_readable_key_and_missing_cert() {
    let dir = tempfile::tempdir().unwrap();
    load_or_generate_root(dir.path(), "cluster.local").unwrap();
    let key = dir.path().join(ROOT_KEY_FILE);
    fs::set_permissions(&key, fs::Permissions::from_mode(0o644)).unwrap();
    let err = load_or_generate_root(dir.path(), "cluster.local").unwrap_err();
    assert!(err.to_string().contains("root-key.pem"), "{err}");

    fs::set_permissions(&key, fs::Permissions::from_mode(0o600)).unwrap();
    fs::remove_file(dir.path().join(ROOT_CERT_FILE)).unwrap();
    let err = load_or_generate_root(dir.path(), "cluster.local").unwrap_err();
    assert!(err.to_string().contains("root-cert.pem"), "{err}");
}
