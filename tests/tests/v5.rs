//! MQTT 5.0 behaviour, seen through rumqttc's 5.0 client.

use bytes::Bytes;
use rumqttc::v5::mqttbytes::v5::{
    ConnectReturnCode, DisconnectReasonCode, Filter, LastWill, PublishProperties,
    RetainForwardRule, SubscribeProperties,
};
use std::time::{Duration, Instant};
use weir_tests::clients::v5::QoS;
use weir_tests::clients::{C5, QUIET, WAIT};
use weir_tests::{Opts, Weir};

async fn connect(w: &Weir, id: &str) -> C5 {
    C5::connect_with(C5::opts(w.port, id)).await.0
}

/// A client that keeps its session for `expiry` seconds.
async fn persistent(w: &Weir, id: &str, expiry: u32, clean: bool) -> (C5, bool) {
    let mut o = C5::opts(w.port, id);
    o.set_clean_start(clean);
    o.set_session_expiry_interval(Some(expiry));
    let (c, ack) = C5::connect_with(o).await;
    assert_eq!(ack.code, ConnectReturnCode::Success);
    (c, ack.session_present)
}

fn filter(
    path: &str,
    qos: QoS,
    nolocal: bool,
    preserve_retain: bool,
    rule: RetainForwardRule,
) -> Filter {
    Filter {
        path: path.into(),
        qos,
        nolocal,
        preserve_retain,
        retain_forward_rule: rule,
    }
}

fn payloads(v: &[rumqttc::v5::mqttbytes::v5::Publish]) -> Vec<String> {
    v.iter()
        .map(|p| String::from_utf8_lossy(&p.payload).into_owned())
        .collect()
}

async fn subscribe_filter(c: &mut C5, f: Filter) {
    c.client.subscribe_many(vec![f]).await.unwrap();
    c.suback().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn overlapping_subscriptions_carry_every_subscription_identifier() {
    let w = Weir::start();
    let mut s = connect(&w, "s").await;
    for (f, id) in [("a/+", 1), ("a/#", 2)] {
        let props = SubscribeProperties {
            id: Some(id),
            user_properties: vec![],
        };
        s.client
            .subscribe_with_properties(f, QoS::AtLeastOnce, props)
            .await
            .unwrap();
        s.suback().await;
    }
    let p = connect(&w, "p").await;
    p.send("a/b", QoS::AtLeastOnce, false, "x").await;
    let got = s.drain_publishes().await;
    assert_eq!(got.len(), 1, "one delivery for overlapping subscriptions");
    let mut ids = got[0].properties.clone().unwrap().subscription_identifiers;
    ids.sort();
    assert_eq!(ids, vec![1, 2]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn no_local_suppresses_own_messages() {
    let w = Weir::start();
    let mut me = connect(&w, "me").await;
    subscribe_filter(
        &mut me,
        filter(
            "nl/#",
            QoS::AtLeastOnce,
            true,
            false,
            RetainForwardRule::OnEverySubscribe,
        ),
    )
    .await;
    me.send("nl/mine", QoS::AtLeastOnce, false, "mine").await;
    let other = connect(&w, "other").await;
    other
        .client
        .publish("nl/theirs", QoS::AtLeastOnce, false, "theirs")
        .await
        .unwrap();
    assert_eq!(me.drain_payloads().await, vec!["theirs"]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn retain_as_published_and_retain_handling() {
    let w = Weir::start();
    let mut rap = connect(&w, "rap").await;
    let mut plain = connect(&w, "plain").await;
    subscribe_filter(
        &mut rap,
        filter(
            "rh/#",
            QoS::AtLeastOnce,
            false,
            true,
            RetainForwardRule::OnEverySubscribe,
        ),
    )
    .await;
    plain.subscribe("rh/#", QoS::AtLeastOnce).await;
    let p = connect(&w, "p").await;
    p.send("rh/1", QoS::AtLeastOnce, true, "kept").await;
    assert!(
        rap.publish().await.retain,
        "Retain As Published keeps the flag"
    );
    assert!(
        !plain.publish().await.retain,
        "otherwise a live message has RETAIN 0"
    );

    let mut c = connect(&w, "c").await;
    let sub = |rule| filter("rh/#", QoS::AtLeastOnce, false, false, rule);
    subscribe_filter(&mut c, sub(RetainForwardRule::OnNewSubscribe)).await;
    assert_eq!(
        c.drain_payloads().await,
        vec!["kept"],
        "handling 1, new subscription"
    );
    subscribe_filter(&mut c, sub(RetainForwardRule::OnNewSubscribe)).await;
    assert!(
        c.drain_publishes().await.is_empty(),
        "handling 1, existing subscription"
    );
    subscribe_filter(&mut c, sub(RetainForwardRule::OnEverySubscribe)).await;
    assert_eq!(c.drain_payloads().await, vec!["kept"], "handling 0");
    let mut n = connect(&w, "n").await;
    subscribe_filter(&mut n, sub(RetainForwardRule::Never)).await;
    assert!(n.drain_publishes().await.is_empty(), "handling 2");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn message_expiry_is_honoured_and_decremented() {
    let w = Weir::start();
    let (mut s, _) = persistent(&w, "exp", 300, true).await;
    s.subscribe("me/#", QoS::AtLeastOnce).await;
    s.disconnect().await;
    let p = connect(&w, "p").await;
    let with_expiry = |secs| PublishProperties {
        message_expiry_interval: Some(secs),
        ..Default::default()
    };
    p.client
        .publish_with_properties("me/short", QoS::AtLeastOnce, false, "short", with_expiry(1))
        .await
        .unwrap();
    p.client
        .publish_with_properties("me/long", QoS::AtLeastOnce, false, "long", with_expiry(100))
        .await
        .unwrap();
    p.send("me/none", QoS::AtLeastOnce, false, "none").await;
    // Retained messages expire too.
    p.client
        .publish_with_properties("me/ret", QoS::AtLeastOnce, true, "ret", with_expiry(1))
        .await
        .unwrap();
    tokio::time::sleep(Duration::from_millis(2500)).await;
    let (mut s, present) = persistent(&w, "exp", 300, false).await;
    assert!(present);
    let got = s.drain_publishes().await;
    assert_eq!(
        payloads(&got),
        vec!["long", "none"],
        "the expired message is never sent"
    );
    let left = got[0]
        .properties
        .clone()
        .unwrap()
        .message_expiry_interval
        .unwrap();
    assert!(
        (95..100).contains(&left),
        "expiry decremented by the time waited: {left}"
    );
    assert!(got[1]
        .properties
        .as_ref()
        .and_then(|p| p.message_expiry_interval)
        .is_none());
    let mut late = connect(&w, "late").await;
    late.subscribe("me/#", QoS::AtLeastOnce).await;
    assert!(
        late.drain_publishes().await.is_empty(),
        "expired retained message not sent"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn broker_assigns_topic_aliases_up_to_the_client_maximum() {
    let w = Weir::start();
    let mut o = C5::opts(w.port, "aliased");
    o.set_topic_alias_max(Some(1));
    let (mut s, _) = C5::connect_with(o).await;
    s.subscribe("ta/#", QoS::AtMostOnce).await;
    let p = connect(&w, "p").await;
    for t in ["ta/x", "ta/x", "ta/y"] {
        p.send(t, QoS::AtMostOnce, false, "m").await;
    }
    let got = s.drain_publishes().await;
    let seen: Vec<(Bytes, Option<u16>)> = got
        .iter()
        .map(|m| {
            (
                m.topic.clone(),
                m.properties.as_ref().and_then(|p| p.topic_alias),
            )
        })
        .collect();
    assert_eq!(
        seen,
        vec![(Bytes::from("ta/x"), Some(1)), (Bytes::new(), Some(1)), (Bytes::from("ta/y"), None)],
        "alias 1 set with the first message, used alone (empty topic) by the second; none left for a new topic"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn receive_maximum_limits_unacknowledged_deliveries() {
    let w = Weir::start();
    let mut o = C5::opts(w.port, "slow");
    o.set_receive_maximum(Some(2));
    o.set_manual_acks(true);
    let (mut s, _) = C5::connect_with(o).await;
    s.subscribe("rm/#", QoS::AtLeastOnce).await;
    let p = connect(&w, "p").await;
    for i in 0..5 {
        p.send(format!("rm/{i}"), QoS::AtLeastOnce, false, format!("{i}"))
            .await;
    }
    let first = s.drain_publishes().await;
    assert_eq!(
        payloads(&first),
        vec!["0", "1"],
        "only Receive Maximum messages in flight"
    );
    for m in &first {
        s.client.ack(m).await.unwrap();
    }
    let second = s.drain_publishes().await;
    assert_eq!(payloads(&second), vec!["2", "3"]);
    for m in &second {
        s.client.ack(m).await.unwrap();
    }
    assert_eq!(s.drain_payloads().await, vec!["4"]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn message_too_large_for_one_subscriber_is_dropped_for_it_only() {
    let w = Weir::start();
    let mut o = C5::opts(w.port, "small");
    o.set_max_packet_size(Some(200));
    let (mut small, _) = C5::connect_with(o).await;
    small.subscribe("big/#", QoS::AtLeastOnce).await;
    let mut large = connect(&w, "large").await;
    large.subscribe("big/#", QoS::AtLeastOnce).await;
    let p = connect(&w, "p").await;
    p.send("big/1", QoS::AtLeastOnce, false, vec![b'x'; 1000])
        .await;
    p.send("big/2", QoS::AtLeastOnce, false, "small").await;
    assert_eq!(large.drain_publishes().await.len(), 2);
    assert_eq!(small.drain_payloads().await, vec!["small"]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn message_properties_are_forwarded_unchanged() {
    let w = Weir::start();
    let mut s = connect(&w, "s").await;
    s.subscribe("props", QoS::AtLeastOnce).await;
    let p = connect(&w, "p").await;
    let sent = PublishProperties {
        payload_format_indicator: Some(1),
        content_type: Some("application/json".into()),
        response_topic: Some("reply/to".into()),
        correlation_data: Some(Bytes::from_static(b"\x01\x02")),
        user_properties: vec![
            ("a".into(), "1".into()),
            ("a".into(), "2".into()),
            ("b".into(), "3".into()),
        ],
        ..Default::default()
    };
    p.client
        .publish_with_properties("props", QoS::AtLeastOnce, false, "{}", sent.clone())
        .await
        .unwrap();
    let got = s.publish().await.properties.unwrap();
    assert_eq!(got.payload_format_indicator, sent.payload_format_indicator);
    assert_eq!(got.content_type, sent.content_type);
    assert_eq!(got.response_topic, sent.response_topic);
    assert_eq!(got.correlation_data, sent.correlation_data);
    assert_eq!(got.user_properties, sent.user_properties);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn request_response_information_and_limits_in_connack() {
    let w = Weir::with(Opts::limits(
        "max_keep_alive = 5\nmax_inflight = 50\ntopic_alias_maximum = 7",
    ));
    let mut o = C5::opts(w.port, "rr");
    o.set_request_response_info(Some(1));
    o.set_keep_alive(Duration::from_secs(30));
    let (_c, ack) = C5::connect_with(o).await;
    let props = ack.properties.unwrap();
    assert!(props.response_information.is_some_and(|r| !r.is_empty()));
    assert_eq!(
        props.server_keep_alive,
        Some(5),
        "server keep alive overrides a longer one"
    );
    assert_eq!(props.receive_max, Some(50));
    assert_eq!(props.topic_alias_max, Some(7));
    assert!(props.max_packet_size.is_some());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn session_expiry_interval_ends_the_session() {
    let w = Weir::start();
    let (s, _) = persistent(&w, "brief", 1, true).await;
    s.disconnect().await;
    let (s, _) = persistent(&w, "lasting", 60, true).await;
    s.disconnect().await;
    tokio::time::sleep(Duration::from_millis(2500)).await;
    assert!(
        !persistent(&w, "brief", 1, false).await.1,
        "expired after 1 s"
    );
    assert!(
        persistent(&w, "lasting", 60, false).await.1,
        "still there within 60 s"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn will_delay_is_waited_cancelled_by_reconnect_and_capped_by_session_end() {
    let w = Weir::start();
    let mut watcher = connect(&w, "watcher").await;
    watcher.subscribe("will/#", QoS::AtLeastOnce).await;
    let will = |topic: &str, delay| {
        let props = weir_tests::clients::v5::will_delay(delay);
        LastWill::new(topic, "bye", QoS::AtLeastOnce, false, Some(props))
    };
    let start = |id: &str, delay, expiry| {
        let mut o = C5::opts(w.port, id);
        o.set_last_will(will(&format!("will/{id}"), delay));
        o.set_session_expiry_interval(Some(expiry));
        C5::connect_with(o)
    };

    let (delayed, _) = start("delayed", 2, 60).await;
    let (returns, _) = start("returns", 2, 60).await;
    let (capped, _) = start("capped", 30, 1).await;
    let t0 = Instant::now();
    delayed.drop_connection();
    returns.drop_connection();
    capped.drop_connection();
    tokio::time::sleep(Duration::from_millis(300)).await;
    let (_back, _) = persistent(&w, "returns", 60, false).await;

    let mut seen = Vec::new();
    while let Some(m) = watcher.publish_within(Duration::from_secs(4)).await {
        seen.push((String::from_utf8_lossy(&m.topic).into_owned(), t0.elapsed()));
    }
    let topics: Vec<&str> = seen.iter().map(|s| s.0.as_str()).collect();
    assert!(
        topics.contains(&"will/delayed") && topics.contains(&"will/capped"),
        "{seen:?}"
    );
    assert!(
        !topics.contains(&"will/returns"),
        "a reconnect cancels the delayed will: {seen:?}"
    );
    for (t, at) in &seen {
        assert!(
            *at >= Duration::from_millis(900),
            "{t} sent before its delay: {at:?}"
        );
        assert!(*at < Duration::from_secs(5), "{t} sent too late: {at:?}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn takeover_sends_session_taken_over() {
    let w = Weir::start();
    let mut first = connect(&w, "twin").await;
    let _second = connect(&w, "twin").await;
    let seen = first
        .closed_within(WAIT)
        .await
        .expect("first connection closed");
    assert!(
        seen.contains(&format!("{:?}", DisconnectReasonCode::SessionTakenOver)),
        "{seen}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn in_flight_messages_are_resent_on_session_resume() {
    let w = Weir::start();
    let mut o = C5::opts(w.port, "resume");
    o.set_clean_start(true);
    o.set_session_expiry_interval(Some(60));
    o.set_manual_acks(true);
    let (mut s, _) = C5::connect_with(o).await;
    s.subscribe("inf/#", QoS::AtLeastOnce).await;
    let p = connect(&w, "p").await;
    p.send("inf/1", QoS::AtLeastOnce, false, "owed").await;
    let m = s.publish().await;
    assert!(!m.dup);
    s.drop_connection(); // never acknowledged
    tokio::time::sleep(Duration::from_millis(200)).await;
    let (mut s, present) = persistent(&w, "resume", 60, false).await;
    assert!(present);
    let again = s.publish().await;
    assert!(again.dup, "a resend carries DUP");
    assert_eq!(
        (&again.payload[..], again.pkid),
        (&b"owed"[..], m.pkid),
        "same message, same packet id"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn offline_queue_overflow_drops_oldest_or_newest() {
    for (policy, want) in [
        ("drop-oldest", ["3", "4", "5"]),
        ("drop-newest", ["0", "1", "2"]),
    ] {
        let w = Weir::with(Opts::limits(&format!(
            "max_queued = 3\noverflow = \"{policy}\""
        )));
        let (mut s, _) = persistent(&w, "q", 60, true).await;
        s.subscribe("of/#", QoS::AtLeastOnce).await;
        s.disconnect().await;
        let p = connect(&w, "p").await;
        for i in 0..6 {
            p.send("of/x", QoS::AtLeastOnce, false, format!("{i}"))
                .await;
        }
        tokio::time::sleep(Duration::from_millis(300)).await;
        let (mut s, _) = persistent(&w, "q", 60, false).await;
        assert_eq!(s.drain_payloads().await, want, "{policy}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn qos0_is_queued_offline_when_configured() {
    let w = Weir::with(Opts::limits("queue_qos0_offline = true"));
    let (mut s, _) = persistent(&w, "q0", 60, true).await;
    s.subscribe("z/#", QoS::AtMostOnce).await;
    s.disconnect().await;
    let p = connect(&w, "p").await;
    p.send("z/1", QoS::AtMostOnce, false, "zero").await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    let (mut s, _) = persistent(&w, "q0", 60, false).await;
    assert_eq!(s.drain_payloads().await, vec!["zero"]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn sigterm_sends_server_shutting_down_and_exits_zero() {
    let mut w = Weir::start();
    let mut c = connect(&w, "c").await;
    let status = w.terminate();
    assert!(status.success(), "exit status {status:?}");
    let seen = c.closed_within(WAIT).await.expect("closed");
    assert!(
        seen.contains(&format!("{:?}", DisconnectReasonCode::ServerShuttingDown)),
        "{seen}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn shared_subscription_prefers_connected_members() {
    let w = Weir::start();
    let (mut a, _) = persistent(&w, "a", 60, true).await;
    let (mut b, _) = persistent(&w, "b", 60, true).await;
    a.subscribe("$share/g/sh/#", QoS::AtLeastOnce).await;
    b.subscribe("$share/g/sh/#", QoS::AtLeastOnce).await;
    b.disconnect().await;
    let p = connect(&w, "p").await;
    for i in 0..6 {
        p.send(format!("sh/{i}"), QoS::AtLeastOnce, false, "m")
            .await;
    }
    assert_eq!(
        a.drain_publishes().await.len(),
        6,
        "the connected member gets them all"
    );
    let _ = QUIET;
}
