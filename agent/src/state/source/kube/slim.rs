//! Keeping only the fields the agent reads. A Pod as the API server sends it
//! is several kilobytes (managed fields, status conditions, container specs);
//! the agent needs its name, labels, node, service account, IPs and named
//! ports. Every object is cut down to a per-kind mask of the fields
//! `state::k8s` decodes before it is cached, so memory follows the size of
//! the cluster, not the verbosity of its objects.

use serde_json::{Map, Value};

/// Which fields of an object (or of each element of an array) to keep.
#[derive(Debug)]
pub(super) enum Mask {
    /// The whole value.
    All,
    /// Only these keys, each with its own mask.
    Fields(&'static [(&'static str, Mask)]),
}

use Mask::{All, Fields};

const METADATA: (&str, Mask) = (
    "metadata",
    Fields(&[
        ("name", All),
        ("namespace", All),
        ("uid", All),
        ("labels", All),
        ("creationTimestamp", All),
        ("deletionTimestamp", All),
    ]),
);

// The watch code sets these from the resource it watches; kept here too so a
// slimmed object is complete on its own.
const API_VERSION: (&str, Mask) = ("apiVersion", All);
const KIND: (&str, Mask) = ("kind", All);

pub(super) const NAMESPACE: Mask = Fields(&[API_VERSION, KIND, METADATA]);

pub(super) const POD: Mask = Fields(&[
    API_VERSION,
    KIND,
    METADATA,
    (
        "spec",
        Fields(&[
            ("nodeName", All),
            ("serviceAccountName", All),
            ("serviceAccount", All),
            ("hostNetwork", All),
            (
                "containers",
                Fields(&[(
                    "ports",
                    Fields(&[("name", All), ("containerPort", All), ("protocol", All)]),
                )]),
            ),
        ]),
    ),
    (
        "status",
        Fields(&[
            ("phase", All),
            ("podIP", All),
            ("podIPs", Fields(&[("ip", All)])),
        ]),
    ),
]);

pub(super) const SERVICE: Mask = Fields(&[
    API_VERSION,
    KIND,
    METADATA,
    (
        "spec",
        Fields(&[
            ("type", All),
            ("clusterIP", All),
            ("clusterIPs", All),
            ("selector", All),
            (
                "ports",
                Fields(&[
                    ("name", All),
                    ("port", All),
                    ("targetPort", All),
                    ("protocol", All),
                    ("appProtocol", All),
                ]),
            ),
        ]),
    ),
]);

pub(super) const ENDPOINT_SLICE: Mask = Fields(&[
    API_VERSION,
    KIND,
    METADATA,
    ("addressType", All),
    (
        "endpoints",
        Fields(&[
            ("addresses", All),
            ("conditions", Fields(&[("ready", All)])),
        ]),
    ),
    (
        "ports",
        Fields(&[("name", All), ("port", All), ("protocol", All)]),
    ),
]);

/// Istio policies are small and the policy engine reads all of their spec.
pub(super) const POLICY: Mask = Fields(&[API_VERSION, KIND, METADATA, ("spec", All)]);

/// `value` cut down to `mask`. Arrays apply the mask to each element; a
/// container whose every element comes out empty is kept (as a list of empty
/// objects) only if its mask asked for something, so indexes stay stable.
pub(super) fn slim(value: &Value, mask: &Mask) -> Value {
    match (mask, value) {
        (All, v) => v.clone(),
        (Fields(fields), Value::Object(map)) => {
            let mut out = Map::new();
            for (key, sub) in *fields {
                if let Some(v) = map.get(*key).filter(|v| !v.is_null()) {
                    out.insert((*key).to_owned(), slim(v, sub));
                }
            }
            Value::Object(out)
        }
        (Fields(_), Value::Array(items)) => {
            Value::Array(items.iter().map(|item| slim(item, mask)).collect())
        }
        // A scalar where an object was expected: keep it, so the decoder
        // reports the type error with the field's path.
        (Fields(_), v) => v.clone(),
    }
}
