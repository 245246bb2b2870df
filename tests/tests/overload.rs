//! Overload: publishers faster than the subscriber they feed. With the default
//! configuration the broker slows the publishers (it stops reading them while the
//! subscriber's queue is over `queue_high_water`) instead of accepting messages only to
//! drop them. Speed is measured by `bench/compare`; here only loss and memory count.

use rumqttc as m;
use std::collections::HashSet;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use weir_tests::raw::{connect, packet, string, Raw, CLEAN};
use weir_tests::Weir;

const DROPPED_QUEUE_FULL: &str = "weir_dropped_messages_total{cause=\"queue_full\"}";

/// What the subscriber saw: each (publisher, sequence) once, and the latencies.
#[derive(Default)]
struct Seen {
    unique: HashSet<(u16, u32)>,
    duplicates: u64,
    /// Messages that came after a later one of the same publisher.
    out_of_order: u64,
    last: std::collections::HashMap<u16, u32>,
    latencies_us: Vec<u64>,
}

/// Payload: publisher, sequence, microseconds since `t0` at the publish call.
fn payload(publisher: u16, seq: u32, t0: Instant) -> Vec<u8> {
    let mut p = publisher.to_be_bytes().to_vec();
    p.extend_from_slice(&seq.to_be_bytes());
    p.extend_from_slice(&(t0.elapsed().as_micros() as u64).to_be_bytes());
    p
}

impl Seen {
    fn note(&mut self, p: &[u8], t0: Instant) {
        let publisher = u16::from_be_bytes([p[0], p[1]]);
        let seq = u32::from_be_bytes([p[2], p[3], p[4], p[5]]);
        let sent = u64::from_be_bytes(p[6..14].try_into().unwrap());
        self.latencies_us
            .push((t0.elapsed().as_micros() as u64).saturating_sub(sent));
        if !self.unique.insert((publisher, seq)) {
            self.duplicates += 1;
        }
        if self.last.insert(publisher, seq).is_some_and(|l| l > seq) {
            self.out_of_order += 1;
        }
    }

    fn p99_ms(&mut self) -> f64 {
        self.latencies_us.sort_unstable();
        let i = (self.latencies_us.len() * 99 / 100).min(self.latencies_us.len() - 1);
        self.latencies_us[i] as f64 / 1000.0
    }
}

/// One subscriber to `flood/#`; with `pause_every`, slower than any publisher: it pauses
/// 1 ms after that many messages (rumqttc acknowledges as it reads, so its window stays
/// full meanwhile).
fn subscriber(
    port: u16,
    qos: m::QoS,
    pause_every: Option<u64>,
    t0: Instant,
) -> (Arc<Mutex<Seen>>, Arc<AtomicBool>) {
    subscriber_named("sub", port, qos, pause_every, t0)
}

fn subscriber_named(
    id: &str,
    port: u16,
    qos: m::QoS,
    pause_every: Option<u64>,
    t0: Instant,
) -> (Arc<Mutex<Seen>>, Arc<AtomicBool>) {
    let seen = Arc::new(Mutex::new(Seen::default()));
    let subscribed = Arc::new(AtomicBool::new(false));
    let mut o = m::MqttOptions::new(id, "127.0.0.1", port);
    o.set_keep_alive(Duration::from_secs(60));
    o.set_max_packet_size(4096, 4096);
    let (client, mut events) = m::AsyncClient::new(o, 10);
    let (s, ok) = (seen.clone(), subscribed.clone());
    tokio::spawn(async move {
        client.subscribe("flood/#", qos).await.unwrap();
        let mut n = 0u64;
        loop {
            match events.poll().await {
                Ok(m::Event::Incoming(m::Incoming::SubAck(_))) => ok.store(true, Ordering::SeqCst),
                Ok(m::Event::Incoming(m::Incoming::Publish(p))) => {
                    s.lock().unwrap().note(&p.payload, t0);
                    n += 1;
                    if pause_every.is_some_and(|every| n.is_multiple_of(every)) {
                        tokio::time::sleep(Duration::from_millis(1)).await;
                    }
                }
                Ok(_) => {}
                // The broker stopped at the end of the test, or the test failed.
                Err(_) => return,
            }
        }
    });
    (seen, subscribed)
}

/// One rumqttc publisher sending `count` QoS 1 messages (`pad` bytes more than the
/// 14 that identify each) as fast as its window allows; adds each PUBACK to `acked`.
async fn qos1_publisher(
    port: u16,
    idx: u16,
    count: u32,
    pad: usize,
    t0: Instant,
    acked: Arc<AtomicU64>,
) {
    let mut o = m::MqttOptions::new(format!("flood-{idx}"), "127.0.0.1", port);
    o.set_keep_alive(Duration::from_secs(60));
    o.set_inflight(100);
    let (client, mut events) = m::AsyncClient::new(o, 100);
    let topic = format!("flood/{idx}");
    let sender = tokio::spawn(async move {
        for seq in 0..count {
            let mut p = payload(idx, seq, t0);
            p.resize(p.len() + pad, b'x');
            client
                .publish(&topic, m::QoS::AtLeastOnce, false, p)
                .await
                .unwrap();
        }
        client
    });
    let mut mine = 0;
    while mine < count {
        match events.poll().await {
            Ok(m::Event::Incoming(m::Incoming::PubAck(_))) => {
                mine += 1;
                acked.fetch_add(1, Ordering::Relaxed);
            }
            Ok(_) => {}
            Err(e) => panic!("publisher {idx}: {e}"),
        }
    }
    let client = sender.await.unwrap();
    let _ = client.disconnect().await;
}

/// Samples the broker's resident memory until `done`; the peak.
fn watch_memory(w: &Weir, done: Arc<AtomicBool>) -> std::thread::JoinHandle<u64> {
    let pid = w.pid();
    std::thread::spawn(move || {
        let mut peak = 0;
        while !done.load(Ordering::SeqCst) {
            if let Ok(s) = std::fs::read_to_string(format!("/proc/{pid}/status")) {
                let kb = s
                    .lines()
                    .find_map(|l| l.strip_prefix("VmRSS:"))
                    .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<u64>().ok());
                peak = peak.max(kb.unwrap_or(0) * 1024);
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        peak
    })
}

async fn wait_for(what: &str, limit: Duration, mut done: impl FnMut() -> bool) {
    let end = Instant::now() + limit;
    while !done() {
        assert!(Instant::now() < end, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Waits until the subscriber has `total` messages, or has had no new one for 5 s.
async fn delivered(seen: &Mutex<Seen>, total: usize) -> usize {
    let (mut last, mut since) = (0, Instant::now());
    loop {
        let n = seen.lock().unwrap().unique.len();
        if n >= total || since.elapsed() > Duration::from_secs(5) {
            return n;
        }
        if n != last {
            (last, since) = (n, Instant::now());
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn fifty_qos1_publishers_into_one_subscriber_lose_nothing_acknowledged() {
    const PUBLISHERS: u16 = 50;
    const EACH: u32 = 600;
    let total = PUBLISHERS as usize * EACH as usize;
    let w = Weir::start();
    let t0 = Instant::now();
    let (seen, subscribed) = subscriber(w.port, m::QoS::AtLeastOnce, None, t0);
    wait_for("SUBACK", Duration::from_secs(10), || {
        subscribed.load(Ordering::SeqCst)
    })
    .await;

    let done = Arc::new(AtomicBool::new(false));
    let memory = watch_memory(&w, done.clone());
    let acked = Arc::new(AtomicU64::new(0));
    let publishers: Vec<_> = (0..PUBLISHERS)
        .map(|i| tokio::spawn(qos1_publisher(w.port, i, EACH, 0, t0, acked.clone())))
        .collect();
    for p in publishers {
        tokio::time::timeout(Duration::from_secs(180), p)
            .await
            .expect("publishers done within 3 minutes")
            .unwrap();
    }
    assert_eq!(acked.load(Ordering::Relaxed), total as u64);
    let got = delivered(&seen, total).await;
    done.store(true, Ordering::SeqCst);
    let peak = memory.join().unwrap();

    let mut seen = seen.lock().unwrap();
    let p99 = seen.p99_ms();
    println!(
        "flood: {total} QoS 1 messages from {PUBLISHERS} publishers, {got} delivered; {} duplicates; p99 {p99:.1} ms from the publish call; peak RSS {} MiB",
        seen.duplicates,
        peak >> 20
    );
    let dropped = w.metric(DROPPED_QUEUE_FULL);
    assert_eq!(
        (got, dropped),
        (total, 0),
        "delivered, dropped at a full queue"
    );
    assert!(peak < 256 << 20, "peak RSS {} MiB", peak >> 20);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_qos0_flood_is_slowed_not_accepted_and_dropped() {
    const PUBLISHERS: u16 = 10;
    const EACH: u32 = 4_000;
    let total = PUBLISHERS as usize * EACH as usize;
    let w = Weir::start();
    let t0 = Instant::now();
    let (seen, subscribed) = subscriber(w.port, m::QoS::AtMostOnce, Some(10), t0);
    wait_for("SUBACK", Duration::from_secs(10), || {
        subscribed.load(Ordering::SeqCst)
    })
    .await;

    // Raw publishers, each writing its messages in large batches: as fast as TCP takes them.
    let port = w.port;
    let publishers: Vec<_> = (0..PUBLISHERS)
        .map(|i| {
            std::thread::spawn(move || {
                let mut r = Raw::connect(port);
                r.send(&connect(4, &format!("flood0-{i}"), CLEAN, 60, &[]));
                assert_eq!(r.recv().expect("CONNACK")[3], 0);
                let mut batch = Vec::new();
                for seq in 0..EACH {
                    let mut body = string(&format!("flood/{i}"));
                    body.extend(payload(i, seq, t0));
                    // Large enough that the backlog cannot hide in the sockets' buffers.
                    body.resize(body.len() + 1000, b'x');
                    batch.extend(packet(0x30, &body));
                    if batch.len() > 16 * 1024 {
                        r.send(&batch);
                        batch.clear();
                    }
                }
                r.send(&batch);
                r.send(&[0xE0, 0]);
                let _ = r.closed();
            })
        })
        .collect();
    for p in publishers {
        p.join().unwrap();
    }
    let got = delivered(&seen, total).await;
    let dropped = w.metric(DROPPED_QUEUE_FULL);
    assert_eq!(
        (got, dropped),
        (total, 0),
        "delivered, dropped at a full queue"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn one_slow_subscriber_spills_to_disk_and_slows_nobody() {
    const COUNT: u32 = 20_000;
    let total = COUNT as usize;
    let w = Weir::start();
    let t0 = Instant::now();
    let slow = subscriber_named("slow", w.port, m::QoS::AtLeastOnce, Some(5), t0);
    let fast: Vec<_> = (0..3)
        .map(|i| subscriber_named(&format!("fast-{i}"), w.port, m::QoS::AtLeastOnce, None, t0))
        .collect();
    for (_, subscribed) in fast.iter().chain([&slow]) {
        wait_for("SUBACK", Duration::from_secs(10), || {
            subscribed.load(Ordering::SeqCst)
        })
        .await;
    }
    let acked = Arc::new(AtomicU64::new(0));
    let publisher = tokio::spawn(qos1_publisher(w.port, 0, COUNT, 1000, t0, acked.clone()));

    // Every fast subscriber has everything while the slow one is still far behind,
    // part of its queue on disk.
    let mut spilled_peak = 0;
    let mut fast_done = None;
    let end = Instant::now() + Duration::from_secs(180);
    while Instant::now() < end {
        spilled_peak = spilled_peak.max(w.metric("weir_spilled_messages"));
        let all_fast = fast
            .iter()
            .all(|(s, _)| s.lock().unwrap().unique.len() >= total);
        if all_fast && fast_done.is_none() {
            fast_done = Some((t0.elapsed(), slow.0.lock().unwrap().unique.len()));
        }
        if all_fast && slow.0.lock().unwrap().unique.len() >= total {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    publisher.await.unwrap();
    let slow_done = t0.elapsed();
    let got = delivered(&slow.0, total).await;
    let dropped = w.metric(DROPPED_QUEUE_FULL);
    let (fast_at, slow_then) = fast_done.expect("the fast subscribers got everything");
    println!(
        "fan-out with one slow subscriber: fast ones done at {fast_at:?} (the slow one had {slow_then}), the slow one at {slow_done:?}; up to {spilled_peak} messages on disk"
    );
    assert_eq!(acked.load(Ordering::Relaxed), COUNT as u64);
    assert_eq!(
        (got, dropped),
        (total, 0),
        "the slow one: delivered, dropped"
    );
    assert_eq!(slow.0.lock().unwrap().out_of_order, 0, "drained in order");
    assert!(
        spilled_peak > 0,
        "the slow subscriber's queue never spilled"
    );
    assert!(
        slow_then < total * 9 / 10,
        "the fast subscribers went at the slow one's pace"
    );
    assert_eq!(w.metric("weir_spilled_messages"), 0, "all read back");
}

/// A subscriber that never reads holds its publisher only until it is seen to take
/// nothing (2 s): then the publisher goes on, and the stuck one's queue takes what it
/// can (on disk, then by the overflow policy). Without that, a client that stops
/// reading, or two clients each waiting for the other to read, would hold publishers
/// for ever.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_subscriber_that_reads_nothing_holds_its_publisher_only_for_a_while() {
    const COUNT: u32 = 5_000;
    let w = Weir::start();
    let mut stuck = Raw::connect(w.port);
    stuck.send(&connect(4, "stuck", CLEAN, 0, &[]));
    assert_eq!(stuck.recv().expect("CONNACK")[3], 0);
    let mut sub = vec![0, 1];
    sub.extend(string("flood/#"));
    sub.push(1);
    stuck.send(&packet(0x82, &sub));
    assert_eq!(stuck.recv().expect("SUBACK")[0], 0x90);
    // From here on it reads nothing.
    let t0 = Instant::now();
    let acked = Arc::new(AtomicU64::new(0));
    let publisher = tokio::spawn(qos1_publisher(w.port, 0, COUNT, 1000, t0, acked.clone()));
    tokio::time::timeout(Duration::from_secs(120), publisher)
        .await
        .expect("the publisher was let go")
        .unwrap();
    assert_eq!(acked.load(Ordering::Relaxed), COUNT as u64);
    println!(
        "a subscriber that reads nothing: its publisher done in {:?}",
        t0.elapsed()
    );
    drop(stuck);
}
