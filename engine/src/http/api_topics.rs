//! `GET /api/v1/subscriptions`, `GET /api/v1/topics/{topic}/subscribers`,
//! `POST /api/v1/publish`, `GET /api/v1/retained`, `GET|DELETE /api/v1/retained/{topic}`.
//!
//! A topic in a path may be written as is (`/api/v1/retained/a/b`) or percent-encoded.

use base64::Engine as _;
use hyper::body::Incoming;
use hyper::{Method, Request, StatusCode};
use serde_json::{json, Value};

use super::api::{body, segment, Query};
use super::api_clients::{ask, ask_all, home};
use super::respond::{bad_field, error, json, Reply};
use super::{publish_body, HttpState};
use crate::core::admin::topics::{RetainedRow, SubscriptionRow};
use crate::core::routing::topic::TopicLimits;
use crate::io::control::{ControlMsg, ControlReply};

/// Rows a page holds at most.
pub const ROWS_PAGE_MAX: u64 = 1000;
const ROWS_PAGE_DEFAULT: u64 = 100;

pub(crate) async fn route(
    state: &HttpState,
    req: Request<Incoming>,
    head: &str,
    tail: Option<&str>,
) -> Result<Reply, Reply> {
    let method = req.method().clone();
    let limits = TopicLimits::from(&state.reloader.config().limits);
    match (head, method, tail) {
        ("subscriptions", Method::GET, None) => subscriptions(state, &req).await,
        ("topics", Method::GET, Some(t)) => {
            let Some(raw) = t.strip_suffix("/subscribers") else {
                return Err(error(
                    StatusCode::NOT_FOUND,
                    None,
                    "expected /api/v1/topics/{topic}/subscribers",
                ));
            };
            let topic = topic(raw, &limits)?;
            subscribers(state, &req, topic).await
        }
        ("publish", Method::POST, None) => publish(state, req, &limits).await,
        ("retained", Method::GET, None) => retained_list(state, &req).await,
        ("retained", Method::GET, Some(t)) => {
            Query::parse(&req, &[])?;
            retained_one(state, topic(t, &limits)?).await
        }
        ("retained", Method::DELETE, Some(t)) => {
            Query::parse(&req, &[])?;
            retained_clear(state, topic(t, &limits)?).await
        }
        ("publish", _, _) => Err(error(StatusCode::METHOD_NOT_ALLOWED, None, "allowed here: POST")),
        ("retained", _, Some(_)) => {
            Err(error(StatusCode::METHOD_NOT_ALLOWED, None, "allowed here: GET, DELETE"))
        }
        _ => Err(error(StatusCode::METHOD_NOT_ALLOWED, None, "allowed here: GET")),
    }
}

fn topic(raw: &str, limits: &TopicLimits) -> Result<String, Reply> {
    let t = segment(raw, "topic")?;
    publish_body::check_topic(&t, limits, "topic").map_err(|(f, m)| bad_field(&f, &m))?;
    Ok(t)
}

fn unexpected() -> Reply {
    error(StatusCode::INTERNAL_SERVER_ERROR, None, "unexpected reply from a shard")
}

fn rows_json(rows: &[SubscriptionRow]) -> Vec<Value> {
    rows.iter()
        .map(|r| json!({ "client_id": r.client_id, "filter": r.filter, "qos": r.qos, "shard": r.shard }))
        .collect()
}

fn collect_subscriptions(replies: Vec<ControlReply>) -> Result<Vec<SubscriptionRow>, Reply> {
    let mut all = Vec::new();
    for r in replies {
        match r {
            ControlReply::Subscriptions(rows) => all.extend(rows),
            _ => return Err(unexpected()),
        }
    }
    all.sort_unstable();
    Ok(all)
}

async fn subscriptions(state: &HttpState, req: &Request<Incoming>) -> Result<Reply, Reply> {
    let q = Query::parse(req, &["filter", "limit", "after_client", "after_filter"])?;
    let limit = q.number("limit", 1, ROWS_PAGE_MAX, ROWS_PAGE_DEFAULT)? as usize;
    let after = match (q.get("after_client"), q.get("after_filter")) {
        (Some(c), Some(f)) => Some((c.to_owned(), f.to_owned())),
        (None, None) => None,
        (Some(_), None) => return Err(bad_field("after_filter", "needed with after_client")),
        (None, Some(_)) => return Err(bad_field("after_client", "needed with after_filter")),
    };
    let prefix = q.get("filter").map(str::to_owned);
    let replies = ask_all(state, |_| ControlMsg::ListSubscriptions {
        prefix: prefix.clone(),
        after: after.clone(),
        limit: limit + 1,
    })
    .await?;
    let mut all = collect_subscriptions(replies)?;
    let more = all.len() > limit;
    all.truncate(limit);
    let next = all
        .last()
        .filter(|_| more)
        .map(|r| json!({ "after_client": r.client_id, "after_filter": r.filter }));
    Ok(json(StatusCode::OK, &json!({ "subscriptions": rows_json(&all), "next": next })))
}

async fn subscribers(
    state: &HttpState,
    req: &Request<Incoming>,
    topic: String,
) -> Result<Reply, Reply> {
    let q = Query::parse(req, &["limit"])?;
    let limit = q.number("limit", 1, ROWS_PAGE_MAX, ROWS_PAGE_DEFAULT)? as usize;
    let replies =
        ask_all(state, |_| ControlMsg::Subscribers { topic: topic.clone(), limit: limit + 1 })
            .await?;
    let mut all = collect_subscriptions(replies)?;
    let truncated = all.len() > limit;
    all.truncate(limit);
    let body = json!({ "topic": topic, "subscribers": rows_json(&all), "truncated": truncated });
    Ok(json(StatusCode::OK, &body))
}

async fn publish(
    state: &HttpState,
    req: Request<Incoming>,
    limits: &TopicLimits,
) -> Result<Reply, Reply> {
    Query::parse(&req, &[])?;
    let bytes = body(req).await?;
    let payload_max = state.reloader.config().limits.packet_size_max_bytes as usize;
    let p = publish_body::parse(&bytes, limits, payload_max).map_err(|(f, m)| bad_field(&f, &m))?;
    let topic = p.topic.clone();
    // The topic's home shard routes it, like any publisher's shard would.
    let shard = home(state, &topic);
    match ask(state, shard, ControlMsg::Publish(Box::new(p))).await? {
        ControlReply::Done => {
            Ok(json(StatusCode::OK, &json!({ "topic": topic, "published": true })))
        }
        _ => Err(unexpected()),
    }
}

fn retained_json(r: &RetainedRow) -> Value {
    let mut v = json!({ "topic": r.topic, "qos": r.qos, "payload_bytes": r.payload_bytes });
    if let Some(p) = &r.payload {
        match std::str::from_utf8(p) {
            Ok(text) => v["payload"] = Value::from(text),
            Err(_) => {
                v["payload_base64"] =
                    Value::from(base64::engine::general_purpose::STANDARD.encode(p))
            }
        }
    }
    v
}

async fn retained_list(state: &HttpState, req: &Request<Incoming>) -> Result<Reply, Reply> {
    let q = Query::parse(req, &["prefix", "limit", "after"])?;
    let limit = q.number("limit", 1, ROWS_PAGE_MAX, ROWS_PAGE_DEFAULT)? as usize;
    let msg = ControlMsg::ListRetained {
        prefix: q.get("prefix").map(str::to_owned),
        after: q.get("after").map(str::to_owned),
        limit: limit + 1,
    };
    // Each shard answers for the topics it owns (its copy is the newest).
    let mut rows = Vec::new();
    for r in ask_all(state, |_| msg.clone()).await? {
        match r {
            ControlReply::Retained(part) => rows.extend(part),
            _ => return Err(unexpected()),
        }
    }
    rows.sort_unstable_by(|a, b| a.topic.cmp(&b.topic));
    let more = rows.len() > limit;
    rows.truncate(limit);
    let next = rows.last().filter(|_| more).map(|r| r.topic.clone());
    let list: Vec<Value> = rows.iter().map(retained_json).collect();
    Ok(json(StatusCode::OK, &json!({ "retained": list, "next_after": next })))
}

async fn retained_one(state: &HttpState, topic: String) -> Result<Reply, Reply> {
    // The owner sequences the topic's updates: its replica is the newest.
    match ask(state, home(state, &topic), ControlMsg::GetRetained(topic.clone())).await? {
        ControlReply::Retained(rows) => match rows.first() {
            Some(r) => Ok(json(StatusCode::OK, &retained_json(r))),
            None => Err(error(
                StatusCode::NOT_FOUND,
                Some("topic"),
                &format!("no retained message on {topic:?}"),
            )),
        },
        _ => Err(unexpected()),
    }
}

async fn retained_clear(state: &HttpState, topic: String) -> Result<Reply, Reply> {
    match ask(state, home(state, &topic), ControlMsg::ClearRetained(topic.clone())).await? {
        ControlReply::Cleared(true) => {
            Ok(json(StatusCode::OK, &json!({ "topic": topic, "cleared": true })))
        }
        ControlReply::Cleared(false) => Err(error(
            StatusCode::NOT_FOUND,
            Some("topic"),
            &format!("no retained message on {topic:?}"),
        )),
        _ => Err(unexpected()),
    }
}
