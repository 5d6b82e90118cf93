//! Typed reads from `serde_json::Value` that carry the field path into errors.
//! A `null` field is read as absent, as the API server treats it.

use serde_json::{Map, Value};

use super::Problem;

/// A field path such as `spec.rules[0].from`.
#[derive(Clone, Debug, Default)]
pub(crate) struct Path(String);

/// A problem at a field.
#[derive(Clone, Debug)]
pub(crate) struct FieldError {
    pub field: String,
    pub problem: Problem,
}

impl Path {
    pub(crate) fn root() -> Self {
        Self::default()
    }

    pub(crate) fn field(&self, name: &str) -> Self {
        if self.0.is_empty() {
            Self(name.to_owned())
        } else {
            Self(format!("{}.{name}", self.0))
        }
    }

    pub(crate) fn index(&self, i: usize) -> Self {
        Self(format!("{}[{i}]", self.0))
    }

    pub(crate) fn error(&self, problem: Problem) -> FieldError {
        FieldError {
            field: self.0.clone(),
            problem,
        }
    }
}

pub(crate) type Result<T> = std::result::Result<T, FieldError>;

pub(crate) fn object<'a>(v: &'a Value, path: &Path) -> Result<&'a Map<String, Value>> {
    v.as_object()
        .ok_or_else(|| path.error(Problem::WrongType("an object")))
}

/// An optional object field; `null` and absent are the same.
pub(crate) fn opt_object<'a>(
    v: Option<&'a Value>,
    path: &Path,
) -> Result<Option<&'a Map<String, Value>>> {
    match v {
        None | Some(Value::Null) => Ok(None),
        Some(v) => object(v, path).map(Some),
    }
}

pub(crate) fn opt_str<'a>(v: Option<&'a Value>, path: &Path) -> Result<Option<&'a str>> {
    match v {
        None | Some(Value::Null) => Ok(None),
        Some(Value::String(s)) => Ok(Some(s)),
        Some(_) => Err(path.error(Problem::WrongType("a string"))),
    }
}

/// An optional list; the callback reads each element with its own path.
pub(crate) fn list<'a, T>(
    v: Option<&'a Value>,
    path: &Path,
    mut each: impl FnMut(&'a Value, &Path) -> Result<T>,
) -> Result<Vec<T>> {
    match v {
        None | Some(Value::Null) => Ok(Vec::new()),
        Some(Value::Array(items)) => items
            .iter()
            .enumerate()
            .map(|(i, item)| each(item, &path.index(i)))
            .collect(),
        Some(_) => Err(path.error(Problem::WrongType("a list"))),
    }
}

/// An optional list of strings.
pub(crate) fn str_list<'a>(v: Option<&'a Value>, path: &Path) -> Result<Vec<&'a str>> {
    list(v, path, |item, p| match item {
        Value::String(s) => Ok(s.as_str()),
        _ => Err(p.error(Problem::WrongType("a string"))),
    })
}

/// A port written as a string (as the CRD types it) or a number (as hand-written
/// YAML often does).
pub(crate) fn port(v: &Value, path: &Path) -> Result<u16> {
    let parsed = match v {
        Value::String(s) => s.trim().parse::<u16>().ok(),
        Value::Number(n) => n.as_u64().and_then(|n| u16::try_from(n).ok()),
        _ => return Err(path.error(Problem::WrongType("a port"))),
    };
    match parsed {
        Some(p) if p != 0 => Ok(p),
        _ => Err(path.error(Problem::BadPort(match v {
            Value::String(s) => s.clone(),
            other => other.to_string(),
        }))),
    }
}

/// Refuses fields outside `known`.
pub(crate) fn known_fields(map: &Map<String, Value>, known: &[&str], path: &Path) -> Result<()> {
    match map.keys().find(|k| !known.contains(&k.as_str())) {
        Some(k) => Err(path.field(k).error(Problem::UnknownField)),
        None => Ok(()),
    }
}

/// `selector.matchLabels` as a label map (empty when absent).
pub(crate) fn match_labels(
    v: Option<&Value>,
    path: &Path,
) -> Result<std::collections::BTreeMap<String, String>> {
    let mut out = std::collections::BTreeMap::new();
    let Some(selector) = opt_object(v, path)? else {
        return Ok(out);
    };
    known_fields(selector, &["matchLabels"], path)?;
    let path = path.field("matchLabels");
    if let Some(labels) = opt_object(selector.get("matchLabels"), &path)? {
        for (k, v) in labels {
            let value = opt_str(Some(v), &path.field(k))?.unwrap_or_default();
            out.insert(k.clone(), value.to_owned());
        }
    }
    Ok(out)
}
