//! The README's `authz check` example, run as printed: the command line and
//! the output line under it are read from README.md, the command is run from
//! `tests/fixtures/readme` (which holds the `state/` it names), and what the
//! built binary prints must be the README's line exactly. A README edited
//! without the tool, or the tool changed without the README, fails here.

use std::path::{Path, PathBuf};
use std::process::Command;

fn workspace() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .map(Path::to_path_buf)
        .unwrap_or_default()
}

/// The example's command line and the output line printed under it.
fn example(readme: &str) -> Option<(String, String)> {
    let mut lines = readme.lines();
    while let Some(line) = lines.next() {
        if line.trim_start().starts_with("ambit-agent authz check") {
            let output = lines.next()?.trim().to_owned();
            return Some((line.trim().to_owned(), output));
        }
    }
    None
}

#[test]
fn the_readme_authz_check_example_prints_what_the_readme_says() {
    let readme = std::fs::read_to_string(workspace().join("README.md")).expect("README.md");
    let (command, expected) = example(&readme).expect("README.md has an `authz check` example");
    assert!(expected.starts_with('{'), "no output under {command:?}");
    // `[--plaintext]` is an optional flag in the README's notation: left out.
    let args: Vec<&str> = command
        .split_whitespace()
        .skip(1)
        .filter(|a| !a.starts_with('['))
        .collect();
    let out = Command::new(env!("CARGO_BIN_EXE_ambit-agent"))
        .args(&args)
        .current_dir(Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/readme"))
        .env_remove("AMBIT_TRUST_DOMAIN")
        .env_remove("AMBIT_ROOT_NAMESPACE")
        .env_remove("AMBIT_LOG")
        .output()
        .expect("run ambit-agent");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert_eq!(
        stdout.trim_end(),
        expected,
        "README: {command}\nstderr: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    // The README: exit status 1 when denied.
    let denied = expected.contains(r#""decision":"deny""#);
    assert_eq!(out.status.code(), Some(if denied { 1 } else { 0 }));
}

#[test]
fn the_example_is_found_in_a_readme_shaped_text() {
    let text =
        "x\n```sh\nambit-agent authz check --state s/ --from a\n{\"decision\":\"deny\"}\n```\n";
    assert_eq!(
        example(text),
        Some((
            "ambit-agent authz check --state s/ --from a".to_owned(),
            "{\"decision\":\"deny\"}".to_owned()
        ))
    );
    assert_eq!(example("no example"), None);
}
