//! Connection scale: opens K idle MQTT connections to a broker, reports how fast they
//! were accepted and how much resident memory the broker grew by per connection, then
//! proves every one of them is still held by a PINGREQ/PINGRESP on each.
//!
//!     conns --port 1883 --pid <broker pid> --connections 100000 --label weir
//!
//! Loopback has about 28 000 ephemeral ports per source address, so the connections are
//! spread over 127.0.0.1, 127.0.0.2, ... (all of 127/8 is loopback on Linux; `--subnet`
//! picks another 127.x.0.0/24). The
//! generator raises its own open-file limit to the hard limit; K is capped by the
//! broker's open-file limit, read from /proc, and the cap is printed, not hidden.

use clap::Parser;
use std::net::{Ipv4Addr, SocketAddr};
use std::time::{Duration, Instant};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpSocket, TcpStream};
use tokio::task::JoinSet;
use weir_tests::http::rss_kib;
use weir_tests::raw::{packet, string};

#[derive(Parser)]
struct Args {
    #[arg(long, default_value_t = 1883)]
    port: u16,
    /// The broker's process id: its resident memory is read from /proc.
    #[arg(long)]
    pid: u32,
    /// Idle connections to open.
    #[arg(long, default_value_t = 100_000)]
    connections: usize,
    /// Connection attempts in flight at once.
    #[arg(long, default_value_t = 200)]
    concurrency: usize,
    /// Connections per source address (each address has ~28 000 ephemeral ports).
    #[arg(long, default_value_t = 10_000)]
    per_address: usize,
    /// Source addresses are 127.<subnet>.0.1, 127.<subnet>.0.2, ...: runs one after
    /// another use different subnets, since the last run's ports linger in TIME_WAIT.
    #[arg(long, default_value_t = 0)]
    subnet: u8,
    /// Seconds to hold the connections idle before checking them.
    #[arg(long, default_value_t = 5)]
    hold_secs: u64,
    /// Give up on the whole run after this long.
    #[arg(long, default_value_t = 300)]
    timeout_secs: u64,
    /// Label for the output row.
    #[arg(long, default_value = "")]
    label: String,
}

/// Open-file limit of `pid` ("Max open files" soft limit), if it can be read.
fn open_file_limit(pid: u32) -> Option<usize> {
    let limits = std::fs::read_to_string(format!("/proc/{pid}/limits")).ok()?;
    let line = limits.lines().find(|l| l.starts_with("Max open files"))?;
    line.split_whitespace().nth(3)?.parse().ok()
}

fn fail(why: &str) -> ! {
    eprintln!("conns: {why}");
    std::process::exit(2)
}

/// One idle client: TCP connect from `source`, CONNECT (clean, keep-alive 10 minutes),
/// CONNACK accepted.
async fn open(port: u16, source: Ipv4Addr, id: usize) -> std::io::Result<TcpStream> {
    let sock = TcpSocket::new_v4()?;
    sock.bind(SocketAddr::from((source, 0)))?;
    let mut s = sock
        .connect(SocketAddr::from((Ipv4Addr::LOCALHOST, port)))
        .await?;
    s.set_nodelay(true)?;
    let mut body = string("MQTT");
    body.extend_from_slice(&[4, 0x02, 0x02, 0x58]);
    body.extend(string(&format!("idle-{id}")));
    s.write_all(&packet(0x10, &body)).await?;
    let mut ack = [0u8; 4];
    s.read_exact(&mut ack).await?;
    if ack[0] != 0x20 || ack[3] != 0 {
        return Err(std::io::Error::other(format!(
            "CONNACK refused with code {}",
            ack[3]
        )));
    }
    Ok(s)
}

/// PINGREQ on an idle connection; true when PINGRESP comes back.
async fn ping(mut s: TcpStream) -> bool {
    let round = async {
        s.write_all(&[0xC0, 0]).await?;
        let mut b = [0u8; 2];
        s.read_exact(&mut b).await?;
        Ok::<_, std::io::Error>(b == [0xD0, 0])
    };
    matches!(
        tokio::time::timeout(Duration::from_secs(30), round).await,
        Ok(Ok(true))
    )
}

#[tokio::main]
async fn main() {
    let args = Args::parse();
    let own = weir::listener::raise_open_file_limit().unwrap_or(1024);
    let broker_limit = open_file_limit(args.pid)
        .unwrap_or_else(|| fail(&format!("cannot read /proc/{}/limits", args.pid)));
    // Leave room for the broker's listeners, store and logs, and for our own stdio.
    let cap = broker_limit.min(own).saturating_sub(100);
    let k = args.connections.min(cap);
    if k < args.connections {
        eprintln!(
            "conns: open-file limits (broker {broker_limit}, generator {own}) cap this run at \
             {k} of the {} connections asked for",
            args.connections
        );
    }
    let deadline = Instant::now() + Duration::from_secs(args.timeout_secs);
    // Let the broker settle, then take its resident memory before any client.
    tokio::time::sleep(Duration::from_millis(300)).await;
    let before = rss_kib(args.pid);
    if before == 0 {
        fail(&format!(
            "cannot read the resident memory of process {}",
            args.pid
        ));
    }

    let start = Instant::now();
    let mut held = Vec::with_capacity(k);
    let mut inflight = JoinSet::new();
    let mut next = 0usize;
    let mut failed = 0usize;
    let mut first_error = None;
    while held.len() + failed < k {
        while next < k && inflight.len() < args.concurrency {
            let source = Ipv4Addr::new(127, args.subnet, 0, 1 + (next / args.per_address) as u8);
            let port = args.port;
            let id = next;
            inflight.spawn(async move { open(port, source, id).await });
            next += 1;
        }
        if Instant::now() > deadline {
            fail(&format!("timed out with {} of {k} connected", held.len()));
        }
        match inflight.join_next().await {
            Some(Ok(Ok(s))) => held.push(s),
            Some(Ok(Err(e))) => {
                failed += 1;
                first_error.get_or_insert(e.to_string());
            }
            Some(Err(e)) => fail(&format!("connect task failed: {e}")),
            None => break,
        }
    }
    let connect_secs = start.elapsed().as_secs_f64();
    tokio::time::sleep(Duration::from_secs(args.hold_secs)).await;
    let after = rss_kib(args.pid);

    // Every connection must still be there after the idle period.
    let mut pings = JoinSet::new();
    let mut alive = 0usize;
    for s in held.drain(..) {
        if pings.len() >= args.concurrency {
            alive += pings
                .join_next()
                .await
                .and_then(|r| r.ok())
                .unwrap_or(false) as usize;
        }
        pings.spawn(ping(s));
    }
    while let Some(r) = pings.join_next().await {
        alive += r.unwrap_or(false) as usize;
    }
    if let Some(e) = &first_error {
        eprintln!("conns: {failed} connections failed; the first: {e}");
    }
    let per_conn = (after.saturating_sub(before) as f64 * 1024.0) / k.max(1) as f64;
    println!(
        "| label | connections asked | connected | held after {}s | connects/s | RSS before MiB | RSS after MiB | bytes per connection |",
        args.hold_secs
    );
    println!("|---|---:|---:|---:|---:|---:|---:|---:|");
    println!(
        "| {} | {} | {} | {} | {:.0} | {:.1} | {:.1} | {:.0} |",
        args.label,
        args.connections,
        k - failed,
        alive,
        (k - failed) as f64 / connect_secs,
        before as f64 / 1024.0,
        after as f64 / 1024.0,
        per_conn
    );
}
