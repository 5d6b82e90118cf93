//! HTTP/1 message heads as the L7 path reads them: parsed by httparse
//! (hyper's own parser) into offsets over the bytes as they arrived, so a
//! head nothing changes is forwarded byte for byte, and how each message's
//! body is framed (RFC 9112 §6). The framings request smuggling relies on
//! (Transfer-Encoding beside Content-Length, disagreeing lengths, codings
//! other than `chunked`, bare LF line ends, two Hosts) are refused here, so
//! the pod never reads a request's end differently from the agent.

use std::ops::Range;

use bytes::{Bytes, BytesMut};

/// Largest head read (Envoy's default is 60 KiB).
pub const MAX_HEAD: usize = 64 * 1024;
/// Most header fields one head may carry.
pub const MAX_HEADERS: usize = 100;

/// How a message's body ends.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Framing {
    None,
    Length(u64),
    Chunked,
    /// A response without length: its body ends when the pod closes.
    UntilClose,
}

/// Why a head was refused; [`status`](Self::status) is the answer.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum HeadError {
    #[error("head larger than {MAX_HEAD} bytes")]
    TooLarge,
    #[error("more than {MAX_HEADERS} header fields")]
    TooManyHeaders,
    #[error("malformed head: {0}")]
    Malformed(&'static str),
    #[error("Transfer-Encoding and Content-Length together")]
    LengthAndCoding,
    #[error("invalid or disagreeing Content-Length")]
    BadLength,
    #[error("Transfer-Encoding other than chunked")]
    UnsupportedCoding,
    #[error("the head did not arrive in time")]
    TimedOut,
}

impl HeadError {
    /// The status a client is answered with.
    pub fn status(&self) -> u16 {
        match self {
            Self::TooLarge | Self::TooManyHeaders => 431,
            Self::UnsupportedCoding => 501,
            Self::TimedOut => 408,
            _ => 400,
        }
    }
}

#[derive(Clone, Debug)]
struct Field {
    name: Range<usize>,
    value: Range<usize>,
}

/// The bytes of one head and where its fields are in them.
#[derive(Clone, Debug)]
struct Fields {
    bytes: Bytes,
    fields: Vec<Field>,
}

impl Fields {
    fn name(&self, f: &Field) -> &[u8] {
        &self.bytes[f.name.clone()]
    }

    fn value(&self, f: &Field) -> &[u8] {
        &self.bytes[f.value.clone()]
    }

    /// The values of every field called `name` (case-insensitive).
    fn values<'a>(&'a self, name: &'a str) -> impl Iterator<Item = &'a [u8]> + 'a {
        self.fields
            .iter()
            .filter(move |f| self.name(f).eq_ignore_ascii_case(name.as_bytes()))
            .map(|f| self.value(f))
    }

    /// Whether a comma-separated field (`Connection`, ...) lists `token`.
    fn lists(&self, name: &str, token: &str) -> bool {
        self.values(name)
            .flat_map(|v| v.split(|&b| b == b','))
            .any(|t| t.trim_ascii().eq_ignore_ascii_case(token.as_bytes()))
    }

    /// Content-Length and Transfer-Encoding as RFC 9112 §6.3 reads them.
    fn length_or_coding(&self) -> Result<(Option<u64>, Option<bool>), HeadError> {
        let mut length = None;
        for value in self.values("content-length") {
            for item in value.split(|&b| b == b',') {
                let item = item.trim_ascii();
                if item.is_empty() || item.len() > 19 || !item.iter().all(u8::is_ascii_digit) {
                    return Err(HeadError::BadLength);
                }
                let n = std::str::from_utf8(item)
                    .ok()
                    .and_then(|s| s.parse::<u64>().ok())
                    .ok_or(HeadError::BadLength)?;
                if length.is_some_and(|l| l != n) {
                    return Err(HeadError::BadLength);
                }
                length = Some(n);
            }
        }
        let mut codings = self
            .values("transfer-encoding")
            .flat_map(|v| v.split(|&b| b == b','))
            .map(<[u8]>::trim_ascii)
            .peekable();
        // `Some(true)`: the codings end with chunked.
        let coding = codings.peek().is_some().then(|| {
            codings
                .last()
                .is_some_and(|c| c.eq_ignore_ascii_case(b"chunked"))
        });
        Ok((length, coding))
    }

    /// Whether the message asks to end the connection after it (or, for
    /// HTTP/1.0, does not ask to keep it).
    fn keep_alive(&self, minor: u8) -> bool {
        if minor == 0 {
            self.lists("connection", "keep-alive")
        } else {
            !self.lists("connection", "close")
        }
    }

    fn check_line_ends(bytes: &[u8]) -> Result<(), HeadError> {
        // httparse accepts a bare LF as a line end; a pod that does not
        // would read a different head from the same bytes.
        let bare = bytes
            .iter()
            .enumerate()
            .any(|(i, &b)| b == b'\n' && (i == 0 || bytes[i - 1] != b'\r'));
        if bare {
            Err(HeadError::Malformed("bare LF line end"))
        } else {
            Ok(())
        }
    }

    /// Takes the `len` bytes of a parsed head off the front of `buf`.
    fn take(buf: &mut BytesMut, len: usize, fields: Vec<Field>) -> Result<Self, HeadError> {
        Self::check_line_ends(&buf[..len])?;
        Ok(Self {
            bytes: buf.split_to(len).freeze(),
            fields,
        })
    }

    fn collect(base: &[u8], headers: &[httparse::Header<'_>]) -> Vec<Field> {
        headers
            .iter()
            .map(|h| Field {
                name: range_in(base, h.name.as_bytes()),
                value: range_in(base, h.value),
            })
            .collect()
    }

    /// Writes the fields, without those `skip` names, as `name: value` lines.
    fn write_to(&self, out: &mut Vec<u8>, skip: &[&str]) {
        for f in &self.fields {
            let name = self.name(f);
            if skip.iter().any(|s| name.eq_ignore_ascii_case(s.as_bytes())) {
                continue;
            }
            out.extend_from_slice(name);
            out.extend_from_slice(b": ");
            out.extend_from_slice(self.value(f));
            out.extend_from_slice(b"\r\n");
        }
    }
}

/// Where `part`, a slice httparse returned, lies in `base`.
fn range_in(base: &[u8], part: &[u8]) -> Range<usize> {
    let start = (part.as_ptr() as usize).saturating_sub(base.as_ptr() as usize);
    start..start + part.len()
}

/// The length of the head httparse found complete in `buffered` bytes;
/// `None` while it is incomplete and may still fit.
fn head_len(
    parsed: Result<httparse::Status<usize>, httparse::Error>,
    buffered: usize,
) -> Result<Option<usize>, HeadError> {
    match parsed.map_err(parse_error)? {
        httparse::Status::Complete(len) if len <= MAX_HEAD => Ok(Some(len)),
        httparse::Status::Partial if buffered <= MAX_HEAD => Ok(None),
        _ => Err(HeadError::TooLarge),
    }
}

fn parse_error(e: httparse::Error) -> HeadError {
    match e {
        httparse::Error::TooManyHeaders => HeadError::TooManyHeaders,
        httparse::Error::Version => HeadError::Malformed("version"),
        httparse::Error::Token => HeadError::Malformed("method"),
        httparse::Error::HeaderName => HeadError::Malformed("header name"),
        httparse::Error::HeaderValue => HeadError::Malformed("header value"),
        httparse::Error::NewLine => HeadError::Malformed("line end"),
        httparse::Error::Status => HeadError::Malformed("status"),
    }
}

/// A request head.
#[derive(Clone, Debug)]
pub struct RequestHead {
    fields: Fields,
    method: Range<usize>,
    target: Range<usize>,
    /// The `x` of `HTTP/1.x`.
    pub minor: u8,
}

impl RequestHead {
    /// Takes a complete head off the front of `buf`; `Ok(None)` while it is
    /// incomplete.
    pub fn parse(buf: &mut BytesMut) -> Result<Option<Self>, HeadError> {
        let mut headers = [httparse::EMPTY_HEADER; MAX_HEADERS];
        let mut req = httparse::Request::new(&mut headers);
        let Some(len) = head_len(req.parse(buf), buf.len())? else {
            return Ok(None);
        };
        let base: &[u8] = buf;
        let method = range_in(base, req.method.unwrap_or_default().as_bytes());
        let target = range_in(base, req.path.unwrap_or_default().as_bytes());
        let minor = req.version.unwrap_or(1);
        let fields = Fields::collect(base, req.headers);
        let head = Self {
            fields: Fields::take(buf, len, fields)?,
            method,
            target,
            minor,
        };
        // httparse admits bytes above 0x7f in the target; the policy reads
        // text.
        if std::str::from_utf8(&head.fields.bytes[head.target.clone()]).is_err() {
            return Err(HeadError::Malformed("request target is not UTF-8"));
        }
        if head.fields.values("host").count() > 1 {
            return Err(HeadError::Malformed("more than one Host"));
        }
        Ok(Some(head))
    }

    pub fn method(&self) -> &str {
        // httparse admits only token characters in a method.
        std::str::from_utf8(&self.fields.bytes[self.method.clone()]).unwrap_or_default()
    }

    /// The request target as sent (origin form `/p?q`, or absolute form).
    pub fn target(&self) -> &str {
        std::str::from_utf8(&self.fields.bytes[self.target.clone()]).unwrap_or_default()
    }

    /// The authority of an absolute-form target, else the Host field.
    pub fn host(&self) -> &str {
        let target = self.target();
        if let Some(rest) = target
            .strip_prefix("http://")
            .or_else(|| target.strip_prefix("https://"))
        {
            return rest.split(['/', '?']).next().unwrap_or_default();
        }
        self.values("host")
            .next()
            .and_then(|v| std::str::from_utf8(v).ok())
            .unwrap_or_default()
    }

    /// The values of every field called `name`.
    pub fn values<'a>(&'a self, name: &'a str) -> impl Iterator<Item = &'a [u8]> + 'a {
        self.fields.values(name)
    }

    /// The whole head as it arrived.
    pub fn bytes(&self) -> &Bytes {
        &self.fields.bytes
    }

    /// How the request's body ends. A request without either field has
    /// none; one with both, or with a coding other than `chunked`, is
    /// refused rather than guessed at.
    pub fn framing(&self) -> Result<Framing, HeadError> {
        match self.fields.length_or_coding()? {
            (Some(_), Some(_)) => Err(HeadError::LengthAndCoding),
            (None, Some(_)) if self.minor == 0 => {
                Err(HeadError::Malformed("Transfer-Encoding in HTTP/1.0"))
            }
            (None, Some(true)) if self.only_chunked() => Ok(Framing::Chunked),
            (None, Some(_)) => Err(HeadError::UnsupportedCoding),
            (Some(0), None) | (None, None) => Ok(Framing::None),
            (Some(n), None) => Ok(Framing::Length(n)),
        }
    }

    fn only_chunked(&self) -> bool {
        let mut codings = self
            .values("transfer-encoding")
            .flat_map(|v| v.split(|&b| b == b','))
            .map(<[u8]>::trim_ascii);
        codings
            .next()
            .is_some_and(|c| c.eq_ignore_ascii_case(b"chunked"))
            && codings.next().is_none()
    }

    pub fn keep_alive(&self) -> bool {
        self.fields.keep_alive(self.minor)
    }

    /// The protocol asked for by `Upgrade`, if any.
    pub fn upgrade(&self) -> Option<&[u8]> {
        self.values("upgrade").next()
    }

    /// Whether the client waits for `100 Continue` before sending the body.
    pub fn expects_continue(&self) -> bool {
        self.values("expect")
            .any(|v| v.trim_ascii().eq_ignore_ascii_case(b"100-continue"))
    }

    /// The head as the pod is to receive it: request target `path`, the
    /// fields without those `skip` names. Only heads that change are built.
    pub fn rewritten(&self, path: &str, skip: &[&str]) -> Vec<u8> {
        let mut out = Vec::with_capacity(self.fields.bytes.len() + 16);
        request_line(&mut out, self.method(), path, self.minor);
        self.fields.write_to(&mut out, skip);
        out.extend_from_slice(b"\r\n");
        out
    }

    /// The head as `http` parts, for RequestAuthentication, which reads
    /// tokens from and writes claims to them.
    pub fn to_parts(&self) -> Result<http::request::Parts, HeadError> {
        let mut builder = http::Request::builder()
            .method(self.method())
            .uri(self.target())
            .version(if self.minor == 0 {
                http::Version::HTTP_10
            } else {
                http::Version::HTTP_11
            });
        for f in &self.fields.fields {
            builder = builder.header(self.fields.name(f), self.fields.value(f));
        }
        builder
            .body(())
            .map(|r| r.into_parts().0)
            .map_err(|_| HeadError::Malformed("a field the http crate refuses"))
    }
}

fn request_line(out: &mut Vec<u8>, method: &str, path: &str, minor: u8) {
    out.extend_from_slice(method.as_bytes());
    out.push(b' ');
    out.extend_from_slice(path.as_bytes());
    out.extend_from_slice(if minor == 0 {
        b" HTTP/1.0\r\n"
    } else {
        b" HTTP/1.1\r\n"
    });
}

/// Writes a request head from `parts` (after RequestAuthentication edited
/// its fields) with request target `path`.
pub fn head_from_parts(parts: &http::request::Parts, path: &str, minor: u8) -> Vec<u8> {
    let mut out = Vec::with_capacity(256);
    request_line(&mut out, parts.method.as_str(), path, minor);
    for (name, value) in &parts.headers {
        out.extend_from_slice(name.as_str().as_bytes());
        out.extend_from_slice(b": ");
        out.extend_from_slice(value.as_bytes());
        out.extend_from_slice(b"\r\n");
    }
    out.extend_from_slice(b"\r\n");
    out
}

/// A response head.
#[derive(Clone, Debug)]
pub struct ResponseHead {
    fields: Fields,
    pub code: u16,
    pub minor: u8,
}

impl ResponseHead {
    /// Takes a complete head off the front of `buf`; `Ok(None)` while it is
    /// incomplete.
    pub fn parse(buf: &mut BytesMut) -> Result<Option<Self>, HeadError> {
        let mut headers = [httparse::EMPTY_HEADER; MAX_HEADERS];
        let mut rsp = httparse::Response::new(&mut headers);
        let Some(len) = head_len(rsp.parse(buf), buf.len())? else {
            return Ok(None);
        };
        let code = rsp.code.unwrap_or_default();
        let minor = rsp.version.unwrap_or(1);
        let fields = Fields::collect(buf, rsp.headers);
        Ok(Some(Self {
            fields: Fields::take(buf, len, fields)?,
            code,
            minor,
        }))
    }

    pub fn bytes(&self) -> &Bytes {
        &self.fields.bytes
    }

    /// How the body ends, for a response to a `HEAD` request or not.
    pub fn framing(&self, to_head: bool) -> Result<Framing, HeadError> {
        if to_head || (100..200).contains(&self.code) || self.code == 204 || self.code == 304 {
            return Ok(Framing::None);
        }
        Ok(match self.fields.length_or_coding()? {
            (_, Some(true)) => Framing::Chunked,
            (_, Some(false)) => Framing::UntilClose,
            (Some(n), None) => Framing::Length(n),
            (None, None) => Framing::UntilClose,
        })
    }

    pub fn keep_alive(&self) -> bool {
        self.fields.keep_alive(self.minor)
    }
}

#[cfg(test)]
mod tests;
