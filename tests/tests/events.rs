//! Events (`weir:plugin@0.2.0`, `observer`): the broker reports what happens to observer
//! plugins in batches, off the connections, through a bounded queue. Checked with the
//! `event-log` example plugin (one JSON line per event in the broker's log) and the
//! `slow-observer` test plugin, with rumqttc clients.

use rumqttc::v5::mqttbytes::v5::LastWill;
use rumqttc::v5::mqttbytes::QoS;
use std::time::{Duration, Instant};
use weir_tests::clients::{C5, WAIT};
use weir_tests::{eventually, plugins, Opts, Weir};

fn entry(name: &str, wasm: &str, settings: &str, config: &str) -> String {
    format!(
        "[[plugin]]\nname = {name:?}\npath = {:?}\n{settings}\n[plugin.config]\n{config}\n\n",
        plugins::wasm(wasm)
    )
}

/// The JSON lines `event-log` wrote of `kind` for `client_id`.
fn logged(w: &Weir, kind: &str, client_id: &str) -> Vec<String> {
    let (kind, id) = (
        format!("\"event\":\"{kind}\""),
        format!("\"client_id\":\"{client_id}\""),
    );
    (w.log().lines())
        .filter(|l| l.contains(&kind) && l.contains(&id))
        .map(str::to_owned)
        .collect()
}

/// Every kind of event reaches the observer, with what it is about: connected,
/// subscribed, unsubscribed, messages dropped (by cause, with the client and topic),
/// a will published, disconnected (with the reason), a session expired.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_observer_sees_every_kind_of_event() {
    let w = Weir::with(Opts {
        extra: entry("audit", "event-log", "", ""),
        limits: "max_queued = 2\noverflow = \"drop-newest\"".into(),
        ..Default::default()
    });
    let (mut watcher, _) = C5::connect_with(C5::opts(w.port, "watcher")).await;
    watcher.subscribe("t/#", QoS::AtLeastOnce).await;
    watcher.client.unsubscribe("t/#").await.unwrap();

    let mut o = C5::opts(w.port, "offline");
    o.set_session_expiry_interval(Some(2));
    let (mut offline, _) = C5::connect_with(o).await;
    offline.subscribe("q/#", QoS::AtLeastOnce).await;
    offline.disconnect().await;
    let (p, _) = C5::connect_with(C5::opts(w.port, "pub")).await;
    for i in 0..5 {
        p.send("q/x", QoS::AtLeastOnce, false, format!("{i}")).await;
    }

    let mut o = C5::opts(w.port, "willing");
    o.set_last_will(LastWill::new(
        "w/gone",
        "bye",
        QoS::AtLeastOnce,
        false,
        None,
    ));
    let (willing, _) = C5::connect_with(o).await;
    willing.drop_connection();

    let expected = [
        ("connected", "watcher", ""),
        ("subscribed", "watcher", "\"filter\":\"t/#\""),
        ("unsubscribed", "watcher", "\"filter\":\"t/#\""),
        ("message_dropped", "offline", "\"cause\":\"queue_full\""),
        ("will_published", "willing", "\"topic\":\"w/gone\""),
        ("disconnected", "willing", "\"reason_code\":128"),
        ("disconnected", "offline", "\"reason_code\":0"),
        ("session_expired", "offline", ""),
    ];
    for (kind, id, detail) in expected {
        let seen = || logged(&w, kind, id).iter().any(|l| l.contains(detail));
        assert!(
            eventually(Duration::from_secs(15), seen),
            "no {kind} event of {id} with {detail}:\n{}",
            w.log()
        );
    }
    let dropped: Vec<_> = logged(&w, "message_dropped", "offline");
    let counted: u64 = dropped
        .iter()
        .filter_map(|l| {
            l.split("\"count\":")
                .nth(1)?
                .split([',', '}'])
                .next()?
                .parse::<u64>()
                .ok()
        })
        .sum();
    assert_eq!(counted, 3, "5 messages into a queue of 2: {dropped:?}");
    assert!(w.metric("weir_event_batches_total") >= 1);
    assert_eq!(w.metric("weir_events_lost_total"), 0);
}

/// A slow observer (two seconds over every batch) and a failing one (a trap on every
/// batch) with a queue of 10 events: 200 clients connect, publish and receive as if
/// nobody observed; what did not fit in the queue is lost and counted, never waited
/// for, and the failures are counted.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn slow_or_failing_observers_never_slow_a_client() {
    let w = Weir::with(Opts {
        extra: [
            entry(
                "slow",
                "slow-observer",
                "deadline_ms = 5000",
                "spin_ms = 2000",
            ),
            entry("failing", "slow-observer", "", "trap = true"),
        ]
        .concat(),
        plugins: "events_queue = 10".into(),
        ..Default::default()
    });
    let (mut sub, _) = C5::connect_with(C5::opts(w.port, "sub")).await;
    sub.subscribe("burst/#", QoS::AtLeastOnce).await;
    let started = Instant::now();
    const N: usize = 200;
    for i in 0..N {
        let (c, _) = C5::connect_with(C5::opts(w.port, &format!("c{i}"))).await;
        c.send("burst/x", QoS::AtLeastOnce, false, format!("{i}"))
            .await;
        c.disconnect().await;
    }
    let mut got = 0;
    while got < N {
        if sub.publish_within(WAIT).await.is_none() {
            break;
        }
        got += 1;
    }
    println!(
        "{N} clients connected, published and left, and {got} messages arrived, in {:?}",
        started.elapsed()
    );
    assert_eq!(got, N);
    let lost = w.metric("weir_events_lost_total");
    assert!(
        lost > 0,
        "the queue of 10 overflowed rather than being waited on"
    );
    let failures = || {
        let m = weir_tests::http::request(w.admin_port, "GET", "/metrics", None).1;
        m.lines()
            .filter(|l| l.starts_with("weir_plugin_errors_total{plugin=\"failing\""))
            .filter_map(|l| l.rsplit(' ').next()?.parse::<u64>().ok())
            .sum::<u64>()
    };
    assert!(
        eventually(WAIT, || failures() > 0),
        "the failing observer's traps are counted"
    );
    println!(
        "events queued {}, lost {lost}",
        w.metric("weir_events_total")
    );
}
