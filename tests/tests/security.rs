//! Limits that protect the broker from its clients: per-address connection counts and
//! connect rates, and handshakes trickled to hold a connection open. The threat model
//! these belong to is in docs/security.md.

use std::io::Write;
use std::net::TcpStream;
use std::time::{Duration, Instant};
use weir_tests::pki::Pki;
use weir_tests::raw::{connack_code, connect, Raw, CLEAN};
use weir_tests::{eventually, Listener, Opts, Weir};

/// A CONNACK's reason code for a fresh connection.
fn connack(port: u16, level: u8, id: &str) -> u8 {
    let mut r = Raw::connect(port);
    r.send(&connect(level, id, CLEAN, 60, &[]));
    connack_code(&r.recv().expect("CONNACK"))
}

#[test]
fn an_address_over_its_connection_limit_is_told_so() {
    let w = Weir::with(Opts::limits("max_connections_per_address = 2"));
    // The harness's readiness probe may still hold a place for a moment.
    let mut held = Vec::new();
    assert!(eventually(Duration::from_secs(5), || {
        let mut r = Raw::connect(w.port);
        r.send(&connect(5, &format!("c{}", held.len()), CLEAN, 60, &[]));
        if r.recv().is_some_and(|a| a[3] == 0) {
            held.push(r);
        }
        held.len() == 2
    }));
    assert_eq!(connack(w.port, 5, "third"), 0x97, "5.0: quota exceeded");
    assert_eq!(connack(w.port, 4, "third"), 5, "3.1.1: refused");
    drop(held.pop());
    assert!(
        eventually(Duration::from_secs(5), || connack(w.port, 5, "again") == 0),
        "a place given back is free"
    );
    assert!(
        w.log().contains("connection limit of its address reached"),
        "{}",
        w.log()
    );
}

#[test]
fn an_address_connecting_too_fast_is_told_so() {
    let w = Weir::with(Opts::limits("connect_rate_per_address = 5"));
    std::thread::sleep(Duration::from_millis(1100));
    let codes: Vec<u8> = (0..12)
        .map(|i| connack(w.port, 5, &format!("r{i}")))
        .collect();
    assert_eq!(codes[0], 0, "{codes:?}");
    assert!(codes.contains(&0x9F), "connection rate exceeded: {codes:?}");
    assert!(codes.iter().all(|c| matches!(c, 0 | 0x9F)), "{codes:?}");
    std::thread::sleep(Duration::from_millis(1100));
    assert_eq!(
        connack(w.port, 5, "later"),
        0,
        "a second later the bucket is full"
    );
}

/// After `after`, sends `first` whole, then `bytes` one every 200 ms until the broker
/// closes the socket; how long after connecting that was. Panics if it is still open
/// after 10 s.
fn trickle_until_closed(port: u16, first: &[u8], bytes: &[u8], after: Duration) -> Duration {
    let t0 = Instant::now();
    let mut s = TcpStream::connect(("127.0.0.1", port)).unwrap();
    std::thread::sleep(after);
    s.write_all(first).unwrap();
    for b in bytes.iter().cycle() {
        if s.write_all(&[*b]).is_err() {
            break;
        }
        assert!(
            t0.elapsed() < Duration::from_secs(10),
            "still open after 10 s"
        );
        std::thread::sleep(Duration::from_millis(200));
    }
    t0.elapsed()
}

#[test]
fn trickled_handshakes_are_closed_at_the_connect_timeout() {
    let pki = Pki::new();
    let tls = format!("cert = {:?}\nkey = {:?}\n", pki.server.cert, pki.server.key);
    let w = Weir::with(Opts {
        listeners: vec![
            Listener::new("web", "ws", ""),
            Listener::new("secure", "tls", &tls),
        ],
        limits: "connect_timeout_secs = 2".into(),
        ..Default::default()
    });
    let long = vec![0u8; 1 << 16];
    let mut hello = connect(4, "slow", CLEAN, 60, &[]);
    hello.extend(&long);
    // A CONNECT claiming a large body, a byte at a time.
    let mut claim = vec![0x10, 0xFF, 0xFF, 0x03];
    claim.extend(&long);
    let upgrade = "GET /mqtt HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\nSec-WebSocket-Protocol: mqtt\r\n\r\n";
    let endless_upgrade = format!("{}{}", upgrade.trim_end(), "x".repeat(1 << 16));
    let client_hello = [
        0x16, 0x03, 0x01, 0x02, 0x00, 0x01, 0x00, 0x01, 0xFC, 0x03, 0x03,
    ];
    let cases: [(&str, u16, &[u8]); 4] = [
        ("CONNECT", w.port, &hello),
        ("large CONNECT", w.port, &claim),
        (
            "WebSocket upgrade",
            w.port_of("web"),
            endless_upgrade.as_bytes(),
        ),
        ("TLS handshake", w.port_of("secure"), &client_hello),
    ];
    for (what, port, bytes) in cases {
        let took = trickle_until_closed(port, &[], bytes, Duration::ZERO);
        assert!(
            took < Duration::from_secs(4),
            "{what}: closed after {took:?}"
        );
    }
    // The timeout counts from the accept, not from each handshake: a WebSocket upgrade
    // made 1.5 s after connecting does not give the CONNECT inside it 2 s more.
    let mut frame = vec![0x82, 0x80 | hello[..100].len() as u8, 0, 0, 0, 0];
    frame.extend(&hello[..100]);
    let ws = w.port_of("web");
    let took = trickle_until_closed(ws, upgrade.as_bytes(), &frame, Duration::from_millis(1500));
    assert!(took < Duration::from_millis(3200), "closed after {took:?}");
}
