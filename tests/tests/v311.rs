//! MQTT 3.1.1 behaviour, seen through rumqttc's 3.1.1 client.

use rumqttc::{LastWill, SubscribeReasonCode};
use weir_tests::clients::v4::QoS;
use weir_tests::clients::{C4, WAIT};
use weir_tests::Weir;

async fn connect(w: &Weir, id: &str, clean: bool) -> (C4, bool) {
    let mut o = C4::opts(w.port, id);
    o.set_clean_session(clean);
    let (c, ack) = C4::connect_with(o).await;
    assert_eq!(ack.code, rumqttc::ConnectReturnCode::Success);
    (c, ack.session_present)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn publish_and_subscribe_at_each_qos_with_qos_downgrade() {
    let w = Weir::start();
    let (mut sub2, _) = connect(&w, "sub2", true).await;
    let (mut sub1, _) = connect(&w, "sub1", true).await;
    let ack = sub2.subscribe("t/#", QoS::ExactlyOnce).await;
    assert_eq!(
        ack.return_codes,
        vec![SubscribeReasonCode::Success(QoS::ExactlyOnce)]
    );
    sub1.subscribe("t/#", QoS::AtLeastOnce).await;
    let (publisher, _) = connect(&w, "pub", true).await;
    for (i, q) in [QoS::AtMostOnce, QoS::AtLeastOnce, QoS::ExactlyOnce]
        .into_iter()
        .enumerate()
    {
        publisher
            .client
            .publish(format!("t/{i}"), q, false, vec![i as u8; 3])
            .await
            .unwrap();
        let p = sub2.publish().await;
        assert_eq!(
            (p.topic.as_str(), p.qos, &p.payload[..]),
            (format!("t/{i}").as_str(), q, &[i as u8; 3][..])
        );
        let p = sub1.publish().await;
        assert_eq!(
            p.qos,
            if q == QoS::ExactlyOnce {
                QoS::AtLeastOnce
            } else {
                q
            },
            "delivery QoS is min(publish, granted)"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn retained_messages_are_stored_replaced_and_deleted() {
    let w = Weir::start();
    let (mut live, _) = connect(&w, "live", true).await;
    live.subscribe("r/#", QoS::AtLeastOnce).await;
    let (p, _) = connect(&w, "pub", true).await;
    p.send("r/1", QoS::AtLeastOnce, true, "first").await;
    let m = live.publish().await;
    assert!(!m.retain, "a live subscriber gets RETAIN 0 in 3.1.1");

    let (mut late, _) = connect(&w, "late", true).await;
    late.subscribe("r/+", QoS::AtLeastOnce).await;
    let m = late.publish().await;
    assert!(m.retain && &m.payload[..] == b"first");

    p.send("r/1", QoS::AtLeastOnce, true, "second").await;
    live.publish().await;
    let (mut late2, _) = connect(&w, "late2", true).await;
    late2.subscribe("r/#", QoS::AtLeastOnce).await;
    let got = late2.drain_publishes().await;
    assert_eq!(got.len(), 1);
    assert_eq!(&got[0].payload[..], b"second");

    p.send("r/1", QoS::AtLeastOnce, true, "").await;
    live.publish().await;
    let (mut late3, _) = connect(&w, "late3", true).await;
    late3.subscribe("r/#", QoS::AtLeastOnce).await;
    assert!(
        late3.drain_publishes().await.is_empty(),
        "an empty retained payload deletes it"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn persistent_session_queues_qos1_and_qos2_while_offline() {
    let w = Weir::start();
    let (mut s, present) = connect(&w, "keeper", false).await;
    assert!(!present);
    s.subscribe("q/#", QoS::ExactlyOnce).await;
    s.disconnect().await;

    let (p, _) = connect(&w, "pub", true).await;
    p.send("q/1", QoS::AtLeastOnce, false, "one").await;
    p.send("q/2", QoS::ExactlyOnce, false, "two").await;
    p.send("q/0", QoS::AtMostOnce, false, "zero").await;
    tokio::time::sleep(std::time::Duration::from_millis(300)).await;

    let (mut s, present) = connect(&w, "keeper", false).await;
    assert!(present, "session resumed");
    let got: Vec<_> = s.drain_payloads().await;
    assert_eq!(
        got,
        vec!["one", "two"],
        "QoS 0 is not queued offline by default"
    );

    // Clean session discards it.
    s.disconnect().await;
    let (_s, present) = connect(&w, "keeper", true).await;
    assert!(!present);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn will_is_sent_on_unclean_disconnect_only() {
    let w = Weir::start();
    let (mut watcher, _) = connect(&w, "watcher", true).await;
    watcher.subscribe("will/#", QoS::AtLeastOnce).await;

    let mut o = C4::opts(w.port, "dies");
    o.set_last_will(LastWill::new("will/dies", "gone", QoS::AtLeastOnce, false));
    let (dies, _) = C4::connect_with(o).await;
    dies.drop_connection();
    let m = watcher.publish().await;
    assert_eq!(
        (m.topic.as_str(), &m.payload[..]),
        ("will/dies", &b"gone"[..])
    );

    let mut o = C4::opts(w.port, "polite");
    o.set_last_will(LastWill::new(
        "will/polite",
        "gone",
        QoS::AtLeastOnce,
        false,
    ));
    let (polite, _) = C4::connect_with(o).await;
    polite.disconnect().await;
    assert!(
        watcher.drain_publishes().await.is_empty(),
        "no will after DISCONNECT"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn second_connection_with_same_id_takes_over() {
    let w = Weir::start();
    let (mut watcher, _) = connect(&w, "watcher", true).await;
    watcher.subscribe("will/#", QoS::AtLeastOnce).await;
    let mut o = C4::opts(w.port, "twin");
    o.set_last_will(LastWill::new("will/twin", "taken", QoS::AtMostOnce, false));
    let (mut first, _) = C4::connect_with(o).await;
    let (mut second, _) = connect(&w, "twin", true).await;
    assert!(
        first.closed_within(WAIT).await.is_some(),
        "first connection closed"
    );
    assert_eq!(
        &watcher.publish().await.payload[..],
        b"taken",
        "takeover publishes the will"
    );
    second.subscribe("x", QoS::AtMostOnce).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn overlapping_subscriptions_deliver_once_at_the_highest_qos() {
    let w = Weir::start();
    let (mut s, _) = connect(&w, "s", true).await;
    s.subscribe("o/+", QoS::AtMostOnce).await;
    s.subscribe("o/#", QoS::ExactlyOnce).await;
    s.subscribe("o/a", QoS::AtLeastOnce).await;
    let (p, _) = connect(&w, "p", true).await;
    p.send("o/a", QoS::ExactlyOnce, false, "x").await;
    let got = s.drain_publishes().await;
    assert_eq!(got.len(), 1);
    assert_eq!(got[0].qos, QoS::ExactlyOnce);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn wildcards_at_the_start_do_not_match_dollar_topics() {
    let w = Weir::start();
    let (mut all, _) = connect(&w, "all", true).await;
    all.subscribe("#", QoS::AtMostOnce).await;
    let (mut plus, _) = connect(&w, "plus", true).await;
    plus.subscribe("+/x", QoS::AtMostOnce).await;
    // `$SYS/` is the broker's own (clients cannot publish there); any `$` topic will do.
    let (mut dollar, _) = connect(&w, "dollar", true).await;
    dollar.subscribe("$app/#", QoS::AtMostOnce).await;
    let (p, _) = connect(&w, "p", true).await;
    p.send("$app/x", QoS::AtMostOnce, false, "s").await;
    assert_eq!(dollar.publish().await.topic, "$app/x");
    p.send("a/x", QoS::AtMostOnce, false, "a").await;
    let a: Vec<_> = all
        .drain_publishes()
        .await
        .into_iter()
        .map(|m| m.topic)
        .collect();
    let b: Vec<_> = plus
        .drain_publishes()
        .await
        .into_iter()
        .map(|m| m.topic)
        .collect();
    assert_eq!(a, vec!["a/x"]);
    assert_eq!(b, vec!["a/x"]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn shared_subscription_from_311_clients_splits_messages() {
    let w = Weir::start();
    let (mut a, _) = connect(&w, "a", true).await;
    let (mut b, _) = connect(&w, "b", true).await;
    a.subscribe("$share/g/s/#", QoS::AtLeastOnce).await;
    b.subscribe("$share/g/s/#", QoS::AtLeastOnce).await;
    let (p, _) = connect(&w, "p", true).await;
    for i in 0..10 {
        p.send(format!("s/{i}"), QoS::AtLeastOnce, false, "m").await;
    }
    let (ga, gb) = (a.drain_publishes().await, b.drain_publishes().await);
    assert_eq!(
        ga.len() + gb.len(),
        10,
        "each message to exactly one member"
    );
    assert!(
        !ga.is_empty() && !gb.is_empty(),
        "both members get a share: {} / {}",
        ga.len(),
        gb.len()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn unsubscribe_stops_delivery() {
    let w = Weir::start();
    let (mut s, _) = connect(&w, "s", true).await;
    s.subscribe("u/+", QoS::AtLeastOnce).await;
    s.client.unsubscribe("u/+").await.unwrap();
    loop {
        match s.next(WAIT).await {
            Some(Ok(rumqttc::Incoming::UnsubAck(_))) => break,
            Some(Ok(_)) => {}
            other => panic!("expected UNSUBACK, got {other:?}"),
        }
    }
    let (p, _) = connect(&w, "p", true).await;
    p.send("u/1", QoS::AtLeastOnce, false, "x").await;
    assert!(s.drain_publishes().await.is_empty());
}
