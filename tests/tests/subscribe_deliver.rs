//! The hooks of `weir:plugin@0.2.0` that reshape subscriptions and deliveries,
//! `subscribe` and `deliver`, through the real broker with rumqttc clients: the `tenant`
//! example plugin (each tenant its own topic space) and the `audience` test plugin
//! (per-subscriber delivery and redaction).

use rumqttc::v5::mqttbytes::v5::{PublishProperties, SubscribeReasonCode, UnsubAckReason};
use rumqttc::v5::mqttbytes::QoS;
use weir_tests::clients::{C5, QUIET, WAIT};
use weir_tests::{plugins, Opts, Weir};

/// A broker with one plugin; anyone may connect, under the username it presents.
fn broker(name: &str, wasm: &str, config: &str) -> Weir {
    let entry = format!(
        "[[plugin]]\nname = {name:?}\npath = {:?}\n[plugin.config]\n{config}\n",
        plugins::wasm(wasm)
    );
    Weir::with(Opts {
        extra: entry,
        plugins: "authenticate_default = \"allow\"".into(),
        ..Default::default()
    })
}

async fn user(w: &Weir, id: &str, username: Option<&str>) -> C5 {
    let mut o = C5::opts(w.port, id);
    if let Some(u) = username {
        o.set_credentials(u, "");
    }
    C5::connect_with(o).await.0
}

async fn unsubscribe(c: &mut C5, filter: &str) -> Vec<UnsubAckReason> {
    c.client
        .unsubscribe(filter)
        .await
        .expect("unsubscribe request");
    loop {
        match c.next(WAIT).await {
            Some(Ok(rumqttc::v5::Incoming::UnsubAck(u))) => return u.reasons,
            Some(Ok(_)) => {}
            other => panic!("expected UNSUBACK, got {other:?}"),
        }
    }
}

fn topics(msgs: &[rumqttc::v5::mqttbytes::v5::Publish]) -> Vec<(String, String)> {
    msgs.iter()
        .map(|m| {
            let t = String::from_utf8_lossy(&m.topic).into_owned();
            (t, String::from_utf8_lossy(&m.payload).into_owned())
        })
        .collect()
}

/// `subscribe` rewrites each filter into the tenant's space and lowers the QoS (the
/// SUBACK says so), denies what is outside it, and maps an UNSUBSCRIBE the same way;
/// `transform` and `deliver` put the prefix on and take it off: tenants never see each
/// other, retained messages included.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tenants_each_get_their_own_topic_space() {
    let w = broker("tenant", "tenant", "max_qos = 1");
    let mut alice = user(&w, "alice-1", Some("alice")).await;
    let ack = alice.subscribe("sensors/#", QoS::ExactlyOnce).await;
    assert_eq!(
        ack.return_codes,
        vec![SubscribeReasonCode::Success(QoS::AtLeastOnce)],
        "rewritten, at the plugin's highest QoS"
    );
    let ack = alice.subscribe("$SYS/#", QoS::AtMostOnce).await;
    assert_eq!(ack.return_codes, vec![SubscribeReasonCode::NotAuthorized]);
    let mut bob = user(&w, "bob-1", Some("bob")).await;
    bob.subscribe("sensors/#", QoS::AtLeastOnce).await;
    let mut nobody = user(&w, "anon", None).await;
    let ack = nobody.subscribe("sensors/#", QoS::AtLeastOnce).await;
    assert_eq!(ack.return_codes, vec![SubscribeReasonCode::NotAuthorized]);

    let alice_pub = user(&w, "alice-2", Some("alice")).await;
    alice_pub
        .send("sensors/t1", QoS::AtLeastOnce, true, "from alice")
        .await;
    let got = alice.drain_publishes().await;
    assert_eq!(
        topics(&got),
        vec![("sensors/t1".into(), "from alice".into())],
        "the prefix taken off again"
    );
    assert!(
        bob.publish_within(QUIET).await.is_none(),
        "bob sees nothing of alice's"
    );

    // The retained message lives in alice's space and comes back without the prefix.
    let mut alice3 = user(&w, "alice-3", Some("alice")).await;
    alice3.subscribe("sensors/+", QoS::AtLeastOnce).await;
    let m = alice3.publish().await;
    assert_eq!((&m.topic[..], m.retain), (&b"sensors/t1"[..], true));
    let mut bob2 = user(&w, "bob-2", Some("bob")).await;
    bob2.subscribe("sensors/+", QoS::AtLeastOnce).await;
    assert!(
        bob2.publish_within(QUIET).await.is_none(),
        "not bob's retained message"
    );

    // Unsubscribing with the filter the client knows undoes the rewritten subscription.
    assert_eq!(
        unsubscribe(&mut alice, "sensors/#").await,
        vec![UnsubAckReason::Success]
    );
    alice_pub
        .send("sensors/t2", QoS::AtLeastOnce, false, "after")
        .await;
    assert_eq!(alice3.publish().await.payload, "after");
    assert!(alice.publish_within(QUIET).await.is_none(), "unsubscribed");
}

/// `deliver` decides per subscriber: a message for one audience reaches only it (the
/// other copies dropped and counted, QoS 1 ones done with, so a small Receive Maximum
/// never fills up), and a redacted one reaches everyone but `admin` masked.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn deliver_keeps_drops_and_replaces_per_subscriber() {
    let w = broker("audience", "audience", "");
    let mut subs = Vec::new();
    for name in ["alice", "admin"] {
        let mut o = C5::opts(w.port, name);
        o.set_credentials(name, "");
        o.set_receive_maximum(Some(5));
        let (mut c, _) = C5::connect_with(o).await;
        c.subscribe("news/#", QoS::AtLeastOnce).await;
        subs.push(c);
    }
    let p = user(&w, "pub", None).await;
    let with = |name: &str, value: &str| PublishProperties {
        user_properties: vec![(name.into(), value.into())],
        ..Default::default()
    };
    const N: usize = 40;
    for i in 0..N {
        let to = if i % 2 == 0 { "alice" } else { "admin" };
        p.client
            .publish_with_properties(
                "news/x",
                QoS::AtLeastOnce,
                false,
                format!("{to}-{i}"),
                with("audience", to),
            )
            .await
            .unwrap();
    }
    p.client
        .publish_with_properties(
            "news/y",
            QoS::AtLeastOnce,
            false,
            "secret",
            with("redact", "1"),
        )
        .await
        .unwrap();
    p.send("news/z", QoS::AtLeastOnce, false, "for all").await;

    for (c, name) in subs.iter_mut().zip(["alice", "admin"]) {
        let mut got = Vec::new();
        while let Some(m) = c.publish_within(WAIT).await {
            got.push(String::from_utf8_lossy(&m.payload).into_owned());
            if got.len() == N / 2 + 2 {
                break;
            }
        }
        let own: Vec<String> = (0..N)
            .filter(|i| (i % 2 == 0) == (name == "alice"))
            .map(|i| format!("{name}-{i}"))
            .collect();
        let masked = if name == "admin" { "secret" } else { "***" };
        let want: Vec<String> = own
            .into_iter()
            .chain([masked.to_string(), "for all".to_string()])
            .collect();
        assert_eq!(got, want, "{name}: its own, in order, then the rest");
        assert!(c.publish_within(QUIET).await.is_none());
    }
    let dropped = w.metric("weir_dropped_messages_total{cause=\"deliver_hook\"}");
    assert_eq!(dropped, N as u64, "each subscriber's other half, counted");
}
