//! An MQTT load generator that measures end to end: every payload carries its
//! publisher, sequence number and send time, and subscribers report delivered msgs/s,
//! latency percentiles, and lost, duplicated and out-of-order messages.
//!
//!     load --port 1883 --scenario fan-in --qos 1 --payload 16 --messages 200000
//!     load --ceiling --scenario fan-in ...   (the same publishers into a sink that discards)
//!     load --port 1884 --sub-port 1885 ...   (publishers on one node, subscribers on another)
//!
//! It speaks MQTT 3.1.1 over raw TCP, so every broker can be measured with it.

use clap::{Parser, ValueEnum};
use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::io::{AsyncReadExt, AsyncWriteExt, BufWriter};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::Semaphore;
use weir_tests::raw::{frame, packet, string};

#[derive(Clone, Copy, ValueEnum, Debug)]
enum Scenario {
    /// Many publishers, one subscriber.
    FanIn,
    /// One publisher, many subscribers.
    FanOut,
    /// Publisher/subscriber pairs on distinct topics.
    P2p,
    /// Many publishers, a shared subscription of 4 members.
    Shared,
}

#[derive(Parser)]
struct Args {
    #[arg(long, default_value_t = 1883)]
    port: u16,
    /// Where the subscribers connect (default: `--port`). Another node of a cluster
    /// measures cross-node traffic.
    #[arg(long)]
    sub_port: Option<u16>,
    #[arg(long, value_enum)]
    scenario: Scenario,
    #[arg(long, default_value_t = 0)]
    qos: u8,
    /// Payload bytes (at least 14: id, sequence and timestamp).
    #[arg(long, default_value_t = 16)]
    payload: usize,
    /// Messages published in all.
    #[arg(long, default_value_t = 100_000)]
    messages: u64,
    /// Publishers (fan-in, shared), subscribers (fan-out) or pairs (p2p).
    #[arg(long, default_value_t = 100)]
    clients: usize,
    /// Give up waiting for deliveries after this long.
    #[arg(long, default_value_t = 30)]
    timeout_secs: u64,
    /// Messages per second published in all (0: as fast as the broker takes them).
    /// A fixed rate compares latency at the same load, not each broker at its own
    /// saturation.
    #[arg(long, default_value_t = 0)]
    rate: u64,
    /// Of the subscribers, this many (the last ones) read slowly: at most `--slow-rate`
    /// messages a second each. They get a row of their own; the main row is the rest.
    #[arg(long, default_value_t = 0)]
    slow: usize,
    #[arg(long, default_value_t = 1000)]
    slow_rate: u64,
    /// Measure the generator: publish into an in-process sink that discards.
    #[arg(long)]
    ceiling: bool,
    /// Label for the output row.
    #[arg(long, default_value = "")]
    label: String,
}

const INFLIGHT: usize = 100;

fn connect_packet(id: &str) -> Vec<u8> {
    let mut b = string("MQTT");
    b.extend_from_slice(&[4, 0x02, 0, 60]);
    b.extend(string(id));
    packet(0x10, &b)
}

async fn connect(port: u16, id: &str) -> TcpStream {
    let mut s = match TcpStream::connect(("127.0.0.1", port)).await {
        Ok(s) => s,
        Err(e) => {
            eprintln!("load: cannot connect to 127.0.0.1:{port}: {e}");
            std::process::exit(2);
        }
    };
    s.set_nodelay(true).unwrap();
    s.write_all(&connect_packet(id)).await.unwrap();
    let mut b = [0u8; 4];
    s.read_exact(&mut b).await.unwrap();
    assert_eq!((b[0], b[3]), (0x20, 0), "{id}: CONNACK refused");
    s
}

/// What one subscriber saw.
#[derive(Default)]
struct Seen {
    latencies_us: Vec<u32>,
    duplicated: u64,
    out_of_order: u64,
    /// (publisher, sequence) pairs, for loss across shared subscribers.
    unique: u64,
    /// When the last new message arrived, in ns on the run's clock. The run's duration
    /// ends here: subscribers that are done still wait for their next read to time out
    /// before they notice the others are done too, and that wait is not the broker's.
    last_ns: u64,
}

/// Bytes read from a connection and not yet split into MQTT packets.
struct Inbox {
    buf: Vec<u8>,
    chunk: Vec<u8>,
}

impl Inbox {
    fn new(chunk: usize) -> Inbox {
        Inbox {
            buf: Vec::with_capacity(chunk),
            chunk: vec![0; chunk],
        }
    }

    /// Reads once more into the buffer; false at the end of the stream or on an error.
    async fn fill(&mut self, rd: &mut (impl AsyncReadExt + Unpin)) -> bool {
        match rd.read(&mut self.chunk).await {
            Ok(0) | Err(_) => false,
            Ok(n) => {
                self.buf.extend_from_slice(&self.chunk[..n]);
                true
            }
        }
    }
}

struct Shared {
    start: Instant,
    received: AtomicU64,
    /// Subscribers whose SUBACK came: publishing starts once all have one.
    subscribed: AtomicU64,
}

/// One subscriber's part of a run.
struct Subscribing {
    port: u16,
    id: String,
    filter: String,
    qos: u8,
    /// Messages all subscribers together are to receive.
    expected: u64,
    deadline: Instant,
    /// Read at most this many messages a second.
    rate_cap: Option<u64>,
}

async fn subscriber(how: Subscribing, shared: Arc<Shared>) -> Seen {
    let Subscribing {
        port,
        id,
        filter,
        qos,
        expected,
        deadline,
        rate_cap,
    } = how;
    let mut first: Option<Instant> = None;
    let s = connect(port, &id).await;
    let (mut rd, wr) = s.into_split();
    let mut wr = BufWriter::new(wr);
    let mut sub = vec![0, 1];
    sub.extend(string(&filter));
    sub.push(qos);
    wr.write_all(&packet(0x82, &sub)).await.unwrap();
    wr.flush().await.unwrap();
    let mut seen = Seen::default();
    let mut last: HashMap<u16, u32> = HashMap::new();
    let mut got: HashMap<u16, Vec<u64>> = HashMap::new();
    let mut inbox = Inbox::new(256 * 1024);
    while shared.received.load(Ordering::Relaxed) < expected {
        let left = deadline.saturating_duration_since(Instant::now());
        match tokio::time::timeout(left.min(Duration::from_millis(50)), inbox.fill(&mut rd)).await {
            Ok(false) => break,
            Ok(true) => {}
            Err(_) if Instant::now() >= deadline => break,
            Err(_) => continue,
        }
        let buf = &mut inbox.buf;
        let mut at = 0;
        let now = shared.start.elapsed().as_nanos() as u64;
        while let Some((h, len)) = frame(&buf[at..]) {
            let p = &buf[at + h..at + h + len];
            if buf[at] >> 4 == 9 {
                shared.subscribed.fetch_add(1, Ordering::Relaxed);
            }
            if buf[at] >> 4 == 3 {
                let q = (buf[at] >> 1) & 3;
                let tl = u16::from_be_bytes([p[0], p[1]]) as usize;
                let mut off = 2 + tl;
                if q > 0 {
                    wr.write_all(&[0x40, 2, p[off], p[off + 1]]).await.unwrap();
                    off += 2;
                }
                let pl = &p[off..];
                let publisher = u16::from_be_bytes([pl[0], pl[1]]);
                let seq = u32::from_be_bytes([pl[2], pl[3], pl[4], pl[5]]);
                let sent = u64::from_be_bytes(pl[6..14].try_into().unwrap());
                seen.latencies_us
                    .push((now.saturating_sub(sent) / 1000).min(u32::MAX as u64) as u32);
                let bits = got.entry(publisher).or_default();
                let (word, bit) = (seq as usize / 64, seq % 64);
                if bits.len() <= word {
                    bits.resize(word + 1, 0);
                }
                if bits[word] & (1 << bit) != 0 {
                    seen.duplicated += 1;
                } else {
                    bits[word] |= 1 << bit;
                    seen.unique += 1;
                    seen.last_ns = now;
                    shared.received.fetch_add(1, Ordering::Relaxed);
                }
                if last.get(&publisher).is_some_and(|l| seq < *l) {
                    seen.out_of_order += 1;
                }
                last.insert(publisher, seq);
            }
            at += h + len;
        }
        buf.drain(..at);
        wr.flush().await.unwrap();
        if let Some(cap) = rate_cap {
            // A slow reader: no faster than `cap` messages a second since its first.
            let taken = seen.unique + seen.duplicated;
            let since = *first.get_or_insert_with(Instant::now);
            let due = since + Duration::from_secs_f64(taken as f64 / cap as f64);
            if due > Instant::now() && due < deadline {
                tokio::time::sleep_until(due.into()).await;
            }
        }
    }
    seen
}

/// What every publisher of a run does alike.
#[derive(Clone, Copy)]
struct Publishing {
    qos: u8,
    payload: usize,
    /// Messages per publisher.
    count: u64,
    /// The run's clock, for the send times in payloads.
    start: Instant,
    /// Time between two messages of one publisher, for a fixed rate.
    interval: Option<Duration>,
}

async fn publisher(port: u16, idx: u16, topic: String, how: Publishing) {
    let Publishing {
        qos,
        payload,
        count,
        start,
        interval,
    } = how;
    let s = connect(port, &format!("bench-pub-{idx}")).await;
    let (mut rd, wr) = s.into_split();
    let mut wr = BufWriter::with_capacity(64 * 1024, wr);
    let window = Arc::new(Semaphore::new(INFLIGHT));
    let acks = (qos > 0).then(|| {
        let window = window.clone();
        tokio::spawn(async move {
            let mut inbox = Inbox::new(16 * 1024);
            let mut acked = 0;
            while acked < count {
                if !inbox.fill(&mut rd).await {
                    return;
                }
                let buf = &mut inbox.buf;
                let mut at = 0;
                while let Some((h, len)) = frame(&buf[at..]) {
                    if buf[at] >> 4 == 4 {
                        acked += 1;
                        window.add_permits(1);
                    }
                    at += h + len;
                }
                buf.drain(..at);
            }
        })
    });
    let mut body = string(&topic);
    let head = body.len();
    let begin = tokio::time::Instant::now();
    for seq in 0..count {
        if let Some(iv) = interval {
            let due = begin + iv * seq as u32;
            if tokio::time::Instant::now() < due {
                wr.flush().await.unwrap();
                tokio::time::sleep_until(due).await;
            }
        }
        body.truncate(head);
        if qos > 0 {
            let pid = (seq % 65535 + 1) as u16;
            body.extend_from_slice(&pid.to_be_bytes());
        }
        body.extend_from_slice(&idx.to_be_bytes());
        body.extend_from_slice(&(seq as u32).to_be_bytes());
        body.extend_from_slice(&(start.elapsed().as_nanos() as u64).to_be_bytes());
        body.resize(body.len() + payload.saturating_sub(14), b'x');
        if qos > 0 {
            match window.try_acquire() {
                Ok(p) => p.forget(),
                Err(_) => {
                    wr.flush().await.unwrap();
                    window.acquire().await.unwrap().forget();
                }
            }
        }
        wr.write_all(&packet(0x30 | (qos << 1), &body))
            .await
            .unwrap();
    }
    wr.flush().await.unwrap();
    if let Some(a) = acks {
        let _ = tokio::time::timeout(Duration::from_secs(30), a).await;
    }
}

/// A broker stand-in that acknowledges and discards, counting PUBLISH packets.
async fn sink(counter: Arc<AtomicU64>) -> u16 {
    let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = l.local_addr().unwrap().port();
    tokio::spawn(async move {
        while let Ok((mut s, _)) = l.accept().await {
            let counter = counter.clone();
            tokio::spawn(async move {
                let mut inbox = Inbox::new(256 * 1024);
                loop {
                    if !inbox.fill(&mut s).await {
                        return;
                    }
                    let buf = &mut inbox.buf;
                    let mut at = 0;
                    let mut out = Vec::new();
                    while let Some((h, len)) = frame(&buf[at..]) {
                        match buf[at] >> 4 {
                            1 => out.extend_from_slice(&[0x20, 2, 0, 0]),
                            3 => {
                                counter.fetch_add(1, Ordering::Relaxed);
                                if (buf[at] >> 1) & 3 > 0 {
                                    let tl =
                                        u16::from_be_bytes([buf[at + h], buf[at + h + 1]]) as usize;
                                    let pid = &buf[at + h + 2 + tl..at + h + 4 + tl];
                                    out.extend_from_slice(&[0x40, 2, pid[0], pid[1]]);
                                }
                            }
                            _ => {}
                        }
                        at += h + len;
                    }
                    buf.drain(..at);
                    if !out.is_empty() && s.write_all(&out).await.is_err() {
                        return;
                    }
                }
            });
        }
    });
    port
}

fn pct(sorted: &[u32], q: f64) -> u32 {
    if sorted.is_empty() {
        return 0;
    }
    sorted[((sorted.len() as f64 * q) as usize).min(sorted.len() - 1)]
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() {
    let a = Args::parse();
    assert!(a.payload >= 14, "--payload must be at least 14 bytes");
    let start = Instant::now();
    let (pubs, subs): (usize, usize) = match a.scenario {
        Scenario::FanIn | Scenario::Shared => (
            a.clients,
            if matches!(a.scenario, Scenario::Shared) {
                4
            } else {
                1
            },
        ),
        Scenario::FanOut => (1, a.clients),
        Scenario::P2p => (a.clients, a.clients),
    };
    let per_pub = (a.messages / pubs as u64).max(1);
    let published = per_pub * pubs as u64;
    let (expected, subscriptions): (u64, Vec<(String, String)>) = match a.scenario {
        Scenario::FanIn => (published, vec![("bench-sub-0".into(), "bench/#".into())]),
        Scenario::Shared => (
            published,
            (0..subs)
                .map(|i| (format!("bench-sub-{i}"), "$share/g/bench/#".to_string()))
                .collect(),
        ),
        Scenario::FanOut => (
            published * subs as u64,
            (0..subs)
                .map(|i| (format!("bench-sub-{i}"), "bench/all".to_string()))
                .collect(),
        ),
        Scenario::P2p => (
            published,
            (0..subs)
                .map(|i| (format!("bench-sub-{i}"), format!("bench/{i}")))
                .collect(),
        ),
    };
    let topic = |i: usize| match a.scenario {
        Scenario::FanOut => "bench/all".to_string(),
        _ => format!("bench/{i}"),
    };
    // Every publisher at once, into `port`; returns when all have sent everything.
    let how = Publishing {
        qos: a.qos,
        payload: a.payload,
        count: per_pub,
        start,
        interval: (a.rate > 0).then(|| Duration::from_secs_f64(pubs as f64 / a.rate as f64)),
    };
    let publish_all = |port: u16| {
        let tasks: Vec<_> = (0..pubs)
            .map(|i| tokio::spawn(publisher(port, i as u16, topic(i), how)))
            .collect();
        async move {
            for t in tasks {
                let _ = t.await;
            }
        }
    };

    if a.ceiling {
        let counter = Arc::new(AtomicU64::new(0));
        let port = sink(counter.clone()).await;
        let t0 = Instant::now();
        publish_all(port).await;
        while counter.load(Ordering::Relaxed) < published
            && t0.elapsed() < Duration::from_secs(a.timeout_secs)
        {
            tokio::time::sleep(Duration::from_millis(1)).await;
        }
        let rate = counter.load(Ordering::Relaxed) as f64 / t0.elapsed().as_secs_f64();
        println!("| {:<10} | ceiling {:?} | qos {} | {:>5} B | {:>10.0} msgs/s published into a discarding sink |", a.label, a.scenario, a.qos, a.payload, rate);
        return;
    }

    let shared = Arc::new(Shared {
        start,
        received: AtomicU64::new(0),
        subscribed: AtomicU64::new(0),
    });
    let deadline = Instant::now() + Duration::from_secs(a.timeout_secs);
    let mut sub_tasks = Vec::new();
    let first_slow = subscriptions.len().saturating_sub(a.slow);
    for (i, (id, filter)) in subscriptions.into_iter().enumerate() {
        let how = Subscribing {
            port: a.sub_port.unwrap_or(a.port),
            id,
            filter,
            qos: a.qos,
            expected,
            deadline,
            rate_cap: (i >= first_slow).then_some(a.slow_rate),
        };
        sub_tasks.push(tokio::spawn(subscriber(how, shared.clone())));
    }
    // Subscriptions are made before anyone publishes: every SUBACK is in (a broker
    // may answer SUBSCRIBE only once its subscription is in effect everywhere).
    let subs = sub_tasks.len() as u64;
    while shared.subscribed.load(Ordering::Relaxed) < subs && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let t0 = Instant::now();
    publish_all(a.port).await;
    let (mut fast, mut slow) = (Seen::default(), Seen::default());
    for (i, t) in sub_tasks.into_iter().enumerate() {
        if let Ok(s) = t.await {
            let all = if i >= first_slow {
                &mut slow
            } else {
                &mut fast
            };
            all.latencies_us.extend(s.latencies_us);
            all.duplicated += s.duplicated;
            all.out_of_order += s.out_of_order;
            all.unique += s.unique;
            all.last_ns = all.last_ns.max(s.last_ns);
        }
    }
    let t0_ns = t0.duration_since(start).as_nanos() as u64;
    // Fan-out: each subscriber is to get every message; otherwise the subscribers
    // share them, and slow ones are not asked for (--slow is for fan-out).
    let per_sub = expected / subs.max(1);
    let n_slow = (subs as usize - first_slow) as u64;
    let scenario = format!("{:?}", a.scenario);
    print_row(&a, &scenario, &mut fast, expected - per_sub * n_slow, t0_ns);
    if n_slow > 0 {
        print_row(
            &a,
            &format!("{scenario}-slow"),
            &mut slow,
            per_sub * n_slow,
            t0_ns,
        );
    }
}

/// One table row: delivered msgs/s, latency percentiles, lost, duplicated, out of order.
fn print_row(a: &Args, scenario: &str, all: &mut Seen, expected: u64, t0_ns: u64) {
    let took = all.last_ns.saturating_sub(t0_ns).max(1) as f64 / 1e9;
    all.latencies_us.sort_unstable();
    let delivered = all.unique;
    println!(
        "| {:<10} | {} | qos {} | {:>5} B | {:>10.0} | {:>8} | {:>8} | {:>8} | {:>8} | {:>5} | {:>5} |",
        a.label,
        scenario,
        a.qos,
        a.payload,
        delivered as f64 / took,
        pct(&all.latencies_us, 0.5),
        pct(&all.latencies_us, 0.99),
        all.latencies_us.last().copied().unwrap_or(0),
        expected.saturating_sub(delivered),
        all.duplicated,
        all.out_of_order,
    );
}
