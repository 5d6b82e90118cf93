use serde_json::json;

use super::*;

#[test]
fn not_a_policy_is_refused_without_record() {
    let err =
        parse(&json!({"apiVersion": "v1", "kind": "Pod", "metadata": {"name": "p"}})).unwrap_err();
    assert_eq!(err.kind, None);
    assert!(matches!(err.problem, Problem::NotAPolicy { .. }));
}
