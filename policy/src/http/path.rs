//! Request path normalization before matching, so that a path the application
//! would read as `/admin` is matched as `/admin` (the bypass class of Istio's
//! 2021 advisories). What it does, in order:
//!
//! - percent-decodes unreserved characters (`%2e` is `.`, `%41` is `A`) and
//!   upper-cases the hex of the escapes it keeps;
//! - treats `\` as `/`, then merges repeated slashes (Istio's `MERGE_SLASHES`,
//!   stricter than its `BASE` default: a backend that merges them would
//!   otherwise see `//admin` as `/admin` after a rule on `/admin` missed it);
//! - resolves `.` and `..` segments (RFC 3986), never above the root;
//! - rejects what cannot be normalized safely: a path not starting with `/`,
//!   a fragment, bad escapes, `%00`, raw control characters or non-ASCII
//!   bytes, and escaped slashes `%2F` / `%5C` (Istio's `REJECT` choice for
//!   them: a backend that decodes them would see other segments).
//!
//! The query, if any, is kept as sent; `paths` match the path alone.

/// Why a request target was refused (answered `400`).
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum PathError {
    #[error("path does not start with /")]
    NotAbsolute,
    #[error("path carries a fragment")]
    Fragment,
    #[error("invalid percent-encoding")]
    BadEscape,
    #[error("escaped slash or backslash")]
    EscapedSlash,
    #[error("NUL, control character or non-ASCII byte")]
    BadByte,
}

fn unreserved(b: u8) -> bool {
    b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_' | b'~')
}

fn hex(b: u8) -> Option<u8> {
    (b as char).to_digit(16).and_then(|d| u8::try_from(d).ok())
}

/// Decodes unreserved escapes and checks every byte; `\` becomes `/`.
fn decode(path: &str) -> Result<String, PathError> {
    let bytes = path.as_bytes();
    let mut out = String::with_capacity(path.len());
    let mut i = 0;
    while let Some(&b) = bytes.get(i) {
        match b {
            b'%' => {
                let (Some(hi), Some(lo)) = (
                    bytes.get(i + 1).copied().and_then(hex),
                    bytes.get(i + 2).copied().and_then(hex),
                ) else {
                    return Err(PathError::BadEscape);
                };
                let c = hi << 4 | lo;
                match c {
                    0 => return Err(PathError::BadByte),
                    b'/' | b'\\' => return Err(PathError::EscapedSlash),
                    c if unreserved(c) => out.push(c as char),
                    c => {
                        out.push('%');
                        out.push_str(&format!("{c:02X}"));
                    }
                }
                i += 3;
                continue;
            }
            b'\\' => out.push('/'),
            b'#' => return Err(PathError::Fragment),
            b if b <= 0x20 || b >= 0x7f => return Err(PathError::BadByte),
            b => out.push(b as char),
        }
        i += 1;
    }
    Ok(out)
}

/// Normalizes a request target (`/path?query`); `*` (for `OPTIONS *`) is kept.
pub fn normalize_path(target: &str) -> Result<String, PathError> {
    if target == "*" {
        return Ok(target.to_owned());
    }
    let (path, query) = match target.split_once('?') {
        Some((p, q)) => (p, Some(q)),
        None => (target, None),
    };
    if !path.starts_with('/') && !path.starts_with('\\') {
        return Err(PathError::NotAbsolute);
    }
    if query.is_some_and(|q| q.bytes().any(|b| b <= 0x20 || b >= 0x7f || b == b'#')) {
        return Err(PathError::BadByte);
    }
    let decoded = decode(path)?;
    let mut segments: Vec<&str> = Vec::new();
    // Whether the result ends with a slash: a trailing `/`, `.` or `..`
    // names the directory.
    let mut trailing = false;
    for seg in decoded.split('/').skip(1) {
        trailing = true;
        match seg {
            "" | "." => {}
            ".." => {
                segments.pop();
            }
            s => {
                segments.push(s);
                trailing = false;
            }
        }
    }
    let mut out = String::with_capacity(decoded.len());
    for s in &segments {
        out.push('/');
        out.push_str(s);
    }
    if trailing || out.is_empty() {
        out.push('/');
    }
    if let Some(q) = query {
        out.push('?');
        out.push_str(q);
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bypasses_resolve_to_what_the_backend_sees() {
        let cases = [
            ("/", "/"),
            ("/admin", "/admin"),
            ("/public/../admin", "/admin"),
            ("//admin", "/admin"),
            ("/public//..//admin", "/admin"),
            ("/public/%2e%2e/admin", "/admin"),
            ("/public/%2E%2E/admin", "/admin"),
            ("/public/.%2e/admin", "/admin"),
            ("/./admin/.", "/admin/"),
            ("/a/b/..", "/a/"),
            ("/../../admin", "/admin"),
            ("/%61dmin", "/admin"),
            ("/a%7e", "/a~"),
            ("/a%3f?x=/../y", "/a%3F?x=/../y"),
            ("/a%c3%a9", "/a%C3%A9"),
            ("\\admin", "/admin"),
            ("/public\\..\\admin", "/admin"),
            ("/admin/", "/admin/"),
            ("*", "*"),
        ];
        for (raw, want) in cases {
            assert_eq!(normalize_path(raw).as_deref(), Ok(want), "{raw}");
        }
    }

    #[test]
    fn rejects_what_cannot_be_normalized_safely() {
        let cases = [
            ("admin", PathError::NotAbsolute),
            ("/a#b", PathError::Fragment),
            ("/a%2fb", PathError::EscapedSlash),
            ("/a%5Cb", PathError::EscapedSlash),
            ("/a%zz", PathError::BadEscape),
            ("/a%2", PathError::BadEscape),
            ("/a%00", PathError::BadByte),
            ("/a b", PathError::BadByte),
            ("/a\u{e9}", PathError::BadByte),
        ];
        for (raw, want) in cases {
            assert_eq!(normalize_path(raw), Err(want), "{raw}");
        }
    }
}
