//! The answers the agent gives itself instead of the pod's, worded as
//! Envoy's so clients and dashboards that know Istio read them the same way.

use bytes::Bytes;
use http::{HeaderValue, Response, StatusCode, header};
use http_body_util::{BodyExt, Full, combinators::UnsyncBoxBody};

/// Every response body the L7 path returns: the pod's, or one of these.
pub type Body = UnsyncBoxBody<Bytes, hyper::Error>;

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
}

impl Local {
    pub fn status(self) -> StatusCode {
        match self {
            Self::Denied => StatusCode::FORBIDDEN,
            Self::BadToken => StatusCode::UNAUTHORIZED,
            Self::BadPath => StatusCode::BAD_REQUEST,
            Self::Upstream => StatusCode::SERVICE_UNAVAILABLE,
        }
    }

    fn body(self) -> &'static str {
        match self {
            Self::Denied => "RBAC: access denied",
            Self::BadToken => "Jwt verification fails",
            Self::BadPath => "Bad Request",
            Self::Upstream => "upstream connect error or disconnect/reset before headers",
        }
    }

    /// The access log's `decision` field.
    pub fn decision(self) -> &'static str {
        match self {
            Self::Denied => "deny",
            Self::BadToken => "unauthenticated",
            Self::BadPath => "rejected",
            Self::Upstream => "allow",
        }
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
                HeaderValue::from_static("Bearer realm=\"ambit\", error=\"invalid_token\""),
            );
        }
        rsp
    }
}
