//! Read-only views for operators and the dashboard: sessions and their queues,
//! subscriptions, retained messages, and a snapshot of the counters the live charts
//! plot.

use super::{authorized, err, AdminState, Answer, Paging};
use crate::metrics::DropCause;
use axum::extract::rejection::QueryRejection;
use axum::extract::{Query, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::IntoResponse;
use axum::Json;
use serde::Deserialize;
use serde_json::{json, Value};
use std::sync::Arc;
use std::time::{SystemTime, UNIX_EPOCH};

/// The page of `items` that `paging` asks for, with the total count.
pub(super) fn paged(key: &str, items: Vec<Value>, p: &Paging) -> Result<Value, super::ApiError> {
    let (offset, limit) = p.bounds()?;
    let total = items.len();
    let page: Vec<Value> = items.into_iter().skip(offset).take(limit).collect();
    Ok(json!({ "total": total, "offset": offset, "limit": limit, key: page }))
}

/// Whether `id` passes the `search` of a query (a substring; no search passes all).
pub(super) fn found(p: &Paging, id: &str) -> bool {
    p.search.as_deref().is_none_or(|s| id.contains(s))
}

pub(super) fn query<T>(q: Result<Query<T>, QueryRejection>) -> Result<T, super::ApiError> {
    q.map(|Query(q)| q).map_err(|e| {
        err(
            StatusCode::BAD_REQUEST,
            format!("bad query: {}", e.body_text()),
        )
    })
}

pub(super) async fn sessions(
    State(s): State<Arc<AdminState>>,
    headers: HeaderMap,
    paging: Result<Query<Paging>, QueryRejection>,
) -> Answer {
    authorized(&s, &headers)?;
    let paging = query(paging)?;
    let all: Vec<Value> = (s.broker.session_overviews().into_iter())
        .filter(|(id, _)| found(&paging, id))
        .map(|(id, o)| {
            json!({
                "client_id": &*id,
                "connected": o.connected,
                "expiry_interval": o.expiry_interval,
                "queued": o.queued,
                "inflight": o.inflight,
                "disconnected_at": o.disconnected_at,
                "subscriptions": o.subscriptions.len(),
            })
        })
        .collect();
    Ok(Json(paged("sessions", all, &paging)?).into_response())
}

pub(super) async fn subscriptions(
    State(s): State<Arc<AdminState>>,
    headers: HeaderMap,
    paging: Result<Query<Paging>, QueryRejection>,
) -> Answer {
    authorized(&s, &headers)?;
    let paging = query(paging)?;
    let mut all = Vec::new();
    for (id, o) in s.broker.session_overviews() {
        for (filter, qos) in o.subscriptions {
            if found(&paging, &id) || found(&paging, &filter) {
                all.push(json!({ "client_id": &*id, "filter": filter, "qos": qos }));
            }
        }
    }
    Ok(Json(paged("subscriptions", all, &paging)?).into_response())
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RetainedQuery {
    /// An MQTT filter; `#` (everything but `$` topics) when not given.
    filter: Option<String>,
    offset: Option<usize>,
    limit: Option<usize>,
}

/// How much of a payload a listing shows.
const PREVIEW: usize = 200;

pub(super) async fn retained(
    State(s): State<Arc<AdminState>>,
    headers: HeaderMap,
    q: Result<Query<RetainedQuery>, QueryRejection>,
) -> Answer {
    authorized(&s, &headers)?;
    let q = query(q)?;
    let filter = q.filter.as_deref().unwrap_or("#");
    if let Err(e) = crate::topic::validate_filter(filter) {
        return Err(err(
            StatusCode::BAD_REQUEST,
            format!("filter '{filter}': {e}"),
        ));
    }
    let all: Vec<Value> = (s.broker.retained_matching(filter).iter())
        .map(|m| {
            let shown = &m.payload[..m.payload.len().min(PREVIEW)];
            json!({
                "topic": &*m.topic,
                "qos": m.qos as u8,
                "bytes": m.payload.len(),
                "payload": String::from_utf8_lossy(shown),
                "expires_at": m.expires_at,
            })
        })
        .collect();
    let paging = Paging {
        offset: q.offset,
        limit: q.limit,
        search: None,
    };
    Ok(Json(paged("messages", all, &paging)?).into_response())
}

/// The broker's counters now, for charts: rates are differences between snapshots.
pub(super) async fn stats(State(s): State<Arc<AdminState>>, headers: HeaderMap) -> Answer {
    authorized(&s, &headers)?;
    let b = &s.broker;
    let m = b.metrics();
    let now_ms = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64);
    let dropped: u64 = DropCause::ALL.iter().map(|c| m.drops(*c)).sum();
    Ok(Json(json!({
        "time_ms": now_ms,
        "connections": m.connections(),
        "messages_received": m.messages_received(),
        "messages_sent": m.messages_sent(),
        "bytes_received": m.bytes_read(),
        "bytes_sent": m.bytes_written(),
        "dropped": dropped,
        "sessions": b.session_count(),
        "subscriptions": b.subscription_count(),
        "retained": b.retained_count(),
        "queued": b.queued_messages(),
    }))
    .into_response())
}
