//! MQTT over WebSocket, checked frame by frame with tokio-tungstenite as the client.

use futures_util::{SinkExt, StreamExt};
use std::time::{Duration, Instant};
use tokio::net::TcpStream;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode;
use tokio_tungstenite::tungstenite::{Error as WsError, Message};
use tokio_tungstenite::{MaybeTlsStream, WebSocketStream};
use weir_tests::raw::{connect, frame, packet, string, Raw};
use weir_tests::{eventually, Listener, Opts, Weir};

type Ws = WebSocketStream<MaybeTlsStream<TcpStream>>;

fn ws_broker(extra: &str) -> Weir {
    Weir::with(Opts {
        listeners: vec![Listener::new("web", "ws", extra)],
        limits: "connect_timeout_secs = 1".into(),
        ..Default::default()
    })
}

/// Upgrades with the given subprotocol and Origin; the HTTP status on refusal.
async fn open(
    port: u16,
    path: &str,
    protocol: Option<&str>,
    origin: Option<&str>,
) -> Result<(Ws, Option<String>), u16> {
    let mut req = format!("ws://127.0.0.1:{port}{path}")
        .into_client_request()
        .unwrap();
    if let Some(p) = protocol {
        req.headers_mut()
            .insert("Sec-WebSocket-Protocol", p.parse().unwrap());
    }
    if let Some(o) = origin {
        req.headers_mut().insert("Origin", o.parse().unwrap());
    }
    match tokio_tungstenite::connect_async(req).await {
        Ok((ws, resp)) => {
            let chosen = resp
                .headers()
                .get("Sec-WebSocket-Protocol")
                .map(|v| v.to_str().unwrap().to_owned());
            Ok((ws, chosen))
        }
        Err(WsError::Http(resp)) => Err(resp.status().as_u16()),
        Err(e) => panic!("unexpected handshake error: {e}"),
    }
}

/// Reads binary frames until `n` whole MQTT packets have arrived (frame boundaries
/// ignored, as MQTT over WebSocket requires).
async fn packets(ws: &mut Ws, n: usize) -> Vec<Vec<u8>> {
    let mut buf = Vec::new();
    let mut out = Vec::new();
    while out.len() < n {
        while let Some((header, body)) = frame(&buf) {
            out.push(buf.drain(..header + body).collect());
        }
        if out.len() >= n {
            break;
        }
        match tokio::time::timeout(Duration::from_secs(5), ws.next()).await {
            Ok(Some(Ok(Message::Binary(b)))) => buf.extend_from_slice(&b),
            Ok(Some(Ok(_))) => {}
            other => panic!("waiting for MQTT packets: {other:?}"),
        }
    }
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn upgrade_checks_path_subprotocol_and_origin() {
    let w = ws_broker("");
    let port = w.port_of("web");
    assert_eq!(
        open(port, "/other", Some("mqtt"), None).await.err(),
        Some(404)
    );
    assert_eq!(
        open(port, "/mqtt", Some("mqtt"), None)
            .await
            .unwrap()
            .1
            .as_deref(),
        Some("mqtt")
    );
    assert_eq!(
        open(port, "/mqtt", Some("mqttv3.1"), None)
            .await
            .unwrap()
            .1
            .as_deref(),
        Some("mqttv3.1")
    );
    assert_eq!(
        open(port, "/mqtt", Some("graphql-ws"), None).await.err(),
        Some(400)
    );

    let w = ws_broker("path = \"/broker\"\nallowed_origins = [\"https://ok.example\"]");
    let port = w.port_of("web");
    assert_eq!(
        open(port, "/mqtt", Some("mqtt"), Some("https://ok.example"))
            .await
            .err(),
        Some(404)
    );
    assert_eq!(
        open(port, "/broker", Some("mqtt"), Some("https://evil.example"))
            .await
            .err(),
        Some(403)
    );
    assert_eq!(
        open(port, "/broker", Some("mqtt"), None).await.err(),
        Some(403)
    );
    assert!(
        open(port, "/broker", Some("mqtt"), Some("https://ok.example"))
            .await
            .is_ok()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn packets_split_across_frames_and_shared_in_one_frame() {
    let w = ws_broker("");
    let (mut ws, _) = open(w.port_of("web"), "/mqtt", Some("mqtt"), None)
        .await
        .unwrap();
    // CONNECT in two frames.
    let c = connect(4, "ws-client", 0x02, 60, &[]);
    ws.send(Message::Binary(c[..5].to_vec().into()))
        .await
        .unwrap();
    ws.send(Message::Binary(c[5..].to_vec().into()))
        .await
        .unwrap();
    assert_eq!(packets(&mut ws, 1).await, vec![vec![0x20, 2, 0, 0]]);
    // SUBSCRIBE and a PUBLISH to the same topic in one frame.
    let mut sub = vec![0, 1];
    sub.extend(string("ws/t"));
    sub.push(0);
    let mut publ = string("ws/t");
    publ.extend_from_slice(b"hello");
    let mut frame = packet(0x82, &sub);
    frame.extend(packet(0x30, &publ));
    frame.extend([0xC0, 0]); // and a PINGREQ
    ws.send(Message::Binary(frame.into())).await.unwrap();
    let got = packets(&mut ws, 3).await;
    assert_eq!(got[0], vec![0x90, 3, 0, 1, 0], "SUBACK");
    // PINGRESP and the delivery are not ordered relative to each other.
    assert!(
        got[1..].contains(&packet(0x30, &publ)),
        "the PUBLISH came back: {got:?}"
    );
    assert!(got[1..].contains(&vec![0xD0, 0]), "PINGRESP: {got:?}");
    // A WebSocket ping is answered.
    ws.send(Message::Ping(b"are you there".to_vec().into()))
        .await
        .unwrap();
    let pong = tokio::time::timeout(Duration::from_secs(5), ws.next())
        .await
        .unwrap()
        .unwrap()
        .unwrap();
    assert_eq!(pong, Message::Pong(b"are you there".to_vec().into()));
    // A text frame ends it with 1003.
    ws.send(Message::Text("{}".into())).await.unwrap();
    let close = tokio::time::timeout(Duration::from_secs(5), ws.next())
        .await
        .unwrap()
        .unwrap()
        .unwrap();
    match close {
        Message::Close(Some(f)) => assert_eq!(f.code, CloseCode::Unsupported),
        other => panic!("expected Close 1003, got {other:?}"),
    }
    assert!(eventually(Duration::from_secs(5), || w
        .log()
        .contains("text frame on an MQTT WebSocket")));
}

#[test]
fn garbage_and_stalled_upgrades_are_closed_with_a_logged_cause() {
    let w = ws_broker("");
    let port = w.port_of("web");
    let mut r = Raw::connect(port);
    r.send(b"\x10\x0c\x00\x04MQTT\x04\x02\x00\x3c\x00\x00 not http\r\n\r\n");
    assert!(r.closed());
    let mut r = Raw::connect(port);
    r.send(b"GET /mqtt HTTP/1.1\r\nHost: x\r\n");
    let t0 = Instant::now();
    assert!(r.closed());
    assert!(t0.elapsed() < Duration::from_secs(4));
    for cause in [
        "WebSocket handshake failed",
        "WebSocket handshake not completed in time",
    ] {
        let logged = eventually(Duration::from_secs(5), || {
            w.log()
                .lines()
                .any(|l| l.contains(cause) && l.contains("listener=web"))
        });
        assert!(logged, "no log line for {cause}:\n{}", w.log());
    }
}
