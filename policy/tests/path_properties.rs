//! Property tests of path normalization: it never panics, is idempotent, and
//! what it returns holds no segment a backend would resolve differently.

use ambit_policy::http::normalize_path;
use proptest::prelude::*;

/// Paths built from the pieces bypasses are made of.
fn tricky_path() -> impl Strategy<Value = String> {
    let piece = proptest::sample::select(
        &[
            "/", "//", ".", "..", "%2e", "%2E%2e", "admin", "public", "%61", "\\", "%2f", "%20",
            "?", "a=b", "%", "%z", "~", "%7E", "#",
        ][..],
    );
    proptest::collection::vec(piece, 0..10).prop_map(|v| format!("/{}", v.concat()))
}

proptest! {
    #[test]
    fn normalized_paths_are_fixed_points(raw in tricky_path()) {
        if let Ok(once) = normalize_path(&raw) {
            let twice = normalize_path(&once);
            prop_assert_eq!(twice.as_deref(), Ok(once.as_str()));
            let path = once.split('?').next().unwrap_or_default();
            prop_assert!(path.starts_with('/'));
            prop_assert!(!path.contains("//"), "{}", path);
            prop_assert!(!path.contains('\\'));
            for seg in path.split('/') {
                prop_assert!(seg != "." && seg != "..", "{}", path);
                prop_assert!(!seg.to_ascii_lowercase().contains("%2e"), "{}", path);
            }
        }
    }

    #[test]
    fn arbitrary_bytes_never_panic(raw in "\\PC{0,40}") {
        let _ = normalize_path(&raw);
    }
}
