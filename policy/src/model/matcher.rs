//! Value matchers shared by sources, operations and conditions: strings with
//! Istio's wildcards, CIDR sets and port sets.

use std::net::IpAddr;

use ipnet::IpNet;

/// A principal, namespace or condition value: exact, `prefix*`, `*suffix`, or
/// `*` (any present value).
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) enum StringMatch {
    Any,
    Exact(Box<str>),
    Prefix(Box<str>),
    Suffix(Box<str>),
}

impl StringMatch {
    /// `None` when `*` appears anywhere but alone or at one end.
    pub(crate) fn parse(s: &str) -> Option<Self> {
        if s == "*" {
            return Some(Self::Any);
        }
        let m = if let Some(rest) = s.strip_prefix('*') {
            Self::Suffix(rest.into())
        } else if let Some(rest) = s.strip_suffix('*') {
            Self::Prefix(rest.into())
        } else {
            Self::Exact(s.into())
        };
        let inner = match &m {
            Self::Exact(v) | Self::Prefix(v) | Self::Suffix(v) => v,
            Self::Any => return Some(m),
        };
        (!inner.is_empty() && !inner.contains('*')).then_some(m)
    }

    pub(crate) fn matches(&self, value: &str) -> bool {
        match self {
            Self::Any => true,
            Self::Exact(v) => value == &**v,
            Self::Prefix(p) => value.starts_with(&**p),
            Self::Suffix(s) => value.ends_with(&**s),
        }
    }
}

/// Any-of over string matchers.
pub(crate) fn any_string(set: &[StringMatch], value: &str) -> bool {
    set.iter().any(|m| m.matches(value))
}

/// A set of networks; a bare address is a /32 or /128.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub(crate) struct IpMatch {
    nets: Vec<IpNet>,
}

impl IpMatch {
    pub(crate) fn new(nets: Vec<IpNet>) -> Self {
        Self { nets }
    }

    pub(crate) fn parse_one(s: &str) -> Option<IpNet> {
        s.parse::<IpNet>()
            .ok()
            .or_else(|| s.parse::<IpAddr>().ok().map(IpNet::from))
    }

    pub(crate) fn is_empty(&self) -> bool {
        self.nets.is_empty()
    }

    pub(crate) fn nets(&self) -> &[IpNet] {
        &self.nets
    }

    pub(crate) fn contains(&self, ip: IpAddr) -> bool {
        // A dual-stack socket reports IPv4 peers as ::ffff:a.b.c.d; policies name
        // them as IPv4.
        let ip = ip.to_canonical();
        self.nets.iter().any(|n| n.contains(&ip))
    }
}

/// A set of destination ports.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub(crate) struct PortSet {
    ports: Vec<u16>,
}

impl PortSet {
    pub(crate) fn new(ports: Vec<u16>) -> Self {
        Self { ports }
    }

    pub(crate) fn is_empty(&self) -> bool {
        self.ports.is_empty()
    }

    pub(crate) fn ports(&self) -> &[u16] {
        &self.ports
    }

    pub(crate) fn contains(&self, port: u16) -> bool {
        self.ports.contains(&port)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn wildcards() {
        let cases = [
            ("*", "anything", true),
            ("a/b", "a/b", true),
            ("a/b", "a/bc", false),
            ("cluster.local/ns/x/*", "cluster.local/ns/x/sa/y", true),
            ("cluster.local/ns/x/*", "cluster.local/ns/xy/sa/y", false),
            ("*/sa/y", "td/ns/x/sa/y", true),
            ("*/sa/y", "td/ns/x/sa/yy", false),
        ];
        for (pattern, value, want) in cases {
            let m = StringMatch::parse(pattern).unwrap();
            assert_eq!(m.matches(value), want, "{pattern} vs {value}");
        }
        for bad in ["", "a*b", "*a*", "**", "a**"] {
            assert_eq!(StringMatch::parse(bad), None, "{bad:?}");
        }
    }

    #[test]
    fn cidrs_v4_v6_and_mapped() {
        let set = IpMatch::new(
            ["10.1.0.0/16", "2001:db8::/32", "192.168.1.7"]
                .iter()
                .map(|s| IpMatch::parse_one(s).unwrap())
                .collect(),
        );
        for (ip, want) in [
            ("10.1.200.3", true),
            ("10.2.0.1", false),
            ("::ffff:10.1.0.1", true),
            ("2001:db8:1::5", true),
            ("2001:db9::1", false),
            ("192.168.1.7", true),
            ("192.168.1.8", false),
        ] {
            assert_eq!(set.contains(ip.parse().unwrap()), want, "{ip}");
        }
        assert_eq!(IpMatch::parse_one("10.0.0/8"), None);
        assert_eq!(IpMatch::parse_one("10.0.0.0/33"), None);
    }
}
