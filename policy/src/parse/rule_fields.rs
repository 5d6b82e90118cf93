//! A rule as written, split into what an L4 proxy can check and what only an
//! HTTP proxy sees, for `describe`. Read from the raw spec after `authz`
//! compiled it, so only valid rules get here; which fields need HTTP is what
//! the compiler found (`NeedsHttp`), so describe and enforcement never
//! disagree. The text is for people.

use serde_json::{Map, Value};

use crate::model::RuleFields;

/// `fields` of one valid rule object; `http` names the fields (and `when`
/// keys) of it that need HTTP.
pub(super) fn rule_fields(rule: &Value, http: &[String]) -> RuleFields {
    let mut out = RuleFields::default();
    let Some(rule) = rule.as_object() else {
        return out;
    };
    for (i, from) in list(rule.get("from")).iter().enumerate() {
        if let Some(source) = from.get("source").and_then(Value::as_object) {
            fields_of(source, &format!("from[{i}].source"), http, &mut out);
        }
    }
    for (i, to) in list(rule.get("to")).iter().enumerate() {
        if let Some(op) = to.get("operation").and_then(Value::as_object) {
            fields_of(op, &format!("to[{i}].operation"), http, &mut out);
        }
    }
    for cond in list(rule.get("when")) {
        let key = cond.get("key").and_then(Value::as_str).unwrap_or("?");
        let mut text = format!("when {key}");
        for (field, word) in [("values", "in"), ("notValues", "not in")] {
            if let Some(values) = cond.get(field).filter(|v| !list(Some(v)).is_empty()) {
                text.push_str(&format!(" {word} {}", values_text(values)));
            }
        }
        if http.iter().any(|f| f == key) {
            out.http_only.push(text);
        } else {
            out.l4.push(text);
        }
    }
    out
}

fn list(v: Option<&Value>) -> &[Value] {
    v.and_then(Value::as_array).map_or(&[], Vec::as_slice)
}

/// Each set field of a `source` or `operation`, in the spec's order.
fn fields_of(map: &Map<String, Value>, prefix: &str, http: &[String], out: &mut RuleFields) {
    for (name, values) in map {
        if list(Some(values)).is_empty() {
            continue;
        }
        let text = format!("{prefix}.{name}: {}", values_text(values));
        if http.iter().any(|f| f == name) {
            out.http_only.push(text);
        } else {
            out.l4.push(text);
        }
    }
}

/// `[a, b]`, strings unquoted.
fn values_text(values: &Value) -> String {
    let items: Vec<String> = list(Some(values))
        .iter()
        .map(|v| match v {
            Value::String(s) => s.clone(),
            other => other.to_string(),
        })
        .collect();
    format!("[{}]", items.join(", "))
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    #[test]
    fn fields_are_split_into_l4_and_http_only() {
        let rule = json!({
            "from": [{"source": {"principals": ["cluster.local/ns/default/sa/guestbook"], "requestPrincipals": ["*"]}}],
            "to": [{"operation": {"ports": ["8080"], "methods": ["GET", "HEAD"]}}],
            "when": [
                {"key": "source.ip", "values": ["10.0.0.0/8"]},
                {"key": "request.headers[x-user]", "notValues": ["bot"]}
            ]
        });
        // The classification comes from the compiler, as in `authz::compile`.
        let (_, http) =
            super::super::authz::compile_rule(&rule, &crate::parse::Path::root()).unwrap();
        let fields = rule_fields(&rule, &http);
        assert_eq!(
            fields.l4,
            vec![
                "from[0].source.principals: [cluster.local/ns/default/sa/guestbook]",
                "to[0].operation.ports: [8080]",
                "when source.ip in [10.0.0.0/8]",
            ]
        );
        assert_eq!(
            fields.http_only,
            vec![
                "from[0].source.requestPrincipals: [*]",
                "to[0].operation.methods: [GET, HEAD]",
                "when request.headers[x-user] not in [bot]",
            ]
        );
        assert_eq!(rule_fields(&json!({}), &[]), RuleFields::default());
    }
}
