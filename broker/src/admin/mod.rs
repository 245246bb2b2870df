//! The admin HTTP API: health, Prometheus metrics, plugin operations and clients.
//!
//! Loopback by default and optionally behind a bearer token, since it can disconnect
//! clients and swap plugins. Every error is a JSON body `{"error": "..."}` with a status
//! that says what kind of error it is.

mod browse;
pub mod client;
pub(crate) mod https;
mod metrics;
mod process;
mod ui;

use crate::broker::Broker;
use crate::codec::ReasonCode;
use crate::connection::ListenerInfo;
use crate::plugin::{PluginChain, PluginError};
use axum::extract::rejection::QueryRejection;
use axum::extract::{Path, Query, State};
use axum::http::{header, HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{delete, get, post};
use axum::{Json, Router};
use serde::Deserialize;
use serde_json::{json, Value};
use std::sync::Arc;
use std::time::UNIX_EPOCH;

pub struct AdminState {
    pub broker: Arc<Broker>,
    pub plugins: Option<Arc<PluginChain>>,
    pub listeners: Vec<Arc<ListenerInfo>>,
    pub token: Option<String>,
    /// Served over TLS: the dashboard's cookie is marked `Secure`.
    pub https: bool,
    /// In cluster mode, the link to NATS's counters.
    pub cluster: Option<Arc<crate::cluster::ClusterStats>>,
}

/// An error answer: status and message.
pub struct ApiError(StatusCode, String);

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        (self.0, Json(json!({ "error": self.1 }))).into_response()
    }
}

fn err(status: StatusCode, message: impl Into<String>) -> ApiError {
    ApiError(status, message.into())
}

type Answer = Result<Response, ApiError>;

pub fn router(state: Arc<AdminState>) -> Router {
    Router::new()
        .route("/health", get(health))
        .route("/metrics", get(metrics))
        .route("/plugins", get(plugins))
        .route("/plugins/{name}/reload", post(reload))
        .route("/plugins/{name}/enable", post(enable))
        .route("/plugins/{name}/disable", post(disable))
        .route("/plugins/{name}/shadow", post(shadow).delete(unshadow))
        .route("/plugins/{name}/promote", post(promote))
        .route("/clients", get(clients))
        .route("/clients/{id}", delete(kick))
        .route("/sessions", get(browse::sessions))
        .route("/subscriptions", get(browse::subscriptions))
        .route("/retained", get(browse::retained))
        .route("/stats", get(browse::stats))
        .route("/ui", get(ui::page))
        .route("/ui/app.js", get(ui::app_js))
        .route("/ui/app.css", get(ui::app_css))
        .route("/ui/login.js", get(ui::login_js))
        .route("/ui/login", post(ui::login))
        .route("/ui/logout", post(ui::logout))
        .fallback(|| async { err(StatusCode::NOT_FOUND, "no such endpoint") })
        .method_not_allowed_fallback(|| async {
            err(StatusCode::METHOD_NOT_ALLOWED, "method not allowed here")
        })
        .with_state(state)
}

/// Refuses a request without the configured token: as `Authorization: Bearer`, or as
/// the dashboard's cookie ([`ui::COOKIE`]) on a request from the dashboard's own
/// origin (a page elsewhere cannot make the browser act with it).
fn authorized(state: &AdminState, headers: &HeaderMap) -> Result<(), ApiError> {
    let Some(token) = &state.token else {
        return Ok(());
    };
    let bearer = headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "));
    let given = match bearer {
        Some(b) => same_secret(b, token),
        None => match ui::cookie_matches(headers, token) {
            Some(matches) => matches,
            None => {
                return Err(err(
                    StatusCode::UNAUTHORIZED,
                    "an Authorization: Bearer token is required",
                ))
            }
        },
    };
    match given {
        true => Ok(()),
        false => Err(err(StatusCode::UNAUTHORIZED, "wrong bearer token")),
    }
}

/// Compares digests in constant time: the token is a password, and neither its bytes
/// nor its length may show in how long a wrong guess takes.
fn same_secret(given: &str, token: &str) -> bool {
    use sha2::{Digest, Sha256};
    let (a, b) = (
        Sha256::digest(given.as_bytes()),
        Sha256::digest(token.as_bytes()),
    );
    a.iter().zip(b.iter()).fold(0, |acc, (x, y)| acc | (x ^ y)) == 0
}

fn chain(state: &AdminState) -> Result<&Arc<PluginChain>, ApiError> {
    state
        .plugins
        .as_ref()
        .ok_or_else(|| err(StatusCode::NOT_FOUND, "no plugins are configured"))
}

async fn health(State(s): State<Arc<AdminState>>, headers: HeaderMap) -> Answer {
    authorized(&s, &headers)?;
    let connections: u64 = s.listeners.iter().map(|l| l.connections()).sum();
    let sessions = s.broker.session_count();
    Ok(
        Json(json!({ "status": "ok", "connections": connections, "sessions": sessions }))
            .into_response(),
    )
}

async fn metrics(State(s): State<Arc<AdminState>>, headers: HeaderMap) -> Answer {
    authorized(&s, &headers)?;
    let body = metrics::render(&s);
    Ok(([(header::CONTENT_TYPE, "text/plain; version=0.0.4")], body).into_response())
}

fn plugin_json(p: &crate::plugin::Plugin) -> Value {
    use std::sync::atomic::Ordering::Relaxed;
    let st = &p.stats;
    let errors: serde_json::Map<String, Value> = st
        .errors()
        .iter()
        .map(|(k, n)| (k.to_string(), json!(n)))
        .collect();
    json!({
        "name": &*p.name,
        "sha256": p.hash,
        "loaded_at": p.loaded_at.duration_since(UNIX_EPOCH).map(|d| d.as_secs()).unwrap_or(0),
        "hooks": p.hook_names(),
        "blocking": p.may_wait(),
        "enabled": st.enabled(),
        "calls": st.calls.load(),
        "reused_answers": st.reused.load(),
        "denials": st.denials.load(Relaxed),
        "errors": errors,
        "latency_mean_us": (st.mean_call_us() * 100.0).round() / 100.0,
        "latency_p50_us": quantile_us(st, 0.5),
        "latency_p99_us": quantile_us(st, 0.99),
        "reloads": st.reloads.load(Relaxed),
        "rejections": st.rejections.load(Relaxed),
        "last_rejection": st.last_rejection(),
        "shadow": p.shadow().map(|s| shadow_json(&s)),
    })
}

/// The upper bound of the latency bucket holding quantile `q` of the timed calls,
/// microseconds (`None` before any call, or past the last finite bucket). A mean
/// carries the first call's instantiation for long; this does not.
fn quantile_us(st: &crate::plugin::Stats, q: f64) -> Option<f64> {
    use std::sync::atomic::Ordering::Relaxed;
    let counts: Vec<u64> = st.latency_buckets.iter().map(|b| b.load(Relaxed)).collect();
    let total: u64 = counts.iter().sum();
    let rank = (total as f64 * q).ceil().max(1.0) as u64;
    let mut seen = 0;
    for (bound, n) in crate::plugin::LATENCY_BUCKETS_NS.iter().zip(&counts) {
        seen += n;
        if total > 0 && seen >= rank {
            return (*bound != u64::MAX).then(|| *bound as f64 / 1000.0);
        }
    }
    None
}

fn shadow_json(s: &crate::plugin::Shadow) -> Value {
    use std::sync::atomic::Ordering::Relaxed;
    json!({
        "path": s.config.path,
        "sha256": s.candidate.hash,
        "agreed": s.agreed.load(Relaxed),
        "disagreed": s.disagreed.load(Relaxed),
        "failed": s.failed.load(Relaxed),
    })
}

async fn plugins(State(s): State<Arc<AdminState>>, headers: HeaderMap) -> Answer {
    authorized(&s, &headers)?;
    let list: Vec<Value> = match &s.plugins {
        Some(c) => c.plugins().iter().map(|p| plugin_json(p)).collect(),
        None => Vec::new(),
    };
    Ok(Json(json!({ "plugins": list })).into_response())
}

async fn reload(
    State(s): State<Arc<AdminState>>,
    headers: HeaderMap,
    Path(name): Path<String>,
) -> Answer {
    authorized(&s, &headers)?;
    let c = chain(&s)?.clone();
    loading(c, move |c| c.reload(&name), |p| plugin_json(&p), KEPT).await
}

/// What a refused new version of a plugin leaves in place.
const KEPT: &str = "; the previous version keeps serving";

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Candidate {
    /// The candidate component's file, as the broker's process sees it.
    path: std::path::PathBuf,
}

/// What a chain operation that loads a component answers: `ok` as JSON, 404 for a
/// plugin or shadow that is not there, 422 with the reason (and `refused`) otherwise.
async fn loading<T: Send + 'static>(
    c: Arc<PluginChain>,
    op: impl FnOnce(&PluginChain) -> Result<T, PluginError> + Send + 'static,
    ok: impl FnOnce(T) -> Value,
    refused: &'static str,
) -> Answer {
    // Compiling may take seconds: not on a runtime worker.
    let outcome = tokio::task::spawn_blocking(move || op(&c))
        .await
        .map_err(|e| {
            err(
                StatusCode::INTERNAL_SERVER_ERROR,
                format!("plugin task failed: {e}"),
            )
        })?;
    match outcome {
        Ok(t) => Ok(Json(ok(t)).into_response()),
        Err(e @ (PluginError::Unknown(_) | PluginError::NoShadow(_))) => {
            Err(err(StatusCode::NOT_FOUND, e.to_string()))
        }
        Err(e) => Err(err(
            StatusCode::UNPROCESSABLE_ENTITY,
            format!("{e}{refused}"),
        )),
    }
}

async fn shadow(
    State(s): State<Arc<AdminState>>,
    headers: HeaderMap,
    Path(name): Path<String>,
    candidate: Result<Query<Candidate>, QueryRejection>,
) -> Answer {
    authorized(&s, &headers)?;
    let Query(candidate) = candidate.map_err(|e| {
        let why = format!("give the candidate as ?path=FILE.wasm: {}", e.body_text());
        err(StatusCode::BAD_REQUEST, why)
    })?;
    let c = chain(&s)?.clone();
    loading(
        c,
        move |c| c.shadow(&name, &candidate.path),
        |sh| shadow_json(&sh),
        "",
    )
    .await
}

async fn unshadow(
    State(s): State<Arc<AdminState>>,
    headers: HeaderMap,
    Path(name): Path<String>,
) -> Answer {
    authorized(&s, &headers)?;
    let c = chain(&s)?.clone();
    let answer = json!({ "name": &name, "shadow": null });
    loading(c, move |c| c.unshadow(&name), |_| answer, "").await
}

async fn promote(
    State(s): State<Arc<AdminState>>,
    headers: HeaderMap,
    Path(name): Path<String>,
) -> Answer {
    authorized(&s, &headers)?;
    let c = chain(&s)?.clone();
    loading(c, move |c| c.promote(&name), |p| plugin_json(&p), KEPT).await
}

async fn switch(s: &AdminState, headers: &HeaderMap, name: &str, on: bool) -> Answer {
    authorized(s, headers)?;
    match chain(s)?.set_enabled(name, on) {
        Ok(()) => Ok(Json(json!({ "name": name, "enabled": on })).into_response()),
        Err(e) => Err(err(StatusCode::NOT_FOUND, e.to_string())),
    }
}

async fn enable(
    State(s): State<Arc<AdminState>>,
    headers: HeaderMap,
    Path(name): Path<String>,
) -> Answer {
    switch(&s, &headers, &name, true).await
}

async fn disable(
    State(s): State<Arc<AdminState>>,
    headers: HeaderMap,
    Path(name): Path<String>,
) -> Answer {
    switch(&s, &headers, &name, false).await
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Paging {
    offset: Option<usize>,
    limit: Option<usize>,
    /// Only entries whose client id (or filter) contains this.
    search: Option<String>,
}

const MAX_PAGE: usize = 1000;

impl Paging {
    /// Offset and limit, the limit checked.
    fn bounds(&self) -> Result<(usize, usize), ApiError> {
        let limit = self.limit.unwrap_or(100);
        if limit == 0 || limit > MAX_PAGE {
            return Err(err(
                StatusCode::BAD_REQUEST,
                format!("limit must be between 1 and {MAX_PAGE}"),
            ));
        }
        Ok((self.offset.unwrap_or(0), limit))
    }
}

async fn clients(
    State(s): State<Arc<AdminState>>,
    headers: HeaderMap,
    paging: Result<Query<Paging>, QueryRejection>,
) -> Answer {
    authorized(&s, &headers)?;
    let paging = browse::query(paging)?;
    let mut connected: Vec<Value> = s
        .broker
        .connected_clients()
        .iter()
        .filter(|c| browse::found(&paging, &c.client_id))
        .map(|c| {
            json!({
                "client_id": &*c.client_id,
                "listener": &*c.listener,
                "address": c.peer.to_string(),
                "protocol": c.version.to_string(),
                "connected_since": c.since.duration_since(UNIX_EPOCH).map(|d| d.as_secs()).unwrap_or(0),
            })
        })
        .collect();
    connected.sort_by(|a, b| a["client_id"].as_str().cmp(&b["client_id"].as_str()));
    Ok(Json(browse::paged("clients", connected, &paging)?).into_response())
}

async fn kick(
    State(s): State<Arc<AdminState>>,
    headers: HeaderMap,
    Path(id): Path<String>,
) -> Answer {
    authorized(&s, &headers)?;
    if s.broker.kick(&id, ReasonCode::AdministrativeAction) {
        tracing::info!(client_id = %id, "client disconnected by the admin API");
        Ok(StatusCode::NO_CONTENT.into_response())
    } else {
        Err(err(
            StatusCode::NOT_FOUND,
            format!("no connected client '{id}'"),
        ))
    }
}
