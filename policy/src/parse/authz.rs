//! AuthorizationPolicy spec to [`AuthzPolicy`].

use serde_json::{Map, Value};

use super::json::{self, FieldError, Path};
use super::{Meta, Problem};
use crate::model::{
    Action, AuthzPolicy, Condition, ConditionKey, ConditionValues, Effect, HostMatch,
    HttpCondition, HttpKey, HttpOperation, HttpSource, IpMatch, NeedsHttp, Operation, PortSet,
    Rule, Selector, Source, StringMatch,
};

const SPEC_FIELDS: &[&str] = &[
    "selector",
    "rules",
    "action",
    "provider",
    "targetRef",
    "targetRefs",
];
const SOURCE_FIELDS: &[&str] = &[
    "principals",
    "notPrincipals",
    "requestPrincipals",
    "notRequestPrincipals",
    "namespaces",
    "notNamespaces",
    "serviceAccounts",
    "notServiceAccounts",
    "ipBlocks",
    "notIpBlocks",
    "remoteIpBlocks",
    "notRemoteIpBlocks",
];
const OPERATION_FIELDS: &[&str] = &[
    "hosts",
    "notHosts",
    "ports",
    "notPorts",
    "methods",
    "notMethods",
    "paths",
    "notPaths",
];

/// Compiles an AuthorizationPolicy; any problem is reported through `fail` and
/// leaves the policy `Effect::Invalid` for whatever it selects (the whole
/// namespace when the selector itself is unreadable).
pub(super) fn compile(obj: &Value, meta: &Meta, fail: &mut impl FnMut(FieldError)) -> AuthzPolicy {
    let path = Path::root().field("spec");
    let mut policy = AuthzPolicy {
        id: meta.id.as_str().into(),
        namespace: meta.namespace.as_str().into(),
        selector: None,
        action: Action::Allow,
        effect: Effect::Invalid,
        l7_rules: Vec::new(),
        rule_fields: Vec::new(),
        http_rules: Vec::new(),
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
    let bound = |k: &str| spec.get(k).is_some_and(|v| !v.is_null());
    if bound("targetRef") || bound("targetRefs") {
        policy.effect = Effect::Waypoint;
        return policy;
    }
    match compile_body(spec, &path, &mut policy) {
        Ok(effect) if valid => policy.effect = effect,
        Ok(_) => {}
        Err(e) => fail(e),
    }
    policy
}

fn compile_body(
    spec: &Map<String, Value>,
    path: &Path,
    policy: &mut AuthzPolicy,
) -> json::Result<Effect> {
    json::known_fields(spec, SPEC_FIELDS, path)?;
    let action_path = path.field("action");
    policy.action = match json::opt_str(spec.get("action"), &action_path)? {
        None | Some("ALLOW") => Action::Allow,
        Some("DENY") => Action::Deny,
        Some("AUDIT") => Action::Audit,
        Some("CUSTOM") => Action::Custom,
        Some(other) => return Err(action_path.error(Problem::UnknownAction(other.into()))),
    };
    let rules_path = path.field("rules");
    let compiled = json::list(spec.get("rules"), &rules_path, compile_rule)?;
    let mut rules = Vec::with_capacity(compiled.len());
    let decides = matches!(policy.action, Action::Allow | Action::Deny);
    for (index, (mut rule, fields)) in compiled.into_iter().enumerate() {
        rule.index = index;
        let needs_l7 = !fields.is_empty();
        if needs_l7 {
            policy.l7_rules.push(NeedsHttp {
                rule: index,
                fields,
            });
        }
        if decides {
            policy.http_rules.push(rule.clone());
        }
        // An ALLOW rule needing L7 can never be shown to match at L4.
        if !(needs_l7 && policy.action == Action::Allow) {
            rules.push(rule);
        }
    }
    policy.rule_fields = spec
        .get("rules")
        .and_then(Value::as_array)
        .map(|raw| {
            raw.iter()
                .enumerate()
                .map(|(i, rule)| {
                    let http = policy.l7_rules.iter().find(|n| n.rule == i);
                    super::rule_fields::rule_fields(rule, http.map_or(&[], |n| &n.fields))
                })
                .collect()
        })
        .unwrap_or_default();
    Ok(match policy.action {
        Action::Allow => Effect::Allow(rules),
        Action::Deny => Effect::Deny(rules),
        Action::Audit => Effect::Audit,
        Action::Custom => Effect::Custom,
    })
}

/// A rule, and the fields of its HTTP part (empty when it has none).
pub(super) fn compile_rule(v: &Value, path: &Path) -> json::Result<(Rule, Vec<String>)> {
    let map = json::object(v, path)?;
    json::known_fields(map, &["from", "to", "when"], path)?;
    let mut l7: Vec<String> = Vec::new();
    let mut note = |fields: Vec<&str>| {
        for f in fields {
            if !l7.iter().any(|have| have == f) {
                l7.push(f.to_owned());
            }
        }
    };
    let from = json::list(map.get("from"), &path.field("from"), |from, p| {
        let from = json::object(from, p)?;
        json::known_fields(from, &["source"], p)?;
        let p = p.field("source");
        let source =
            json::opt_object(from.get("source"), &p)?.ok_or_else(|| p.error(Problem::Missing))?;
        let source = compile_source(source, &p)?;
        note(source.http.fields());
        Ok(source)
    })?;
    let to = json::list(map.get("to"), &path.field("to"), |to, p| {
        let to = json::object(to, p)?;
        json::known_fields(to, &["operation"], p)?;
        let p = p.field("operation");
        let op =
            json::opt_object(to.get("operation"), &p)?.ok_or_else(|| p.error(Problem::Missing))?;
        let op = compile_operation(op, &p)?;
        note(op.http.fields());
        Ok(op)
    })?;
    let mut when = Vec::new();
    let mut http_when = Vec::new();
    for cond in json::list(map.get("when"), &path.field("when"), compile_condition)? {
        match cond {
            Cond::L4(cond) => when.push(cond),
            Cond::Http(key, cond) => {
                note(vec![key.as_str()]);
                http_when.push(cond);
            }
        }
    }
    Ok((
        Rule {
            index: 0,
            from,
            to,
            when,
            http_when,
        },
        l7,
    ))
}

/// Whether any of `fields` holds a non-empty list (an empty list is unset).
fn any_set(map: &Map<String, Value>, fields: &[&str], path: &Path) -> json::Result<bool> {
    for f in fields {
        if !json::str_list(map.get(*f), &path.field(f))?.is_empty() {
            return Ok(true);
        }
    }
    Ok(false)
}

fn compile_source(map: &Map<String, Value>, path: &Path) -> json::Result<Source> {
    json::known_fields(map, SOURCE_FIELDS, path)?;
    if !any_set(map, SOURCE_FIELDS, path)? {
        return Err(path.error(Problem::Empty));
    }
    let principals = |f: &str| strings(map, f, path, principal);
    let names = |f: &str| strings(map, f, path, plain_value);
    let accounts = |f: &str| strings(map, f, path, service_account);
    let requests = |f: &str| strings(map, f, path, request_value);
    let ips = |f: &str| -> json::Result<Option<IpMatch>> {
        let set = cidrs(map.get(f), &path.field(f))?;
        Ok((!set.is_empty()).then_some(set))
    };
    let source = Source {
        principals: principals("principals")?,
        not_principals: principals("notPrincipals")?,
        namespaces: names("namespaces")?,
        not_namespaces: names("notNamespaces")?,
        service_accounts: accounts("serviceAccounts")?,
        not_service_accounts: accounts("notServiceAccounts")?,
        ip_blocks: [ips("ipBlocks")?, ips("remoteIpBlocks")?]
            .into_iter()
            .flatten()
            .collect(),
        not_ip_blocks: [ips("notIpBlocks")?, ips("notRemoteIpBlocks")?]
            .into_iter()
            .flatten()
            .collect(),
        http: HttpSource {
            request_principals: requests("requestPrincipals")?,
            not_request_principals: requests("notRequestPrincipals")?,
        },
    };
    Ok(source)
}

fn compile_operation(map: &Map<String, Value>, path: &Path) -> json::Result<Operation> {
    json::known_fields(map, OPERATION_FIELDS, path)?;
    let ports = |f: &str| -> json::Result<PortSet> {
        let p = path.field(f);
        Ok(PortSet::new(json::list(map.get(f), &p, json::port)?))
    };
    let values = |f: &str| strings(map, f, path, request_value);
    let hosts = |f: &str| -> json::Result<Vec<HostMatch>> {
        let p = path.field(f);
        json::list(map.get(f), &p, |v, p| {
            let s = v
                .as_str()
                .ok_or_else(|| p.error(Problem::WrongType("a string")))?;
            request_value(s).map_err(|problem| p.error(problem))?;
            HostMatch::parse(s).ok_or_else(|| p.error(Problem::MalformedValue(s.into())))
        })
    };
    let op = Operation {
        ports: ports("ports")?,
        not_ports: ports("notPorts")?,
        http: HttpOperation {
            methods: values("methods")?,
            not_methods: values("notMethods")?,
            paths: values("paths")?,
            not_paths: values("notPaths")?,
            hosts: hosts("hosts")?,
            not_hosts: hosts("notHosts")?,
        },
    };
    if op.ports.is_empty() && op.not_ports.is_empty() && op.http.is_empty() {
        return Err(path.error(Problem::Empty));
    }
    Ok(op)
}

/// A compiled `when` entry: L4, or HTTP-level with its key as written.
enum Cond {
    L4(Condition),
    Http(String, HttpCondition),
}

fn compile_condition(v: &Value, path: &Path) -> json::Result<Cond> {
    let map = json::object(v, path)?;
    json::known_fields(map, &["key", "values", "notValues"], path)?;
    let key_path = path.field("key");
    let key = json::opt_str(map.get("key"), &key_path)?
        .ok_or_else(|| key_path.error(Problem::Missing))?;
    let values_path = path.field("values");
    let not_values_path = path.field("notValues");
    let raw_values = json::list(map.get("values"), &values_path, |v, p| Ok((v, p.clone())))?;
    let raw_not = json::list(map.get("notValues"), &not_values_path, |v, p| {
        Ok((v, p.clone()))
    })?;
    if raw_values.is_empty() && raw_not.is_empty() {
        return Err(path.error(Problem::NoConditionValues));
    }
    let Some(cond_key) = ConditionKey::parse(key) else {
        let Some(http_key) = HttpKey::parse(key) else {
            return Err(key_path.error(Problem::UnknownConditionKey(key.into())));
        };
        let read = |raw: &[(&Value, Path)]| -> json::Result<Vec<StringMatch>> {
            raw.iter()
                .map(|(v, p)| {
                    let s = v
                        .as_str()
                        .ok_or_else(|| p.error(Problem::WrongType("a string")))?;
                    request_value(s).map_err(|problem| p.error(problem))
                })
                .collect()
        };
        return Ok(Cond::Http(
            key.to_owned(),
            HttpCondition {
                key: http_key,
                values: read(&raw_values)?,
                not_values: read(&raw_not)?,
            },
        ));
    };
    let typed = |raw: Vec<(&Value, Path)>| -> json::Result<Option<ConditionValues>> {
        if raw.is_empty() {
            return Ok(None);
        }
        Some(condition_values(cond_key, raw)).transpose()
    };
    Ok(Cond::L4(Condition {
        key: cond_key,
        values: typed(raw_values)?,
        not_values: typed(raw_not)?,
    }))
}

fn condition_values(key: ConditionKey, raw: Vec<(&Value, Path)>) -> json::Result<ConditionValues> {
    let string = |v: &Value, p: &Path| -> json::Result<String> {
        v.as_str()
            .map(str::to_owned)
            .ok_or_else(|| p.error(Problem::WrongType("a string")))
    };
    Ok(match key {
        ConditionKey::SourceIp | ConditionKey::RemoteIp | ConditionKey::DestinationIp => {
            let mut nets = Vec::with_capacity(raw.len());
            for (v, p) in &raw {
                let s = string(v, p)?;
                nets.push(IpMatch::parse_one(&s).ok_or_else(|| p.error(Problem::BadCidr(s)))?);
            }
            ConditionValues::Ips(IpMatch::new(nets))
        }
        ConditionKey::DestinationPort => {
            let ports: json::Result<Vec<u16>> = raw.iter().map(|(v, p)| json::port(v, p)).collect();
            ConditionValues::Ports(PortSet::new(ports?))
        }
        ConditionKey::SourcePrincipal | ConditionKey::SourceNamespace => {
            let check = if key == ConditionKey::SourcePrincipal {
                principal
            } else {
                plain_value
            };
            let mut out = Vec::with_capacity(raw.len());
            for (v, p) in &raw {
                out.push(check(&string(v, p)?).map_err(|problem| p.error(problem))?);
            }
            ConditionValues::Strings(out)
        }
    })
}

fn strings(
    map: &Map<String, Value>,
    field: &str,
    path: &Path,
    check: fn(&str) -> Result<StringMatch, Problem>,
) -> json::Result<Vec<StringMatch>> {
    let p = path.field(field);
    json::list(map.get(field), &p, |v, p| {
        let s = v
            .as_str()
            .ok_or_else(|| p.error(Problem::WrongType("a string")))?;
        check(s).map_err(|problem| p.error(problem))
    })
}

fn principal(s: &str) -> Result<StringMatch, Problem> {
    let malformed = || Problem::MalformedPrincipal(s.into());
    if s.starts_with("spiffe://") || s.chars().any(|c| c.is_whitespace() || c.is_control()) {
        return Err(malformed());
    }
    StringMatch::parse(s).ok_or_else(malformed)
}

/// A request attribute to match (method, path, host, header or claim value):
/// may hold spaces, never control characters.
fn request_value(s: &str) -> Result<StringMatch, Problem> {
    if s.chars().any(char::is_control) {
        return Err(Problem::MalformedValue(s.into()));
    }
    StringMatch::parse(s).ok_or_else(|| Problem::MalformedValue(s.into()))
}

fn plain_value(s: &str) -> Result<StringMatch, Problem> {
    if s.chars().any(|c| c.is_whitespace() || c.is_control()) {
        return Err(Problem::MalformedValue(s.into()));
    }
    StringMatch::parse(s).ok_or_else(|| Problem::MalformedValue(s.into()))
}

fn service_account(s: &str) -> Result<StringMatch, Problem> {
    let malformed = || Problem::MalformedServiceAccount(s.into());
    let (ns, sa) = s.split_once('/').ok_or_else(malformed)?;
    let part_ok = |p: &str| {
        !p.is_empty()
            && p.chars()
                .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '.')
    };
    if !part_ok(ns) || !part_ok(sa) {
        return Err(malformed());
    }
    Ok(StringMatch::Suffix(format!("/ns/{ns}/sa/{sa}").into()))
}

fn cidrs(v: Option<&Value>, path: &Path) -> json::Result<IpMatch> {
    let nets = json::list(v, path, |v, p| {
        let s = v
            .as_str()
            .ok_or_else(|| p.error(Problem::WrongType("a string")))?;
        IpMatch::parse_one(s.trim()).ok_or_else(|| p.error(Problem::BadCidr(s.into())))
    })?;
    Ok(IpMatch::new(nets))
}
