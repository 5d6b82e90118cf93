//! The answers the agent gives itself instead of the pod's, worded as
//! Envoy's so clients and dashboards that know Istio read them the same way.

use bytes::Bytes;
use http::{HeaderValue, Response, StatusCode, header};
use http_body_util::{BodyExt, Full, combinators::UnsyncBoxBody};

/// Every response body the L7 path returns: the pod's, or one of these.
pub type Body = UnsyncBoxBody<Bytes, hyper::Error>;

const WWW_AUTHENTICATE: &str = "Bearer realm=\"ambit\", error=\"invalid_token\"";

/// Why the agent answered itself.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Local {
    /// Authorization denied the request.
    Denied,
    /// A token was presented and failed verification.
    BadToken,
    /// The request target could not be normalized safely.
    BadPath,
    /// The pod could not be reached or broke the exchange.
    Upstream,
    /// The pod's answer could not be read as HTTP.
    BadGateway,
    /// The request's head could not be read safely (400, 431 or 501), or
    /// not in time (408).
    Unreadable(u16),
}

impl Local {
    pub fn status(self) -> StatusCode {
        match self {
            Self::Denied => StatusCode::FORBIDDEN,
            Self::BadToken => StatusCode::UNAUTHORIZED,
            Self::BadPath => StatusCode::BAD_REQUEST,
            Self::Upstream => StatusCode::SERVICE_UNAVAILABLE,
            Self::BadGateway => StatusCode::BAD_GATEWAY,
            Self::Unreadable(code) => StatusCode::from_u16(code).unwrap_or(StatusCode::BAD_REQUEST),
        }
    }

    fn body(self) -> &'static str {
        match self {
            Self::Denied => "RBAC: access denied",
            Self::BadToken => "Jwt verification fails",
            Self::BadPath => "Bad Request",
            Self::Upstream => "upstream connect error or disconnect/reset before headers",
            Self::BadGateway => "upstream sent an invalid response",
            Self::Unreadable(_) => self.status().canonical_reason().unwrap_or("Bad Request"),
        }
    }

    /// The access log's `decision` field.
    pub fn decision(self) -> &'static str {
        match self {
            Self::Denied => "deny",
            Self::BadToken => "unauthenticated",
            Self::BadPath | Self::Unreadable(_) => "rejected",
            Self::Upstream | Self::BadGateway => "allow",
        }
    }

    /// The answer as HTTP/1.1 bytes; `close` adds `connection: close`.
    pub fn h1(self, close: bool) -> Vec<u8> {
        let status = self.status();
        let body = self.body();
        let mut out = format!(
            "HTTP/1.1 {} {}\r\ncontent-type: text/plain\r\ncontent-length: {}\r\n",
            status.as_u16(),
            status.canonical_reason().unwrap_or(""),
            body.len()
        );
        if self == Self::BadToken {
            out.push_str("www-authenticate: ");
            out.push_str(WWW_AUTHENTICATE);
            out.push_str("\r\n");
        }
        if close {
            out.push_str("connection: close\r\n");
        }
        out.push_str("\r\n");
        out.push_str(body);
        out.into_bytes()
    }

    pub fn response(self) -> Response<Body> {
        let body = self.body();
        let mut rsp = Response::new(
            Full::new(Bytes::from_static(body.as_bytes()))
                .map_err(|never| match never {})
                .boxed_unsync(),
        );
        *rsp.status_mut() = self.status();
        let headers = rsp.headers_mut();
        headers.insert(header::CONTENT_TYPE, HeaderValue::from_static("text/plain"));
        headers.insert(header::CONTENT_LENGTH, HeaderValue::from(body.len()));
        if self == Self::BadToken {
            headers.insert(
                header::WWW_AUTHENTICATE,
                HeaderValue::from_static(WWW_AUTHENTICATE),
            );
        }
        rsp
    }
}
