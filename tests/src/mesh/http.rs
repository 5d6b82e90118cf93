//! A minimal HTTP/1.1 GET, made from inside a namespace, for the agents'
//! readiness, metrics and admin ports. One request per connection; the
//! servers answer with a Content-Length body or close after it.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::time::Duration;

use crate::netns::Netns;

use super::MeshError;

/// A status code and body.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Response {
    pub status: u16,
    pub body: String,
}

/// `GET path` on `addr`, connecting from inside `netns`.
pub fn get(netns: &Netns, addr: SocketAddr, path: &str) -> Result<Response, MeshError> {
    let url = format!("http://{addr}{path}");
    let fail = |reason: String| MeshError::Http {
        url: url.clone(),
        reason,
    };
    let stream = netns
        .run(|| TcpStream::connect_timeout(&addr, Duration::from_secs(2)))?
        .map_err(|e| fail(e.to_string()))?;
    exchange(stream, addr, path).map_err(|e| fail(e.to_string()))
}

fn exchange(mut stream: TcpStream, addr: SocketAddr, path: &str) -> std::io::Result<Response> {
    stream.set_read_timeout(Some(Duration::from_secs(5)))?;
    stream.set_write_timeout(Some(Duration::from_secs(5)))?;
    write!(
        stream,
        "GET {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\nAccept: */*\r\n\r\n"
    )?;
    let mut raw = Vec::new();
    stream.read_to_end(&mut raw)?;
    parse(&raw).ok_or_else(|| {
        std::io::Error::other(format!(
            "malformed HTTP response: {:?}",
            String::from_utf8_lossy(&raw[..raw.len().min(200)])
        ))
    })
}

fn parse(raw: &[u8]) -> Option<Response> {
    let split = raw.windows(4).position(|w| w == b"\r\n\r\n")?;
    let head = std::str::from_utf8(&raw[..split]).ok()?;
    let mut body = &raw[split + 4..];
    let status = head.split_whitespace().nth(1)?.parse().ok()?;
    let header = |name: &str| {
        head.lines().skip(1).find_map(|l| {
            let (k, v) = l.split_once(':')?;
            k.trim().eq_ignore_ascii_case(name).then(|| v.trim())
        })
    };
    let decoded;
    if header("transfer-encoding").is_some_and(|v| v.eq_ignore_ascii_case("chunked")) {
        decoded = dechunk(body)?;
        body = &decoded;
    } else if let Some(len) = header("content-length").and_then(|v| v.parse::<usize>().ok()) {
        body = body.get(..len)?;
    }
    Some(Response {
        status,
        body: String::from_utf8_lossy(body).into_owned(),
    })
}

fn dechunk(mut body: &[u8]) -> Option<Vec<u8>> {
    let mut out = Vec::new();
    loop {
        let line_end = body.windows(2).position(|w| w == b"\r\n")?;
        let size_text = std::str::from_utf8(&body[..line_end]).ok()?;
        let size = usize::from_str_radix(size_text.split(';').next()?.trim(), 16).ok()?;
        body = &body[line_end + 2..];
        if size == 0 {
            return Some(out);
        }
        out.extend_from_slice(body.get(..size)?);
        body = body.get(size + 2..)?;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_length_and_chunked_bodies() {
        let r = parse(b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\nready").unwrap();
        assert_eq!((r.status, r.body.as_str()), (200, "ready"));
        let r = parse(b"HTTP/1.1 503 Service Unavailable\r\ntransfer-encoding: chunked\r\n\r\n4\r\nnot \r\n5\r\nready\r\n0\r\n\r\n").unwrap();
        assert_eq!((r.status, r.body.as_str()), (503, "not ready"));
        assert!(parse(b"garbage").is_none());
    }
}
