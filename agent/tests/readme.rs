//! The README's `authz check` and `describe --state` examples, run as
//! printed: each command line is read from README.md and run from the fixture
//! folder the README names above it (`agent/tests/fixtures/<name>/state/`),
//! and for `authz check` what the built binary prints must be the line under
//! the command exactly. A README edited without the tool, or the tool changed
//! without the README, fails here.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

const FIXTURES: &str = "agent/tests/fixtures/";

fn workspace() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .map(Path::to_path_buf)
        .unwrap_or_default()
}

/// A command from the README, the fixture folder it runs from, and the
/// output line printed under it (for `authz check`).
#[derive(Debug, PartialEq, Eq)]
struct Example {
    fixture: Option<String>,
    command: String,
    output: Option<String>,
}

/// Every `ambit-agent authz check` and `ambit-agent describe ... --state`
/// line, with the fixture folder most recently linked before it.
fn examples(readme: &str) -> Vec<Example> {
    let mut fixture = None;
    let mut found = Vec::new();
    let mut lines = readme.lines().peekable();
    while let Some(line) = lines.next() {
        if let Some(at) = line.find(FIXTURES) {
            let rest = &line[at + FIXTURES.len()..];
            fixture = rest.split('/').next().map(str::to_owned);
        }
        // A trailing `# comment` is the README's, not the command's.
        let command = line.split(" #").next().unwrap_or_default().trim();
        let authz = command.starts_with("ambit-agent authz check");
        let describe = command.starts_with("ambit-agent describe") && command.contains("--state");
        if !(authz || describe) {
            continue;
        }
        let output = if authz {
            lines
                .next_if(|l| l.starts_with('{'))
                .map(|l| l.trim().to_owned())
        } else {
            None
        };
        found.push(Example {
            fixture: fixture.clone(),
            command: command.to_owned(),
            output,
        });
    }
    found
}

fn run(example: &Example) -> Output {
    let fixture = example
        .fixture
        .as_deref()
        .expect("a fixture folder named above the example");
    // `[--plaintext]` is an optional flag in the README's notation: left out.
    let args: Vec<&str> = example
        .command
        .split_whitespace()
        .skip(1)
        .filter(|a| !a.starts_with('['))
        .collect();
    Command::new(env!("CARGO_BIN_EXE_ambit-agent"))
        .args(&args)
        .current_dir(workspace().join(FIXTURES).join(fixture))
        .env_remove("AMBIT_TRUST_DOMAIN")
        .env_remove("AMBIT_ROOT_NAMESPACE")
        .env_remove("AMBIT_LOG")
        .output()
        .expect("run ambit-agent")
}

#[test]
fn every_readme_authz_check_example_prints_what_the_readme_says() {
    let readme = std::fs::read_to_string(workspace().join("README.md")).expect("README.md");
    let checks: Vec<Example> = examples(&readme)
        .into_iter()
        .filter(|e| e.command.contains("authz check"))
        .collect();
    assert!(
        checks.len() >= 3,
        "README.md's authz check examples: {checks:?}"
    );
    for example in &checks {
        let expected = example
            .output
            .as_deref()
            .unwrap_or_else(|| panic!("no output under {example:?}"));
        let out = run(example);
        let stdout = String::from_utf8_lossy(&out.stdout);
        assert_eq!(
            stdout.trim_end(),
            expected,
            "README: {}\nstderr: {}",
            example.command,
            String::from_utf8_lossy(&out.stderr)
        );
        // The README: exit status 1 when denied.
        let denied = expected.contains(r#""decision":"deny""#);
        assert_eq!(
            out.status.code(),
            Some(if denied { 1 } else { 0 }),
            "{example:?}"
        );
    }
}

#[test]
fn the_readme_describe_example_reports_the_rule_that_needs_http() {
    let readme = std::fs::read_to_string(workspace().join("README.md")).expect("README.md");
    let describe: Vec<Example> = examples(&readme)
        .into_iter()
        .filter(|e| e.command.contains("describe"))
        .collect();
    assert_eq!(describe.len(), 1, "{describe:?}");
    let out = run(&describe[0]);
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{describe:?}: {out:?}");
    assert!(stdout.contains("Pod: default/analyzer"), "{stdout}");
    assert!(stdout.contains("ALLOW default/analyzeraccess"), "{stdout}");
    assert!(stdout.contains("needs HTTP"), "{stdout}");
}

#[test]
fn examples_are_found_with_their_fixture_in_a_readme_shaped_text() {
    let text = "See [`agent/tests/fixtures/one/state/`](x).\n```sh\n\
        ambit-agent authz check --state s/ --from a\n{\"decision\":\"deny\"}\n```\n\
        Now agent/tests/fixtures/two/state/:\n\
        ambit-agent describe pod a/b --state s/   # from files\n\
        ambit-agent describe pod a/b --admin x\n";
    assert_eq!(
        examples(text),
        vec![
            Example {
                fixture: Some("one".into()),
                command: "ambit-agent authz check --state s/ --from a".into(),
                output: Some("{\"decision\":\"deny\"}".into()),
            },
            Example {
                fixture: Some("two".into()),
                command: "ambit-agent describe pod a/b --state s/".into(),
                output: None,
            },
        ]
    );
    assert_eq!(examples("no example"), vec![]);
}
