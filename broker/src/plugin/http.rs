//! Outgoing HTTP for plugins (`wasi:http/outgoing-handler`), each request checked
//! against the plugin's own allow-list and bounded in time and size.
//!
//! wasmtime-wasi-http builds the request from the guest's resources and hands it to
//! [`HttpPolicy::send_request`] on the guest's thread. A request the allow-list does not
//! cover gets an error at once (the guest sees `http-request-denied`): nothing is
//! resolved or connected. An allowed one is sent by wasmtime-wasi-http's client on the
//! broker's runtime while the guest waits through `wasi:io/poll` ([`super::wasi_io`]),
//! which only a plugin called on the blocking path may do.

use super::stats::Stats;
use crate::config::{PluginConfig, UrlPrefix};
use bytes::Bytes;
use http_body_util::{BodyExt, LengthLimitError, Limited};
use std::future::Future;
use std::sync::Arc;
use std::time::Duration;
use wasmtime_wasi_http::{Error, RequestOptions, WasiBody, WasiHttpHooks};

/// The largest request or response body, unless the plugin's config says otherwise.
pub const DEFAULT_MAX_BYTES: u64 = 1 << 20;

type Sent = Box<dyn Future<Output = Result<(), Error>> + Send>;
type Answer = Box<dyn Future<Output = Result<(http::Response<WasiBody>, Sent), Error>> + Send>;

/// What one plugin may send, and how long and large a request may be.
#[derive(Clone)]
pub struct HttpPolicy {
    plugin: Arc<str>,
    allowed: Arc<[UrlPrefix]>,
    timeout: Duration,
    max_bytes: u64,
    stats: Arc<Stats>,
}

impl HttpPolicy {
    /// `deadline` is the plugin's call deadline, the default bound on a request.
    pub fn new(cfg: &PluginConfig, deadline: Duration, stats: Arc<Stats>) -> HttpPolicy {
        HttpPolicy {
            plugin: Arc::from(cfg.name.as_str()),
            allowed: cfg.http_allowed().into(),
            timeout: cfg.http_timeout_ms.map_or(deadline, Duration::from_millis),
            max_bytes: cfg.http_max_bytes.unwrap_or(DEFAULT_MAX_BYTES),
            stats,
        }
    }

    fn allows(&self, uri: &http::Uri) -> bool {
        self.allowed.iter().any(|p| p.allows(uri))
    }

    /// The guest's options, never looser than the policy.
    fn options(&self, asked: Option<RequestOptions>) -> RequestOptions {
        let asked = asked.unwrap_or_default();
        let clamp = |d: Option<Duration>| Some(d.map_or(self.timeout, |d| d.min(self.timeout)));
        RequestOptions {
            connect_timeout: clamp(asked.connect_timeout),
            first_byte_timeout: clamp(asked.first_byte_timeout),
            between_bytes_timeout: clamp(asked.between_bytes_timeout),
        }
    }
}

impl WasiHttpHooks for HttpPolicy {
    fn send_request(
        &mut self,
        request: http::Request<WasiBody>,
        options: Option<RequestOptions>,
        _response_done: Sent,
    ) -> Answer {
        if !self.allows(request.uri()) {
            self.stats.http_refused();
            tracing::warn!(plugin = %self.plugin, url = %request.uri(), method = %request.method(),
                "plugin HTTP request refused: the URL is not under the plugin's allow_http");
            return Box::new(async { Err(Error::HttpRequestDenied) });
        }
        self.stats.http_sent();
        let (cap, timeout) = (self.max_bytes, self.timeout);
        let options = self.options(options);
        let request = request.map(|body| capped(body, cap, Error::HttpRequestBodySize));
        Box::new(async move {
            let sending = wasmtime_wasi_http::default_send_request(request, Some(options));
            let (response, io) = tokio::time::timeout(timeout, sending)
                .await
                .map_err(|_| Error::HttpResponseTimeout)??;
            if let Some(n) = content_length(response.headers()).filter(|n| *n > cap) {
                return Err(Error::HttpResponseBodySize(Some(n)));
            }
            let response = response.map(|body| capped(body, cap, Error::HttpResponseBodySize));
            Ok((response, Box::new(io) as Sent))
        })
    }
}

/// A body that fails (with `too_large`) once more than `cap` bytes went through.
fn capped<B>(body: B, cap: u64, too_large: fn(Option<u64>) -> Error) -> WasiBody
where
    B: http_body::Body<Data = Bytes, Error = Error> + Send + 'static,
{
    Limited::new(body, usize::try_from(cap).unwrap_or(usize::MAX))
        .map_err(move |e| match e.downcast::<Error>() {
            Ok(e) => *e,
            Err(e) if e.is::<LengthLimitError>() => too_large(Some(cap)),
            Err(e) => Error::InternalError(Some(e.to_string())),
        })
        .boxed_unsync()
}

fn content_length(headers: &http::HeaderMap) -> Option<u64> {
    headers
        .get(http::header::CONTENT_LENGTH)?
        .to_str()
        .ok()?
        .parse()
        .ok()
}
