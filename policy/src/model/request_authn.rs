//! RequestAuthentication: which JWT issuers a workload accepts, where tokens
//! are read from and what is done with them once verified. Verification is
//! the proxy's; this is the model it reads.

use super::Selector;

/// Where a token may be carried: a header, with an optional scheme prefix
/// stripped (`Authorization: Bearer <token>` by default).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct JwtHeader {
    /// Lower-cased.
    pub name: String,
    pub prefix: String,
}

/// A claim copied to a request header once the token is verified.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ClaimToHeader {
    pub header: String,
    pub claim: String,
}

/// One `jwtRules` entry.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct JwtRule {
    pub issuer: String,
    /// Accepted `aud` values; empty accepts any audience.
    pub audiences: Vec<String>,
    /// Inline JWKS document.
    pub jwks: Option<String>,
    pub jwks_uri: Option<String>,
    /// Where to look; empty means `Authorization: Bearer` and the
    /// `access_token` query parameter, as Istio does.
    pub from_headers: Vec<JwtHeader>,
    pub from_params: Vec<String>,
    pub from_cookies: Vec<String>,
    /// Keep the token in the forwarded request (it is removed otherwise).
    pub forward_original_token: bool,
    /// A header that carries the verified payload (base64url JSON) upstream.
    pub output_payload_to_header: Option<String>,
    pub output_claim_to_headers: Vec<ClaimToHeader>,
}

impl JwtRule {
    /// Header locations, the default when none is configured.
    pub fn headers(&self) -> Vec<JwtHeader> {
        if self.from_headers.is_empty()
            && self.from_params.is_empty()
            && self.from_cookies.is_empty()
        {
            return vec![JwtHeader {
                name: "authorization".into(),
                prefix: "Bearer ".into(),
            }];
        }
        self.from_headers.clone()
    }

    /// Query parameter locations, the default when none is configured.
    pub fn params(&self) -> Vec<String> {
        if self.from_headers.is_empty()
            && self.from_params.is_empty()
            && self.from_cookies.is_empty()
        {
            return vec!["access_token".into()];
        }
        self.from_params.clone()
    }
}

/// One compiled RequestAuthentication.
#[derive(Clone, Debug)]
pub(crate) struct RequestAuthn {
    pub id: Box<str>,
    pub namespace: Box<str>,
    pub selector: Option<Selector>,
    pub rules: Vec<JwtRule>,
    /// The spec could not be read: requests to selected workloads are refused.
    pub invalid: bool,
    /// Bound with `targetRef(s)`: a waypoint's, not ours.
    pub waypoint: bool,
}
