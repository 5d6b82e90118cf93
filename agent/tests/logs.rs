//! Log lines written to a pipe or a file carry no colour escape codes: they
//! end up in `kubectl logs`, files and log shippers, where escapes are noise.

use std::process::Command;

#[test]
fn logs_into_a_pipe_have_no_colour_codes() {
    // A state that does not exist: the agent logs at start and exits with an
    // error before it binds or installs anything.
    let out = Command::new(env!("CARGO_BIN_EXE_ambit-agent"))
        .args(["--log", "debug", "run", "--node", "node-a", "--state"])
        .arg("/nonexistent/ambit-state.yaml")
        .env_remove("AMBIT_LOG")
        .env_remove("AMBIT_LOG_FORMAT")
        .env_remove("AMBIT_KUBE")
        .output()
        .expect("run ambit-agent");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    assert!(stderr.contains(" ERROR "), "{stderr}");
    assert!(stderr.contains("/nonexistent/ambit-state.yaml"), "{stderr}");
    assert!(
        !stderr.contains('\u{1b}'),
        "colour codes in a pipe:\n{stderr}"
    );
}
