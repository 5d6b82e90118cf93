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
