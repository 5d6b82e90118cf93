//! Any text through the document reader, the policy parser, the index and one
//! decision per document: nothing may panic, and an invalid policy must never
//! make a decision more permissive than an empty set would (it fails closed).
#![no_main]

use std::collections::BTreeMap;

use ambit_policy::{Connection, PolicySet, Target, k8s};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let Ok(docs) = k8s::documents(text) else {
        return;
    };
    let mut builder = PolicySet::builder("istio-system");
    let mut invalid = false;
    for doc in &docs {
        invalid |= builder.add(&doc.value).is_err();
    }
    let set = builder.build();
    let _ = set.summary();
    let labels = BTreeMap::from([("app".to_string(), "a".to_string())]);
    for doc in &docs {
        let ns = doc.value.pointer("/metadata/namespace").and_then(|v| v.as_str()).unwrap_or("default");
        let dst = Target { namespace: ns, labels: &labels };
        for mtls in [true, false] {
            let d = set.evaluate(
                &dst,
                &Connection {
                    src_ip: [10, 0, 0, 1].into(),
                    src_principal: mtls.then_some("cluster.local/ns/default/sa/x"),
                    src_namespace: mtls.then_some("default"),
                    dst_ip: [10, 0, 0, 2].into(),
                    dst_port: 8080,
                    mtls,
                },
            );
            let _ = d.to_json();
            if invalid && d.allowed {
                assert_ne!(d.reason, ambit_policy::Reason::InvalidPolicy);
            }
        }
    }
});
