//! `/logging`: read the log filter (GET) or replace it (POST `?level=<directives>`).

use http::request::Parts;
use http::{Method, Response, StatusCode};

use super::server::{Body, method_not_allowed, text};
use crate::telemetry::LogHandle;

pub(super) fn handle(parts: &Parts, logs: Option<&LogHandle>) -> Response<Body> {
    let Some(logs) = logs else {
        return text(
            StatusCode::NOT_FOUND,
            "log filter is not reloadable in this process",
        );
    };
    match parts.method {
        Method::GET => text(StatusCode::OK, format!("filter: {}", logs.current())),
        Method::POST | Method::PUT => {
            let Some(level) = query_param(parts.uri.query().unwrap_or(""), "level") else {
                return text(
                    StatusCode::BAD_REQUEST,
                    "missing ?level=<filter>, e.g. ?level=debug or ?level=info,access=off",
                );
            };
            match logs.set_filter(&level) {
                Ok(()) => text(StatusCode::OK, format!("filter: {}", logs.current())),
                Err(error) => text(StatusCode::BAD_REQUEST, error.to_string()),
            }
        }
        _ => method_not_allowed(parts, "GET, POST"),
    }
}

/// The percent-decoded value of `key` in a query string (`+` is a space).
fn query_param(query: &str, key: &str) -> Option<String> {
    query.split('&').find_map(|pair| {
        let (k, v) = pair.split_once('=').unwrap_or((pair, ""));
        (k == key).then(|| percent_decode(v))
    })
}

fn percent_decode(s: &str) -> String {
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        match bytes[i] {
            b'+' => out.push(b' '),
            b'%' if i + 2 < bytes.len() => {
                match std::str::from_utf8(&bytes[i + 1..i + 3])
                    .ok()
                    .and_then(|h| u8::from_str_radix(h, 16).ok())
                {
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn query_values_are_decoded() {
        assert_eq!(
            query_param("a=1&level=info%2Caccess%3Doff", "level").as_deref(),
            Some("info,access=off")
        );
        assert_eq!(
            query_param("level=debug", "level").as_deref(),
            Some("debug")
        );
        assert_eq!(query_param("level", "level").as_deref(), Some(""));
        assert_eq!(query_param("x=1", "level"), None);
        // A truncated escape is kept literally, never a panic.
        assert_eq!(percent_decode("a%2"), "a%2");
        assert_eq!(percent_decode("%zz"), "%zz");
    }
}
