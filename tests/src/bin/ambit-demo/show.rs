//! How the demo prints what it saw: outcomes, decisions, yes/no.

use ambit_tests::mesh::guestbook::ECHO_PORT;
use ambit_tests::mesh::probe::Outcome;
use ambit_tests::mesh::{MeshPod, Samples};

pub const DECISIONS: &str = "ambit_authorization_decisions_total";

/// Decisions counted between two scrapes, as `decision (reason)` lines.
pub fn decisions_added(before: &Samples, after: &Samples) -> Vec<String> {
    after
        .matching(DECISIONS, &[])
        .filter_map(|s| {
            let filter: Vec<(&str, &str)> = s
                .labels
                .iter()
                .map(|(k, v)| (k.as_str(), v.as_str()))
                .collect();
            let added = s.value - before.sum(DECISIONS, &filter);
            let l = |k: &str| s.labels.get(k).map_or("?", String::as_str);
            (added > 0.0).then(|| format!("decision={} reason=\"{}\"", l("decision"), l("reason")))
        })
        .collect()
}

pub fn show_outcome(from: &MeshPod, to: &MeshPod, outcome: &Outcome) {
    let path = format!(
        "{} ({}) -> {}:{ECHO_PORT}",
        from.name(),
        from.ip(),
        to.name()
    );
    match outcome {
        Outcome::Allowed => println!("  ALLOWED  {path}: the echo came back intact"),
        Outcome::Refused { how, after } => {
            println!("  REFUSED  {path}: {how}, after {} ms", after.as_millis());
        }
    }
}

pub fn yes_no(b: bool) -> &'static str {
    if b { "yes" } else { "no" }
}
