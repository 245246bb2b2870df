//! What the hooks of `weir:plugin@0.2.0` cost a running broker: a `deliver` hook on a
//! 1 -> 100 fan-out (per delivered message), and events to an observer plugin (how many
//! a second it takes, and whether clients slow down meanwhile). Raw MQTT clients over
//! loopback, each on a thread of its own, so the clients are not what is measured;
//! Weir with its default configuration besides the plugin.
//!
//!     cargo build --release -p weir && WEIR_BIN=target/release/weir \
//!         cargo run --release -p weir-bench --bin hooks
//!
//! `FANOUT_MESSAGES` (default 50 000, each to 100 subscribers), `CHURN_SECS` (default 10),
//! `CHURN_RATE` (default 500 cycles/s per client, the paced runs) and `ROUNDS`
//! (default 3) size the runs; `ONLY=deliver` or `ONLY=events` runs one part.

use std::io::{Read, Write};
use std::net::TcpStream;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering::Relaxed};
use std::sync::Arc;
use std::time::{Duration, Instant};
use weir_tests::http::request;
use weir_tests::raw::{connect, count_publishes, packet, string, varint};
use weir_tests::{plugins, setting, Opts, Weir};

const SUBSCRIBERS: usize = 100;
const CHURNERS: usize = 8;

fn plugin(name: &str, wasm: &str, config: &str) -> String {
    format!(
        "[[plugin]]\nname = {name:?}\npath = {:?}\n[plugin.config]\n{config}\n",
        plugins::wasm(wasm)
    )
}

/// The sum of a metric's samples (every label set).
fn metric(w: &Weir, name: &str) -> u64 {
    let (_, body) = request(w.admin_port, "GET", "/metrics", None);
    body.lines()
        .filter(|l| l.starts_with(name) && l[name.len()..].starts_with([' ', '{']))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<u64>().ok())
        .sum()
}

/// A 5.0 client that connected (CONNACK read).
fn client(port: u16, id: &str) -> TcpStream {
    let mut s = TcpStream::connect(("127.0.0.1", port)).unwrap();
    s.set_nodelay(true).unwrap();
    s.write_all(&connect(5, id, 0x02, 60, &[])).unwrap();
    let mut ack = [0u8; 64];
    let _ = s.read(&mut ack).unwrap();
    s
}

/// Subscribes to `fan/#` at QoS 0, says it is ready, and counts PUBLISH packets until
/// `want` arrived or nothing came for 3 s: how many, and when the first and last came.
fn fan_subscriber(
    port: u16,
    i: usize,
    want: usize,
    ready: std::sync::mpsc::Sender<()>,
) -> (usize, Instant, Instant) {
    let mut s = client(port, &format!("sub-{i}"));
    let mut sub = vec![0, 1, 0];
    sub.extend(string("fan/#"));
    sub.push(0);
    s.write_all(&packet(0x82, &sub)).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(3))).unwrap();
    let mut suback = false;
    let c = count_publishes(&mut s, want, |kind| {
        if kind == 9 && !suback {
            suback = true;
            let _ = ready.send(());
        }
    });
    (c.publishes, c.first.unwrap_or(c.last), c.last)
}

/// A QoS 0 PUBLISH to `fan/x` of 64 bytes, with a user property `redact` if asked (the
/// `audience` plugin then replaces every copy: a new answer for each delivery).
fn fan_message(redact: bool) -> Vec<u8> {
    let mut body = string("fan/x");
    let mut props = Vec::new();
    if redact {
        props.push(0x26);
        props.extend(string("redact"));
        props.extend(string("1"));
    }
    body.extend(varint(props.len()));
    body.extend(props);
    body.extend_from_slice(&[b'x'; 64]);
    packet(0x30, &body)
}

/// One fan-out run: (deliveries, expected, deliveries/s).
fn fan_out(opts: Opts, messages: usize, redact: bool) -> (usize, usize, f64) {
    let w = Weir::with(opts);
    let port = w.port;
    let (tx, rx) = std::sync::mpsc::channel();
    let subs: Vec<_> = (0..SUBSCRIBERS)
        .map(|i| {
            let tx = tx.clone();
            std::thread::spawn(move || fan_subscriber(port, i, messages, tx))
        })
        .collect();
    for _ in 0..SUBSCRIBERS {
        rx.recv_timeout(Duration::from_secs(20))
            .expect("subscribers ready");
    }
    let mut p = client(port, "fan-publisher");
    let one = fan_message(redact);
    let batch: Vec<u8> = one.iter().copied().cycle().take(one.len() * 100).collect();
    for _ in 0..messages / 100 {
        p.write_all(&batch).unwrap();
    }
    let mut delivered = 0;
    let (mut first, mut last): (Option<Instant>, Option<Instant>) = (None, None);
    for s in subs {
        let (got, f, l) = s.join().unwrap();
        delivered += got;
        first = Some(first.map_or(f, |x| x.min(f)));
        last = Some(last.map_or(l, |x| x.max(l)));
    }
    let took = last.unwrap() - first.unwrap();
    drop(p);
    (
        delivered,
        messages * SUBSCRIBERS,
        delivered as f64 / took.as_secs_f64(),
    )
}

fn deliver_part(rounds: usize) {
    let messages = setting("FANOUT_MESSAGES", 50_000).div_ceil(100).max(1) * 100;
    println!(
        "\n`deliver` on a fan-out: 1 publisher -> {SUBSCRIBERS} subscribers of `fan/#`, QoS 0, 64 B, {messages} messages ({} deliveries):\n",
        messages * SUBSCRIBERS
    );
    println!("| configuration | delivered | deliveries/s | added per delivery |");
    println!("|---|---|---:|---:|");
    let none = Opts::default();
    let audience = Opts {
        extra: plugin("audience", "audience", ""),
        ..Default::default()
    };
    for round in 1..=rounds {
        let (d0, want, r0) = fan_out(none.clone(), messages, false);
        println!("| no plugins, round {round} | {d0} / {want} | {r0:.0} | |");
        for (name, redact) in [
            ("keep, answer reused", false),
            ("replace, asked every delivery", true),
        ] {
            let (d, want, r) = fan_out(audience.clone(), messages, redact);
            let added = 1e9 / r - 1e9 / r0;
            println!(
                "| audience ({name}), round {round} | {d} / {want} | {r:.0} | {added:.0} ns |"
            );
        }
    }
}

/// Connects, subscribes and disconnects in a loop until `stop`: 3 events a cycle. At
/// most `per_second` cycles a second (0: as fast as it can). Returns each cycle's time.
fn churn(
    port: u16,
    i: usize,
    stop: Arc<AtomicBool>,
    cycles: Arc<AtomicU64>,
    per_second: u64,
) -> Vec<Duration> {
    let mut took = Vec::new();
    let mut buf = [0u8; 64];
    let started = Instant::now();
    while !stop.load(Relaxed) {
        let n = took.len() as u64;
        if let Some(gap) = (n * 1_000_000).checked_div(per_second) {
            let due = started + Duration::from_micros(gap);
            std::thread::sleep(due.saturating_duration_since(Instant::now()));
        }
        let t = Instant::now();
        let mut s = client(port, &format!("churn-{i}-{n}"));
        let mut sub = vec![0, 1, 0];
        sub.extend(string("churn/x"));
        sub.push(0);
        s.write_all(&packet(0x82, &sub)).unwrap();
        let _ = s.read(&mut buf).unwrap();
        s.write_all(&[0xE0, 0]).unwrap();
        let _ = s.read(&mut buf);
        took.push(t.elapsed());
        cycles.fetch_add(1, Relaxed);
    }
    took
}

struct Churned {
    cycles_per_s: f64,
    events_per_s: f64,
    lost: u64,
    batches: u64,
    p50: Duration,
    p99: Duration,
}

/// One churn run, measured after a second of warm-up.
fn churn_run(opts: Opts, secs: u64, per_second: u64) -> Churned {
    let w = Weir::with(opts);
    let stop = Arc::new(AtomicBool::new(false));
    let cycles = Arc::new(AtomicU64::new(0));
    let workers: Vec<_> = (0..CHURNERS)
        .map(|i| {
            let (stop, cycles, port) = (stop.clone(), cycles.clone(), w.port);
            std::thread::spawn(move || churn(port, i, stop, cycles, per_second))
        })
        .collect();
    std::thread::sleep(Duration::from_secs(1));
    let counters = || {
        (
            cycles.load(Relaxed),
            metric(&w, "weir_events_total"),
            metric(&w, "weir_events_lost_total"),
            metric(&w, "weir_event_batches_total"),
        )
    };
    let (c0, e0, l0, b0) = counters();
    let started = Instant::now();
    std::thread::sleep(Duration::from_secs(secs));
    let (c1, e1, l1, b1) = counters();
    let took = started.elapsed().as_secs_f64();
    stop.store(true, Relaxed);
    let mut times: Vec<Duration> = workers
        .into_iter()
        .flat_map(|t| t.join().unwrap())
        .collect();
    times.sort();
    Churned {
        cycles_per_s: (c1 - c0) as f64 / took,
        events_per_s: (e1 - e0) as f64 / took,
        lost: l1 - l0,
        batches: b1 - b0,
        p50: times[times.len() / 2],
        p99: times[times.len() * 99 / 100],
    }
}

fn events_part(rounds: usize) {
    let secs = setting("CHURN_SECS", 10) as u64;
    let paced = setting("CHURN_RATE", 500) as u64;
    println!(
        "\nEvents: {CHURNERS} clients each connecting, subscribing and disconnecting in a loop ({secs} s a run; 3 events a cycle), as fast as they can and at {paced} cycles/s each:\n"
    );
    println!("| configuration | pace | cycles/s | cycle p50 | cycle p99 | events/s to the observer | lost | batches |");
    println!("|---|---|---:|---:|---:|---:|---:|---:|");
    let with = |extra: String| Opts {
        extra,
        ..Default::default()
    };
    let configs = [
        ("no plugins", Opts::default()),
        (
            "a plugin, no observer (audience)",
            with(plugin("audience", "audience", "")),
        ),
        (
            "event-log (a JSON line per event in the log)",
            with(plugin("audit", "event-log", "")),
        ),
        (
            "slow-observer, spin_ms = 0 (takes each batch, does nothing)",
            with(plugin("observer", "slow-observer", "spin_ms = 0")),
        ),
    ];
    for round in 1..=rounds {
        for pace in [0, paced] {
            for (name, opts) in &configs {
                let c = churn_run(opts.clone(), secs, pace);
                let pace = if pace == 0 {
                    "full".to_string()
                } else {
                    format!("{pace}/s")
                };
                println!(
                    "| {name}, round {round} | {pace} | {:.0} | {:.2} ms | {:.2} ms | {:.0} | {} | {} |",
                    c.cycles_per_s,
                    c.p50.as_secs_f64() * 1e3,
                    c.p99.as_secs_f64() * 1e3,
                    c.events_per_s,
                    c.lost,
                    c.batches
                );
            }
        }
    }
}

fn main() {
    plugins::build();
    let rounds = setting("ROUNDS", 3).max(1);
    let only = std::env::var("ONLY").unwrap_or_default();
    if only != "events" {
        deliver_part(rounds);
    }
    if only != "deliver" {
        events_part(rounds);
    }
}
