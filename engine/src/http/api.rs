//! The admin API under `/api/v1/` (JSON; described in `engine/openapi.yaml`): routing,
//! query-string checks, and the endpoints that need no shard-side query: stats, config,
//! reload, logs. Clients, subscriptions, topics and retained messages are in
//! `api_clients.rs` and `api_topics.rs`.

use http_body_util::BodyExt;
use hyper::body::Incoming;
use hyper::{Method, Request, StatusCode};
use serde_json::{json, Value};

use super::respond::{bad_field, error, json, Reply};
use super::{gather_stats, HttpState, BODY_BYTES_MAX};
use crate::config::Config;
use crate::core::delivery::drops::{DropReason, Traffic};

/// Lines `GET /api/v1/logs` returns at most.
pub const LOG_LINES_PAGE_MAX: usize = 1000;

/// A request's query string, decoded, with the keys the endpoint accepts.
pub(crate) struct Query(Vec<(String, String)>);

impl Query {
    /// Decodes `req`'s query string; a key outside `allowed` (or given twice) is a 400.
    pub(crate) fn parse(req: &Request<Incoming>, allowed: &[&str]) -> Result<Query, Reply> {
        Query::from_raw(req.uri().query().unwrap_or(""), allowed)
    }

    /// Decodes a raw query string (what follows `?`).
    pub(crate) fn from_raw(raw: &str, allowed: &[&str]) -> Result<Query, Reply> {
        let mut pairs: Vec<(String, String)> = Vec::new();
        for (k, v) in form_urlencoded::parse(raw.as_bytes()) {
            if !allowed.contains(&k.as_ref()) {
                let known = if allowed.is_empty() { "none".into() } else { allowed.join(", ") };
                return Err(bad_field(&k, &format!("unknown query parameter (accepted: {known})")));
            }
            if pairs.iter().any(|(seen, _)| *seen == k) {
                return Err(bad_field(&k, "given more than once"));
            }
            pairs.push((k.into_owned(), v.into_owned()));
        }
        Ok(Query(pairs))
    }

    /// The value of `key`, if given.
    pub(crate) fn get(&self, key: &str) -> Option<&str> {
        self.0.iter().find(|(k, _)| k == key).map(|(_, v)| v.as_str())
    }

    /// `key` as an integer in `min..=max`, or `default` when absent.
    pub(crate) fn number(&self, key: &str, min: u64, max: u64, default: u64) -> Result<u64, Reply> {
        match self.get(key) {
            None => Ok(default),
            Some(v) => match v.parse::<u64>() {
                Ok(n) if (min..=max).contains(&n) => Ok(n),
                _ => Err(bad_field(key, &format!("must be an integer from {min} to {max}"))),
            },
        }
    }

    /// `key` as `true`/`false`, or `default` when absent.
    pub(crate) fn flag(&self, key: &str, default: bool) -> Result<bool, Reply> {
        match self.get(key) {
            None => Ok(default),
            Some("true") => Ok(true),
            Some("false") => Ok(false),
            Some(_) => Err(bad_field(key, "must be `true` or `false`")),
        }
    }
}

/// Bytes of an oversized body read (and dropped) before answering 413, so that the client,
/// which usually sends the whole body before it reads, gets the answer rather than a reset.
const BODY_DRAIN_BYTES_MAX: usize = 4 * BODY_BYTES_MAX;

/// The request's body, at most [`BODY_BYTES_MAX`] bytes.
pub(crate) async fn body(req: Request<Incoming>) -> Result<bytes::Bytes, Reply> {
    let mut incoming = req.into_body();
    let mut out = bytes::BytesMut::new();
    let mut seen = 0usize;
    while let Some(frame) = incoming.frame().await {
        let frame = frame
            .map_err(|e| error(StatusCode::BAD_REQUEST, None, &format!("reading the body: {e}")))?;
        let Ok(data) = frame.into_data() else { continue };
        seen = seen.saturating_add(data.len());
        if seen <= BODY_BYTES_MAX {
            out.extend_from_slice(&data);
        } else if seen > BODY_DRAIN_BYTES_MAX {
            break;
        }
    }
    if seen > BODY_BYTES_MAX {
        return Err(error(
            StatusCode::PAYLOAD_TOO_LARGE,
            None,
            &format!("the body is larger than {BODY_BYTES_MAX} bytes"),
        ));
    }
    Ok(out.freeze())
}

/// Decodes a path segment (`%2F` → `/`); `field` names it in the error.
pub(crate) fn segment(raw: &str, field: &str) -> Result<String, Reply> {
    percent_encoding::percent_decode_str(raw)
        .decode_utf8()
        .map(|s| s.into_owned())
        .map_err(|_| bad_field(field, "not valid UTF-8 once percent-decoded"))
}

fn not_allowed(allowed: &str) -> Reply {
    error(StatusCode::METHOD_NOT_ALLOWED, None, &format!("allowed here: {allowed}"))
}

/// Routes a request under `/api/v1/`.
pub(crate) async fn route(state: &HttpState, req: Request<Incoming>) -> Reply {
    let path = req.uri().path().to_owned();
    let rest = path.strip_prefix("/api/v1/").unwrap_or("");
    let method = req.method().clone();
    let (head, tail) = match rest.split_once('/') {
        Some((h, t)) => (h, Some(t)),
        None => (rest, None),
    };
    let r = match (head, tail) {
        ("stats", None) => match method {
            Method::GET => stats(state, &req).await,
            _ => Err(not_allowed("GET")),
        },
        ("config", None) => match method {
            Method::GET => Query::parse(&req, &[]).map(|_| config(state)),
            _ => Err(not_allowed("GET")),
        },
        ("reload", None) => match method {
            Method::POST => Query::parse(&req, &[]).map(|_| reload(state)),
            _ => Err(not_allowed("POST")),
        },
        ("logs", None) => match method {
            Method::GET => logs(&req),
            _ => Err(not_allowed("GET")),
        },
        ("bridges", _) => super::api_bridges::route(state, req, tail).await,
        ("cluster", None) => match method {
            Method::GET => match Query::parse(&req, &[]) {
                Ok(_) => Ok(super::api_cluster::cluster(state).await),
                Err(e) => Err(e),
            },
            _ => Err(not_allowed("GET")),
        },
        ("clients", _) => super::api_clients::route(state, req, tail).await,
        ("subscriptions", None) | ("topics", Some(_)) | ("retained", _) | ("publish", None) => {
            super::api_topics::route(state, req, head, tail).await
        }
        _ => Err(error(StatusCode::NOT_FOUND, None, &format!("no such endpoint: {path}"))),
    };
    r.unwrap_or_else(|e| e)
}

async fn stats(state: &HttpState, req: &Request<Incoming>) -> Result<Reply, Reply> {
    Query::parse(req, &[])?;
    let (stats, unanswered) = gather_stats(state).await;
    let mut shards = Vec::new();
    let mut total = [0u64; 9];
    let mut traffic = Traffic::default();
    for s in &stats {
        let c = &s.core;
        traffic.add(&c.traffic);
        let received: u64 = c.messages_received_by_qos.iter().sum();
        let values = [
            c.clients_connected,
            c.sessions,
            c.subscriptions,
            received,
            c.messages_sent,
            c.messages_dropped,
            s.bytes_received,
            s.bytes_sent,
            c.queued_messages,
        ];
        for (t, v) in total.iter_mut().zip(values) {
            *t += v;
        }
        shards.push(json!({
            "shard": s.shard,
            "clients_connected": c.clients_connected,
            "clients_sleeping": s.clients_sleeping,
            "sessions": c.sessions,
            "subscriptions": c.subscriptions,
            "messages_received": received,
            "messages_sent": c.messages_sent,
            "messages_dropped": c.messages_dropped,
            "messages_sent_by_qos": c.traffic.sent_messages_by_qos,
            "messages_dropped_by_reason": dropped_by_reason(&c.traffic),
            "bytes_received": s.bytes_received,
            "bytes_sent": s.bytes_sent,
            "queued_messages": c.queued_messages,
            "queued_bytes": c.queued_bytes,
            "mesh_outbox_messages": s.mesh_outbox_messages,
            "log_disk_bytes": s.log.map(|l| l.disk_bytes),
        }));
    }
    let retained = stats.first().map_or(0, |s| s.core.retained_messages);
    let body = json!({
        "clients_connected": total[0],
        "sessions": total[1],
        "subscriptions": total[2],
        "messages_received": total[3],
        "messages_sent": total[4],
        "messages_dropped": total[5],
        "messages_sent_by_qos": traffic.sent_messages_by_qos,
        "messages_dropped_by_reason": dropped_by_reason(&traffic),
        "bytes_received": total[6],
        "bytes_sent": total[7],
        "queued_messages": total[8],
        "retained_messages": retained,
        "reloads": state.reloader.generation(),
        "shards_unanswered": unanswered,
        "shards": shards,
    });
    Ok(json(StatusCode::OK, &body))
}

/// `{"reason": count, …}` in counter order.
fn dropped_by_reason(t: &Traffic) -> Value {
    let reasons = DropReason::ALL.iter().zip(t.dropped_by_reason);
    Value::Object(reasons.map(|(r, n)| (r.name().to_owned(), n.into())).collect())
}

/// The effective configuration, secrets left out.
pub(crate) fn config_json(c: &Config) -> Value {
    let a = &c.auth;
    json!({
        "listen": c.listen.iter().map(|l| l.url()).collect::<Vec<_>>(),
        "shards": c.shards,
        "cpus": c.cpus,
        "sys_interval_secs": c.sys_interval_secs,
        "io_memory_bytes": c.io_memory_bytes,
        "ring_depth": c.ring_depth,
        "limits": serde_json::to_value(&c.limits).unwrap_or(Value::Null),
        "persistence": {
            "data_dir": c.persist.data_dir.as_ref().map(|d| d.display().to_string()),
            "durability": c.persist.durability.to_string(),
            "data_max_bytes": c.persist.data_max_bytes,
            "segment_size_bytes": c.persist.segment_size_bytes,
            "skip_damaged": c.persist.skip_damaged,
        },
        "auth": {
            "users_file": a.users.is_some(),
            "allow_anonymous": a.allow_anonymous,
            "methods": a.methods.iter().map(|m| m.name().to_owned()).collect::<Vec<_>>(),
            "redirect": a.redirect.as_ref().map(|r| json!({
                "server_reference": r.server_reference,
                "permanent": r.permanent,
            })),
            "password_rounds_per_sec": a.password_rounds_per_sec,
            "rng_seed": "<redacted>",
        },
        "log_level": c.ops.log_level,
        "log_format": format!("{:?}", c.ops.log_format).to_lowercase(),
        "http": c.ops.http.map(|a| a.to_string()),
        "http_token_file": c.ops.http_token_file.as_ref().map(|_| "<redacted>"),
        "http_scheme": c.ops.http.map(|_| c.ops.http_scheme()),
        "http_tls_cert": c.ops.http_tls.as_ref().map(|t| t.cert.display().to_string()),
        "cluster": c.cluster.as_ref().map(|s| json!({
            "node_id": s.node_id.0,
            "listen": s.listen.to_string(),
            "advertise": s.advertise.to_string(),
            "seeds": s.seeds.iter().map(|a| a.to_string()).collect::<Vec<_>>(),
            "link_queue_bytes_max": s.link_queue_bytes_max,
        })),
    })
}

fn config(state: &HttpState) -> Reply {
    let mut v = config_json(state.reloader.config());
    if let Some(level) = state.reloader.current_log_level() {
        v["log_level"] = Value::from(level);
    }
    json(StatusCode::OK, &v)
}

fn reload(state: &HttpState) -> Reply {
    let outcome = state.reloader.reload();
    let status = if outcome.errors.is_empty() { StatusCode::OK } else { StatusCode::CONFLICT };
    json(
        status,
        &json!({
            "generation": outcome.generation,
            "errors": outcome.errors,
            "restart_needed": outcome.restart_needed,
            "reloaded": outcome.reloaded,
        }),
    )
}

fn logs(req: &Request<Incoming>) -> Result<Reply, Reply> {
    let q = Query::parse(req, &["since", "limit"])?;
    let since = q.number("since", 0, u64::MAX, 0)?;
    let limit = q.number("limit", 1, LOG_LINES_PAGE_MAX as u64, 200)? as usize;
    let lines = crate::logging::recent(since, limit);
    let next = lines.last().map_or(since, |l| l.seq);
    let lines: Vec<Value> =
        lines.into_iter().map(|l| json!({ "seq": l.seq, "line": l.text })).collect();
    Ok(json(StatusCode::OK, &json!({ "lines": lines, "next_since": next })))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn field_of(r: Reply) -> (u16, String) {
        let status = r.status().as_u16();
        let body = futures_lite::future::block_on(r.into_body().collect()).unwrap().to_bytes();
        let v: Value = serde_json::from_slice(&body).unwrap();
        (status, v["field"].as_str().unwrap_or("").to_owned())
    }

    #[test]
    fn query_strings_are_decoded_and_checked() {
        let q = Query::from_raw("prefix=a%2Fb&limit=5&after=x+y", &["prefix", "limit", "after"])
            .unwrap_or_else(|_| panic!("valid"));
        assert_eq!(q.get("prefix"), Some("a/b"));
        assert_eq!(q.get("after"), Some("x y"));
        assert_eq!(q.number("limit", 1, 10, 3).unwrap_or(0), 5);
        assert_eq!(q.number("absent", 1, 10, 3).unwrap_or(0), 3);
        let Err(e) = q.number("limit", 6, 10, 7) else { panic!("out of range") };
        assert_eq!(field_of(e), (400, "limit".into()));
        let Err(e) = Query::from_raw("bogus=1", &["limit"]) else { panic!("unknown key") };
        assert_eq!(field_of(e), (400, "bogus".into()));
        let Err(e) = Query::from_raw("limit=1&limit=2", &["limit"]) else { panic!("repeated") };
        assert_eq!(field_of(e), (400, "limit".into()));
        let q = Query::from_raw("d=maybe", &["d"]).unwrap_or_else(|_| panic!("valid"));
        let Err(e) = q.flag("d", false) else { panic!("not a flag") };
        assert_eq!(field_of(e), (400, "d".into()));
    }

    #[test]
    fn path_segments_are_percent_decoded() {
        assert_eq!(segment("a%2Fb%20c", "topic").unwrap_or_default(), "a/b c");
        let Err(e) = segment("%C3%28", "topic") else { panic!("bad UTF-8") };
        assert_eq!(field_of(e), (400, "topic".into()));
    }

    #[test]
    fn the_config_hides_secrets() {
        let mut c = Config::local(2);
        c.ops.http_token_file = Some("/etc/shardmq/token".into());
        let v = config_json(&c);
        assert_eq!(v["auth"]["rng_seed"], "<redacted>");
        assert_eq!(v["http_token_file"], "<redacted>");
        assert!(!v.to_string().contains("/etc/shardmq/token"));
        assert_eq!(v["shards"], 2);
    }
}
