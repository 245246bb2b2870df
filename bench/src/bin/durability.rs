//! What durability costs: QoS 1 publishes into a persistent session, acknowledged one at
//! a time (latency) and pipelined (throughput), for each storage setting.
//!
//!     cargo build --release -p weir && WEIR_BIN=target/release/weir \
//!         cargo run --release -p weir-bench --bin durability

use rumqttc::v5::mqttbytes::QoS;
use rumqttc::v5::Incoming;
use std::time::{Duration, Instant};
use weir_tests::clients::C5;
use weir_tests::{Opts, Weir};

const SEQUENTIAL: usize = 500;
const PIPELINED: usize = 20_000;

async fn acked(c: &mut C5) {
    loop {
        match c.next(Duration::from_secs(10)).await {
            Some(Ok(Incoming::PubAck(_))) => return,
            Some(Ok(_)) => {}
            other => panic!("waiting for PUBACK: {other:?}"),
        }
    }
}

async fn measure(name: &str, storage: &str) {
    let w = Weir::with(Opts {
        storage: storage.into(),
        ..Default::default()
    });
    // A persistent subscriber that is offline: every message is queued and, with
    // persistence on, stored before it is acknowledged.
    let mut o = C5::opts(w.port, "sink");
    o.set_session_expiry_interval(Some(3600));
    let (mut s, _) = C5::connect_with(o).await;
    s.subscribe("d/#", QoS::AtLeastOnce).await;
    s.disconnect().await;
    let mut o = C5::opts(w.port, "pub");
    o.set_outgoing_inflight_upper_limit(100);
    o.set_max_packet_size(Some(1 << 20));
    let (mut p, _) = C5::connect_with(o).await;
    let payload = vec![b'x'; 64];

    let mut lat = Vec::with_capacity(SEQUENTIAL);
    for _ in 0..SEQUENTIAL {
        let t = Instant::now();
        p.client
            .publish("d/x", QoS::AtLeastOnce, false, payload.clone())
            .await
            .unwrap();
        acked(&mut p).await;
        lat.push(t.elapsed());
    }
    lat.sort();
    let pct = |q: f64| lat[((lat.len() as f64 * q) as usize).min(lat.len() - 1)];

    let t = Instant::now();
    let client = p.client.clone();
    let pl = payload.clone();
    let sender = tokio::spawn(async move {
        for _ in 0..PIPELINED {
            client
                .publish("d/y", QoS::AtLeastOnce, false, pl.clone())
                .await
                .unwrap();
        }
    });
    for _ in 0..PIPELINED {
        acked(&mut p).await;
    }
    sender.await.unwrap();
    let rate = PIPELINED as f64 / t.elapsed().as_secs_f64();
    println!(
        "| {name:<24} | {:>10.2} | {:>10.2} | {:>16.0} |",
        pct(0.5).as_secs_f64() * 1e3,
        pct(0.99).as_secs_f64() * 1e3,
        rate
    );
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() {
    println!("QoS 1, 64-byte payload, into one offline persistent session");
    println!("| storage                  | ack p50 ms | ack p99 ms | pipelined msgs/s |");
    println!("|--------------------------|-----------:|-----------:|-----------------:|");
    measure("durability = \"sync\"", "durability = \"sync\"").await;
    measure("durability = \"periodic\"", "durability = \"periodic\"").await;
    measure("persistence = false", "persistence = false").await;
}
