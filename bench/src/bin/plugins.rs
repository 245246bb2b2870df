//! What plugins cost: nanoseconds per hook call (in-process, through the broker's real
//! plugin host with the real plugins), and the broker's throughput with the chain
//! auth-password + acl + transform + rate-limit against no plugins (QoS 0, 64-byte
//! payloads, 4 publishers into 1 subscriber over loopback, raw MQTT clients so the
//! clients are not what is measured).
//!
//!     cargo build --release -p weir && WEIR_BIN=target/release/weir \
//!         cargo run --release -p weir-bench --bin plugins
//!
//! `MESSAGES` (default 4 000 000) and `ROUNDS` (default 3) size the throughput part;
//! `ONLY=throughput` skips the per-call part, `ONLY=calls` the throughput part;
//! `ONLY=floor` runs only the rows of the plugin that reads nothing, `ONLY=batch` only
//! the chain on 32 messages at once (for profiling).

use bytes::Bytes;
use std::io::{Read, Write};
use std::net::TcpStream;
use std::sync::Arc;
use std::time::{Duration, Instant};
use weir::codec::{QoS, Version};
use weir::config::Config;
use weir::hooks::{Action, ClientHooks, ClientInfo, ConnectInfo, Hooks, Identity, RateEvent};
use weir::message::Message;
use weir::plugin::{PluginChain, PluginClient};

/// The per-call and batch rows run the broker's plugin code in this process, so it
/// allocates as the `weir` binary does.
#[global_allocator]
static ALLOCATOR: tikv_jemallocator::Jemalloc = tikv_jemallocator::Jemalloc;
use weir_tests::http::request;
use weir_tests::raw::{connect_login, count_publishes, packet, string};
use weir_tests::{plugins, setting, tokens, Opts, Weir};

const CALLS: u32 = 200_000;
const PUBLISHERS: usize = 4;

/// The plugin issue's chain: auth-password, acl, transform (tagging every benchmark
/// message, so it replaces each one), rate-limit. `reuse_ms` is how long acl and
/// transform answers may be reused and `lease_ms` how much of its rate rate-limit may
/// lease; 0 for both asks the plugins about every message.
fn chain_config(hash: &str, reuse_ms: u32, lease_ms: u32, per_second: f64) -> String {
    let entry = |name: &str, wasm: &str, config: &str| {
        format!(
            "[[plugin]]\nname = {name:?}\npath = {:?}\n[plugin.config]\n{config}\n",
            plugins::wasm(wasm)
        )
    };
    [
        entry(
            "passwords",
            "auth-password",
            &format!("users = [ {{ username = \"alice\", password_hash = {hash:?} }} ]"),
        ),
        entry(
            "acl",
            "acl",
            &format!("reuse_ms = {reuse_ms}\nrules = [ {{ access = \"readwrite\", topic = \"home/%u/#\" }} ]"),
        ),
        entry(
            "shape",
            "transform",
            &format!("reuse_ms = {reuse_ms}\ntag = [ {{ filter = \"home/#\", name = \"checked\", value = \"yes\" }} ]"),
        ),
        entry(
            "limits",
            "rate-limit",
            &format!("lease_ms = {lease_ms}\nper_client = {{ messages = {{ per_second = {per_second:.1} }} }}"),
        ),
    ]
    .concat()
}

fn per_call(name: &str, n: u32, f: impl FnMut()) {
    per_call_of(name, n, 1, f)
}

/// `n` runs of `f`, each of `items` calls or messages: the time per item.
fn per_call_of(name: &str, n: u32, items: u32, mut f: impl FnMut()) {
    for _ in 0..n / 10 {
        f();
    }
    let t = Instant::now();
    for _ in 0..n {
        f();
    }
    let ns = t.elapsed().as_nanos() as f64 / (n as f64 * items as f64);
    println!("| {name:<55} | {ns:>9.0} |");
}

/// The connection every per-call row is made on behalf of.
fn identity() -> Arc<Identity> {
    Arc::new(Identity {
        client_id: "dev-1".into(),
        username: Some("alice".into()),
        peer: "127.0.0.1:5555".into(),
        listener: "tcp".into(),
        attributes: Vec::new(),
    })
}

/// A publish as the bench's clients send it: 64 bytes on the acl's and tagger's topic.
fn message() -> Message {
    Message {
        topic: "home/alice/temp".into(),
        payload: Bytes::from(vec![b'x'; 64]),
        qos: QoS::AtMostOnce,
        retain: false,
        properties: Default::default(),
        expires_at: None,
        publisher: None,
        origin: None,
        received: None,
    }
}

/// The floor: hooks of a plugin that reads nothing and answers at once, each call on
/// behalf of `client`'s connection.
fn empty_rows(calls: u32) {
    let chain = load(&format!(
        "[[plugin]]\nname = \"empty\"\npath = {:?}\n",
        plugins::wasm("empty")
    ));
    let identity = identity();
    let msg = message();
    let mut c = PluginClient::new(chain, identity);
    per_call("authorize (empty: reads nothing, allows)", calls, || {
        let q = QoS::AtMostOnce;
        std::hint::black_box(c.authorize(Action::Publish, "home/alice/temp", q, false));
    });
    per_call("rate-limit (empty: reads nothing, allows)", calls, || {
        std::hint::black_box(c.rate_limit(RateEvent::Publish(64)));
    });
    per_call("transform (empty: reads nothing, keeps)", calls, || {
        std::hint::black_box(c.transform(&mut msg.clone()));
    });
}

/// The whole chain for a run of 32 PUBLISHes read together, as a connection asks it
/// (`publish_many`: each plugin once for the run), per message.
fn batch_rows(
    chains: &[(&str, Arc<PluginChain>)],
    identity: &Arc<Identity>,
    msg: &Message,
    calls: u32,
) {
    for (name, chain) in chains {
        let mut c = PluginClient::new(chain.clone(), identity.clone());
        let mut batch = vec![msg.clone(); 32];
        let mut outcomes = Vec::new();
        per_call_of(name, calls / 32, 32, || {
            batch.iter_mut().for_each(|m| *m = msg.clone());
            c.publish_many(&mut batch, &mut outcomes);
            std::hint::black_box(&outcomes);
        });
    }
}

/// A chain from `[[plugin]]` entries, compiled through the tests' shared cache.
fn load(entries: &str) -> Arc<PluginChain> {
    let dir = std::env::temp_dir().join(format!("weir-bench-{}", std::process::id()));
    let text = format!(
        "[storage]\ndir = {dir:?}\n[plugins]\ncache_dir = {:?}\n{entries}",
        plugins::cache_dir()
    );
    let config = Config::from_toml(&text).expect("bench config");
    Arc::new(PluginChain::load(&config).expect("plugins load"))
}

fn hook_costs(hash: &str) {
    let rust = load(&chain_config(hash, 60_000, 10, 1e7));
    let asked = load(&chain_config(hash, 0, 0, 1e7));
    let floor = load(&format!(
        "[[plugin]]\nname = \"m\"\npath = {:?}\n[plugin.config]\nmode = \"none\"\n",
        plugins::wasm("misbehave")
    ));
    let python = load(&format!(
        "[[plugin]]\nname = \"redact\"\npath = {:?}\n",
        plugins::wasm("python-redact")
    ));
    let js = load(&format!(
        "[[plugin]]\nname = \"js\"\npath = {:?}\n[plugin.config]\nmessages_per_second = 1e9\n",
        plugins::wasm("js-limiter")
    ));
    let attrs = Vec::new();
    let client = ClientInfo {
        client_id: "dev-1",
        username: Some("alice"),
        peer: "127.0.0.1:5555",
        listener: "tcp",
        attributes: &attrs,
    };
    let password = Bytes::from_static(b"pw");
    let info = ConnectInfo {
        client_id: "dev-1",
        username: Some("alice"),
        password: Some(&password),
        version: Version::V5,
        peer: "127.0.0.1:5555".parse().unwrap(),
        listener: "tcp",
        allow_anonymous: false,
        user_properties: &[],
        certificate: None,
    };
    let msg = message();
    let untagged = Message {
        topic: "other/topic".into(),
        ..msg.clone()
    };
    let json = Message {
        payload: Bytes::from_static(br#"{"user":"a","password":"p","v":1}"#),
        ..msg.clone()
    };
    // Each row is one connection's calls: what it keeps between them is its own.
    let identity = identity();
    let connection = |chain: &Arc<PluginChain>| PluginClient::new(chain.clone(), identity.clone());
    let publish = |c: &mut PluginClient| {
        c.authorize(Action::Publish, "home/alice/temp", QoS::AtMostOnce, false)
    };
    println!("Hook calls through the broker's plugin host (wasmtime 49, pooled instance, warm):\n");
    println!("| hook (plugin)                                           |  ns/call |");
    println!("|---------------------------------------------------------|---------:|");
    let mut c = connection(&floor);
    per_call(
        "authorize (misbehave: answers at once; the floor)",
        CALLS,
        || {
            std::hint::black_box(publish(&mut c));
        },
    );
    empty_rows(CALLS);
    let mut c = connection(&asked);
    per_call("authorize (acl, one %u rule, reuse_ms = 0)", CALLS, || {
        std::hint::black_box(publish(&mut c));
    });
    let chains = [
        (
            "publish, 32 at once (chain, every message asked), per message",
            asked.clone(),
        ),
        (
            "publish, 32 at once (chain, default settings), per message",
            rust.clone(),
        ),
    ];
    batch_rows(&chains, &identity, &msg, CALLS);
    let mut c = connection(&rust);
    per_call("authorize (acl, decision reused)", CALLS, || {
        std::hint::black_box(publish(&mut c));
    });
    per_call(
        "authorize (acl, reused from the shared cache: no connection)",
        CALLS,
        || {
            let topic = "home/alice/temp";
            let q = QoS::AtMostOnce;
            std::hint::black_box(rust.authorize(&client, Action::Publish, topic, q, false));
        },
    );
    let mut c = connection(&asked);
    per_call(
        "transform (transform, tag: replace, reuse_ms = 0)",
        CALLS,
        || {
            std::hint::black_box(c.transform(&mut msg.clone()));
        },
    );
    let mut c = connection(&rust);
    per_call(
        "transform (transform, tag: replacement reused)",
        CALLS,
        || {
            std::hint::black_box(c.transform(&mut msg.clone()));
        },
    );
    let mut c = connection(&rust);
    per_call(
        "transform (transform, no rule applies: keep, reused)",
        CALLS,
        || {
            std::hint::black_box(c.transform(&mut untagged.clone()));
        },
    );
    let mut c = connection(&asked);
    per_call(
        "rate-limit (rate-limit, publish, lease_ms = 0)",
        CALLS,
        || {
            std::hint::black_box(c.rate_limit(RateEvent::Publish(64)));
        },
    );
    let mut c = connection(&rust);
    per_call("rate-limit (rate-limit, publish, leased)", CALLS, || {
        std::hint::black_box(c.rate_limit(RateEvent::Publish(64)));
    });
    per_call(
        "authenticate (auth-password, PBKDF2 1000 rounds)",
        2_000,
        || {
            std::hint::black_box(rust.authenticate(&info));
        },
    );
    let mut c = connection(&python);
    per_call("transform (python-redact, redacts JSON)", 20_000, || {
        std::hint::black_box(c.transform(&mut json.clone()));
    });
    let mut c = connection(&python);
    per_call("transform (python-redact, not JSON: keep)", 20_000, || {
        std::hint::black_box(c.transform(&mut msg.clone()));
    });
    let mut c = connection(&js);
    per_call(
        "rate-limit (js-limiter, JavaScript, publish)",
        50_000,
        || {
            std::hint::black_box(c.rate_limit(RateEvent::Publish(64)));
        },
    );
}

/// Publishes `n` QoS 0 messages as fast as TCP takes them.
fn publisher(port: u16, id: usize, n: usize) {
    let mut s = TcpStream::connect(("127.0.0.1", port)).unwrap();
    s.set_nodelay(true).unwrap();
    s.write_all(&connect_login(5, &format!("pub-{id}"), "alice", b"pw"))
        .unwrap();
    let mut ack = [0u8; 64];
    let _ = s.read(&mut ack).unwrap();
    let mut body = string(&format!("home/alice/bench/{id}"));
    body.push(0);
    body.extend_from_slice(&[b'x'; 64]);
    let one = packet(0x30, &body);
    let batch: Vec<u8> = one.iter().copied().cycle().take(one.len() * 1000).collect();
    for _ in 0..n / 1000 {
        s.write_all(&batch).unwrap();
    }
    std::thread::sleep(Duration::from_millis(500));
}

/// Subscribes and counts PUBLISH packets until `want` arrived or nothing came for 2 s.
fn subscriber(port: u16, want: usize, ready: std::sync::mpsc::Sender<()>) -> (usize, Duration) {
    let mut s = TcpStream::connect(("127.0.0.1", port)).unwrap();
    s.write_all(&connect_login(5, "sink", "alice", b"pw"))
        .unwrap();
    let mut sub = vec![0, 1, 0];
    sub.extend(string("home/alice/#"));
    sub.push(0);
    s.write_all(&packet(0x82, &sub)).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(2))).unwrap();
    let mut acks = 0;
    let c = count_publishes(&mut s, want, |kind| {
        if kind == 2 || kind == 9 {
            acks += 1;
            if acks == 2 {
                let _ = ready.send(());
            }
        }
    });
    let took = c.first.map_or(Duration::ZERO, |f| c.last - f);
    (c.publishes, took)
}

fn throughput(name: &str, opts: Opts, per_publisher: usize) -> f64 {
    let w = Weir::with(opts);
    let port = w.port;
    let want = PUBLISHERS * per_publisher;
    let (tx, rx) = std::sync::mpsc::channel();
    let sink = std::thread::spawn(move || subscriber(port, want, tx));
    rx.recv_timeout(Duration::from_secs(10))
        .expect("subscriber ready");
    let pubs: Vec<_> = (0..PUBLISHERS)
        .map(|i| std::thread::spawn(move || publisher(port, i, per_publisher)))
        .collect();
    for p in pubs {
        p.join().unwrap();
    }
    let (got, took) = sink.join().unwrap();
    let rate = got as f64 / took.as_secs_f64();
    let (_, metrics) = request(w.admin_port, "GET", "/metrics", None);
    let total = |name: &str| -> u64 {
        metrics
            .lines()
            .filter(|l| l.starts_with(&format!("{name}{{")))
            .filter_map(|l| l.rsplit(' ').next()?.parse::<u64>().ok())
            .sum()
    };
    let (calls, reused, failed) = (
        total("weir_plugin_calls_total"),
        total("weir_plugin_reused_answers_total"),
        total("weir_plugin_errors_total"),
    );
    println!("| {name:<41} | {got:>9} / {want} | {rate:>12.0} | {calls:>10} | {reused:>10} | {failed:>6} |");
    rate
}

fn main() {
    plugins::build();
    let hash = tokens::password_hash("pw", 1000);
    let only = std::env::var("ONLY").unwrap_or_default();
    if only == "floor" {
        // The empty plugin's rows alone, long enough to profile.
        return empty_rows(10 * CALLS);
    }
    if only == "batch" {
        // The batch rows alone, long enough to profile.
        let chain = |reuse, lease| load(&chain_config(&hash, reuse, lease, 1e7));
        let identity = identity();
        let msg = message();
        // Each plugin of the asked chain alone, and the one that reads nothing.
        let alone = |name: &str| {
            let entries = chain_config(&hash, 0, 0, 1e7);
            let entry = entries
                .split("[[plugin]]")
                .find(|e| e.contains(&format!("name = {name:?}")));
            load(&format!(
                "[[plugin]]{}",
                entry.expect("a plugin of the chain")
            ))
        };
        let empty = load(&format!(
            "[[plugin]]\nname = \"empty\"\npath = {:?}\n",
            plugins::wasm("empty")
        ));
        let chains = [
            (
                "publish, 32 at once (chain, every message asked), per message",
                chain(0, 0),
            ),
            (
                "publish, 32 at once (chain, default settings), per message",
                chain(60_000, 10),
            ),
            (
                "publish, 32 at once (acl alone, asked), per message",
                alone("acl"),
            ),
            (
                "publish, 32 at once (rate-limit alone, asked), per message",
                alone("limits"),
            ),
            (
                "publish, 32 at once (transform alone, asked), per message",
                alone("shape"),
            ),
            (
                "publish, 32 at once (empty: authorize, rate-limit, transform)",
                empty,
            ),
        ];
        let which = std::env::var("ROW").unwrap_or_default();
        let chains: Vec<_> = chains
            .into_iter()
            .filter(|(n, _)| n.contains(&which))
            .collect();
        return batch_rows(&chains, &identity, &msg, 10 * CALLS);
    }
    if only != "throughput" {
        hook_costs(&hash);
    }
    if only == "calls" {
        return;
    }
    // Whole batches of 1 000 per publisher.
    let per_publisher = setting("MESSAGES", 4_000_000)
        .div_ceil(PUBLISHERS * 1000)
        .max(1)
        * 1000;
    let messages = per_publisher * PUBLISHERS;
    let rounds = setting("ROUNDS", 3).max(1);

    println!(
        "\nBroker throughput, QoS 0, 64 B, {PUBLISHERS} publishers -> 1 subscriber, {messages} messages:\n"
    );
    println!("| configuration                             | delivered             |       msgs/s | plugin calls | reused/leased | failed calls |");
    println!("|-------------------------------------------|-----------------------|-------------:|-----------:|-----------:|-------:|");
    let base = Opts {
        limits: format!("max_queued = {messages}"),
        storage: "persistence = false".into(),
        ..Default::default()
    };
    let with = |extra: String| Opts {
        extra,
        plugins: "authenticate_default = \"deny\"".into(),
        listener: "allow_anonymous = false".into(),
        ..base.clone()
    };
    // Single runs of the same configuration vary by tens of percent on this machine, so
    // the configurations take turns and each ratio compares runs made side by side.
    let (mut chain, mut asked) = (Vec::new(), Vec::new());
    for round in 1..=rounds {
        let none = throughput(
            &format!("no plugins, round {round}"),
            base.clone(),
            per_publisher,
        );
        let c = throughput(
            &format!("chain, default settings, round {round}"),
            with(chain_config(&hash, 60_000, 10, 1e7)),
            per_publisher,
        );
        let a = throughput(
            &format!("chain, every message asked, round {round}"),
            with(chain_config(&hash, 0, 0, 1e7)),
            per_publisher,
        );
        chain.push(100.0 * c / none);
        asked.push(100.0 * a / none);
    }
    let median = |mut v: Vec<f64>| {
        v.sort_by(f64::total_cmp);
        v[v.len() / 2]
    };
    let shown = |v: &[f64]| {
        v.iter()
            .map(|p| format!("{p:.0}%"))
            .collect::<Vec<_>>()
            .join(", ")
    };
    println!(
        "\nThe chain auth-password+acl+transform+rate-limit (transform tags every message, \
         rate-limit counts every message) with its default settings, where answers are reused \
         and the limiter leases tokens: {:.0}% of the no-plugin throughput (median; rounds: {}).\n\
         The same chain with reuse_ms = 0 and lease_ms = 0, every plugin called for every \
         message: {:.0}% (rounds: {}).",
        median(chain.clone()),
        shown(&chain),
        median(asked.clone()),
        shown(&asked)
    );
}
