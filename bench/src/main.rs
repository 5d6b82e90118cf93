//! ambit-bench: measures throughput and latency between pods of a namespace cluster.
fn main() {}
