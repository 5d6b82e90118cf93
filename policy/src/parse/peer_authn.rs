//! PeerAuthentication spec to [`PeerAuthn`].

use serde_json::{Map, Value};

use super::json::{self, FieldError, Path};
use super::{Meta, Problem};
use crate::model::{MtlsMode, PeerAuthn, Selector};

/// Compiles a PeerAuthentication; any problem is reported through `fail` and
/// leaves the policy applying STRICT to whatever it selects (refusing plaintext
/// is the closed side of mTLS).
pub(super) fn compile(obj: &Value, meta: &Meta, fail: &mut impl FnMut(FieldError)) -> PeerAuthn {
    let path = Path::root().field("spec");
    let mut policy = PeerAuthn {
        id: meta.id.as_str().into(),
        namespace: meta.namespace.as_str().into(),
        selector: None,
        mode: Some(MtlsMode::Strict),
        port_modes: Vec::new(),
        created: meta.created.as_deref().map(Into::into),
        invalid: true,
    };
    let spec = match json::opt_object(obj.get("spec"), &path) {
        Ok(spec) => spec,
        Err(e) => {
            fail(e);
            return policy;
        }
    };
    let empty = Map::new();
    let spec = spec.unwrap_or(&empty);
    let mut valid = true;
    match json::match_labels(spec.get("selector"), &path.field("selector")) {
        Ok(labels) => policy.selector = Selector::new(labels),
        Err(e) => {
            fail(e);
            valid = false;
        }
    }
    match compile_modes(spec, &path, policy.selector.is_some()) {
        Ok((mode, port_modes)) if valid => {
            policy.mode = mode;
            policy.port_modes = port_modes;
            policy.invalid = false;
        }
        Ok(_) => {}
        Err(e) => fail(e),
    }
    policy
}

type Modes = (Option<MtlsMode>, Vec<(u16, Option<MtlsMode>)>);

fn compile_modes(
    spec: &Map<String, Value>,
    path: &Path,
    has_selector: bool,
) -> json::Result<Modes> {
    json::known_fields(spec, &["selector", "mtls", "portLevelMtls"], path)?;
    let mode = mtls(spec.get("mtls"), &path.field("mtls"))?;
    let ports_path = path.field("portLevelMtls");
    let mut port_modes = Vec::new();
    if let Some(ports) = json::opt_object(spec.get("portLevelMtls"), &ports_path)? {
        if !ports.is_empty() && !has_selector {
            return Err(ports_path.error(Problem::PortLevelWithoutSelector));
        }
        for (port, v) in ports {
            let p = ports_path.field(port);
            let number = json::port(&Value::String(port.clone()), &p)?;
            port_modes.push((number, mtls(Some(v), &p)?));
        }
    }
    Ok((mode, port_modes))
}

/// An `mtls` block: `None` for UNSET or absent.
fn mtls(v: Option<&Value>, path: &Path) -> json::Result<Option<MtlsMode>> {
    let Some(block) = json::opt_object(v, path)? else {
        return Ok(None);
    };
    json::known_fields(block, &["mode"], path)?;
    let mode_path = path.field("mode");
    Ok(match json::opt_str(block.get("mode"), &mode_path)? {
        None | Some("UNSET") => None,
        Some("STRICT") => Some(MtlsMode::Strict),
        Some("PERMISSIVE") => Some(MtlsMode::Permissive),
        Some("DISABLE") => Some(MtlsMode::Disable),
        Some(other) => return Err(mode_path.error(Problem::UnknownMode(other.into()))),
    })
}
