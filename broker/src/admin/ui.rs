//! The dashboard: a page, its script and its styles compiled into the binary (an
//! operator's browser may have no way out to a CDN), served under `/ui` behind the
//! admin token. The browser holds the token in an HttpOnly, SameSite=Strict cookie
//! that the login page asks the API to set; everything the page shows comes from the
//! same JSON API scripts use.

use super::{authorized, err, same_secret, AdminState, Answer};
use axum::extract::rejection::JsonRejection;
use axum::extract::State;
use axum::http::{header, HeaderMap, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Json;
use serde::Deserialize;
use std::sync::Arc;

/// The cookie that carries the admin token (hex, so any token is a valid value).
pub(super) const COOKIE: &str = "weir_admin";

const DASHBOARD: &str = include_str!("ui/dashboard.html");
const APP_JS: &str = include_str!("ui/app.js");
const APP_CSS: &str = include_str!("ui/app.css");
const LOGIN: &str = include_str!("ui/login.html");
const LOGIN_JS: &str = include_str!("ui/login.js");

/// Scripts and styles only from the API itself; no framing (a framed page could be
/// clicked into kicking clients).
const CSP: &str = "default-src 'self'; img-src 'self' data:; frame-ancestors 'none'; base-uri 'none'; form-action 'none'";

fn asset(status: StatusCode, kind: &'static str, body: &'static str) -> Response {
    let mut r = (status, body).into_response();
    let h = r.headers_mut();
    h.insert(header::CONTENT_TYPE, HeaderValue::from_static(kind));
    h.insert(
        header::CONTENT_SECURITY_POLICY,
        HeaderValue::from_static(CSP),
    );
    h.insert(header::X_FRAME_OPTIONS, HeaderValue::from_static("DENY"));
    h.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    r
}

const HTML: &str = "text/html; charset=utf-8";

/// The dashboard, or the login page (401) for a browser without the token.
pub(super) async fn page(State(s): State<Arc<AdminState>>, headers: HeaderMap) -> Response {
    match authorized(&s, &headers) {
        Ok(()) => asset(StatusCode::OK, HTML, DASHBOARD),
        Err(_) => asset(StatusCode::UNAUTHORIZED, HTML, LOGIN),
    }
}

pub(super) async fn app_js(State(s): State<Arc<AdminState>>, headers: HeaderMap) -> Answer {
    authorized(&s, &headers)?;
    Ok(asset(
        StatusCode::OK,
        "text/javascript; charset=utf-8",
        APP_JS,
    ))
}

pub(super) async fn app_css(State(s): State<Arc<AdminState>>, headers: HeaderMap) -> Answer {
    authorized(&s, &headers)?;
    Ok(asset(StatusCode::OK, "text/css; charset=utf-8", APP_CSS))
}

/// The login page's script: public, it holds nothing.
pub(super) async fn login_js() -> Response {
    asset(StatusCode::OK, "text/javascript; charset=utf-8", LOGIN_JS)
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct Login {
    token: String,
}

/// Checks the token and hands it back as the cookie.
pub(super) async fn login(
    State(s): State<Arc<AdminState>>,
    body: Result<Json<Login>, JsonRejection>,
) -> Answer {
    let Json(login) = body.map_err(|e| {
        let why = format!("send {{\"token\": \"...\"}}: {}", e.body_text());
        err(StatusCode::BAD_REQUEST, why)
    })?;
    let Some(token) = &s.token else {
        return Ok(StatusCode::NO_CONTENT.into_response());
    };
    if !same_secret(&login.token, token) {
        tracing::warn!("dashboard login with a wrong token");
        return Err(err(StatusCode::UNAUTHORIZED, "wrong token"));
    }
    let cookie = format!(
        "{COOKIE}={}; HttpOnly; SameSite=Strict; Path=/",
        hex(login.token.as_bytes())
    );
    let mut r = StatusCode::NO_CONTENT.into_response();
    if let Ok(v) = HeaderValue::from_str(&cookie) {
        r.headers_mut().insert(header::SET_COOKIE, v);
    }
    Ok(r)
}

/// Forgets the cookie.
pub(super) async fn logout() -> Response {
    let mut r = StatusCode::NO_CONTENT.into_response();
    let gone = format!("{COOKIE}=; HttpOnly; SameSite=Strict; Path=/; Max-Age=0");
    if let Ok(v) = HeaderValue::from_str(&gone) {
        r.headers_mut().insert(header::SET_COOKIE, v);
    }
    r
}

/// The token in the dashboard's cookie, on a request whose `Origin` (when a browser
/// sends one) is this API's own.
pub(super) fn cookie_token(headers: &HeaderMap) -> Option<String> {
    if let Some(origin) = headers.get(header::ORIGIN) {
        let host = headers.get(header::HOST)?.to_str().ok()?;
        let origin = origin.to_str().ok()?;
        let origin_host = origin.split_once("://").map_or(origin, |(_, h)| h);
        if origin_host != host {
            return None;
        }
    }
    let cookies = headers.get_all(header::COOKIE);
    let value = cookies
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(';'))
        .find_map(|c| c.trim().strip_prefix(COOKIE)?.strip_prefix('='))?;
    unhex(value)
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

fn unhex(s: &str) -> Option<String> {
    if !s.len().is_multiple_of(2) {
        return None;
    }
    let bytes: Option<Vec<u8>> = (0..s.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(s.get(i..i + 2)?, 16).ok())
        .collect();
    String::from_utf8(bytes?).ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn headers(pairs: &[(&'static str, &str)]) -> HeaderMap {
        let mut h = HeaderMap::new();
        for (k, v) in pairs {
            h.append(*k, HeaderValue::from_str(v).unwrap());
        }
        h
    }

    #[test]
    fn the_cookie_carries_any_token_and_only_to_its_own_origin() {
        let token = "s3cret; with=odd chars ü";
        let cookie = format!("a=b; {COOKIE}={}; c=d", hex(token.as_bytes()));
        let same = headers(&[("cookie", &cookie), ("host", "127.0.0.1:9883")]);
        assert_eq!(cookie_token(&same).as_deref(), Some(token));
        let with_origin = headers(&[
            ("cookie", &cookie),
            ("host", "127.0.0.1:9883"),
            ("origin", "http://127.0.0.1:9883"),
        ]);
        assert_eq!(cookie_token(&with_origin).as_deref(), Some(token));
        let elsewhere = headers(&[
            ("cookie", &cookie),
            ("host", "127.0.0.1:9883"),
            ("origin", "https://evil.example"),
        ]);
        assert_eq!(cookie_token(&elsewhere), None);
        assert_eq!(cookie_token(&headers(&[("cookie", "weir_admin=zz")])), None);
        assert_eq!(
            cookie_token(&headers(&[("cookie", "weir_adminx=00")])),
            None
        );
    }
}
