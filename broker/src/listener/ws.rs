//! MQTT over WebSocket: the HTTP upgrade, and an adapter that makes the WebSocket an
//! ordinary byte stream. MQTT packets may be split across frames or share one; the
//! codec never sees frame boundaries.

use bytes::{Buf, Bytes};
use futures_util::{Sink, Stream};
use std::io;
use std::pin::Pin;
use std::task::{ready, Context, Poll};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio_tungstenite::tungstenite::handshake::server::{ErrorResponse, Request, Response};
use tokio_tungstenite::tungstenite::http::{header, HeaderValue, StatusCode};
use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode;
use tokio_tungstenite::tungstenite::protocol::{CloseFrame, WebSocketConfig};
use tokio_tungstenite::tungstenite::{Error as WsError, Message};
use tokio_tungstenite::WebSocketStream;

/// Subprotocols we speak, in order of preference (`mqttv3.1` is what old clients ask for).
const SUBPROTOCOLS: [&str; 2] = ["mqtt", "mqttv3.1"];

#[derive(Debug, Clone)]
pub struct WsSettings {
    pub path: String,
    /// Empty: any Origin.
    pub allowed_origins: Vec<String>,
    /// Largest WebSocket message accepted; a little over the listener's packet size.
    pub max_message: usize,
}

fn refuse(status: StatusCode, why: &str) -> ErrorResponse {
    let mut r = ErrorResponse::new(Some(why.to_owned()));
    *r.status_mut() = status;
    r
}

/// Performs the HTTP upgrade. A request for another path gets 404, a disallowed Origin
/// 403, and a client that offers subprotocols but not ours 400.
pub async fn accept<S>(stream: S, settings: &WsSettings) -> Result<WsStream<S>, WsError>
where
    S: AsyncRead + AsyncWrite + Unpin,
{
    // The error type is fixed by tungstenite's handshake callback; it cannot be boxed.
    #[allow(clippy::result_large_err)]
    let check = |req: &Request, mut resp: Response| -> Result<Response, ErrorResponse> {
        if req.uri().path() != settings.path {
            return Err(refuse(StatusCode::NOT_FOUND, "not found"));
        }
        if !settings.allowed_origins.is_empty() {
            let origin = req
                .headers()
                .get(header::ORIGIN)
                .and_then(|o| o.to_str().ok())
                .unwrap_or("");
            if !settings.allowed_origins.iter().any(|a| a == origin) {
                return Err(refuse(StatusCode::FORBIDDEN, "origin not allowed"));
            }
        }
        let offered: Vec<&str> = req
            .headers()
            .get_all(header::SEC_WEBSOCKET_PROTOCOL)
            .iter()
            .filter_map(|v| v.to_str().ok())
            .flat_map(|v| v.split(',').map(str::trim))
            .collect();
        if !offered.is_empty() {
            let Some(chosen) = SUBPROTOCOLS.iter().find(|p| offered.contains(p)) else {
                return Err(refuse(StatusCode::BAD_REQUEST, "subprotocol must be mqtt"));
            };
            resp.headers_mut().insert(
                header::SEC_WEBSOCKET_PROTOCOL,
                HeaderValue::from_static(chosen),
            );
        }
        Ok(resp)
    };
    // tungstenite allocates its read buffer up front (128 KiB by default): far too much
    // per idle client. Our writes are already one coalesced message per wake-up, so
    // they go out eagerly rather than collecting in a 128 KiB write buffer.
    let config = WebSocketConfig::default()
        .max_message_size(Some(settings.max_message))
        .max_frame_size(Some(settings.max_message))
        .read_buffer_size(4096)
        .write_buffer_size(0);
    let inner =
        tokio_tungstenite::accept_hdr_async_with_config(stream, check, Some(config)).await?;
    Ok(WsStream {
        inner,
        pending: Bytes::new(),
        reject: Reject::No,
    })
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Reject {
    No,
    /// A text frame arrived: close with 1003 and then fail the read.
    Sending,
    Sent,
}

/// A WebSocket as `AsyncRead + AsyncWrite`: binary frames in, one binary frame per
/// write out. Pings are answered by tungstenite while reading.
pub struct WsStream<S> {
    inner: WebSocketStream<S>,
    /// What is left of the last binary message.
    pending: Bytes,
    reject: Reject,
}

fn io_err(e: WsError) -> io::Error {
    match e {
        WsError::Io(e) => e,
        other => io::Error::other(other),
    }
}

impl<S: AsyncRead + AsyncWrite + Unpin> AsyncRead for WsStream<S> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        loop {
            if self.reject != Reject::No {
                if self.reject == Reject::Sending {
                    ready!(Pin::new(&mut self.inner).poll_ready(cx)).map_err(io_err)?;
                    let frame = CloseFrame {
                        code: CloseCode::Unsupported,
                        reason: "MQTT needs binary frames".into(),
                    };
                    Pin::new(&mut self.inner)
                        .start_send(Message::Close(Some(frame)))
                        .map_err(io_err)?;
                    self.reject = Reject::Sent;
                }
                let _ = ready!(Pin::new(&mut self.inner).poll_flush(cx));
                return Poll::Ready(Err(io::Error::new(
                    io::ErrorKind::InvalidData,
                    "text frame on an MQTT WebSocket (closed with 1003)",
                )));
            }
            if !self.pending.is_empty() {
                let n = self.pending.len().min(buf.remaining());
                buf.put_slice(&self.pending[..n]);
                self.pending.advance(n);
                return Poll::Ready(Ok(()));
            }
            match ready!(Pin::new(&mut self.inner).poll_next(cx)) {
                Some(Ok(Message::Binary(b))) => self.pending = b,
                Some(Ok(Message::Text(_))) => self.reject = Reject::Sending,
                Some(Ok(Message::Ping(_) | Message::Pong(_) | Message::Frame(_))) => {}
                Some(Ok(Message::Close(_))) | None => return Poll::Ready(Ok(())),
                Some(Err(e)) => return Poll::Ready(Err(io_err(e))),
            }
        }
    }
}

impl<S: AsyncRead + AsyncWrite + Unpin> AsyncWrite for WsStream<S> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        data: &[u8],
    ) -> Poll<io::Result<usize>> {
        ready!(Pin::new(&mut self.inner).poll_ready(cx)).map_err(io_err)?;
        Pin::new(&mut self.inner)
            .start_send(Message::Binary(Bytes::copy_from_slice(data)))
            .map_err(io_err)?;
        Poll::Ready(Ok(data.len()))
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx).map_err(io_err)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_close(cx).map_err(io_err)
    }
}
