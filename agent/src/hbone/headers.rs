//! The two request headers HBONE carries besides `:authority`: RFC 7239
//! `forwarded` (the original client's address) and W3C `baggage` (who the
//! source workload is, for telemetry). Both ends build and read them here so
//! the wire format lives in one place.

use std::net::{IpAddr, SocketAddr};

use http::HeaderValue;

pub const FORWARDED: &str = "forwarded";
pub const BAGGAGE: &str = "baggage";

/// The original client named by `forwarded: for=...`: always an IP, a port when sent.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ForwardedFor {
    pub ip: IpAddr,
    pub port: Option<u16>,
}

impl ForwardedFor {
    /// The `forwarded` header value for a client, quoted as RFC 7239 requires for `ip:port`.
    pub fn header_value(client: SocketAddr) -> HeaderValue {
        // `SocketAddr`'s Display brackets IPv6, which is what RFC 7239 wants.
        let value = format!("for=\"{client}\"");
        // Only digits, dots, colons, brackets and quotes: always a valid header value.
        HeaderValue::from_str(&value).unwrap_or_else(|_| HeaderValue::from_static("for=unknown"))
    }

    /// As [`Self::header_value`], adding `host=<service hostname>` when the
    /// client dialled a Service VIP: ztunnel sends and reads the dialled
    /// Service that way, so the destination reports it in its metrics. A
    /// host that is not a plain DNS name is left out rather than sent broken.
    pub fn header_value_with_host(client: SocketAddr, host: Option<&str>) -> HeaderValue {
        let Some(host) = host.filter(|h| is_hostname(h)) else {
            return Self::header_value(client);
        };
        let value = format!("for=\"{client}\";host={host}");
        HeaderValue::from_str(&value).unwrap_or_else(|_| Self::header_value(client))
    }

    /// Reads the first `for=` of a `forwarded` header. `Ok(None)` when there is no
    /// `for` or it is an obfuscated/unknown node (both allowed by RFC 7239).
    pub fn parse(value: &HeaderValue) -> Result<Option<Self>, HeaderError> {
        let text = value.to_str().map_err(|_| HeaderError::Forwarded)?;
        let Some(first) = text.split(',').next() else {
            return Ok(None);
        };
        for pair in first.split(';') {
            let Some((name, node)) = pair.trim().split_once('=') else {
                return Err(HeaderError::Forwarded);
            };
            if !name.trim().eq_ignore_ascii_case("for") {
                continue;
            }
            let node = node.trim();
            let node = node
                .strip_prefix('"')
                .and_then(|n| n.strip_suffix('"'))
                .unwrap_or(node);
            if node.eq_ignore_ascii_case("unknown") || node.starts_with('_') {
                return Ok(None);
            }
            return Self::parse_node(node).map(Some);
        }
        Ok(None)
    }

    fn parse_node(node: &str) -> Result<Self, HeaderError> {
        if let Ok(addr) = node.parse::<SocketAddr>() {
            return Ok(Self {
                ip: addr.ip(),
                port: Some(addr.port()),
            });
        }
        let bare = node
            .strip_prefix('[')
            .and_then(|n| n.strip_suffix(']'))
            .unwrap_or(node);
        bare.parse::<IpAddr>()
            .map(|ip| Self { ip, port: None })
            .map_err(|_| HeaderError::Forwarded)
    }
}

/// The `host=` of a `forwarded` header's first element: the Service hostname
/// the client dialled. Telemetry only, so anything unreadable is `None`,
/// never a refusal.
pub fn forwarded_host(value: &HeaderValue) -> Option<String> {
    let first = value.to_str().ok()?.split(',').next()?;
    first.split(';').find_map(|pair| {
        let (name, host) = pair.trim().split_once('=')?;
        if !name.trim().eq_ignore_ascii_case("host") {
            return None;
        }
        let host = host.trim();
        let host = host
            .strip_prefix('"')
            .and_then(|h| h.strip_suffix('"'))
            .unwrap_or(host);
        is_hostname(host).then(|| host.to_ascii_lowercase())
    })
}

/// A DNS name (letters, digits, `-`, `.`), as Service hostnames are.
fn is_hostname(host: &str) -> bool {
    !host.is_empty()
        && host.len() <= 253
        && host
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'.')
}

/// W3C baggage entries (`key=value` pairs, properties dropped), in header order.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Baggage(Vec<(String, String)>);

impl Baggage {
    pub fn new(entries: impl IntoIterator<Item = (String, String)>) -> Self {
        Self(entries.into_iter().collect())
    }

    pub fn get(&self, key: &str) -> Option<&str> {
        self.0
            .iter()
            .find(|(k, _)| k == key)
            .map(|(_, v)| v.as_str())
    }

    pub fn entries(&self) -> &[(String, String)] {
        &self.0
    }

    pub fn parse(value: &HeaderValue) -> Result<Self, HeaderError> {
        let text = value.to_str().map_err(|_| HeaderError::Baggage)?;
        let mut entries = Vec::new();
        for member in text.split(',').map(str::trim).filter(|m| !m.is_empty()) {
            let kv = member.split(';').next().unwrap_or(member);
            let (key, value) = kv.split_once('=').ok_or(HeaderError::Baggage)?;
            let key = key.trim();
            if key.is_empty() {
                return Err(HeaderError::Baggage);
            }
            entries.push((key.to_string(), value.trim().to_string()));
        }
        Ok(Self(entries))
    }

    pub fn header_value(&self) -> Result<HeaderValue, HeaderError> {
        let text = self
            .0
            .iter()
            .map(|(k, v)| format!("{k}={v}"))
            .collect::<Vec<_>>()
            .join(",");
        HeaderValue::from_str(&text).map_err(|_| HeaderError::Baggage)
    }
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum HeaderError {
    #[error("malformed forwarded header")]
    Forwarded,
    #[error("malformed baggage header")]
    Baggage,
}

#[cfg(test)]
mod tests {
    use super::*;

    fn hv(s: &str) -> HeaderValue {
        HeaderValue::from_str(s).unwrap()
    }

    #[test]
    fn forwarded_round_trips_v4_and_v6() {
        for client in ["10.0.0.7:43210", "[fd00::7]:443"] {
            let addr: SocketAddr = client.parse().unwrap();
            let value = ForwardedFor::header_value(addr);
            assert_eq!(value.to_str().unwrap(), format!("for=\"{client}\""));
            let parsed = ForwardedFor::parse(&value).unwrap().unwrap();
            assert_eq!((parsed.ip, parsed.port), (addr.ip(), Some(addr.port())));
        }
    }

    #[test]
    fn forwarded_variants() {
        let ip = |s: &str| ForwardedFor::parse(&hv(s)).unwrap().map(|f| (f.ip, f.port));
        assert_eq!(
            ip("for=10.1.2.3"),
            Some(("10.1.2.3".parse().unwrap(), None))
        );
        assert_eq!(
            ip("proto=https;For=\"[::1]\", for=10.9.9.9"),
            Some(("::1".parse().unwrap(), None))
        );
        assert_eq!(ip("for=unknown"), None);
        assert_eq!(ip("for=_hidden"), None);
        assert_eq!(ip("by=10.0.0.1"), None);
        for bad in ["for=not-an-ip", "garbage", "for=\"10.0.0.1:99999\""] {
            assert_eq!(
                ForwardedFor::parse(&hv(bad)),
                Err(HeaderError::Forwarded),
                "{bad}"
            );
        }
    }

    #[test]
    fn forwarded_host_round_trips_beside_for() {
        let client: SocketAddr = "10.0.0.7:43210".parse().unwrap();
        let value = ForwardedFor::header_value_with_host(
            client,
            Some("analyzer.default.svc.cluster.local"),
        );
        assert_eq!(
            value.to_str().unwrap(),
            "for=\"10.0.0.7:43210\";host=analyzer.default.svc.cluster.local"
        );
        let parsed = ForwardedFor::parse(&value).unwrap().unwrap();
        assert_eq!((parsed.ip, parsed.port), (client.ip(), Some(client.port())));
        assert_eq!(
            forwarded_host(&value).as_deref(),
            Some("analyzer.default.svc.cluster.local")
        );
        // A host that is no DNS name is not sent.
        let bad = ForwardedFor::header_value_with_host(client, Some("a b;c"));
        assert_eq!(bad.to_str().unwrap(), "for=\"10.0.0.7:43210\"");
        assert_eq!(forwarded_host(&bad), None);
    }

    #[test]
    fn forwarded_host_variants() {
        let host = |s: &str| forwarded_host(&hv(s));
        assert_eq!(
            host("host=\"Svc.NS.svc\";for=10.0.0.1").as_deref(),
            Some("svc.ns.svc")
        );
        assert_eq!(host("for=10.0.0.1, host=second.ns.svc"), None);
        assert_eq!(host("host=\"not/a/name\""), None);
        assert_eq!(host("for=10.0.0.1"), None);
    }

    #[test]
    fn baggage_parses_and_renders() {
        let b = Baggage::parse(&hv(
            "k8s.namespace.name=default, k8s.deployment.name=guestbook;prop=1,service.name=gb",
        ))
        .unwrap();
        assert_eq!(b.get("k8s.namespace.name"), Some("default"));
        assert_eq!(b.get("k8s.deployment.name"), Some("guestbook"));
        assert_eq!(b.get("missing"), None);
        assert_eq!(
            b.header_value().unwrap(),
            "k8s.namespace.name=default,k8s.deployment.name=guestbook,service.name=gb"
        );
        assert_eq!(Baggage::parse(&hv("novalue")), Err(HeaderError::Baggage));
    }
}
