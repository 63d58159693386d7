//! Building responses: plain text, JSON, and JSON errors that name the offending field.

use bytes::Bytes;
use http_body_util::Full;
use hyper::{Response, StatusCode};

/// Every response the listener sends.
pub(crate) type Reply = Response<Full<Bytes>>;

/// A plain-text response.
pub(crate) fn text(status: StatusCode, body: &str) -> Reply {
    with_type(status, Bytes::copy_from_slice(body.as_bytes()), "text/plain; charset=utf-8")
}

/// A JSON response.
pub(crate) fn json(status: StatusCode, value: &serde_json::Value) -> Reply {
    let body = serde_json::to_vec(value).unwrap_or_else(|_| b"{}".to_vec());
    with_type(status, Bytes::from(body), "application/json")
}

/// A JSON error: `{"error": MESSAGE, "field": FIELD}` (`field` when one is to blame).
pub(crate) fn error(status: StatusCode, field: Option<&str>, message: &str) -> Reply {
    let mut v = serde_json::json!({ "error": message });
    if let Some(f) = field {
        v["field"] = serde_json::Value::from(f);
    }
    json(status, &v)
}

/// A 400 naming `field`.
pub(crate) fn bad_field(field: &str, message: &str) -> Reply {
    error(StatusCode::BAD_REQUEST, Some(field), message)
}

/// The web console (engine/console/index.html, shipped in the binary): one page of plain
/// HTML and JavaScript that loads nothing from anywhere but this listener's API.
pub(crate) fn console() -> Reply {
    const PAGE: &str = include_str!("../../console/index.html");
    let mut r =
        with_type(StatusCode::OK, Bytes::from_static(PAGE.as_bytes()), "text/html; charset=utf-8");
    let csp = "default-src 'none'; connect-src 'self'; script-src 'unsafe-inline'; \
               style-src 'unsafe-inline'; img-src 'self' data:; frame-ancestors 'none'; \
               base-uri 'none'; form-action 'self'";
    r.headers_mut().insert("content-security-policy", csp.parse().expect("valid"));
    r.headers_mut().insert("x-frame-options", "DENY".parse().expect("valid"));
    r
}

fn with_type(status: StatusCode, body: Bytes, content_type: &'static str) -> Reply {
    let mut r = Response::new(Full::new(body));
    *r.status_mut() = status;
    r.headers_mut().insert(hyper::header::CONTENT_TYPE, content_type.parse().expect("valid"));
    r
}
