use super::*;
use serde_json::json;

fn kinds(docs: &[Document]) -> Vec<(String, usize)> {
    docs.iter()
        .map(|d| (d.value["kind"].as_str().unwrap_or("?").to_owned(), d.line))
        .collect()
}

#[test]
fn multi_document_yaml_keeps_lines_and_skips_empty_documents() {
    let text = "\
# leading comment
apiVersion: v1
kind: Namespace
metadata: {name: a}
---
---
# only a comment
---
apiVersion: v1
kind: Pod
metadata: {name: p, namespace: a}
--- {apiVersion: v1, kind: Service}
...
";
    let docs = documents(text).unwrap();
    assert_eq!(
        kinds(&docs),
        vec![
            ("Namespace".into(), 2),
            ("Pod".into(), 9),
            ("Service".into(), 12)
        ]
    );
    assert_eq!(docs[1].value["metadata"]["namespace"], "a");
}

#[test]
fn kubectl_list_is_flattened_with_item_lines() {
    let text = "\
apiVersion: v1
items:
- apiVersion: v1
  kind: Pod
  metadata:
    name: one
- apiVersion: security.istio.io/v1
  kind: AuthorizationPolicy
  metadata: {name: two}
  spec:
    rules:
    - {}
kind: List
metadata:
  resourceVersion: \"\"
";
    let docs = documents(text).unwrap();
    assert_eq!(
        kinds(&docs),
        vec![("Pod".into(), 3), ("AuthorizationPolicy".into(), 7)]
    );
}

#[test]
fn indented_items_and_typed_lists_restore_kind() {
    let text = "\
kind: PodList
apiVersion: v1
items:
  - metadata: {name: a}
  - metadata: {name: b}
    kind: Other
";
    let docs = documents(text).unwrap();
    assert_eq!(kinds(&docs), vec![("Pod".into(), 4), ("Other".into(), 5)]);
    assert_eq!(docs[0].value["apiVersion"], "v1");
}

#[test]
fn json_object_list_array_and_stream() {
    let text = r#"{
  "kind": "List",
  "apiVersion": "v1",
  "items": [
    {"kind": "Pod", "metadata": {"name": "x", "labels": {"items": "[{"}}},
    {
      "kind": "Namespace"
    }
  ]
}
{"kind": "Service"}
[{"kind": "A"},
 {"kind": "B"}]"#;
    let docs = documents(text).unwrap();
    assert_eq!(
        kinds(&docs),
        vec![
            ("Pod".into(), 5),
            ("Namespace".into(), 6),
            ("Service".into(), 11),
            ("A".into(), 12),
            ("B".into(), 13)
        ]
    );
    assert_eq!(docs[0].value["metadata"]["labels"]["items"], "[{");
}

#[test]
fn yaml_flow_mapping_is_not_mistaken_for_json() {
    let docs = documents("{kind: Pod, metadata: {name: a}}\n").unwrap();
    assert_eq!(
        docs[0].value,
        json!({"kind": "Pod", "metadata": {"name": "a"}})
    );
}

#[test]
fn errors_carry_absolute_line() {
    let text = "kind: A\n---\nkind: B\nmetadata:\n  name: [unclosed\n";
    let err = documents(text).unwrap_err();
    assert!(matches!(err.reason, DocumentProblem::Yaml(_)), "{err}");
    assert!(err.line >= 5, "{err}");
    assert!(!err.to_string().contains("column"), "{err}");

    let err = documents("{\"kind\": \"A\",\n \"x\": }").unwrap_err();
    assert_eq!(err.line, 2, "{err}");
    assert!(matches!(err.reason, DocumentProblem::Json(_)), "{err}");

    let err = documents("kind: A\n---\n- 1\n- 2\n").unwrap_err();
    assert_eq!(err.line, 3);
    assert_eq!(err.reason, DocumentProblem::NotAnObject("a list"));

    let err = documents("kind: List\nitems: 3\n").unwrap_err();
    assert_eq!(err.reason, DocumentProblem::ItemsNotAList("List".into()));
}

#[test]
fn empty_text_and_null_items() {
    assert!(documents("").unwrap().is_empty());
    assert!(documents("\n# nothing\n").unwrap().is_empty());
    assert!(documents("kind: List\nitems: null\n").unwrap().is_empty());
    assert!(documents("kind: List\nitems: []\n").unwrap().is_empty());
}
