//! Kubernetes-shaped text to objects: the one reader shared by the agent's state
//! loader, the CA and the dry-run CLI.
//!
//! Accepts what users actually have on disk: multi-document YAML, `kubectl get -o
//! yaml` output (`kind: List`), and JSON as the API server sends it (one object, an
//! array of objects, or several objects one after another). Lists (`List` and any
//! `*List`) are flattened into their items, and every object keeps the line it
//! starts on so errors further down can point back into the file.

use serde_json::Value;

mod lines;

/// One Kubernetes object read from a text, with the 1-based line it starts on.
#[derive(Clone, Debug, PartialEq)]
pub struct Document {
    pub value: Value,
    pub line: usize,
}

/// Why a text could not be read, and the 1-based line it went wrong on.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("line {line}: {reason}")]
pub struct DocumentError {
    pub line: usize,
    pub reason: DocumentProblem,
}

/// What was wrong with a document.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DocumentProblem {
    #[error("invalid YAML: {0}")]
    Yaml(String),
    #[error("invalid JSON: {0}")]
    Json(String),
    #[error("expected a Kubernetes object (a mapping), found {0}")]
    NotAnObject(&'static str),
    #[error("`items` of a {0} must be a list")]
    ItemsNotAList(String),
}

/// Reads every object in `text`: YAML (one or more documents) or JSON. Empty
/// documents are skipped; lists are replaced by their items.
pub fn documents(text: &str) -> Result<Vec<Document>, DocumentError> {
    let index = lines::LineIndex::new(text);
    if looks_like_json(text) {
        return json_documents(text, &index);
    }
    yaml_documents(text)
}

/// JSON opens with `{"` or `[{` (or is empty); YAML's flow style, which also
/// opens with `{`, has unquoted keys in practice.
fn looks_like_json(text: &str) -> bool {
    let mut chars = text.chars().filter(|c| !c.is_whitespace());
    matches!(
        (chars.next(), chars.next()),
        (Some('{'), Some('"' | '}')) | (Some('['), Some('{' | '[' | ']' | '"'))
    )
}

fn json_documents(text: &str, index: &lines::LineIndex) -> Result<Vec<Document>, DocumentError> {
    let mut out = Vec::new();
    let mut stream = serde_json::Deserializer::from_str(text).into_iter::<Value>();
    let mut start = 0;
    while let Some(next) = stream.next() {
        let value = next.map_err(|e| DocumentError {
            line: e.line().max(1),
            reason: DocumentProblem::Json(strip_json_location(&e)),
        })?;
        let begin = start + leading_whitespace(&text[start..]);
        start = stream.byte_offset();
        match value {
            // A bare array of objects is read as a list of documents.
            Value::Array(elements) => {
                let element_lines = lines::json_element_lines(text, begin);
                for (i, element) in elements.into_iter().enumerate() {
                    let line = element_lines
                        .get(i)
                        .map_or_else(|| index.line_of(begin), |&b| index.line_of(b));
                    push_object(&mut out, element, line, &[])?;
                }
            }
            value => {
                let item_lines: Vec<usize> = lines::json_items_lines(text, begin)
                    .into_iter()
                    .map(|b| index.line_of(b))
                    .collect();
                push_object(&mut out, value, index.line_of(begin), &item_lines)?;
            }
        }
    }
    Ok(out)
}

fn yaml_documents(text: &str) -> Result<Vec<Document>, DocumentError> {
    let mut out = Vec::new();
    for chunk in lines::yaml_chunks(text) {
        let Some(first) = chunk.first_content_line() else {
            continue;
        };
        let value: Value = serde_yaml::from_str(&chunk.text).map_err(|e| DocumentError {
            line: chunk.first_line + e.location().map_or(0, |l| l.line().saturating_sub(1)),
            reason: DocumentProblem::Yaml(strip_yaml_location(&e)),
        })?;
        let item_lines = chunk.yaml_item_lines();
        push_object(&mut out, value, first, &item_lines)?;
    }
    Ok(out)
}

/// Appends `value` (or, for a list, its items) to `out`.
fn push_object(
    out: &mut Vec<Document>,
    value: Value,
    line: usize,
    item_lines: &[usize],
) -> Result<(), DocumentError> {
    let mut map = match value {
        Value::Null => return Ok(()),
        Value::Object(map) => map,
        other => {
            return Err(DocumentError {
                line,
                reason: DocumentProblem::NotAnObject(json_type(&other)),
            });
        }
    };
    let kind = map.get("kind").and_then(Value::as_str).unwrap_or_default();
    let is_list = kind == "List" || (kind.len() > 4 && kind.ends_with("List"));
    if !is_list || !map.contains_key("items") {
        out.push(Document {
            value: Value::Object(map),
            line,
        });
        return Ok(());
    }
    let kind = kind.to_owned();
    let items = match map.remove("items") {
        Some(Value::Array(items)) => items,
        Some(Value::Null) => Vec::new(),
        _ => {
            return Err(DocumentError {
                line,
                reason: DocumentProblem::ItemsNotAList(kind),
            });
        }
    };
    // Typed lists from the API server (`PodList`) omit kind and apiVersion on
    // their items; restore them so every document names its own kind.
    let item_kind = (kind != "List").then(|| kind.trim_end_matches("List").to_owned());
    let api_version = map.get("apiVersion").cloned();
    let lines_known = item_lines.len() == items.len();
    for (i, mut item) in items.into_iter().enumerate() {
        if let (Some(item_kind), Value::Object(obj)) = (&item_kind, &mut item) {
            obj.entry("kind")
                .or_insert_with(|| Value::String(item_kind.clone()));
            if let Some(api_version) = &api_version {
                obj.entry("apiVersion")
                    .or_insert_with(|| api_version.clone());
            }
        }
        let item_line = if lines_known { item_lines[i] } else { line };
        push_object(out, item, item_line, &[])?;
    }
    Ok(())
}

fn json_type(value: &Value) -> &'static str {
    match value {
        Value::Null => "null",
        Value::Bool(_) => "a boolean",
        Value::Number(_) => "a number",
        Value::String(_) => "a string",
        Value::Array(_) => "a list",
        Value::Object(_) => "an object",
    }
}

fn leading_whitespace(s: &str) -> usize {
    s.len() - s.trim_start().len()
}

/// serde_yaml's message ends in a position relative to the document; the caller
/// reports the absolute line instead.
fn strip_yaml_location(e: &serde_yaml::Error) -> String {
    let msg = e.to_string();
    match msg.find(" at line ") {
        Some(at) => msg[..at].to_owned(),
        None => msg,
    }
}

fn strip_json_location(e: &serde_json::Error) -> String {
    let msg = e.to_string();
    match msg.rfind(" at line ") {
        Some(at) => msg[..at].to_owned(),
        None => msg,
    }
}

#[cfg(test)]
mod tests;
