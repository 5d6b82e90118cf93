//! Reading the agents' `/metrics`: the Prometheus / OpenMetrics text format
//! parsed into samples that tests filter by name and labels.

use std::collections::BTreeMap;
use std::fmt;

/// One sample line: `name{label="value",...} value`.
#[derive(Clone, Debug, PartialEq)]
pub struct Sample {
    pub name: String,
    pub labels: BTreeMap<String, String>,
    pub value: f64,
}

/// Every sample of one scrape.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Samples(pub Vec<Sample>);

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[error("metrics line {line}: {reason}: {text:?}")]
pub struct ParseError {
    pub line: usize,
    pub reason: &'static str,
    pub text: String,
}

impl Samples {
    pub fn parse(text: &str) -> Result<Self, ParseError> {
        let mut samples = Vec::new();
        for (i, line) in text.lines().enumerate() {
            let line = line.trim();
            if line.is_empty() || line.starts_with('#') {
                continue;
            }
            let err = |reason| ParseError {
                line: i + 1,
                reason,
                text: line.to_owned(),
            };
            samples.push(parse_line(line).map_err(err)?);
        }
        Ok(Self(samples))
    }

    /// Samples called `name` whose labels include every `(key, value)` of `filter`.
    pub fn matching<'a>(
        &'a self,
        name: &'a str,
        filter: &'a [(&'a str, &'a str)],
    ) -> impl Iterator<Item = &'a Sample> + 'a {
        self.0.iter().filter(move |s| {
            s.name == name
                && filter
                    .iter()
                    .all(|(k, v)| s.labels.get(*k).is_some_and(|have| have == v))
        })
    }

    /// Sum of the matching samples (0 when none match).
    pub fn sum(&self, name: &str, filter: &[(&str, &str)]) -> f64 {
        self.matching(name, filter).map(|s| s.value).sum()
    }

    /// Whether any sample is called `name`.
    pub fn has(&self, name: &str) -> bool {
        self.0.iter().any(|s| s.name == name)
    }
}

impl fmt::Display for Sample {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let labels: Vec<String> = self
            .labels
            .iter()
            .map(|(k, v)| format!("{k}={v:?}"))
            .collect();
        write!(f, "{}{{{}}} {}", self.name, labels.join(","), self.value)
    }
}

fn parse_line(line: &str) -> Result<Sample, &'static str> {
    let name_end = line
        .find(|c: char| c == '{' || c.is_whitespace())
        .ok_or("no value")?;
    let name = line[..name_end].to_owned();
    let mut rest = &line[name_end..];
    let mut labels = BTreeMap::new();
    if let Some(body) = rest.strip_prefix('{') {
        let (parsed, after) = parse_labels(body)?;
        labels = parsed;
        rest = after;
    }
    // A timestamp may follow the value; exemplars (` # {...}`) too.
    let value = rest
        .split_whitespace()
        .next()
        .ok_or("no value")?
        .parse::<f64>()
        .map_err(|_| "value is not a number")?;
    Ok(Sample {
        name,
        labels,
        value,
    })
}

/// Parses `k="v",k2="v2"}` and returns the labels and what follows the `}`.
fn parse_labels(mut s: &str) -> Result<(BTreeMap<String, String>, &str), &'static str> {
    let mut labels = BTreeMap::new();
    loop {
        s = s.trim_start_matches([',', ' ']);
        if let Some(after) = s.strip_prefix('}') {
            return Ok((labels, after));
        }
        let eq = s.find('=').ok_or("label without =")?;
        let key = s[..eq].trim().to_owned();
        s = s[eq + 1..]
            .strip_prefix('"')
            .ok_or("unquoted label value")?;
        let mut value = String::new();
        let mut chars = s.char_indices();
        let end = loop {
            match chars.next() {
                Some((i, '"')) => break i,
                Some((_, '\\')) => match chars.next() {
                    Some((_, 'n')) => value.push('\n'),
                    Some((_, c)) => value.push(c),
                    None => return Err("unterminated escape"),
                },
                Some((_, c)) => value.push(c),
                None => return Err("unterminated label value"),
            }
        };
        labels.insert(key, value);
        s = &s[end + 1..];
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_openmetrics_text() {
        let text = "# HELP istio_tcp_connections_opened Total TCP connections opened.\n\
                    # TYPE istio_tcp_connections_opened counter\n\
                    istio_tcp_connections_opened_total{reporter=\"source\",source_principal=\"spiffe://cluster.local/ns/default/sa/guestbook\",odd=\"a\\\"b\\\\c\"} 3\n\
                    istio_tcp_connections_opened_total{reporter=\"destination\"} 2\n\
                    ambit_state_reloads_total 5 1700000000\n\
                    # EOF\n";
        let s = Samples::parse(text).unwrap();
        assert_eq!(s.0.len(), 3);
        assert_eq!(s.0[0].labels["odd"], "a\"b\\c");
        assert_eq!(s.sum("istio_tcp_connections_opened_total", &[]), 5.0);
        assert_eq!(
            s.sum(
                "istio_tcp_connections_opened_total",
                &[("reporter", "source")]
            ),
            3.0
        );
        assert_eq!(s.sum("ambit_state_reloads_total", &[]), 5.0);
        assert_eq!(s.sum("missing", &[]), 0.0);
        assert!(Samples::parse("x{a=\"1\" 2\n").is_err());
        assert!(Samples::parse("x{a=\"1\"} two\n").is_err());
    }
}
