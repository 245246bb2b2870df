//! Sessions and retained messages survive restarts, including `kill -9`.

use rumqttc::v5::Incoming;
use std::collections::BTreeSet;
use std::time::Duration;
use weir_tests::clients::v5::QoS;
use weir_tests::clients::{C4, C5, WAIT};
use weir_tests::Weir;

async fn persistent(w: &Weir, id: &str, expiry: u32, clean: bool) -> (C5, bool) {
    let mut o = C5::opts(w.port, id);
    o.set_clean_start(clean);
    o.set_session_expiry_interval(Some(expiry));
    let (c, ack) = C5::connect_with(o).await;
    (c, ack.session_present)
}

/// Waits until the broker has acknowledged `n` publishes (PUBACK or PUBREC).
async fn await_acks(c: &mut C5, n: usize) {
    let mut acked = 0;
    while acked < n {
        match c.next(WAIT).await {
            Some(Ok(Incoming::PubAck(_) | Incoming::PubRec(_))) => acked += 1,
            Some(Ok(_)) => {}
            other => panic!("after {acked} of {n} acknowledgements: {other:?}"),
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn kill_9_loses_no_acknowledged_message() {
    let mut w = Weir::start();
    let (mut s, _) = persistent(&w, "durable", 3600, true).await;
    s.subscribe("k/#", QoS::ExactlyOnce).await;
    s.disconnect().await;
    let mut v4 = C4::opts(w.port, "durable-311");
    v4.set_clean_session(false);
    let (mut s4, _) = C4::connect_with(v4.clone()).await;
    s4.subscribe("k/#", rumqttc::QoS::AtLeastOnce).await;
    s4.disconnect().await;

    let (mut p, _) = C5::connect_with(C5::opts(w.port, "pub")).await;
    const N: usize = 300;
    for i in 0..N {
        let qos = if i % 3 == 0 {
            QoS::ExactlyOnce
        } else {
            QoS::AtLeastOnce
        };
        p.send("k/x", qos, false, format!("{i}")).await;
    }
    p.send("k/retained", QoS::AtLeastOnce, true, "kept").await;
    await_acks(&mut p, N + 1).await;
    w.kill9();

    w.restart();
    let (mut s, present) = persistent(&w, "durable", 3600, false).await;
    assert!(present, "session survived kill -9");
    let mut got = BTreeSet::new();
    while let Some(m) = s.publish_within(Duration::from_secs(2)).await {
        if m.topic == "k/x" {
            got.insert(
                String::from_utf8_lossy(&m.payload)
                    .parse::<usize>()
                    .unwrap(),
            );
        }
    }
    let missing: Vec<usize> = (0..N).filter(|i| !got.contains(i)).collect();
    assert!(missing.is_empty(), "lost after kill -9: {missing:?}");

    let (mut s4, present) = C4::connect_with(v4).await;
    assert!(present.session_present);
    let n4 = s4
        .drain_publishes()
        .await
        .into_iter()
        .filter(|m| m.topic == "k/x")
        .count();
    assert_eq!(n4, N, "3.1.1 persistent session got every message");

    let (mut late, _) = C5::connect_with(C5::opts(w.port, "late")).await;
    late.subscribe("k/retained", QoS::AtLeastOnce).await;
    assert_eq!(
        &late.publish().await.payload[..],
        b"kept",
        "acknowledged retained message survived"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn unacknowledged_delivery_is_resent_after_kill_9() {
    let mut w = Weir::start();
    let mut o = C5::opts(w.port, "slow");
    o.set_session_expiry_interval(Some(3600));
    o.set_manual_acks(true);
    let (mut s, _) = C5::connect_with(o).await;
    s.subscribe("inf/#", QoS::ExactlyOnce).await;
    let (mut p, _) = C5::connect_with(C5::opts(w.port, "pub")).await;
    p.send("inf/1", QoS::AtLeastOnce, false, "one").await;
    p.send("inf/2", QoS::ExactlyOnce, false, "two").await;
    await_acks(&mut p, 2).await;
    assert_eq!(
        s.drain_publishes().await.len(),
        2,
        "delivered, not acknowledged"
    );
    w.kill9();
    w.restart();
    let (mut s, present) = persistent(&w, "slow", 3600, false).await;
    assert!(present);
    let again: Vec<_> = s.drain_publishes().await;
    assert_eq!(
        again
            .iter()
            .map(|m| String::from_utf8_lossy(&m.payload))
            .collect::<Vec<_>>(),
        vec!["one", "two"]
    );
    assert!(again.iter().all(|m| m.dup), "resent with DUP");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn graceful_restart_keeps_sessions_subscriptions_and_retained() {
    let mut w = Weir::start();
    let (mut s, _) = persistent(&w, "keeper", 3600, true).await;
    s.subscribe("g/#", QoS::AtLeastOnce).await;
    s.disconnect().await;
    let (mut p, _) = C5::connect_with(C5::opts(w.port, "pub")).await;
    p.send("g/queued", QoS::AtLeastOnce, false, "queued").await;
    p.send("g/retained", QoS::AtLeastOnce, true, "retained")
        .await;
    await_acks(&mut p, 2).await;
    assert!(w.terminate().success());

    w.restart();
    let (mut s, present) = persistent(&w, "keeper", 3600, false).await;
    assert!(present);
    let queued: Vec<_> = s.drain_payloads().await;
    assert_eq!(
        queued,
        vec!["queued", "retained"],
        "both were queued while offline"
    );
    // The subscription itself survived: a new message is routed to it.
    let (p, _) = C5::connect_with(C5::opts(w.port, "pub")).await;
    p.send("g/new", QoS::AtLeastOnce, false, "new").await;
    assert_eq!(&s.publish().await.payload[..], b"new");
    let (mut late, _) = C5::connect_with(C5::opts(w.port, "late")).await;
    late.subscribe("g/retained", QoS::AtLeastOnce).await;
    assert_eq!(&late.publish().await.payload[..], b"retained");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn expired_sessions_are_purged_across_a_restart() {
    let mut w = Weir::start();
    let (s, _) = persistent(&w, "brief", 1, true).await;
    s.disconnect().await;
    let (s, _) = persistent(&w, "lasting", 3600, true).await;
    s.disconnect().await;
    assert!(w.terminate().success());
    tokio::time::sleep(Duration::from_millis(2200)).await;
    w.restart();
    assert!(
        !persistent(&w, "brief", 1, false).await.1,
        "expired while the broker was down"
    );
    assert!(persistent(&w, "lasting", 3600, false).await.1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_delayed_will_survives_a_restart() {
    use rumqttc::v5::mqttbytes::v5::LastWill;
    let mut w = Weir::start();
    let mut o = C5::opts(w.port, "mortal");
    o.set_session_expiry_interval(Some(3600));
    let props = weir_tests::clients::v5::will_delay(3);
    o.set_last_will(LastWill::new(
        "will/mortal",
        "late",
        QoS::AtLeastOnce,
        false,
        Some(props),
    ));
    let (c, _) = C5::connect_with(o).await;
    c.drop_connection();
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert!(w.terminate().success());
    w.restart();
    let (mut watcher, _) = C5::connect_with(C5::opts(w.port, "watcher")).await;
    watcher.subscribe("will/#", QoS::AtLeastOnce).await;
    let m = watcher
        .publish_within(Duration::from_secs(6))
        .await
        .expect("the pending will was published after restart");
    assert_eq!(&m.payload[..], b"late");
}

/// A session restored with more waiting than its high-water mark keeps the rest on disk
/// (`weir_spilled_messages`), as it would have without the restart, and its client gets
/// everything in order.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_restored_session_keeps_its_excess_on_disk() {
    let mut w = Weir::with(weir_tests::Opts {
        limits: "queue_high_water = 100".into(),
        ..Default::default()
    });
    let (mut s, _) = persistent(&w, "behind", 3600, true).await;
    s.subscribe("r/#", QoS::AtLeastOnce).await;
    s.disconnect().await;
    let (mut p, _) = C5::connect_with(C5::opts(w.port, "pub")).await;
    const N: usize = 3000;
    for i in 0..N {
        p.send("r/x", QoS::AtLeastOnce, false, i.to_string()).await;
    }
    await_acks(&mut p, N).await;
    w.kill9();

    w.restart();
    let on_disk = w.metric("weir_spilled_messages");
    assert!(on_disk >= 2500, "restored, {on_disk} of {N} on disk");
    let (mut s, present) = persistent(&w, "behind", 3600, false).await;
    assert!(present);
    let mut got = Vec::new();
    while got.len() < N {
        let Some(m) = s.publish_within(WAIT).await else {
            break;
        };
        got.push(
            String::from_utf8_lossy(&m.payload)
                .parse::<usize>()
                .unwrap(),
        );
    }
    let misplaced = got.iter().enumerate().find(|(i, n)| i != *n);
    assert!(
        got.len() == N && misplaced.is_none(),
        "got {} of {N}, first misplaced {misplaced:?}",
        got.len()
    );
    assert_eq!(w.metric("weir_spilled_messages"), 0, "all read back");
}
