//! ambit-tests: the harness that builds a multi-node cluster out of network
//! namespaces, used by the end-to-end tests, the demo and the benchmarks.

pub mod fake_kube;
