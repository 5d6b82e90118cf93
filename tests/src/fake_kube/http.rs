//! The fake API server's HTTP side: routing `/api/v1/...` and
//! `/apis/<group>/<version>/...` paths, list (with `limit`/`continue`
//! paging), get and TokenReview; watches are in `watch`.

use std::collections::HashMap;
use std::convert::Infallible;
use std::sync::Arc;

use bytes::Bytes;
use http::{Method, Request, Response, StatusCode};
use http_body_util::combinators::BoxBody;
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper_util::rt::{TokioExecutor, TokioIo};
use serde_json::{Value, json};
use tokio::net::TcpListener;
use tokio::task::JoinSet;

use super::store::{Selector, selected};
use super::watch_stream::watch;
use super::{KINDS, Kind, Shared};

pub(super) type Body = BoxBody<Bytes, Infallible>;

pub(super) async fn serve(listener: TcpListener, shared: Arc<Shared>) {
    // Dropping the set (when this task is aborted) aborts every connection.
    let mut connections = JoinSet::new();
    loop {
        let Ok((stream, _)) = listener.accept().await else {
            continue;
        };
        let shared = shared.clone();
        connections.spawn(async move {
            let service = hyper::service::service_fn(move |req| {
                let shared = shared.clone();
                async move { Ok::<_, Infallible>(handle(shared, req).await) }
            });
            let _ = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new())
                .serve_connection(TokioIo::new(stream), service)
                .await;
        });
        while connections.try_join_next().is_some() {}
    }
}

/// A parsed resource path.
pub(super) struct Target {
    pub kind: &'static Kind,
    pub version: String,
    pub namespace: Option<String>,
    pub name: Option<String>,
}

async fn handle(shared: Arc<Shared>, req: Request<Incoming>) -> Response<Body> {
    let query = parse_query(req.uri().query().unwrap_or_default());
    let segments: Vec<String> = req
        .uri()
        .path()
        .split('/')
        .filter(|s| !s.is_empty())
        .map(str::to_owned)
        .collect();
    let segments: Vec<&str> = segments.iter().map(String::as_str).collect();

    if req.method() == Method::POST
        && segments == ["apis", "authentication.k8s.io", "v1", "tokenreviews"]
    {
        let body = match req.into_body().collect().await {
            Ok(b) => b.to_bytes(),
            Err(e) => return status(StatusCode::BAD_REQUEST, "BadRequest", &e.to_string()),
        };
        return token_review(&shared, &body);
    }
    if req.method() != Method::GET {
        return status(
            StatusCode::METHOD_NOT_ALLOWED,
            "MethodNotAllowed",
            "read-only fake",
        );
    }
    let Some(target) = route(&segments) else {
        return status(
            StatusCode::NOT_FOUND,
            "NotFound",
            "the server could not find the requested resource",
        );
    };
    let broken = shared.broken.lock().get(target.kind.plural).copied();
    if let Some(code) = broken {
        *shared
            .counts
            .lock()
            .broken
            .entry(target.kind.plural)
            .or_insert(0) += 1;
        return match code {
            404 => status(
                StatusCode::NOT_FOUND,
                "NotFound",
                "the server could not find the requested resource",
            ),
            _ => status(
                StatusCode::INTERNAL_SERVER_ERROR,
                "InternalError",
                "an error on the server has prevented the request from succeeding",
            ),
        };
    }
    if shared.forbidden.lock().contains(target.kind.plural) {
        let message = format!(
            "{} is forbidden: User cannot list resource {:?} in API group {:?} at the cluster scope",
            target.kind.plural, target.kind.plural, target.kind.group
        );
        return status(StatusCode::FORBIDDEN, "Forbidden", &message);
    }
    let selectors = (
        Selector::parse(query.get("labelSelector").map_or("", String::as_str)),
        Selector::parse(query.get("fieldSelector").map_or("", String::as_str)),
    );
    let (Ok(labels), Ok(fields)) = selectors else {
        return status(StatusCode::BAD_REQUEST, "BadRequest", "invalid selector");
    };
    if let Some(name) = &target.name {
        return get(&shared, &target, name);
    }
    if matches!(query.get("watch").map(String::as_str), Some("true" | "1")) {
        shared
            .counts
            .lock()
            .watches
            .entry(target.kind.plural)
            .and_modify(|n| *n += 1)
            .or_insert(1);
        return watch(shared, target, &query, labels, fields);
    }
    shared
        .counts
        .lock()
        .lists
        .entry(target.kind.plural)
        .and_modify(|n| *n += 1)
        .or_insert(1);
    list(&shared, &target, &query, &labels, &fields)
}

fn route(segments: &[&str]) -> Option<Target> {
    let (group, version, rest) = match segments {
        ["api", version, rest @ ..] => ("", *version, rest),
        ["apis", group, version, rest @ ..] => (*group, *version, rest),
        _ => return None,
    };
    let (namespace, plural, name) = match rest {
        [plural] => (None, *plural, None),
        ["namespaces", name] => (None, "namespaces", Some(*name)),
        ["namespaces", ns, plural] => (Some(*ns), *plural, None),
        ["namespaces", ns, plural, name] => (Some(*ns), *plural, Some(*name)),
        [plural, name] => (None, *plural, Some(*name)),
        _ => return None,
    };
    let kind = KINDS
        .iter()
        .copied()
        .find(|k| k.group == group && k.plural == plural && k.versions.contains(&version))?;
    if namespace.is_some() && !kind.namespaced {
        return None;
    }
    Some(Target {
        kind,
        version: version.to_owned(),
        namespace: namespace.map(str::to_owned),
        name: name.map(str::to_owned),
    })
}

/// The object as served at the requested version.
pub(super) fn served(object: &Value, target: &Target) -> Value {
    let mut object = object.clone();
    object["apiVersion"] = Value::String(target.kind.api_version(&target.version));
    object["kind"] = Value::String(target.kind.kind.to_owned());
    object
}

fn get(shared: &Shared, target: &Target, name: &str) -> Response<Body> {
    let namespace = target.namespace.as_deref().unwrap_or_default();
    match shared.store.lock().get(target.kind, namespace, name) {
        Some(object) => json_response(StatusCode::OK, &served(&object, target)),
        None => status(
            StatusCode::NOT_FOUND,
            "NotFound",
            &format!("{} {name:?} not found", target.kind.plural),
        ),
    }
}

fn list(
    shared: &Shared,
    target: &Target,
    query: &HashMap<String, String>,
    labels: &Selector,
    fields: &Selector,
) -> Response<Body> {
    let store = shared.store.lock();
    // A continue token is `<version of the first page>:<namespace>/<name>` of
    // the last item sent; later pages keep the first page's version.
    let (version, after) = match query.get("continue").and_then(|c| c.split_once(':')) {
        Some((v, after)) => (
            v.parse().unwrap_or(store.resource_version()),
            Some(after.to_owned()),
        ),
        None => (store.resource_version(), None),
    };
    let limit = query
        .get("limit")
        .and_then(|l| l.parse::<usize>().ok())
        .filter(|l| *l > 0);
    let key = |o: &Value| {
        let m = &o["metadata"];
        (
            m["namespace"].as_str().unwrap_or_default().to_owned(),
            m["name"].as_str().unwrap_or_default().to_owned(),
        )
    };
    let after = after.and_then(|a| {
        a.split_once('/')
            .map(|(ns, name)| (ns.to_owned(), name.to_owned()))
    });
    let mut items = Vec::new();
    let mut next = None;
    for object in store.list_after(target.kind, after) {
        let in_namespace = target
            .namespace
            .as_deref()
            .is_none_or(|want| object["metadata"]["namespace"].as_str() == Some(want));
        if !in_namespace || !selected(object, labels, fields) {
            continue;
        }
        if limit.is_some_and(|l| items.len() == l) {
            next = items.last().map(|last: &Value| {
                let (ns, name) = key(last);
                format!("{version}:{ns}/{name}")
            });
            break;
        }
        items.push(served(object, target));
    }
    let mut metadata = json!({ "resourceVersion": version.to_string() });
    if let Some(next) = next {
        metadata["continue"] = Value::String(next);
    }
    drop(store);
    let count = items.len() as u64;
    let body = json!({
        "apiVersion": target.kind.api_version(&target.version),
        "kind": format!("{}List", target.kind.kind),
        "metadata": metadata,
        "items": items,
    });
    let bytes = serde_json::to_vec(&body).unwrap_or_default();
    {
        let mut counts = shared.counts.lock();
        let traffic = counts.traffic.entry(target.kind.plural).or_default();
        traffic.list_bytes += bytes.len() as u64;
        traffic.list_items += count;
    }
    bytes_response(StatusCode::OK, bytes)
}

fn token_review(shared: &Shared, body: &[u8]) -> Response<Body> {
    shared.counts.lock().token_reviews += 1;
    let Ok(review) = serde_json::from_slice::<Value>(body) else {
        return status(
            StatusCode::BAD_REQUEST,
            "BadRequest",
            "body is not a TokenReview",
        );
    };
    let token = review["spec"]["token"].as_str().unwrap_or_default();
    let asked: Vec<String> = review["spec"]["audiences"]
        .as_array()
        .map(|a| {
            a.iter()
                .filter_map(|v| v.as_str().map(str::to_owned))
                .collect()
        })
        .unwrap_or_default();
    let user = shared.tokens.lock().get(token).cloned();
    // With audiences asked, the token must be for one of them (the API
    // server's rule); the answer lists the ones that matched.
    let status_json = match user {
        Some(user) if asked.is_empty() || asked.iter().any(|a| user.audiences.contains(a)) => {
            let audiences: Vec<&String> = if asked.is_empty() {
                user.audiences.iter().collect()
            } else {
                asked
                    .iter()
                    .filter(|a| user.audiences.contains(a))
                    .collect()
            };
            json!({
                "authenticated": true,
                "user": {
                    "username": user.username,
                    "uid": user.uid,
                    "groups": user.groups,
                    "extra": user.extra,
                },
                "audiences": audiences,
            })
        }
        Some(_) => {
            json!({ "authenticated": false, "error": "token audiences is invalid for the target audiences" })
        }
        None => json!({ "authenticated": false, "error": "invalid bearer token" }),
    };
    let body = json!({
        "apiVersion": "authentication.k8s.io/v1",
        "kind": "TokenReview",
        "metadata": { "creationTimestamp": null },
        "spec": review["spec"],
        "status": status_json,
    });
    json_response(StatusCode::CREATED, &body)
}

pub(super) fn status_body(code: u16, reason: &str, message: &str) -> Value {
    json!({
        "apiVersion": "v1",
        "kind": "Status",
        "metadata": {},
        "status": "Failure",
        "message": message,
        "reason": reason,
        "code": code,
    })
}

pub(super) fn status(code: StatusCode, reason: &str, message: &str) -> Response<Body> {
    json_response(code, &status_body(code.as_u16(), reason, message))
}

fn json_response(code: StatusCode, body: &Value) -> Response<Body> {
    bytes_response(code, serde_json::to_vec(body).unwrap_or_default())
}

fn bytes_response(code: StatusCode, bytes: Vec<u8>) -> Response<Body> {
    Response::builder()
        .status(code)
        .header(http::header::CONTENT_TYPE, "application/json")
        .body(BodyExt::boxed(Full::new(Bytes::from(bytes))))
        .unwrap_or_else(|_| Response::new(empty()))
}

pub(super) fn empty() -> Body {
    BodyExt::boxed(Full::new(Bytes::new()))
}

fn parse_query(query: &str) -> HashMap<String, String> {
    query
        .split('&')
        .filter(|p| !p.is_empty())
        .map(|pair| {
            let (k, v) = pair.split_once('=').unwrap_or((pair, ""));
            (percent_decode(k), percent_decode(v))
        })
        .collect()
}

fn percent_decode(text: &str) -> String {
    let bytes = text.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        match bytes[i] {
            b'+' => out.push(b' '),
            b'%' if i + 2 < bytes.len() => {
                let hex = std::str::from_utf8(&bytes[i + 1..i + 3]).ok();
                match hex.and_then(|h| u8::from_str_radix(h, 16).ok()) {
                    Some(b) => {
                        out.push(b);
                        i += 2;
                    }
                    None => out.push(b'%'),
                }
            }
            b => out.push(b),
        }
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}
