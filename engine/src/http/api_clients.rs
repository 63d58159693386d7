//! `GET /api/v1/clients`, `GET /api/v1/clients/{id}`, `DELETE /api/v1/clients/{id}`.
//!
//! A client lives on its home shard (`ShardCore::home_shard` of its id): one client is asked
//! of that shard only; a page is asked of every shard, merged in id order and cut.

use hyper::body::Incoming;
use hyper::{Method, Request, StatusCode};
use serde_json::{json, Value};

use super::api::{segment, Query};
use super::clock;
use super::respond::{bad_field, error, json, Reply};
use super::{HttpState, REPLY_TIMEOUT};
use crate::core::admin::clients::{ClientDetail, ClientQuery, ClientSummary, KickOutcome};
use crate::core::ids::ShardId;
use crate::core::shard::ShardCore;
use crate::io::control::{ControlMsg, ControlReply};

/// Clients a page holds at most (and by default).
pub const CLIENTS_PAGE_MAX: u64 = 1000;
const CLIENTS_PAGE_DEFAULT: u64 = 100;
/// Longest client id accepted in a path (the protocol's own maximum).
const CLIENT_ID_BYTES_MAX: usize = 65535;

pub(crate) async fn route(
    state: &HttpState,
    req: Request<Incoming>,
    tail: Option<&str>,
) -> Result<Reply, Reply> {
    match (req.method().clone(), tail) {
        (Method::GET, None) => list(state, &req).await,
        (Method::GET, Some(id)) => {
            Query::parse(&req, &[])?;
            one(state, &client_id(id)?).await
        }
        (Method::DELETE, Some(id)) => {
            let q = Query::parse(&req, &["discard_session"])?;
            let discard = q.flag("discard_session", false)?;
            kick(state, &client_id(id)?, discard).await
        }
        (_, None) => Err(error(StatusCode::METHOD_NOT_ALLOWED, None, "allowed here: GET")),
        (_, Some(_)) => {
            Err(error(StatusCode::METHOD_NOT_ALLOWED, None, "allowed here: GET, DELETE"))
        }
    }
}

fn client_id(raw: &str) -> Result<String, Reply> {
    let id = segment(raw, "id")?;
    if id.is_empty() || id.len() > CLIENT_ID_BYTES_MAX {
        return Err(bad_field("id", "a client id is 1 to 65535 bytes"));
    }
    Ok(id)
}

/// Awaits one shard's reply (bounded by [`REPLY_TIMEOUT`]).
pub(crate) async fn ask(
    state: &HttpState,
    shard: ShardId,
    msg: ControlMsg,
) -> Result<ControlReply, Reply> {
    match tokio::time::timeout(REPLY_TIMEOUT, state.control.ask(shard, msg)).await {
        Ok(Ok(r)) => Ok(r),
        Ok(Err(e)) => Err(error(StatusCode::SERVICE_UNAVAILABLE, None, &e.to_string())),
        Err(_) => Err(error(
            StatusCode::SERVICE_UNAVAILABLE,
            None,
            &format!("{shard} did not answer in time"),
        )),
    }
}

/// Asks every shard; fails if one does not answer.
pub(crate) async fn ask_all(
    state: &HttpState,
    make: impl FnMut(ShardId) -> ControlMsg,
) -> Result<Vec<ControlReply>, Reply> {
    let all = tokio::time::timeout(REPLY_TIMEOUT, state.control.ask_all(make)).await;
    let Ok(all) = all else {
        return Err(error(StatusCode::SERVICE_UNAVAILABLE, None, "a shard did not answer in time"));
    };
    all.into_iter()
        .map(|r| r.map_err(|e| error(StatusCode::SERVICE_UNAVAILABLE, None, &e.to_string())))
        .collect()
}

fn unexpected() -> Reply {
    error(StatusCode::INTERNAL_SERVER_ERROR, None, "unexpected reply from a shard")
}

pub(crate) fn home(state: &HttpState, key: &str) -> ShardId {
    ShardCore::home_shard(key.as_bytes(), state.control.shard_count())
}

fn summary_json(c: &ClientSummary) -> Value {
    let (since, since_unix) = clock::json_pair(c.connected_since);
    let (gone, gone_unix) = clock::json_pair(c.disconnected_at);
    json!({
        "client_id": c.client_id,
        "shard": c.shard,
        "connected": c.connected,
        "protocol": c.protocol,
        "remote": c.remote,
        "listener": c.listener,
        "user": c.user,
        "subscriptions": c.subscriptions,
        "queued_messages": c.queued_messages,
        "inflight": c.inflight,
        "connected_since": since,
        "connected_since_unix": since_unix,
        "disconnected_at": gone,
        "disconnected_at_unix": gone_unix,
    })
}

async fn list(state: &HttpState, req: &Request<Incoming>) -> Result<Reply, Reply> {
    let q = Query::parse(req, &["prefix", "user", "limit", "after"])?;
    let limit = q.number("limit", 1, CLIENTS_PAGE_MAX, CLIENTS_PAGE_DEFAULT)? as usize;
    let query = ClientQuery {
        prefix: q.get("prefix").map(str::to_owned),
        user: q.get("user").map(str::to_owned),
        after: q.get("after").map(str::to_owned),
        limit,
    };
    let replies = ask_all(state, |_| ControlMsg::ListClients(query.clone())).await?;
    let mut all: Vec<ClientSummary> = Vec::new();
    for r in replies {
        match r {
            ControlReply::Clients(page) => all.extend(page),
            _ => return Err(unexpected()),
        }
    }
    Ok(json(StatusCode::OK, &page_json(all, limit)))
}

/// Merges shards' pages: id order, cut at `limit`; `next_after` when more may follow.
fn page_json(mut all: Vec<ClientSummary>, limit: usize) -> Value {
    all.sort_by(|a, b| a.client_id.cmp(&b.client_id));
    let more = all.len() > limit;
    all.truncate(limit);
    let next = more.then(|| all.last().map(|c| c.client_id.clone())).flatten();
    json!({
        "clients": all.iter().map(summary_json).collect::<Vec<_>>(),
        "next_after": next,
    })
}

fn detail_json(d: &ClientDetail) -> Value {
    let mut v = summary_json(&d.summary);
    v["subscriptions"] = d
        .subscriptions
        .iter()
        .map(|s| {
            json!({
                "filter": s.filter,
                "qos": s.qos,
                "no_local": s.no_local,
                "retain_as_published": s.retain_as_published,
                "retain_handling": s.retain_handling,
                "subscription_id": s.id,
            })
        })
        .collect();
    v["queued_bytes"] = Value::from(d.queued_bytes);
    v["session_expiry_secs"] = Value::from(d.session_expiry_secs);
    v["keep_alive_secs"] = json!(d.keep_alive_secs);
    v["tx_queued_bytes"] = json!(d.tx_queued_bytes);
    v
}

async fn one(state: &HttpState, id: &str) -> Result<Reply, Reply> {
    match ask(state, home(state, id), ControlMsg::GetClient(id.to_owned())).await? {
        ControlReply::Client(Some(d)) => Ok(json(StatusCode::OK, &detail_json(&d))),
        ControlReply::Client(None) => Err(not_found(id)),
        _ => Err(unexpected()),
    }
}

fn not_found(id: &str) -> Reply {
    error(StatusCode::NOT_FOUND, Some("id"), &format!("no session for client id {id:?}"))
}

async fn kick(state: &HttpState, id: &str, discard_session: bool) -> Result<Reply, Reply> {
    let msg = ControlMsg::Kick { client_id: id.to_owned(), discard_session };
    let outcome = match ask(state, home(state, id), msg).await? {
        ControlReply::Kicked(o) => o,
        _ => return Err(unexpected()),
    };
    let (disconnected, session_ended) = match outcome {
        KickOutcome::NotFound => return Err(not_found(id)),
        KickOutcome::Disconnected { session_ended } => (true, session_ended),
        KickOutcome::SessionEnded => (false, true),
        KickOutcome::NotConnected => (false, false),
    };
    let body = json!({
        "client_id": id,
        "disconnected": disconnected,
        "session_ended": session_ended,
    });
    Ok(json(StatusCode::OK, &body))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn c(id: &str) -> ClientSummary {
        ClientSummary {
            client_id: id.into(),
            shard: 0,
            connected: true,
            protocol: Some("5.0"),
            remote: None,
            listener: Some(0),
            user: None,
            subscriptions: 0,
            queued_messages: 0,
            inflight: 0,
            connected_since: Some(std::time::Instant::now()),
            disconnected_at: None,
        }
    }

    #[test]
    fn pages_merge_in_id_order_and_say_where_to_go_on() {
        let v = page_json(vec![c("b"), c("d"), c("a"), c("c")], 3);
        let ids: Vec<_> =
            v["clients"].as_array().unwrap().iter().map(|c| c["client_id"].clone()).collect();
        assert_eq!(ids, vec!["a", "b", "c"]);
        assert_eq!(v["next_after"], "c");
        let v = page_json(vec![c("a")], 3);
        assert!(v["next_after"].is_null());
        let one = &v["clients"][0];
        assert!(one["connected_since"].as_str().is_some_and(|t| t.ends_with('Z')), "{one}");
        assert!(one["connected_since_unix"].as_u64().is_some_and(|t| t > 1_700_000_000));
        assert!(one["disconnected_at"].is_null() && one["disconnected_at_unix"].is_null());
    }

    #[test]
    fn ids_are_checked() {
        assert_eq!(client_id("a%2Fb").unwrap(), "a/b");
        assert!(client_id("").is_err());
        assert!(client_id("%FF").is_err());
    }
}
