//! Protocol details checked byte for byte with a hand-written client: what libraries
//! will not send (malformed packets, resends) and the exact reason codes that come back.

use std::time::{Duration, Instant};
use weir_tests::clients::v5::QoS;
use weir_tests::clients::C5;
use weir_tests::raw::{
    connack_code, connect, disconnect_code, packet, publish5, string, subscribe5, v4_client,
    v5_client, Raw, CLEAN,
};
use weir_tests::{Opts, Weir};

#[test]
fn malformed_packet_gets_disconnect_0x81_on_v5_and_a_plain_close_on_311() {
    let w = Weir::start();
    let mut r = v5_client(&w, "bad5", &[]);
    r.send(&[0x36, 5, 0, 1, b'a', 0, 1]); // PUBLISH with QoS 3
    let p = r.recv().expect("DISCONNECT before close");
    assert_eq!(disconnect_code(&p), Some(0x81), "{p:?}");
    assert!(r.closed());

    let mut r = v4_client(&w, "bad4", CLEAN, 60);
    r.send(&[0x62, 3, 0, 1, 0]); // PUBREL with a leftover byte
    assert!(r.closed());
    assert!(
        w.log().contains("bad4"),
        "the close is logged with the client id"
    );
}

#[test]
fn protocol_errors_in_v5_get_their_reason_codes() {
    let w = Weir::with(Opts::limits("topic_alias_maximum = 2"));
    // Second CONNECT.
    let mut r = v5_client(&w, "twice", &[]);
    r.send(&connect(5, "twice", CLEAN, 60, &[]));
    assert_eq!(disconnect_code(&r.recv().unwrap()), Some(0x82));
    // Topic alias above the maximum we announced.
    let mut r = v5_client(&w, "alias", &[]);
    r.send(&publish5(0, "t", None, &[0x23, 0, 3], b"x"));
    assert_eq!(disconnect_code(&r.recv().unwrap()), Some(0x94));
    // Unknown topic alias with an empty topic.
    let mut r = v5_client(&w, "alias2", &[]);
    r.send(&publish5(0, "", None, &[0x23, 0, 1], b"x"));
    assert_eq!(disconnect_code(&r.recv().unwrap()), Some(0x82));
    // No Local on a shared subscription.
    let mut r = v5_client(&w, "shared-nl", &[]);
    r.send(&subscribe5(1, "$share/g/t", 0x04));
    assert_eq!(disconnect_code(&r.recv().unwrap()), Some(0x82));
    // Duplicate property.
    let mut r = v5_client(&w, "dup-prop", &[]);
    r.send(&publish5(0, "t", None, &[0x01, 0, 0x01, 0], b"x"));
    assert_eq!(disconnect_code(&r.recv().unwrap()), Some(0x82));
    // A server-only packet from the client.
    let mut r = v5_client(&w, "pingresp", &[]);
    r.send(&[0xD0, 0]);
    assert_eq!(disconnect_code(&r.recv().unwrap()), Some(0x82));
}

#[test]
fn bad_connects_get_the_right_connack() {
    let w = Weir::start();
    // Unknown protocol level: 3.1.1-style CONNACK 0x01.
    let mut r = Raw::connect(w.port);
    r.send(&connect(6, "x", CLEAN, 60, &[]));
    assert_eq!(r.recv(), Some(vec![0x20, 2, 0, 1]));
    assert!(r.closed());
    // 5.0 CONNECT with a malformed property: CONNACK with 0x81.
    let mut r = Raw::connect(w.port);
    r.send(&connect(5, "x", CLEAN, 60, &[0x7F, 0]));
    let ack = r.recv().unwrap();
    assert_eq!((ack[0], ack[3]), (0x20, 0x81), "{ack:?}");
    // 5.0 receive maximum 0 is a protocol error.
    let mut r = Raw::connect(w.port);
    r.send(&connect(5, "x", CLEAN, 60, &[0x21, 0, 0]));
    assert_eq!(r.recv().unwrap()[3], 0x82);
    // 3.1.1: empty client id needs clean session.
    let mut r = Raw::connect(w.port);
    r.send(&connect(4, "", 0, 60, &[]));
    assert_eq!(r.recv(), Some(vec![0x20, 2, 0, 2]));
    let _ok = v4_client(&w, "", CLEAN, 60);
    // First packet not a CONNECT: closed.
    let mut r = Raw::connect(w.port);
    r.send(&[0xC0, 0]);
    assert!(r.closed());
    // Enhanced authentication is not offered: 0x8C.
    let mut r = Raw::connect(w.port);
    let mut props = vec![0x15];
    props.extend(string("SCRAM-SHA-1"));
    r.send(&connect(5, "x", CLEAN, 60, &props));
    assert_eq!(r.recv().unwrap()[3], 0x8C);
}

#[test]
fn empty_client_id_on_v5_gets_an_assigned_identifier() {
    let w = Weir::start();
    let mut r = Raw::connect(w.port);
    r.send(&connect(5, "", CLEAN, 60, &[]));
    let ack = r.recv().unwrap();
    assert_eq!(ack[3], 0);
    let props = &ack[5..];
    let i = props
        .iter()
        .position(|b| *b == 0x12)
        .expect("Assigned Client Identifier property");
    let len = u16::from_be_bytes([props[i + 1], props[i + 2]]) as usize;
    assert!(len > 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn qos2_resent_with_dup_is_delivered_exactly_once() {
    let w = Weir::start();
    let (mut sub, _) = C5::connect_with(C5::opts(w.port, "sub")).await;
    sub.subscribe("eo/#", QoS::ExactlyOnce).await;
    let mut r = v5_client(&w, "pub", &[]);
    r.send(&publish5(0x04, "eo/x", Some(7), &[], b"once"));
    assert_eq!(r.recv().unwrap()[..4], [0x50, 2, 0, 7], "PUBREC");
    r.send(&publish5(0x0C, "eo/x", Some(7), &[], b"once")); // DUP resend before PUBREL
    assert_eq!(r.recv().unwrap()[..4], [0x50, 2, 0, 7], "PUBREC again");
    r.send(&[0x62, 2, 0, 7]);
    assert_eq!(r.recv().unwrap()[..4], [0x70, 2, 0, 7], "PUBCOMP");
    // The id is free again: a new message with it is a new message.
    r.send(&publish5(0x04, "eo/x", Some(7), &[], b"twice"));
    assert_eq!(r.recv().unwrap()[..4], [0x50, 2, 0, 7]);
    r.send(&[0x62, 2, 0, 7]);
    r.recv();
    let got: Vec<_> = sub
        .drain_publishes()
        .await
        .into_iter()
        .map(|p| p.payload)
        .collect();
    assert_eq!(got, vec![&b"once"[..], &b"twice"[..]]);
    // PUBREL for an unknown id: PUBCOMP 0x92.
    r.send(&[0x62, 2, 0, 9]);
    assert_eq!(r.recv().unwrap(), vec![0x70, 3, 0, 9, 0x92]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn keep_alive_timeout_closes_and_sends_the_will() {
    let w = Weir::start();
    let (mut watcher, _) = C5::connect_with(C5::opts(w.port, "watcher")).await;
    watcher.subscribe("will/#", QoS::AtMostOnce).await;
    let mut body = string("MQTT");
    body.extend_from_slice(&[4, CLEAN | 0x04, 0, 1]); // will flag, keep alive 1 s
    body.extend(string("silent"));
    body.extend(string("will/silent"));
    body.extend(string("timed out"));
    let mut r = Raw::connect(w.port);
    r.send(&packet(0x10, &body));
    assert_eq!(r.recv().unwrap(), vec![0x20, 2, 0, 0]);
    let t0 = Instant::now();
    assert!(r.closed());
    let waited = t0.elapsed();
    assert!(
        waited >= Duration::from_millis(1400) && waited < Duration::from_secs(4),
        "closed after {waited:?}"
    );
    assert_eq!(&watcher.publish().await.payload[..], b"timed out");

    // A client that pings stays.
    let mut r = v4_client(&w, "pinger", CLEAN, 1);
    for _ in 0..3 {
        std::thread::sleep(Duration::from_millis(700));
        r.send(&[0xC0, 0]);
        assert_eq!(r.recv(), Some(vec![0xD0, 0]));
    }
}

#[test]
fn socket_without_connect_is_closed_after_the_connect_timeout() {
    let w = Weir::with(Opts::limits("connect_timeout_secs = 1"));
    let mut r = Raw::connect(w.port);
    let t0 = Instant::now();
    assert!(r.closed());
    assert!(t0.elapsed() < Duration::from_secs(4));
    assert!(w.log().contains("no CONNECT within 1s"), "{}", w.log());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn inbound_topic_alias_resolves_to_the_topic() {
    let w = Weir::start();
    let (mut sub, _) = C5::connect_with(C5::opts(w.port, "sub")).await;
    sub.subscribe("al/#", QoS::AtMostOnce).await;
    let mut r = v5_client(&w, "aliaser", &[]);
    r.send(&publish5(0, "al/x", None, &[0x23, 0, 1], b"1"));
    r.send(&publish5(0, "", None, &[0x23, 0, 1], b"2"));
    r.send(&publish5(0, "al/y", None, &[0x23, 0, 1], b"3")); // remaps alias 1
    r.send(&publish5(0, "", None, &[0x23, 0, 1], b"4"));
    let got: Vec<_> = sub
        .drain_publishes()
        .await
        .into_iter()
        .map(|p| (p.topic, p.payload))
        .collect();
    let want: Vec<(&[u8], &[u8])> = vec![
        (b"al/x", b"1"),
        (b"al/x", b"2"),
        (b"al/y", b"3"),
        (b"al/y", b"4"),
    ];
    assert_eq!(got.len(), 4);
    for ((t, p), (wt, wp)) in got.iter().zip(want) {
        assert_eq!((&t[..], &p[..]), (wt, wp));
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn disconnect_with_will_message_sends_the_will() {
    let w = Weir::start();
    let (mut watcher, _) = C5::connect_with(C5::opts(w.port, "watcher")).await;
    watcher.subscribe("will/#", QoS::AtMostOnce).await;
    for (code, sent) in [(0x04u8, true), (0x00, false)] {
        let mut body = string("MQTT");
        body.extend_from_slice(&[5, CLEAN | 0x04, 0, 60, 0]);
        body.extend(string(&format!("c{code}")));
        body.push(0); // will properties
        body.extend(string(&format!("will/{code}")));
        body.extend(string("w"));
        let mut r = Raw::connect(w.port);
        r.send(&packet(0x10, &body));
        assert_eq!(r.recv().unwrap()[3], 0);
        r.send(&[0xE0, 1, code]);
        assert!(r.closed());
        let got = watcher.publish_within(Duration::from_millis(700)).await;
        assert_eq!(got.is_some(), sent, "DISCONNECT 0x{code:02X}");
    }
}

#[test]
fn exceeding_our_receive_maximum_is_disconnected_with_0x93() {
    let w = Weir::with(Opts::limits("max_inflight = 2"));
    let mut r = v5_client(&w, "greedy", &[]);
    for pid in 1..=3u16 {
        r.send(&publish5(0x04, "rm", Some(pid), &[], b"x")); // QoS 2, never released
    }
    let mut codes = Vec::new();
    while let Some(p) = r.recv() {
        codes.push(p[0]);
        if let Some(c) = disconnect_code(&p) {
            assert_eq!(c, 0x93);
            return;
        }
    }
    panic!("no DISCONNECT 0x93; got {codes:?}");
}

/// 3.1.1 has no Receive Maximum: a client that sends more QoS 2 messages than
/// `max_inflight` before releasing any (as paho does after a reconnect, with all it
/// queued meanwhile) is answered, not cut off.
#[test]
fn a_311_client_may_have_more_qos2_messages_open_than_max_inflight() {
    let w = Weir::with(Opts::limits("max_inflight = 2"));
    let mut r = v4_client(&w, "many", CLEAN, 60);
    for pid in 1..=5u16 {
        let mut body = string("rm");
        body.extend_from_slice(&pid.to_be_bytes());
        body.push(b'x');
        r.send(&packet(0x34, &body));
    }
    for pid in 1..=5u16 {
        let mut rec = vec![0x50, 2];
        rec.extend_from_slice(&pid.to_be_bytes());
        assert_eq!(r.recv(), Some(rec), "PUBREC {pid}");
    }
}

#[test]
fn packet_over_the_maximum_size_is_refused() {
    let w = Weir::with(Opts {
        listener: "max_packet_size = 128".into(),
        ..Default::default()
    });
    let mut r = v5_client(&w, "big", &[]);
    r.send(&publish5(0, "t", None, &[], &[0u8; 300]));
    assert_eq!(disconnect_code(&r.recv().unwrap()), Some(0x95));
}

#[test]
fn invalid_filters_get_failure_codes_in_suback() {
    let w = Weir::start();
    let mut r = v5_client(&w, "f5", &[]);
    let mut b = vec![0, 1, 0];
    for f in ["a/#/b", "ok/+", "a+", "$share/g"] {
        b.extend(string(f));
        b.push(1);
    }
    r.send(&packet(0x82, &b));
    assert_eq!(
        r.recv().unwrap(),
        vec![0x90, 7, 0, 1, 0, 0x8F, 1, 0x8F, 0x8F]
    );

    let mut r = v4_client(&w, "f4", CLEAN, 60);
    let mut b = vec![0, 2];
    for f in ["a/#/b", "ok/+"] {
        b.extend(string(f));
        b.push(1);
    }
    r.send(&packet(0x82, &b));
    assert_eq!(r.recv().unwrap(), vec![0x90, 4, 0, 2, 0x80, 1]);
}

/// Connects a client to a broker that allows one connection. The harness's readiness
/// probe may still hold the one slot for a moment.
fn take_the_one_slot(w: &Weir) -> Raw {
    let mut first = None;
    assert!(weir_tests::eventually(Duration::from_secs(5), || {
        let mut r = Raw::connect(w.port);
        r.send(&connect(5, "first", CLEAN, 60, &[]));
        let ok = r.recv().is_some_and(|a| a[3] == 0);
        first = Some(r);
        ok
    }));
    first.expect("connected")
}

#[test]
fn connections_over_the_limit_get_server_busy() {
    let w = Weir::with(Opts {
        listener: "max_connections = 1".into(),
        ..Default::default()
    });
    let _first = take_the_one_slot(&w);
    let mut r = Raw::connect(w.port);
    r.send(&connect(5, "second", CLEAN, 60, &[]));
    assert_eq!(r.recv().unwrap()[3], 0x89);
    let mut r = Raw::connect(w.port);
    r.send(&connect(4, "third", CLEAN, 60, &[]));
    assert_eq!(
        r.recv(),
        Some(vec![0x20, 2, 0, 3]),
        "3.1.1: server unavailable"
    );
}

#[test]
fn anonymous_clients_are_refused_when_the_listener_says_so() {
    let w = Weir::with(Opts {
        listener: "allow_anonymous = false".into(),
        ..Default::default()
    });
    let mut r = Raw::connect(w.port);
    r.send(&connect(5, "anon", CLEAN, 60, &[]));
    assert_eq!(r.recv().unwrap()[3], 0x87);
    let mut r = Raw::connect(w.port);
    r.send(&connect(4, "anon", CLEAN, 60, &[]));
    assert_eq!(r.recv(), Some(vec![0x20, 2, 0, 5]));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn protocol_error_sends_the_will_and_a_reason_string() {
    let w = Weir::start();
    let (mut watcher, _) = C5::connect_with(C5::opts(w.port, "watcher")).await;
    watcher.subscribe("will/#", QoS::AtMostOnce).await;
    let mut body = string("MQTT");
    body.extend_from_slice(&[5, CLEAN | 0x04, 0, 60, 0]);
    body.extend(string("broken"));
    body.push(0);
    body.extend(string("will/broken"));
    body.extend(string("protocol error"));
    let mut r = Raw::connect(w.port);
    r.send(&packet(0x10, &body));
    assert_eq!(r.recv().unwrap()[3], 0);
    r.send(&[0x36, 5, 0, 1, b'a', 0, 1]); // QoS 3
    let d = r.recv().unwrap();
    assert_eq!(disconnect_code(&d), Some(0x81));
    assert_eq!(d[4], 0x1F, "DISCONNECT carries a Reason String: {d:?}");
    let reason = String::from_utf8_lossy(&d[7..]).to_string();
    assert!(reason.contains("QoS 3"), "{reason}");
    assert_eq!(&watcher.publish().await.payload[..], b"protocol error");
}

#[test]
fn topic_length_and_level_limits_are_enforced() {
    let w = Weir::with(Opts::limits("max_topic_levels = 3\nmax_topic_length = 20"));
    let mut r = v5_client(&w, "levels", &[]);
    r.send(&subscribe5(1, "a/b/c/d", 0));
    assert_eq!(r.recv().unwrap(), vec![0x90, 4, 0, 1, 0, 0x8F]);
    r.send(&subscribe5(2, "a/b/c", 0));
    assert_eq!(r.recv().unwrap(), vec![0x90, 4, 0, 2, 0, 0]);
    r.send(&publish5(0, "a/b/c/d", None, &[], b"x"));
    assert_eq!(disconnect_code(&r.recv().unwrap()), Some(0x90));
    let mut r = v5_client(&w, "length", &[]);
    r.send(&publish5(0, "aaaaaaaaaaaaaaaaaaaaaaaaa", None, &[], b"x"));
    assert_eq!(disconnect_code(&r.recv().unwrap()), Some(0x90));
}

#[test]
fn packets_pipelined_behind_connect_are_handled_at_once() {
    let w = Weir::start();
    let mut r = Raw::connect(w.port);
    // CONNECT, SUBSCRIBE and a PUBLISH to the subscribed topic in one write, without
    // waiting for CONNACK, as pipelining clients do.
    let mut burst = connect(5, "eager", CLEAN, 60, &[]);
    burst.extend(subscribe5(1, "pipe/#", 0));
    burst.extend(publish5(0, "pipe/x", None, &[], b"hi"));
    r.send(&burst);
    let got: Vec<u8> = (0..3)
        .map(|_| r.recv().expect("no answer to pipelined packets")[0])
        .collect();
    assert_eq!(got, vec![0x20, 0x90, 0x30], "CONNACK, SUBACK, the PUBLISH");
}

/// Past the connection limit, only `max_refusing` sockets at a time get a task that
/// waits for their CONNECT to tell them 0x89; the rest are closed at once and counted.
#[test]
fn a_flood_past_the_connection_limit_is_closed_not_queued() {
    let w = Weir::with(Opts {
        listener: "max_connections = 1".into(),
        limits: "max_refusing = 2\nconnect_timeout_secs = 60".into(),
        ..Default::default()
    });
    let _first = take_the_one_slot(&w);
    // A refusal made while taking the slot keeps its place while it lingers (at most
    // 2 s, less once the client has closed): let any such place come free first.
    std::thread::sleep(Duration::from_millis(2500));
    let mut silent: Vec<Raw> = (0..6).map(|_| Raw::connect(w.port)).collect();
    let mut held = Vec::new();
    let mut closed = 0;
    for mut r in silent.drain(..) {
        r.s.set_read_timeout(Some(Duration::from_secs(2))).unwrap();
        if r.closed() {
            closed += 1;
        } else {
            held.push(r);
        }
    }
    assert_eq!(
        (held.len(), closed),
        (2, 4),
        "held and closed of 6 silent sockets"
    );
    held[0]
        .s
        .set_read_timeout(Some(Duration::from_secs(5)))
        .unwrap();
    held[0].send(&connect(5, "late", CLEAN, 60, &[]));
    assert_eq!(
        held[0].recv().map(|a| a[3]),
        Some(0x89),
        "told the server is busy"
    );
    let (_, metrics) = weir_tests::http::request(w.admin_port, "GET", "/metrics", None);
    assert!(
        metrics.contains("weir_connections_refused_total 4"),
        "{}",
        metrics
            .lines()
            .filter(|l| l.contains("refused"))
            .collect::<Vec<_>>()
            .join("\n")
    );
}

/// Sends `trigger`, keeps sending `more` as a client that has not noticed yet, and only
/// then reads. A client library treats a failed write as a lost connection and never
/// reads what came before it, so every write must succeed (the broker reads on until the
/// client is done) and the first DISCONNECT or CONNACK must be there. Its reason code.
fn reads_the_last_word_while_sending(r: &mut Raw, trigger: &[Vec<u8>], more: Vec<u8>) -> u8 {
    for p in trigger {
        r.send(p);
    }
    let sender = r.keep_sending(more, Duration::from_millis(1500));
    // Long enough for the broker to say its word and, were it to close at once, for the
    // client's writes to meet a reset.
    std::thread::sleep(Duration::from_millis(400));
    let mut seen = Vec::new();
    let code = loop {
        let Some(p) = r.recv() else {
            panic!("connection ended without a reason code; packets before: {seen:?}")
        };
        match p[0] {
            0xE0 => break disconnect_code(&p).expect("DISCONNECT"),
            0x20 => break connack_code(&p),
            first => seen.push(first),
        }
    };
    let failed = sender.join().expect("sender");
    assert_eq!(
        failed, 0,
        "writes failed (reset) before the client read the reason"
    );
    code
}

#[test]
fn a_client_still_sending_reads_its_disconnect_reason() {
    let w = Weir::with(Opts::limits("max_inflight = 2"));
    let mut r = v5_client(&w, "greedy", &[]);
    let qos2: Vec<_> = (1..=3u16)
        .map(|pid| publish5(0x04, "rm", Some(pid), &[], b"x"))
        .collect();
    let pubrel = packet(0x62, &[0, 1]);
    assert_eq!(
        reads_the_last_word_while_sending(&mut r, &qos2, pubrel),
        0x93
    );

    let w = Weir::with(Opts {
        listener: "max_packet_size = 128".into(),
        ..Default::default()
    });
    let mut r = v5_client(&w, "big", &[]);
    let big = publish5(0, "t", None, &[], &[0u8; 300]);
    let small = publish5(0, "t", None, &[], b"x");
    assert_eq!(
        reads_the_last_word_while_sending(&mut r, &[big], small),
        0x95
    );
}

#[test]
fn a_refused_client_still_sending_reads_its_connack() {
    let w = Weir::with(Opts {
        listener: "allow_anonymous = false".into(),
        ..Default::default()
    });
    let mut r = Raw::connect(w.port);
    let hello = connect(5, "anon", CLEAN, 60, &[]);
    let ping = vec![0xC0, 0];
    assert_eq!(
        reads_the_last_word_while_sending(&mut r, &[hello], ping),
        0x87
    );
}
