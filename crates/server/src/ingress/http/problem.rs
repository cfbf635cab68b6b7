//! The one mapping from [`ServiceError`] to an HTTP response: an RFC 9457 problem document
//! with the stable `code` member, plus small builders for JSON success responses.

use bytes::Bytes;
use http::header::{ALLOW, CONTENT_TYPE, ETAG, HeaderValue, RETRY_AFTER, WWW_AUTHENTICATE};
use http::{Response, StatusCode};
use http_body_util::Full;

use crate::error::{ErrorCode, ServiceError};

pub const JSON: HeaderValue = HeaderValue::from_static("application/json");
const PROBLEM_JSON: HeaderValue = HeaderValue::from_static("application/problem+json");

/// The problem document for `error`; internal details never appear (see `ServiceError::internal`).
pub fn response(error: &ServiceError) -> Response<Full<Bytes>> {
    let status =
        StatusCode::from_u16(error.code.http_status()).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
    let mut body = serde_json::json!({
        "type": format!("urn:datamiddleware:error:{}", error.code),
        "title": error.code.title(),
        "status": status.as_u16(),
        "code": error.code.as_str(),
        "detail": error.message,
    });
    if let Some(index) = error.op_index {
        body["op_index"] = index.into();
    }
    let mut response = Response::new(Full::new(Bytes::from(body.to_string())));
    *response.status_mut() = status;
    let headers = response.headers_mut();
    headers.insert(CONTENT_TYPE, PROBLEM_JSON);
    match error.code {
        ErrorCode::Overloaded | ErrorCode::RateLimited => {
            headers.insert(RETRY_AFTER, HeaderValue::from_static("1"));
        }
        // RFC 9110 §15.5.2: a 401 names the scheme it wants.
        ErrorCode::Unauthorized => {
            headers.insert(
                WWW_AUTHENTICATE,
                HeaderValue::from_static("Bearer realm=\"datamiddleware\""),
            );
        }
        // RFC 9110 §15.5.6: a 405 lists the methods the resource has.
        ErrorCode::MethodNotAllowed => {
            if let Some(allowed) = error.message.strip_prefix(ALLOWED_PREFIX)
                && let Ok(value) = HeaderValue::from_str(allowed)
            {
                headers.insert(ALLOW, value);
            }
        }
        _ => {}
    }
    response
}

/// How a 405's detail starts; the methods after it go into its `Allow` header.
pub const ALLOWED_PREFIX: &str = "allowed methods: ";

/// A JSON response with `status` and `body`.
pub fn json(status: StatusCode, body: Bytes) -> Response<Full<Bytes>> {
    let mut response = Response::new(Full::new(body));
    *response.status_mut() = status;
    // Room for content-type, etag and x-cache up front: one allocation, no regrowth.
    let headers = response.headers_mut();
    headers.reserve(4);
    headers.insert(CONTENT_TYPE, JSON);
    response
}

/// The `ETag` value for a version: `"<version>"`.
pub fn etag(version: u64) -> HeaderValue {
    // Digits into a stack buffer, right to left: no formatting machinery on the hot path.
    let mut buf = [0u8; 22];
    let mut at = buf.len() - 1;
    buf[at] = b'"';
    let mut rest = version;
    loop {
        at -= 1;
        buf[at] = b'0' + (rest % 10) as u8;
        rest /= 10;
        if rest == 0 {
            break;
        }
    }
    at -= 1;
    buf[at] = b'"';
    HeaderValue::from_bytes(&buf[at..]).unwrap_or(HeaderValue::from_static("\"0\""))
}

#[cfg(test)]
#[test]
fn etags_are_quoted_versions() {
    for version in [0, 7, 10, 1234567890, u64::MAX] {
        assert_eq!(etag(version).to_str().unwrap(), format!("\"{version}\""));
    }
}

/// Adds an `ETag` header to a response.
pub fn with_etag(mut response: Response<Full<Bytes>>, version: u64) -> Response<Full<Bytes>> {
    response.headers_mut().insert(ETAG, etag(version));
    response
}

/// The README's error table is the contract: every code an HTTP client can see is listed with
/// the status it gets, and the TCP-only codes are not.
#[cfg(test)]
#[test]
fn statuses_are_the_readme_error_table() {
    let readme = include_str!("../../../../../README.md");
    let mut documented = std::collections::HashMap::new();
    for line in readme.lines().filter(|l| l.starts_with("| `")) {
        let cells: Vec<&str> = line.split('|').map(str::trim).collect();
        let Ok(status) = cells[2].parse::<u16>() else {
            continue;
        };
        for code in cells[1].split('`').skip(1).step_by(2) {
            documented.insert(code.to_string(), status);
        }
    }
    let tcp_only = [
        ErrorCode::ProtocolError,
        ErrorCode::UnsupportedVersion,
        ErrorCode::UnknownOpcode,
        ErrorCode::FrameTooLarge,
    ];
    for code in ErrorCode::ALL {
        let listed = documented.get(code.as_str()).copied();
        if tcp_only.contains(&code) {
            assert_eq!(listed, None, "{code} is TCP-only but in the README table");
        } else {
            assert_eq!(listed, Some(code.http_status()), "{code}");
        }
    }
}
