//! `/config_dump`: a JSON object with one section per provider, so the admin
//! server needs no knowledge of the state, identity or proxy internals.

use std::sync::Arc;

use serde_json::{Map, Value};

/// Something that can describe itself for `/config_dump` (the state store's
/// workloads, services and policies; the identity manager's certificates...).
/// Called on each request, so it should read a snapshot, not compute one.
pub trait ConfigSource: Send + Sync {
    fn config_dump(&self) -> Value;
}

impl<F> ConfigSource for F
where
    F: Fn() -> Value + Send + Sync,
{
    fn config_dump(&self) -> Value {
        self()
    }
}

/// Named sections, written in the order they were added.
#[derive(Clone, Default)]
pub struct ConfigDump {
    sections: Vec<(String, Arc<dyn ConfigSource>)>,
}

impl std::fmt::Debug for ConfigDump {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_list()
            .entries(self.sections.iter().map(|(name, _)| name))
            .finish()
    }
}

impl ConfigDump {
    /// Adds (or replaces) the section `name`.
    pub fn add(&mut self, name: impl Into<String>, source: Arc<dyn ConfigSource>) {
        let name = name.into();
        self.sections.retain(|(n, _)| *n != name);
        self.sections.push((name, source));
    }

    pub fn names(&self) -> impl Iterator<Item = &str> {
        self.sections.iter().map(|(n, _)| n.as_str())
    }

    pub fn render(&self) -> Value {
        let mut out = Map::new();
        for (name, source) in &self.sections {
            out.insert(name.clone(), source.config_dump());
        }
        Value::Object(out)
    }
}
