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

/// The cookie that stands for the admin token: a digest of it, so the token itself is
/// not handed to the browser (which sends cookies to every port of the host).
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
        "{COOKIE}={}; {}",
        session_value(token),
        cookie_attributes(s.https)
    );
    let mut r = StatusCode::NO_CONTENT.into_response();
    if let Ok(v) = HeaderValue::from_str(&cookie) {
        r.headers_mut().insert(header::SET_COOKIE, v);
    }
    Ok(r)
}

/// Script on the page never reads the cookie, other sites never send it, and over
/// HTTPS the browser never sends it in the clear.
fn cookie_attributes(https: bool) -> &'static str {
    match https {
        true => "HttpOnly; SameSite=Strict; Path=/; Secure",
        false => "HttpOnly; SameSite=Strict; Path=/",
    }
}

/// Forgets the cookie.
pub(super) async fn logout(State(s): State<Arc<AdminState>>) -> Response {
    let mut r = StatusCode::NO_CONTENT.into_response();
    let gone = format!("{COOKIE}=; {}; Max-Age=0", cookie_attributes(s.https));
    if let Ok(v) = HeaderValue::from_str(&gone) {
        r.headers_mut().insert(header::SET_COOKIE, v);
    }
    r
}

/// What the cookie holds for `token`: a keyed digest, the same for as long as the
/// token is (changing `admin.token` signs every browser out).
fn session_value(token: &str) -> String {
    use sha2::{Digest, Sha256};
    crate::hex(&Sha256::digest(
        format!("weir dashboard session\0{token}").as_bytes(),
    ))
}

/// Whether the dashboard's cookie stands for `token`, on a request whose `Origin`
/// (when a browser sends one) is this API's own; `None` without a usable cookie.
pub(super) fn cookie_matches(headers: &HeaderMap, token: &str) -> Option<bool> {
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
    Some(same_secret(value, &session_value(token)))
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
    fn the_cookie_stands_for_the_token_and_only_from_its_own_origin() {
        let token = "s3cret; with=odd chars ü";
        let value = session_value(token);
        assert!(!value.contains("s3cret") && value.len() == 64);
        let cookie = format!("a=b; {COOKIE}={value}; c=d");
        let same = headers(&[("cookie", &cookie), ("host", "127.0.0.1:9883")]);
        assert_eq!(cookie_matches(&same, token), Some(true));
        assert_eq!(cookie_matches(&same, "another token"), Some(false));
        let with_origin = headers(&[
            ("cookie", &cookie),
            ("host", "127.0.0.1:9883"),
            ("origin", "http://127.0.0.1:9883"),
        ]);
        assert_eq!(cookie_matches(&with_origin, token), Some(true));
        let elsewhere = headers(&[
            ("cookie", &cookie),
            ("host", "127.0.0.1:9883"),
            ("origin", "https://evil.example"),
        ]);
        assert_eq!(cookie_matches(&elsewhere, token), None);
        let wrong = headers(&[("cookie", "weir_admin=zz")]);
        assert_eq!(cookie_matches(&wrong, token), Some(false));
        let other = headers(&[("cookie", "weir_adminx=00")]);
        assert_eq!(cookie_matches(&other, token), None);
    }
}
