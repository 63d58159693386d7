//! `/api/v1/bridges`: list the running bridges (`GET`), add one (`POST`, a JSON object with
//! the keys of a `[[bridge]]` table), remove one (`DELETE /api/v1/bridges/{name}`, with
//! `?discard_session=true` to end its local session too). See `bridge/admin.rs`.

use std::sync::atomic::Ordering::Relaxed;

use hyper::body::Incoming;
use hyper::{Method, Request, StatusCode};
use serde_json::{json, Value};

use super::api::{body, segment, Query};
use super::respond::{bad_field, error, json, Reply};
use super::HttpState;
use crate::bridge::config::{BridgeConfig, BridgeTable};
use crate::bridge::AddError;
use crate::core::admin::clients::KickOutcome;
use crate::core::shard::{BridgeCounters, ShardCore};
use crate::io::control::{ControlMsg, ControlReply};

/// Routes `/api/v1/bridges[/NAME]`.
pub(crate) async fn route(
    state: &HttpState,
    req: Request<Incoming>,
    tail: Option<&str>,
) -> Result<Reply, Reply> {
    match (req.method().clone(), tail) {
        (Method::GET, None) => Query::parse(&req, &[]).map(|_| list(state)),
        (Method::POST, None) => add(state, req).await,
        (Method::DELETE, Some(name)) => {
            let q = Query::parse(&req, &["discard_session"])?;
            let discard = q.flag("discard_session", false)?;
            remove(state, &segment(name, "name")?, discard).await
        }
        (_, None) => Err(error(StatusCode::METHOD_NOT_ALLOWED, None, "allowed here: GET, POST")),
        (_, Some(_)) => Err(error(StatusCode::METHOD_NOT_ALLOWED, None, "allowed here: DELETE")),
    }
}

/// One bridge as the API shows it (no passwords).
fn bridge_json(b: &BridgeConfig, c: &BridgeCounters) -> Value {
    let v5 = b.protocol == shardmq_codec::ProtocolVersion::V5;
    json!({
        "name": b.name,
        "connected": c.connected.load(Relaxed) == 1,
        "forwarded_out": c.forwarded_out.load(Relaxed),
        "forwarded_in": c.forwarded_in.load(Relaxed),
        "connect_failures": c.connect_failures.load(Relaxed),
        "dropped": c.dropped.load(Relaxed),
        "queued": c.queued.load(Relaxed),
        "queued_bytes": c.queued_bytes.load(Relaxed),
        "inflight": c.inflight.load(Relaxed),
        "addresses": b.addresses,
        "tls": b.tls.is_some(),
        "websocket": b.websocket,
        "protocol": if v5 { "5.0" } else { "3.1.1" },
        "client_id": b.client_id,
        "local_client_id": b.local_client_id,
        "topic_rules": b.topics.len(),
    })
}

fn list(state: &HttpState) -> Reply {
    let list: Vec<Value> = state.bridges.list().iter().map(|(b, c)| bridge_json(b, c)).collect();
    json(StatusCode::OK, &json!({ "bridges": list }))
}

/// The key a bridge configuration error names: serde's "unknown field `x`" / "missing field
/// `x`", or `resolve`'s `bridge "NAME": KEY: why`.
fn field_of(message: &str) -> &str {
    if let Some((_, rest)) = message.split_once('`') {
        return rest.split('`').next().unwrap_or("body");
    }
    match message.split_once("\": ") {
        Some((_, rest)) => rest.split(':').next().unwrap_or("body"),
        None => "body",
    }
}

async fn add(state: &HttpState, req: Request<Incoming>) -> Result<Reply, Reply> {
    Query::parse(&req, &[])?;
    let bytes = body(req).await?;
    let table: BridgeTable = serde_json::from_slice(&bytes).map_err(|e| {
        let m = e.to_string();
        bad_field(field_of(&m), &format!("not a bridge: {m}"))
    })?;
    let cfg = table.resolve().map_err(|m| bad_field(field_of(&m), &m))?;
    match state.bridges.add(cfg.clone()).await {
        Ok(c) => Ok(json(StatusCode::CREATED, &bridge_json(&cfg, &c))),
        Err(AddError::Exists(m)) => Err(error(StatusCode::CONFLICT, Some("name"), &m)),
        Err(AddError::Refused(m)) => Err(error(StatusCode::CONFLICT, None, &m)),
    }
}

async fn remove(state: &HttpState, name: &str, discard: bool) -> Result<Reply, Reply> {
    let Some(cfg) = state.bridges.remove(name).await else {
        return Err(error(StatusCode::NOT_FOUND, Some("name"), &format!("no bridge {name:?}")));
    };
    let mut session_ended = false;
    if discard {
        // The bridge's thread has stopped: its local connection is closed or closing; end
        // the session at its home shard.
        let id = cfg.local_client_id.clone();
        let shard = ShardCore::home_shard(id.as_bytes(), state.control.shard_count());
        let msg = ControlMsg::Kick { client_id: id, discard_session: true };
        if let Ok(ControlReply::Kicked(o)) = state.control.ask(shard, msg).await {
            session_ended = matches!(
                o,
                KickOutcome::SessionEnded | KickOutcome::Disconnected { session_ended: true }
            );
        }
    }
    Ok(json(
        StatusCode::OK,
        &json!({ "name": name, "removed": true, "session_ended": session_ended }),
    ))
}
