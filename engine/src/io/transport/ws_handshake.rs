//! The WebSocket opening handshake (RFC 6455 §4.2) for MQTT (MQTT 5.0 §6), sans-IO: an HTTP
//! request in, `101 Switching Protocols` or an HTTP error out.
//!
//! Stricter than some brokers on purpose: the path must be the listener's, the client must
//! offer the `mqtt` subprotocol (or the older `mqttv3.1`) [MQTT-6.0.0-3..4], the key must be
//! 16 bytes of base64, and an Origin not on the listener's allow-list (when it has one) is
//! refused. Every refusal is an HTTP status and a close, never a wait.

use base64::Engine as _;
use sha1::{Digest, Sha1};

/// The largest request accepted (request line and headers).
pub(crate) const REQUEST_MAX_BYTES: usize = 8 * 1024;
/// Headers parsed at most.
const HEADERS_MAX: usize = 32;
/// The GUID of §1.3, appended to the key for `Sec-WebSocket-Accept`.
const ACCEPT_GUID: &str = "258EAFA5-E914-47DA-95CA-C5AB0DC85B11";
/// Subprotocols accepted, in order of preference.
const SUBPROTOCOLS: [&str; 2] = ["mqtt", "mqttv3.1"];

/// A listener's WebSocket settings. Process-wide, immutable.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct WsSettings {
    /// The request path served (e.g. `/mqtt`).
    pub(crate) path: String,
    /// Origins allowed (empty: any).
    pub(crate) origins: Vec<String>,
}

/// What a complete request gets.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Answer {
    /// The upgrade is accepted: send `response`; the WebSocket starts after `used` bytes
    /// of the input (anything after them is already framed data).
    Upgrade { response: Vec<u8>, used: usize },
    /// Refused: send `response` and close. `reason` is for the log.
    Refuse { response: Vec<u8>, reason: String },
}

/// Looks at the request gathered so far: `None` while it is incomplete (and still under
/// [`REQUEST_MAX_BYTES`]).
pub(crate) fn answer(request: &[u8], settings: &WsSettings) -> Option<Answer> {
    let mut headers = [httparse::EMPTY_HEADER; HEADERS_MAX];
    let mut req = httparse::Request::new(&mut headers);
    let used = match req.parse(request) {
        Ok(httparse::Status::Complete(n)) => n,
        Ok(httparse::Status::Partial) if request.len() < REQUEST_MAX_BYTES => return None,
        Ok(httparse::Status::Partial) => {
            return Some(refuse(431, "Request Header Fields Too Large", "request too large", &[]))
        }
        Err(httparse::Error::TooManyHeaders) => {
            return Some(refuse(431, "Request Header Fields Too Large", "too many headers", &[]))
        }
        Err(e) => return Some(refuse(400, "Bad Request", &format!("not HTTP ({e})"), &[])),
    };
    Some(check(&req, settings, used))
}

fn check(req: &httparse::Request<'_, '_>, settings: &WsSettings, used: usize) -> Answer {
    let header = |name: &str| {
        req.headers
            .iter()
            .find(|h| h.name.eq_ignore_ascii_case(name))
            .map(|h| String::from_utf8_lossy(h.value).trim().to_owned())
    };
    let tokens = |name: &str| -> Vec<String> {
        req.headers
            .iter()
            .filter(|h| h.name.eq_ignore_ascii_case(name))
            .flat_map(|h| {
                String::from_utf8_lossy(h.value)
                    .split(',')
                    .map(|t| t.trim().to_owned())
                    .collect::<Vec<_>>()
            })
            .filter(|t| !t.is_empty())
            .collect()
    };
    // §4.1: a GET, HTTP/1.1 or later.
    if req.method != Some("GET") {
        return refuse(405, "Method Not Allowed", "not a GET", &["Allow: GET"]);
    }
    if req.version != Some(1) {
        return refuse(400, "Bad Request", "not HTTP/1.1", &[]);
    }
    let path = req.path.unwrap_or("");
    let path_only = path.split('?').next().unwrap_or("");
    if path_only != settings.path {
        return refuse(404, "Not Found", &format!("path {path_only:?} is not served"), &[]);
    }
    let upgrade = tokens("Upgrade").iter().any(|t| t.eq_ignore_ascii_case("websocket"));
    let connection = tokens("Connection").iter().any(|t| t.eq_ignore_ascii_case("upgrade"));
    if !upgrade || !connection {
        return refuse(400, "Bad Request", "not a WebSocket upgrade", &[]);
    }
    // §4.2.2: an unsupported version gets 426 naming the one we speak.
    if header("Sec-WebSocket-Version").as_deref() != Some("13") {
        return refuse(
            426,
            "Upgrade Required",
            "Sec-WebSocket-Version is not 13",
            &["Sec-WebSocket-Version: 13"],
        );
    }
    // §4.1: the key is a base64-encoded 16-byte value.
    let Some(key) = header("Sec-WebSocket-Key") else {
        return refuse(400, "Bad Request", "no Sec-WebSocket-Key", &[]);
    };
    let decoded = base64::engine::general_purpose::STANDARD.decode(key.as_bytes());
    if decoded.map_or(true, |k| k.len() != 16) {
        return refuse(400, "Bad Request", "Sec-WebSocket-Key is not 16 bytes of base64", &[]);
    }
    // MQTT 5.0 §6: the client offers "mqtt" [MQTT-6.0.0-3]; the server selects it
    // [MQTT-6.0.0-4] ("mqttv3.1" for older clients).
    let offered = tokens("Sec-WebSocket-Protocol");
    let Some(protocol) =
        SUBPROTOCOLS.iter().find(|p| offered.iter().any(|o| o.eq_ignore_ascii_case(p)))
    else {
        return refuse(400, "Bad Request", "the mqtt subprotocol is not offered", &[]);
    };
    // A browser always sends Origin; other clients usually do not (and are not limited).
    if !settings.origins.is_empty() {
        if let Some(origin) = header("Origin") {
            if !settings.origins.iter().any(|o| o.eq_ignore_ascii_case(&origin)) {
                return refuse(403, "Forbidden", &format!("origin {origin:?} is not allowed"), &[]);
            }
        }
    }
    let accept = accept_key(&key);
    let response = format!(
        "HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
         Sec-WebSocket-Accept: {accept}\r\nSec-WebSocket-Protocol: {protocol}\r\n\r\n"
    );
    Answer::Upgrade { response: response.into_bytes(), used }
}

/// `Sec-WebSocket-Accept` for a `Sec-WebSocket-Key` (§4.2.2): base64 of the SHA-1 of the
/// key and the GUID of §1.3.
pub(crate) fn accept_key(key: &str) -> String {
    let mut sha = Sha1::new();
    sha.update(key.as_bytes());
    sha.update(ACCEPT_GUID.as_bytes());
    base64::engine::general_purpose::STANDARD.encode(sha.finalize())
}

fn refuse(status: u16, text: &str, reason: &str, extra: &[&str]) -> Answer {
    let mut response = format!("HTTP/1.1 {status} {text}\r\n");
    for h in extra {
        response.push_str(h);
        response.push_str("\r\n");
    }
    response.push_str("Connection: close\r\nContent-Length: 0\r\n\r\n");
    Answer::Refuse { response: response.into_bytes(), reason: format!("{status}: {reason}") }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn settings() -> WsSettings {
        WsSettings { path: "/mqtt".into(), origins: vec!["https://ok.example".into()] }
    }

    fn request(path: &str, extra: &[&str]) -> Vec<u8> {
        let mut r = format!("GET {path} HTTP/1.1\r\nHost: x\r\n");
        for h in extra {
            r.push_str(h);
            r.push_str("\r\n");
        }
        r.push_str("\r\n");
        r.into_bytes()
    }

    const GOOD: [&str; 5] = [
        "Upgrade: websocket",
        "Connection: keep-alive, Upgrade",
        "Sec-WebSocket-Version: 13",
        "Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==",
        "Sec-WebSocket-Protocol: mqttv3.1, mqtt",
    ];

    fn status(a: &Answer) -> String {
        let bytes = match a {
            Answer::Upgrade { response, .. } | Answer::Refuse { response, .. } => response,
        };
        String::from_utf8_lossy(bytes).lines().next().unwrap_or("").to_owned()
    }

    #[test]
    fn a_good_request_is_upgraded_with_the_rfc_accept_key() {
        let mut req = request("/mqtt?x=1", &GOOD);
        let len = req.len();
        req.extend_from_slice(b"\x82\x80"); // the start of a frame already sent
        let a = answer(&req, &settings()).unwrap();
        let Answer::Upgrade { response, used } = a else { panic!("{a:?}") };
        assert_eq!(used, len);
        let text = String::from_utf8(response).unwrap();
        assert!(text.starts_with("HTTP/1.1 101 Switching Protocols\r\n"), "{text}");
        // The example of RFC 6455 §1.3.
        assert!(text.contains("Sec-WebSocket-Accept: s3pPLMBiTxaQ9kYGzzhZRbK+xOo=\r\n"), "{text}");
        assert!(text.contains("Sec-WebSocket-Protocol: mqtt\r\n"), "prefers mqtt: {text}");
        assert!(text.ends_with("\r\n\r\n"));
    }

    #[test]
    fn incomplete_requests_wait_and_huge_ones_are_refused() {
        let req = request("/mqtt", &GOOD);
        for cut in [0, 1, 10, req.len() - 1] {
            assert_eq!(answer(&req[..cut], &settings()), None, "cut at {cut}");
        }
        let mut huge = b"GET /mqtt HTTP/1.1\r\nX: ".to_vec();
        huge.resize(REQUEST_MAX_BYTES + 1, b'a');
        assert!(status(&answer(&huge, &settings()).unwrap()).contains("431"));
    }

    #[test]
    fn bad_requests_get_an_http_error() {
        let without = |name: &str| -> Vec<&str> {
            GOOD.iter().copied().filter(|h| !h.starts_with(name)).collect()
        };
        let mut no_sub = without("Sec-WebSocket-Protocol");
        no_sub.push("Sec-WebSocket-Protocol: chat");
        let mut short_key = without("Sec-WebSocket-Key");
        short_key.push("Sec-WebSocket-Key: c2hvcnQ=");
        let mut old = without("Sec-WebSocket-Version");
        old.push("Sec-WebSocket-Version: 8");
        let mut origin = GOOD.to_vec();
        origin.push("Origin: https://evil.example");
        let cases: Vec<(Vec<u8>, &str)> = vec![
            (request("/other", &GOOD), "404"),
            (request("/mqtt", &without("Sec-WebSocket-Protocol")), "400"),
            (request("/mqtt", &no_sub), "400"),
            (request("/mqtt", &without("Sec-WebSocket-Key")), "400"),
            (request("/mqtt", &short_key), "400"),
            (request("/mqtt", &without("Upgrade")), "400"),
            (request("/mqtt", &old), "426"),
            (request("/mqtt", &origin), "403"),
            (b"POST /mqtt HTTP/1.1\r\n\r\n".to_vec(), "405"),
            (b"\x10\x0c\x00\x04MQTT\x04\x02\x00\x3c\x00\x00".to_vec(), "400"),
        ];
        for (req, want) in cases {
            let a = answer(&req, &settings()).expect("complete");
            assert!(matches!(a, Answer::Refuse { .. }), "{a:?}");
            assert!(status(&a).contains(want), "{}: {}", String::from_utf8_lossy(&req), status(&a));
        }
        // An allowed origin, or none at all, passes.
        let mut ok = GOOD.to_vec();
        ok.push("Origin: https://ok.example");
        assert!(matches!(
            answer(&request("/mqtt", &ok), &settings()),
            Some(Answer::Upgrade { .. })
        ));
        assert!(matches!(
            answer(&request("/mqtt", &GOOD), &settings()),
            Some(Answer::Upgrade { .. })
        ));
    }
}
