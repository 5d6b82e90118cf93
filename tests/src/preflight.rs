//! Checks, once per process, that this machine can build namespace clusters:
//! root (CAP_SYS_ADMIN and CAP_NET_ADMIN), iproute2's `ip`, and iptables that
//! works inside a fresh namespace.
//!
//! Missing privileges are a test failure, not a silent pass: only the
//! explicit opt-out `AMBIT_E2E_SKIP=1` turns them into a loudly printed skip.
//! CI never sets it.

use std::io::Write;
use std::process::Command;
use std::sync::OnceLock;

use crate::netns::{self, Netns};

/// The opt-out variable.
pub const SKIP_ENV: &str = "AMBIT_E2E_SKIP";

/// `Ok` when namespace clusters can be built here, else what is missing.
pub fn check() -> Result<(), String> {
    static RESULT: OnceLock<Result<(), String>> = OnceLock::new();
    RESULT.get_or_init(probe).clone()
}

/// Call at the start of every end-to-end test: returns `true` when the test
/// can run. When the machine lacks what the tests need it panics saying
/// what is missing, unless `AMBIT_E2E_SKIP=1`, in which case it prints a
/// loud skip line and returns `false` (the test should then return).
pub fn require_e2e() -> bool {
    let Err(missing) = check() else {
        return true;
    };
    if std::env::var(SKIP_ENV).as_deref() == Ok("1") {
        let test = std::thread::current()
            .name()
            .unwrap_or("<unnamed>")
            .to_owned();
        // Straight to the stderr handle: the test harness captures
        // `eprintln!` of passing tests, and this line must be seen.
        let _ = writeln!(
            std::io::stderr().lock(),
            "\n!!!!!!!! SKIPPED end-to-end test {test}: {missing} ({SKIP_ENV}=1 is set) !!!!!!!!\n"
        );
        return false;
    }
    panic!(
        "end-to-end tests cannot run: {missing}. Run them as root on Linux with iproute2 and \
         iptables installed (.ci/run installs them), or set {SKIP_ENV}=1 to skip them explicitly."
    );
}

fn probe() -> Result<(), String> {
    for (program, arg, package) in [("ip", "-V", "iproute2"), ("iptables", "-V", "iptables")] {
        match Command::new(program).arg(arg).output() {
            Ok(out) if out.status.success() => {}
            Ok(out) => {
                return Err(format!(
                    "`{program} {arg}` failed: {}",
                    String::from_utf8_lossy(&out.stderr).trim()
                ));
            }
            Err(e) => return Err(format!("`{program}` not found ({e}); install {package}")),
        }
    }
    let name = format!("ambit-{}-probe", std::process::id());
    // A probe left by a crashed process with a reused PID would block creation.
    netns::delete(&name);
    let ns = Netns::create(&name).map_err(|e| {
        format!("cannot create a network namespace (needs root / CAP_SYS_ADMIN): {e}")
    })?;
    ns.ip(["link", "set", "lo", "up"])
        .map_err(|e| format!("cannot configure links in a namespace (needs CAP_NET_ADMIN): {e}"))?;
    ns.exec("iptables", ["-t", "mangle", "-S"])
        .map_err(|e| format!("iptables does not work inside a namespace: {e}"))?;
    Ok(())
}
