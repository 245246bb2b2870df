//! Cluster mode: Weir nodes joined through a NATS cluster with JetStream, all started by
//! the tests on loopback (`.ci/setup` installs nats-server), checked with real clients.

use rumqttc::v5::mqttbytes::v5::{Filter, PublishProperties, SubscribeProperties};
use rumqttc::v5::mqttbytes::QoS;
use std::process::Command;
use std::time::Duration;
use weir_tests::clients::{C5, QUIET, WAIT};
use weir_tests::nats::NatsCluster;
use weir_tests::{eventually, free_port, weir_bin, Opts, Weir};

/// A Weir node of the cluster on `nats`.
fn node(nats: &NatsCluster, name: &str) -> Weir {
    node_with(nats, name, "")
}

/// A Weir node of the cluster on `nats`, with more `[cluster]` keys.
fn node_with(nats: &NatsCluster, name: &str, more: &str) -> Weir {
    node_at(nats, &nats.urls_toml(), name, more)
}

/// A Weir node that knows only the `i`th NATS server at first (it learns the others
/// from it).
fn node_on(nats: &NatsCluster, i: usize, name: &str) -> Weir {
    node_at(nats, &format!("[{:?}]", nats.servers[i].url()), name, "")
}

fn node_at(nats: &NatsCluster, servers: &str, name: &str, more: &str) -> Weir {
    Weir::with(cluster_opts(nats, servers, name, more))
}

fn cluster_opts(nats: &NatsCluster, servers: &str, name: &str, more: &str) -> Opts {
    let replicas = if nats.servers.len() >= 3 { 3 } else { 1 };
    Opts {
        extra: format!(
            "[cluster]\nservers = {servers}\nnode = {name:?}\nreplicas = {replicas}\nconnect_timeout_secs = 60\n{more}\n",
        ),
        ..Default::default()
    }
}

fn metric(w: &Weir, name: &str) -> u64 {
    w.metric(name)
}

#[test]
fn bad_or_unreachable_nats_stops_startup_naming_the_key() {
    let check = |cluster: &str| {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("weir.toml");
        let text = format!(
            "[[listener]]\nname = \"tcp\"\nbind = \"127.0.0.1:{}\"\n[admin]\nenabled = false\n[storage]\npersistence = false\n[cluster]\n{cluster}\n",
            free_port()
        );
        std::fs::write(&path, text).unwrap();
        let out = Command::new(weir_bin())
            .arg("--config")
            .arg(&path)
            .output()
            .unwrap();
        assert!(!out.status.success(), "{cluster:?} started");
        String::from_utf8_lossy(&out.stderr).into_owned()
    };
    let err = check("servers = [\"http://127.0.0.1:4222\"]\nnode = \"a\"");
    assert!(err.contains("cluster.servers[0]"), "{err}");
    let err = check("servers = []\nnode = \"a\"");
    assert!(err.contains("cluster.servers"), "{err}");
    let err = check("servers = [\"nats://127.0.0.1:1\"]\nnode = \"no dots.here\"");
    assert!(err.contains("cluster.node"), "{err}");
    let err = check("servers = [\"nats://127.0.0.1:1\"]\nnode = \"a\"\nreplicas = 2");
    assert!(err.contains("cluster.replicas"), "{err}");
    let unreachable = format!(
        "servers = [\"nats://127.0.0.1:{}\"]\nnode = \"a\"\nconnect_timeout_secs = 1",
        free_port()
    );
    let err = check(&unreachable);
    assert!(
        err.contains("cluster.servers") && err.contains("cannot connect"),
        "{err}"
    );
}

fn props() -> PublishProperties {
    PublishProperties {
        payload_format_indicator: Some(1),
        message_expiry_interval: Some(300),
        content_type: Some("text/plain".into()),
        response_topic: Some("reply/here".into()),
        correlation_data: Some(b"corr".to_vec().into()),
        user_properties: vec![("k".into(), "v".into())],
        ..Default::default()
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_message_published_on_one_node_reaches_subscribers_on_every_node() {
    let nats = NatsCluster::start(3);
    let (w1, w2, w3) = (node(&nats, "w1"), node(&nats, "w2"), node(&nats, "w3"));

    let (mut s1, _) = C5::connect_with(C5::opts(w1.port, "s1")).await;
    s1.subscribe("t/#", QoS::AtLeastOnce).await;
    let (mut s2, _) = C5::connect_with(C5::opts(w2.port, "s2")).await;
    let with_id = SubscribeProperties {
        id: Some(7),
        user_properties: vec![],
    };
    s2.client
        .subscribe_with_properties("t/+/x", QoS::AtMostOnce, with_id)
        .await
        .unwrap();
    s2.suback().await;
    // A subscriber on the publisher's own node: exactly once, not again via NATS.
    let (mut s3, _) = C5::connect_with(C5::opts(w3.port, "s3")).await;
    s3.subscribe("t/#", QoS::AtLeastOnce).await;

    let (p, _) = C5::connect_with(C5::opts(w3.port, "p")).await;
    p.client
        .publish_with_properties("t/a/x", QoS::AtLeastOnce, false, "hello", props())
        .await
        .unwrap();

    let m1 = s1.publish().await;
    assert_eq!(
        (&m1.topic[..], &m1.payload[..]),
        (&b"t/a/x"[..], &b"hello"[..])
    );
    assert_eq!(m1.qos, QoS::AtLeastOnce);
    let p1 = m1.properties.expect("properties cross nodes");
    assert_eq!(p1.content_type.as_deref(), Some("text/plain"));
    assert_eq!(p1.response_topic.as_deref(), Some("reply/here"));
    assert_eq!(p1.correlation_data.as_deref(), Some(&b"corr"[..]));
    assert_eq!(p1.user_properties, vec![("k".to_string(), "v".to_string())]);
    assert_eq!(p1.payload_format_indicator, Some(1));
    assert!(p1
        .message_expiry_interval
        .is_some_and(|s| (290..=300).contains(&s)));

    let m2 = s2.publish().await;
    assert_eq!(
        m2.qos,
        QoS::AtMostOnce,
        "downgraded to the subscription's QoS"
    );
    assert_eq!(
        m2.properties.expect("props").subscription_identifiers,
        vec![7]
    );

    let m3 = s3.publish().await;
    assert_eq!(&m3.payload[..], b"hello");
    for (who, s) in [("s1", &mut s1), ("s2", &mut s2), ("s3", &mut s3)] {
        let extra = s.drain_publishes().await;
        assert!(extra.is_empty(), "{who} got it more than once: {extra:?}");
    }

    // At QoS 0, which crosses nodes in a batch: properties and expiry too.
    p.client
        .publish_with_properties("t/b/x", QoS::AtMostOnce, false, "zero", props())
        .await
        .unwrap();
    let z1 = s1.publish().await;
    assert_eq!((&z1.payload[..], z1.qos), (&b"zero"[..], QoS::AtMostOnce));
    let pz = z1.properties.expect("QoS 0 properties cross nodes");
    assert_eq!(pz.content_type.as_deref(), Some("text/plain"));
    assert_eq!(pz.correlation_data.as_deref(), Some(&b"corr"[..]));
    assert_eq!(pz.user_properties, vec![("k".to_string(), "v".to_string())]);
    assert!(pz
        .message_expiry_interval
        .is_some_and(|s| (290..=300).contains(&s)));
    let z2 = s2.publish().await;
    assert_eq!(&z2.payload[..], b"zero");
    assert_eq!(
        z2.properties.expect("props").subscription_identifiers,
        vec![7]
    );
    assert_eq!(&s3.publish().await.payload[..], b"zero");

    // `$` topics are not matched by a leading wildcard on another node either.
    let (mut all, _) = C5::connect_with(C5::opts(w1.port, "all")).await;
    all.subscribe("#", QoS::AtMostOnce).await;
    p.send("$weird/x", QoS::AtLeastOnce, false, "no").await;
    p.send("t/z", QoS::AtMostOnce, false, "qos0").await;
    assert_eq!(&all.publish().await.payload[..], b"qos0");
    let extra = all.drain_publishes().await;
    assert!(extra.is_empty(), "{extra:?}");
    drop((w1, w2, w3));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn retain_flags_and_no_local_hold_across_nodes() {
    let nats = NatsCluster::start(1);
    let (w1, w2) = (node(&nats, "w1"), node(&nats, "w2"));
    let (mut rap, _) = C5::connect_with(C5::opts(w1.port, "rap")).await;
    let mut f = Filter::new("r/#", QoS::AtLeastOnce);
    f.retain_forward_rule = rumqttc::v5::mqttbytes::v5::RetainForwardRule::Never;
    f.preserve_retain = true;
    rap.client.subscribe_many([f]).await.unwrap();
    rap.suback().await;
    let (mut plain, _) = C5::connect_with(C5::opts(w1.port, "plain")).await;
    plain.subscribe("r/#", QoS::AtLeastOnce).await;

    let (p, _) = C5::connect_with(C5::opts(w2.port, "p")).await;
    p.send("r/1", QoS::AtLeastOnce, true, "kept").await;
    assert!(
        rap.publish().await.retain,
        "Retain As Published keeps the flag"
    );
    assert!(
        !plain.publish().await.retain,
        "a live message loses it otherwise"
    );

    // No Local: a client's own message does not come back, wherever it went.
    let (mut me, _) = C5::connect_with(C5::opts(w2.port, "me")).await;
    let mut own = Filter::new("n/#", QoS::AtLeastOnce);
    own.nolocal = true;
    me.client.subscribe_many([own]).await.unwrap();
    me.suback().await;
    let (mut other, _) = C5::connect_with(C5::opts(w1.port, "other")).await;
    other.subscribe("n/#", QoS::AtLeastOnce).await;
    me.send("n/1", QoS::AtLeastOnce, false, "mine").await;
    assert_eq!(&other.publish().await.payload[..], b"mine");
    assert!(me.publish_within(QUIET).await.is_none());
    drop((w1, w2));
}

/// A node is sent only what its subscriptions want (NATS routes by interest), and
/// stops receiving a topic once its last subscriber leaves.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_receives_only_what_its_subscriptions_want() {
    let nats = NatsCluster::start(1);
    let (w1, w2) = (node(&nats, "w1"), node(&nats, "w2"));
    let (mut s, _) = C5::connect_with(C5::opts(w2.port, "s")).await;
    s.subscribe("wanted/+", QoS::AtMostOnce).await;
    let (p, _) = C5::connect_with(C5::opts(w1.port, "p")).await;
    for i in 0..50 {
        p.send(format!("unwanted/{i}"), QoS::AtLeastOnce, false, "x")
            .await;
        p.send(format!("other/{i}"), QoS::AtMostOnce, false, "x")
            .await;
    }
    p.send("wanted/1", QoS::AtMostOnce, false, "y").await;
    assert_eq!(&s.publish().await.payload[..], b"y");
    assert_eq!(metric(&w2, "weir_cluster_received_total"), 1);
    assert!(eventually(WAIT, || metric(
        &w1,
        "weir_cluster_published_total"
    ) >= 101));

    s.client.unsubscribe("wanted/+").await.unwrap();
    assert!(eventually(WAIT, || {
        let (_, body) = weir_tests::http::request(w2.admin_port, "GET", "/metrics", None);
        body.contains("weir_cluster_subjects 0")
    }));
    tokio::time::sleep(Duration::from_millis(200)).await;
    p.send("wanted/2", QoS::AtLeastOnce, false, "z").await;
    tokio::time::sleep(QUIET).await;
    assert_eq!(metric(&w2, "weir_cluster_received_total"), 1);
}

/// While NATS is away a node keeps serving its own clients, and a QoS 1 publish is not
/// acknowledged until JetStream has it: never acknowledged and then lost.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_nats_local_clients_are_served_and_qos1_acks_wait() {
    let mut nats = NatsCluster::start(1);
    let (w1, _w2) = (node(&nats, "w1"), node(&nats, "w2"));
    let (mut local, _) = C5::connect_with(C5::opts(w1.port, "local")).await;
    local.subscribe("o/#", QoS::AtMostOnce).await;
    let (mut p, _) = C5::connect_with(C5::opts(w1.port, "p")).await;

    assert_eq!(metric(&w1, "weir_cluster_connected"), 1);
    nats.servers[0].kill9();
    p.send("o/1", QoS::AtLeastOnce, false, "during").await;
    assert_eq!(&local.publish().await.payload[..], b"during");
    let mut acked = false;
    while let Some(Ok(e)) = p.next(Duration::from_secs(2)).await {
        acked |= matches!(e, rumqttc::v5::Incoming::PubAck(_));
    }
    assert!(!acked, "PUBACK before JetStream had the message");

    nats.servers[0].restart();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    while !acked && tokio::time::Instant::now() < deadline {
        if let Some(Ok(rumqttc::v5::Incoming::PubAck(_))) = p.next(Duration::from_secs(1)).await {
            acked = true;
        }
    }
    assert!(acked, "no PUBACK once NATS was back; w1 log:\n{}", w1.log());
    assert!(metric(&w1, "weir_cluster_disconnects_total") >= 1);
    assert!(w1.log().contains("lost the connection to NATS"));
    // The NATS connection state and JetStream's latency are there to alert on: the
    // acknowledgement waited the outage out.
    assert_eq!(metric(&w1, "weir_cluster_connected"), 1);
    let (_, m) = weir_tests::http::request(w1.admin_port, "GET", "/metrics", None);
    let waited = m
        .lines()
        .find_map(|l| l.strip_prefix("weir_cluster_jetstream_publish_seconds_sum "))
        .and_then(|v| v.parse::<f64>().ok())
        .unwrap_or_else(|| panic!("no JetStream latency in:\n{m}"));
    assert!(waited >= 2.0, "the PUBACK waited {waited} s in JetStream");
    // Every cluster metric the Grafana dashboard queries is exported by a node.
    let (_, cluster) = weir_tests::grafana::queried_metrics();
    let missing: Vec<&String> = (cluster.iter())
        .filter(|n| !weir_tests::grafana::exposes(&m, n))
        .collect();
    assert!(
        missing.is_empty(),
        "the dashboard queries {missing:?}, not in:\n{m}"
    );
}

/// Overlapping filters on one node make NATS send that node each message once per
/// NATS subscription: every client still gets each message once, in the order sent.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn overlapping_filters_on_a_node_deliver_once_and_in_order() {
    let nats = NatsCluster::start(1);
    let (w1, w2) = (node(&nats, "w1"), node(&nats, "w2"));
    let (mut a, _) = C5::connect_with(C5::opts(w1.port, "a")).await;
    a.subscribe("o/#", QoS::AtLeastOnce).await;
    let (mut b, _) = C5::connect_with(C5::opts(w1.port, "b")).await;
    b.subscribe("#", QoS::AtLeastOnce).await;
    b.subscribe("+/t", QoS::AtLeastOnce).await;
    let (p, _) = C5::connect_with(C5::opts(w2.port, "p")).await;
    const N: usize = 500;
    for i in 0..N {
        p.send("o/t", QoS::AtLeastOnce, false, i.to_string()).await;
    }
    for (who, c) in [("a", &mut a), ("b", &mut b)] {
        let mut got = Vec::new();
        while got.len() < N {
            match c.publish_within(WAIT).await {
                Some(m) => got.push(String::from_utf8_lossy(&m.payload).into_owned()),
                None => break,
            }
        }
        let want: Vec<String> = (0..N).map(|i| i.to_string()).collect();
        assert_eq!(got, want, "{who}: each once, in order");
        assert!(
            c.drain_publishes().await.is_empty(),
            "{who}: more than once"
        );
    }
    assert!(metric(&w1, "weir_cluster_copies_total") >= N as u64);
}

/// The retained messages a new subscriber to `filter` on `port` is sent.
async fn retained_on(port: u16, filter: &str) -> Vec<String> {
    static N: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);
    let id = format!(
        "look{}",
        N.fetch_add(1, std::sync::atomic::Ordering::Relaxed)
    );
    let (mut c, _) = C5::connect_with(C5::opts(port, &id)).await;
    c.subscribe(filter, QoS::AtLeastOnce).await;
    let got = c.drain_payloads().await;
    c.disconnect().await;
    got
}

async fn retained_becomes(port: u16, filter: &str, want: &[&str]) {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(15);
    loop {
        let mut got = retained_on(port, filter).await;
        got.sort();
        if got == want {
            return;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "retained on {port} for {filter}: {got:?}, want {want:?}"
        );
    }
}

async fn acked(c: &mut C5) {
    loop {
        match c.next(WAIT).await {
            Some(Ok(rumqttc::v5::Incoming::PubAck(_))) => return,
            Some(Ok(_)) => {}
            other => panic!("no PUBACK: {other:?}"),
        }
    }
}

/// Retained messages are one per topic cluster-wide, served on every node, and outlive
/// the node that stored them; a node started later gets them too.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn retained_messages_are_cluster_wide_and_outlive_their_node() {
    let nats = NatsCluster::start(3);
    let (mut w1, w2, w3) = (node(&nats, "w1"), node(&nats, "w2"), node(&nats, "w3"));
    let (mut p1, _) = C5::connect_with(C5::opts(w1.port, "p1")).await;
    p1.send("r/a", QoS::AtLeastOnce, true, "one").await;
    acked(&mut p1).await;
    retained_becomes(w2.port, "r/#", &["one"]).await;

    // Replaced from another node: still one per topic.
    let (mut p2, _) = C5::connect_with(C5::opts(w2.port, "p2")).await;
    p2.send("r/a", QoS::AtLeastOnce, true, "two").await;
    acked(&mut p2).await;
    p2.send("r/b", QoS::AtLeastOnce, true, "bee").await;
    acked(&mut p2).await;
    retained_becomes(w1.port, "r/#", &["bee", "two"]).await;

    w1.kill9();
    retained_becomes(w3.port, "r/#", &["bee", "two"]).await;

    // Deleted by an empty payload, everywhere.
    p2.send("r/b", QoS::AtLeastOnce, true, "").await;
    acked(&mut p2).await;
    retained_becomes(w3.port, "r/#", &["two"]).await;

    let w4 = node(&nats, "w4");
    retained_becomes(w4.port, "r/#", &["two"]).await;
    drop((w2, w3, w4));
}

/// A shared subscription whose members sit on different nodes: each message goes to
/// exactly one member cluster-wide, and each group gets every message.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_shared_group_across_nodes_gets_each_message_once() {
    let nats = NatsCluster::start(3);
    let nodes = [node(&nats, "w1"), node(&nats, "w2"), node(&nats, "w3")];
    let mut members = Vec::new();
    for (i, w) in nodes.iter().enumerate() {
        let (mut m, _) = C5::connect_with(C5::opts(w.port, &format!("m{i}"))).await;
        m.subscribe("$share/g/s/#", QoS::AtLeastOnce).await;
        members.push(m);
    }
    let (mut solo, _) = C5::connect_with(C5::opts(nodes[2].port, "solo")).await;
    solo.subscribe("$share/h/s/+", QoS::AtLeastOnce).await;

    let (p, _) = C5::connect_with(C5::opts(nodes[1].port, "p")).await;
    const N: usize = 300;
    for i in 0..N {
        p.send("s/x", QoS::AtLeastOnce, false, i.to_string()).await;
    }
    let mut all = Vec::new();
    let mut per_member = Vec::new();
    for m in &mut members {
        let got = m.drain_payloads().await;
        per_member.push(got.len());
        all.extend(got);
    }
    all.sort_by_key(|s| s.parse::<usize>().unwrap_or(usize::MAX));
    let want: Vec<String> = (0..N).map(|i| i.to_string()).collect();
    assert_eq!(all, want, "each message to exactly one member of g");
    assert!(
        per_member.iter().all(|&n| n > 0),
        "every node's member got some: {per_member:?}"
    );
    let mut h = solo.drain_payloads().await;
    h.sort_by_key(|s| s.parse::<usize>().unwrap_or(usize::MAX));
    assert_eq!(h, want, "the other group gets every message too");
}

fn connected_on(w: &Weir, client_id: &str) -> bool {
    let (status, body) = weir_tests::http::request(w.admin_port, "GET", "/clients", None);
    assert_eq!(status, 200, "{body}");
    body.contains(&format!("\"{client_id}\""))
}

/// A client id connecting on a second node takes the connection over from the first
/// (DISCONNECT 0x8E); two nodes racing for one client id leave exactly one connected,
/// every one of 20 rounds.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_id_has_one_connection_cluster_wide() {
    let nats = NatsCluster::start(3);
    let (w1, w2) = (node(&nats, "w1"), node(&nats, "w2"));
    let (mut first, _) = C5::connect_with(C5::opts(w1.port, "dev")).await;
    let (_second, _) = C5::connect_with(C5::opts(w2.port, "dev")).await;
    let seen = first
        .closed_within(Duration::from_secs(10))
        .await
        .expect("the first connection is closed");
    assert!(seen.contains("SessionTakenOver"), "{seen}");
    assert!(connected_on(&w2, "dev") && !connected_on(&w1, "dev"));

    for round in 0..20 {
        let id = format!("race{round}");
        let mut o1 = C5::opts(w1.port, &id);
        let mut o2 = C5::opts(w2.port, &id);
        // No reconnects: a connection taken over stays closed.
        o1.set_clean_start(round % 2 == 0);
        o2.set_clean_start(round % 2 == 0);
        let (a, b) = tokio::join!(C5::connect_with(o1), C5::connect_with(o2));
        let (mut a, mut b) = (a.0, b.0);
        let one = eventually(Duration::from_secs(10), || {
            connected_on(&w1, &id) as u8 + connected_on(&w2, &id) as u8 == 1
        });
        assert!(
            one,
            "round {round}: on w1 {}, on w2 {}",
            connected_on(&w1, &id),
            connected_on(&w2, &id)
        );
        tokio::time::sleep(Duration::from_millis(300)).await;
        let left = connected_on(&w1, &id) as u8 + connected_on(&w2, &id) as u8;
        assert_eq!(left, 1, "round {round}: one owner, and it stays");
        let _ = (a.closed_within(QUIET).await, b.closed_within(QUIET).await);
    }
}

/// While NATS is away, QoS 0 messages for other nodes queue up to a bound and are
/// dropped past it (counted); local subscribers are served meanwhile, and the queue
/// drains once NATS is back.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn qos0_for_other_nodes_is_bounded_while_nats_is_away() {
    let mut nats = NatsCluster::start(1);
    let w1 = node(&nats, "w1");
    let (mut local, _) = C5::connect_with(C5::opts(w1.port, "local")).await;
    local.subscribe("b/#", QoS::AtMostOnce).await;
    let (p, _) = C5::connect_with(C5::opts(w1.port, "p")).await;
    nats.servers[0].kill9();
    const N: usize = 80_000;
    let counting = tokio::spawn(async move {
        let mut n = 0;
        while n < N
            && local
                .publish_within(Duration::from_secs(10))
                .await
                .is_some()
        {
            n += 1;
        }
        n
    });
    for i in 0..N {
        p.send("b/x", QoS::AtMostOnce, false, i.to_string()).await;
    }
    // QoS 0 to a subscriber slower than its publisher may overflow its queue, so the
    // count is not exact; that it is served at all is the point.
    let served = counting.await.unwrap();
    assert!(served > 0, "the local subscriber got nothing");
    assert!(metric(&w1, "weir_cluster_queued") <= 65_536);
    assert!(
        metric(&w1, "weir_cluster_dropped_total") > 0,
        "nothing dropped: the bound was not reached"
    );
    nats.servers[0].restart();
    assert!(
        eventually(Duration::from_secs(30), || metric(
            &w1,
            "weir_cluster_queued"
        ) == 0),
        "the queue drains once NATS is back"
    );
}

/// A node killed with `kill -9`: the surviving nodes publish the wills of its clients
/// once `liveness_secs` pass without its heartbeat, each exactly once however many
/// nodes survive, a delayed one after its delay; a client that comes back on another
/// node within its will delay cancels its will, and one that said DISCONNECT left none.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_wills_of_a_dead_node_are_published_once_by_the_survivors() {
    use rumqttc::v5::mqttbytes::v5::LastWill;
    let nats = NatsCluster::start(3);
    let live = "liveness_secs = 3";
    let mut w1 = node_with(&nats, "w1", live);
    let (w2, w3) = (node_with(&nats, "w2", live), node_with(&nats, "w3", live));
    let (mut watcher, _) = C5::connect_with(C5::opts(w2.port, "watcher")).await;
    watcher.subscribe("will/#", QoS::AtLeastOnce).await;
    let start = |id: &str, delay: u32| {
        let mut o = C5::opts(w1.port, id);
        let props = weir_tests::clients::v5::will_delay(delay);
        let topic = format!("will/{id}");
        o.set_last_will(LastWill::new(
            topic,
            "bye",
            QoS::AtLeastOnce,
            false,
            Some(props),
        ));
        o.set_session_expiry_interval(Some(600));
        C5::connect_with(o)
    };
    let mut clients = Vec::new();
    for id in ["c0", "c1", "c2", "delayed", "returns", "polite"] {
        let delay = match id {
            "delayed" => 4,
            "returns" => 6,
            _ => 0,
        };
        clients.push(start(id, delay).await.0);
    }
    let polite = clients.pop().unwrap();
    polite.client.disconnect().await.unwrap();
    // The wills reach the bucket as the clients connect; give the writes a moment.
    tokio::time::sleep(Duration::from_secs(1)).await;

    w1.kill9();
    let killed = std::time::Instant::now();
    let mut o = C5::opts(w3.port, "returns");
    o.set_clean_start(false);
    o.set_session_expiry_interval(Some(600));
    let (_back, _) = C5::connect_with(o).await;

    let mut got = Vec::new();
    let mut delayed_after = None;
    while got.len() < 4 && killed.elapsed() < Duration::from_secs(60) {
        if let Some(p) = watcher.publish_within(Duration::from_secs(1)).await {
            let topic = String::from_utf8_lossy(&p.topic).into_owned();
            if topic == "will/delayed" {
                delayed_after = Some(killed.elapsed());
            }
            got.push(topic);
        }
    }
    // Long enough for a second survivor to publish any will again.
    tokio::time::sleep(Duration::from_secs(4)).await;
    got.extend(
        watcher
            .drain_publishes()
            .await
            .iter()
            .map(|p| String::from_utf8_lossy(&p.topic).into_owned()),
    );
    got.sort();
    assert_eq!(
        got,
        ["will/c0", "will/c1", "will/c2", "will/delayed"],
        "each will of the dead node once; none for the client that came back or said goodbye"
    );
    let after = delayed_after.expect("the delayed will");
    // Death is the last beat plus 3 s; the last beat came up to 3/4 s before the kill.
    assert!(
        after >= Duration::from_millis(2250 + 4000),
        "the delayed will waited for death ({live}) and its delay: {after:?}"
    );
    drop((clients, w2, w3));
}

/// Options of a persistent 5.0 client that acknowledges by hand.
fn persistent(port: u16, id: &str, clean_start: bool) -> rumqttc::v5::MqttOptions {
    let mut o = C5::opts(port, id);
    o.set_clean_start(clean_start);
    o.set_session_expiry_interval(Some(600));
    o.set_manual_acks(true);
    o
}

/// A persistent session follows its client to another node: reconnecting there says
/// session present, needs no SUBSCRIBE, resends what was in flight (DUP) and then sends
/// what was queued, in order; the old node no longer holds the session, and messages
/// published anywhere reach the client where it is now.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_session_follows_its_client_to_another_node() {
    let nats = NatsCluster::start(3);
    let (w1, w2, w3) = (node(&nats, "w1"), node(&nats, "w2"), node(&nats, "w3"));
    let (mut c, _) = C5::connect_with(persistent(w1.port, "roam", true)).await;
    c.subscribe("roam/#", QoS::AtLeastOnce).await;
    let (mut p, _) = C5::connect_with(C5::opts(w2.port, "p")).await;
    for i in 0..5 {
        p.send("roam/a", QoS::AtLeastOnce, false, format!("f{i}"))
            .await;
        acked(&mut p).await;
    }
    for i in 0..5 {
        let m = c.publish().await;
        assert_eq!(&m.payload[..], format!("f{i}").as_bytes());
    }
    // Received and never acknowledged: in flight when the connection drops.
    c.drop_connection();
    assert!(eventually(WAIT, || !connected_on(&w1, "roam")));
    for i in 0..5 {
        p.send("roam/a", QoS::AtLeastOnce, false, format!("q{i}"))
            .await;
        acked(&mut p).await;
    }
    assert_eq!(metric(&w1, "weir_sessions"), 1, "roam's session is on w1");

    let (mut c, ack) = C5::connect_with(persistent(w3.port, "roam", false)).await;
    assert!(ack.session_present, "the session came from w1");
    let mut got = Vec::new();
    for _ in 0..10 {
        let m = c.publish().await;
        got.push((String::from_utf8_lossy(&m.payload).into_owned(), m.dup));
        c.client.ack(&m).await.unwrap();
    }
    let want: Vec<_> = (0..5)
        .map(|i| (format!("f{i}"), true))
        .chain((0..5).map(|i| (format!("q{i}"), false)))
        .collect();
    assert_eq!(
        got, want,
        "in flight again with DUP, then the queue, in order"
    );
    assert_eq!(metric(&w1, "weir_sessions"), 0, "w1 let the session go");

    // The subscription came along: published on w1, received on w3.
    let (mut p1, _) = C5::connect_with(C5::opts(w1.port, "p1")).await;
    p1.send("roam/b", QoS::AtLeastOnce, false, "after").await;
    acked(&mut p1).await;
    let m = c.publish().await;
    assert_eq!(&m.payload[..], b"after");
    c.client.ack(&m).await.unwrap();
    assert!(c.drain_publishes().await.is_empty(), "nothing twice");
}

/// `kill -9` of a node right after it acknowledged 100 QoS 1 messages for an offline
/// persistent session on another node: the client, back on a third node, gets all 100.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn acknowledged_messages_for_an_offline_session_outlive_the_publishers_node() {
    let nats = NatsCluster::start(3);
    let (mut w1, w2, w3) = (node(&nats, "w1"), node(&nats, "w2"), node(&nats, "w3"));
    let (mut k, _) = C5::connect_with(persistent(w2.port, "keeper", true)).await;
    k.subscribe("keep/#", QoS::AtLeastOnce).await;
    k.disconnect().await;
    let (mut p, _) = C5::connect_with(C5::opts(w1.port, "p")).await;
    const N: usize = 100;
    for i in 0..N {
        p.send("keep/x", QoS::AtLeastOnce, false, i.to_string())
            .await;
    }
    for _ in 0..N {
        acked(&mut p).await;
    }
    w1.kill9();

    let (mut k, ack) = C5::connect_with(persistent(w3.port, "keeper", false)).await;
    assert!(ack.session_present);
    let got = numbered(&mut k, N).await;
    let missing: Vec<_> = (0..N).filter(|i| !got.contains(i)).collect();
    assert!(missing.is_empty(), "lost: {missing:?}");
    drop((w2, w3));
}

/// A session that moves while a publisher keeps sending: every message arrives, in the
/// order published, and only those in flight at the move arrive twice (marked DUP).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_session_moving_while_messages_flow_loses_doubles_and_reorders_none() {
    let nats = NatsCluster::start(3);
    let (w1, w2, w3) = (node(&nats, "w1"), node(&nats, "w2"), node(&nats, "w3"));
    let (mut c, _) = C5::connect_with(persistent(w1.port, "flow", true)).await;
    c.subscribe("flow/#", QoS::AtLeastOnce).await;
    let (mut p, _) = C5::connect_with(C5::opts(w2.port, "p")).await;
    const N: usize = 3000;
    let publisher = tokio::spawn(async move {
        for i in 0..N {
            p.send("flow/x", QoS::AtLeastOnce, false, i.to_string())
                .await;
            if i % 50 == 0 {
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
        }
        for _ in 0..N {
            acked(&mut p).await;
        }
    });
    let mut firsts = Vec::new();
    let mut all = std::collections::BTreeSet::new();
    let take = |m: &rumqttc::v5::mqttbytes::v5::Publish,
                firsts: &mut Vec<usize>,
                all: &mut std::collections::BTreeSet<usize>| {
        let i: usize = String::from_utf8_lossy(&m.payload).parse().unwrap();
        if !m.dup {
            firsts.push(i);
        }
        all.insert(i);
    };
    while firsts.len() < 300 {
        let m = c.publish().await;
        take(&m, &mut firsts, &mut all);
        c.client.ack(&m).await.unwrap();
    }
    c.drop_connection();
    let (mut c, ack) = C5::connect_with(persistent(w3.port, "flow", false)).await;
    assert!(ack.session_present);
    while all.len() < N {
        let Some(m) = c.publish_within(WAIT).await else {
            break;
        };
        take(&m, &mut firsts, &mut all);
        c.client.ack(&m).await.unwrap();
    }
    publisher.await.unwrap();
    let missing: Vec<_> = (0..N).filter(|i| !all.contains(i)).collect();
    assert!(missing.is_empty(), "lost: {missing:?}");
    let out_of_order: Vec<_> = firsts.windows(2).filter(|w| w[0] >= w[1]).collect();
    assert!(
        out_of_order.is_empty(),
        "first deliveries twice or out of order: {out_of_order:?}"
    );
    drop((w1, w2, w3));
}

/// `kill -9` of the NATS server a subscriber's node is connected to, while QoS 1
/// messages flow to it from another node: every message its publisher was
/// acknowledged for reaches the subscriber.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn losing_a_nats_server_under_qos1_load_loses_nothing_acknowledged() {
    let mut nats = NatsCluster::start(3);
    let (w1, w2) = (node_on(&nats, 0, "w1"), node_on(&nats, 1, "w2"));
    let (mut sub, _) = C5::connect_with(C5::opts(w2.port, "sub")).await;
    sub.subscribe("load/#", QoS::AtLeastOnce).await;
    let (mut p, _) = C5::connect_with(C5::opts(w1.port, "p")).await;
    const N: usize = 1500;
    let mut got = std::collections::BTreeSet::new();
    let mut acked_ids = Vec::new();
    for i in 0..N {
        if i == N / 3 {
            nats.servers[1].kill9();
        }
        p.send("load/x", QoS::AtLeastOnce, false, i.to_string())
            .await;
        // JetStream may take a few seconds to pick a new leader for a stream the dead
        // server led: the PUBACK waits for it.
        loop {
            match p.next(Duration::from_secs(60)).await {
                Some(Ok(rumqttc::v5::Incoming::PubAck(_))) => break,
                Some(Ok(_)) => {}
                other => panic!("no PUBACK for {i}: {other:?}"),
            }
        }
        acked_ids.push(i);
        while let Some(m) = sub.publish_within(Duration::ZERO).await {
            got.insert(
                String::from_utf8_lossy(&m.payload)
                    .parse::<usize>()
                    .unwrap(),
            );
        }
    }
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    while got.len() < acked_ids.len() && std::time::Instant::now() < deadline {
        if let Some(m) = sub.publish_within(Duration::from_secs(1)).await {
            got.insert(
                String::from_utf8_lossy(&m.payload)
                    .parse::<usize>()
                    .unwrap(),
            );
        }
    }
    let lost: Vec<_> = acked_ids.iter().filter(|i| !got.contains(i)).collect();
    assert!(
        lost.is_empty(),
        "{} acknowledged, lost: {lost:?}\n{}",
        acked_ids.len(),
        w2.log()
    );
    drop((w1, w2));
}

/// A node that hangs (SIGSTOP) while a shared group's QoS 1 messages are handed to
/// it, and then dies: what it was handed goes to the group's member on another node
/// (JetStream gives it again once the ack wait is over), none is lost.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_shared_group_loses_nothing_its_hung_and_dead_node_was_handed() {
    let nats = NatsCluster::start(1);
    let w1 = node(&nats, "w1");
    let (mut w2, w3) = (node(&nats, "w2"), node(&nats, "w3"));
    let (mut m2, _) = C5::connect_with(C5::opts(w2.port, "m2")).await;
    m2.subscribe("$share/g/hang/#", QoS::AtLeastOnce).await;
    let (mut m3, _) = C5::connect_with(C5::opts(w3.port, "m3")).await;
    m3.subscribe("$share/g/hang/#", QoS::AtLeastOnce).await;
    let stop = std::process::Command::new("kill")
        .args(["-STOP", &w2.pid().to_string()])
        .status();
    assert!(stop.is_ok_and(|s| s.success()), "SIGSTOP w2");
    let (mut p, _) = C5::connect_with(C5::opts(w1.port, "p")).await;
    const N: usize = 200;
    send_numbered(&mut p, "hang/x", 0..N).await;
    w2.kill9();
    let mut got = std::collections::BTreeSet::new();
    let deadline = std::time::Instant::now() + Duration::from_secs(90);
    while got.len() < N && std::time::Instant::now() < deadline {
        if let Some(msg) = m3.publish_within(Duration::from_secs(1)).await {
            got.insert(
                String::from_utf8_lossy(&msg.payload)
                    .parse::<usize>()
                    .unwrap(),
            );
        }
    }
    let lost: Vec<_> = (0..N).filter(|i| !got.contains(i)).collect();
    assert!(lost.is_empty(), "{N} acknowledged, lost: {lost:?}");
    drop((w1, w3));
}

/// Receives until `n` distinct numbered payloads arrived (acknowledging each) or none
/// comes for a while; the numbers that did.
async fn numbered(c: &mut C5, n: usize) -> std::collections::BTreeSet<usize> {
    let mut got = std::collections::BTreeSet::new();
    while got.len() < n {
        let Some(m) = c.publish_within(WAIT).await else {
            break;
        };
        if let Ok(i) = String::from_utf8_lossy(&m.payload).parse() {
            got.insert(i);
        }
        c.client.ack(&m).await.unwrap();
    }
    got
}

/// `kill -9` of the node holding two persistent sessions, one offline, one connected
/// with 100 QoS 1 messages received and none acknowledged: each client, back on
/// another node, resumes its session there (session present, no SUBSCRIBE) and gets all
/// 100 (again, at least once), and then what is published after.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_sessions_of_a_dead_node_resume_on_the_others() {
    let nats = NatsCluster::start(3);
    let (mut w1, w2, w3) = (node(&nats, "w1"), node(&nats, "w2"), node(&nats, "w3"));
    let (mut off, _) = C5::connect_with(persistent(w1.port, "off", true)).await;
    off.subscribe("dead/#", QoS::AtLeastOnce).await;
    off.disconnect().await;
    let (mut on, _) = C5::connect_with(persistent(w1.port, "on", true)).await;
    on.subscribe("dead/+", QoS::AtLeastOnce).await;
    let (mut p, _) = C5::connect_with(C5::opts(w2.port, "p")).await;
    const N: usize = 100;
    for i in 0..N {
        p.send("dead/x", QoS::AtLeastOnce, false, i.to_string())
            .await;
        acked(&mut p).await;
    }
    // Received, never acknowledged: in flight on w1 (the rest queued there).
    assert!(on.publish_within(WAIT).await.is_some());
    w1.kill9();
    on.drop_connection();

    // w2 also holds the publisher's session.
    for (id, w, sessions) in [("off", &w3, 1), ("on", &w2, 2)] {
        let (mut c, ack) = C5::connect_with(persistent(w.port, id, false)).await;
        assert!(ack.session_present, "{id}: resumed from its record");
        let got = numbered(&mut c, N).await;
        let missing: Vec<_> = (0..N).filter(|i| !got.contains(i)).collect();
        assert!(missing.is_empty(), "{id} lost: {missing:?}\n{}", w.log());
        p.send("dead/x", QoS::AtLeastOnce, false, format!("after-{id}"))
            .await;
        acked(&mut p).await;
        // Read back or routed: what was published after the other client's resume
        // (for the second) may come first.
        let want = format!("after-{id}");
        while c.publish().await.payload != want.as_bytes() {}
        assert_eq!(
            metric(w, "weir_sessions"),
            sessions,
            "{id} lives on its new node"
        );
    }
}

/// A slow (here: offline) session in cluster mode keeps its overflow on its node's disk,
/// and moves whole: its client, back on another node, gets every message in order, and
/// the old node's disk is empty. Spilled on that node too, then `kill -9` of it: the
/// client, back on another node, still gets every acknowledged message (the cluster's
/// stream has them; the session's record reaches back to what was on disk).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_spilled_session_moves_whole_and_outlives_its_node() {
    let nats = NatsCluster::start(3);
    let low = |name: &str| {
        Weir::with(Opts {
            limits: "queue_high_water = 100".into(),
            ..cluster_opts(&nats, &nats.urls_toml(), name, "")
        })
    };
    let (w1, w2, mut w3) = (low("w1"), low("w2"), low("w3"));
    let (mut c, _) = C5::connect_with(persistent(w1.port, "slow", true)).await;
    c.subscribe("slow/#", QoS::AtLeastOnce).await;
    c.disconnect().await;
    let (mut p, _) = C5::connect_with(C5::opts(w2.port, "p")).await;
    const N: usize = 2000;
    send_numbered(&mut p, "slow/x", 0..N).await;
    assert!(
        eventually(WAIT, || metric(&w1, "weir_spilled_messages") > 1000),
        "spilled {}, queued {}\n{}",
        metric(&w1, "weir_spilled_messages"),
        metric(&w1, "weir_queued_messages"),
        w1.log()
    );

    let (mut c, ack) = C5::connect_with(persistent(w3.port, "slow", false)).await;
    assert!(ack.session_present);
    let mut got = Vec::new();
    while got.len() < N {
        let Some(m) = c.publish_within(WAIT).await else {
            break;
        };
        got.push(
            String::from_utf8_lossy(&m.payload)
                .parse::<usize>()
                .unwrap(),
        );
        c.client.ack(&m).await.unwrap();
    }
    let misplaced = got.iter().enumerate().find(|(i, n)| i != *n);
    assert!(
        got.len() == N && misplaced.is_none(),
        "every message, in order: got {} of {N}, first misplaced {misplaced:?}",
        got.len()
    );
    assert_eq!(
        metric(&w1, "weir_spilled_messages"),
        0,
        "w1 read its disk back"
    );
    assert_eq!(metric(&w1, "weir_sessions"), 0);

    c.disconnect().await;
    send_numbered(&mut p, "slow/x", N..2 * N).await;
    assert!(eventually(WAIT, || metric(&w3, "weir_spilled_messages") > 1000));
    w3.kill9();
    let (mut c, ack) = C5::connect_with(persistent(w1.port, "slow", false)).await;
    assert!(ack.session_present, "resumed from its record");
    let got = numbered(&mut c, 2 * N).await;
    let missing: Vec<_> = (N..2 * N).filter(|i| !got.contains(i)).collect();
    assert!(missing.is_empty(), "lost: {missing:?}\n{}", w1.log());
    drop(w2);
}

/// A QoS 0 flood from 100 publishers on one node to their subscribers on another: the
/// publishing node holds its publishers to the pace NATS takes their messages at, so it
/// drops none of them (it used to drop what waited beyond its bound).
#[test]
fn a_qos0_flood_across_nodes_is_paced_not_dropped() {
    let nats = NatsCluster::start(1);
    let (w1, w2) = (node(&nats, "w1"), node(&nats, "w2"));
    let (port, sub_port) = (w1.port.to_string(), w2.port.to_string());
    let out = Command::new(weir_tests::load_bin())
        .args([
            "--port",
            &port,
            "--sub-port",
            &sub_port,
            "--scenario",
            "p2p",
        ])
        .args(["--qos", "0", "--payload", "16", "--messages", "100000"])
        .args([
            "--clients",
            "100",
            "--timeout-secs",
            "120",
            "--label",
            "flood",
        ])
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(out.status.success(), "{text}");
    let row = text.lines().last().unwrap_or_default();
    let cols: Vec<&str> = row
        .trim()
        .trim_matches('|')
        .split('|')
        .map(str::trim)
        .collect();
    assert_eq!(cols.len(), 11, "{text}");
    assert_eq!(metric(&w1, "weir_cluster_dropped_total"), 0, "{text}");
    assert_eq!((cols[8], cols[9]), ("0", "0"), "lost, duplicated: {text}");
}

/// A session whose client was connected when its node died expires counting from that
/// node's last heartbeat: the client, back elsewhere after the expiry interval, starts
/// afresh (and before it, resumes: the test above).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_dead_nodes_session_expires_from_its_last_heartbeat() {
    let nats = NatsCluster::start(1);
    let (mut w1, w2) = (node(&nats, "w1"), node(&nats, "w2"));
    let brief = |port, clean_start| {
        let mut o = persistent(port, "brief", clean_start);
        o.set_session_expiry_interval(Some(3));
        o
    };
    let (mut c, _) = C5::connect_with(brief(w1.port, true)).await;
    c.subscribe("brief/#", QoS::AtLeastOnce).await;
    w1.kill9();
    c.drop_connection();
    tokio::time::sleep(Duration::from_secs(5)).await;
    let (_c, ack) = C5::connect_with(brief(w2.port, false)).await;
    assert!(
        !ack.session_present,
        "expired 3 s after w1's last heartbeat"
    );
}

/// The records a dead node left of sessions that expired since are deleted by the nodes
/// that survive it (nobody else would), and only those: a session whose expiry is still
/// to come is resumed afterwards.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_survivors_delete_the_expired_records_a_dead_node_left() {
    let nats = NatsCluster::start(1);
    let live = "liveness_secs = 2";
    let mut w1 = node_with(&nats, "w1", live);
    let w2 = node_with(&nats, "w2", live);
    let session = |port, id, clean_start, expiry| {
        let mut o = persistent(port, id, clean_start);
        o.set_session_expiry_interval(Some(expiry));
        o
    };
    for (id, expiry) in [("short", 5), ("long", 3600)] {
        let (mut c, _) = C5::connect_with(session(w1.port, id, true, expiry)).await;
        c.subscribe("sweep/#", QoS::AtLeastOnce).await;
        c.disconnect().await;
    }
    // Both records written as disconnected, and killed well before w1 would end the
    // short session itself.
    tokio::time::sleep(Duration::from_secs(1)).await;
    w1.kill9();
    // w2 sweeps every ten liveness periods (20 s here).
    let deadline = std::time::Instant::now() + Duration::from_secs(60);
    while metric(&w2, "weir_cluster_records_swept_total") == 0 {
        assert!(
            std::time::Instant::now() < deadline,
            "w2 never deleted the expired record w1 left"
        );
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    assert_eq!(
        metric(&w2, "weir_cluster_records_swept_total"),
        1,
        "only the expired one"
    );
    let (_c, ack) = C5::connect_with(session(w2.port, "long", false, 3600)).await;
    assert!(
        ack.session_present,
        "the unexpired record stays and is resumed"
    );
}

/// Sends `numbers` as QoS 1 payloads to `topic`, each acknowledged before the next.
async fn send_numbered(p: &mut C5, topic: &str, numbers: std::ops::Range<usize>) {
    for i in numbers {
        p.send(topic, QoS::AtLeastOnce, false, i.to_string()).await;
        acked(p).await;
    }
}

/// A node restarted with `kill -9` (same name, same store): what it publishes after is
/// new to the other nodes and to JetStream (the numbers and message ids of its earlier
/// life are not taken again), and its offline session, back from its store, gets what
/// other nodes published while it was down.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_restarted_node_publishes_anew_and_catches_up_on_its_downtime() {
    let nats = NatsCluster::start(1);
    let (mut w1, w2, mut w3) = (node(&nats, "w1"), node(&nats, "w2"), node(&nats, "w3"));
    for (id, w, filter) in [("away", &w1, "down/#"), ("far", &w3, "again/#")] {
        let (mut c, _) = C5::connect_with(persistent(w.port, id, true)).await;
        c.subscribe(filter, QoS::AtLeastOnce).await;
        c.disconnect().await;
    }
    let (mut live, _) = C5::connect_with(persistent(w2.port, "live", true)).await;
    live.subscribe("again/#", QoS::AtLeastOnce).await;
    const N: usize = 50;
    let (mut p1, _) = C5::connect_with(C5::opts(w1.port, "p1")).await;
    send_numbered(&mut p1, "again/x", 0..N).await;
    assert_eq!(numbered(&mut live, N).await.len(), N);

    w1.kill9();
    p1.drop_connection();
    let (mut p2, _) = C5::connect_with(C5::opts(w2.port, "p2")).await;
    send_numbered(&mut p2, "down/x", 0..100).await;
    w1.restart();
    let (mut p1, _) = C5::connect_with(C5::opts(w1.port, "p1")).await;
    send_numbered(&mut p1, "again/x", N..2 * N).await;
    let got = numbered(&mut live, N).await;
    let missing: Vec<_> = (N..2 * N).filter(|i| !got.contains(i)).collect();
    assert!(
        missing.is_empty(),
        "w2 dropped w1's new messages: {missing:?}"
    );

    let (mut away, ack) = C5::connect_with(persistent(w1.port, "away", false)).await;
    assert!(ack.session_present);
    let got = numbered(&mut away, 100).await;
    let missing: Vec<_> = (0..100).filter(|i| !got.contains(i)).collect();
    assert!(
        missing.is_empty(),
        "published while w1 was down, lost: {missing:?}\n{}",
        w1.log()
    );

    // far's session resumes from its record: from the stream, which must hold w1's
    // messages of both lives.
    w3.kill9();
    let (mut far, ack) = C5::connect_with(persistent(w2.port, "far", false)).await;
    assert!(ack.session_present);
    let got = numbered(&mut far, 2 * N).await;
    let missing: Vec<_> = (0..2 * N).filter(|i| !got.contains(i)).collect();
    assert!(missing.is_empty(), "not in JetStream: {missing:?}");
}
