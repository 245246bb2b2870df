"""Soak: a mixed load for a fixed time against one broker, watching its memory.

Runs for --seconds (default 1800) with paho-mqtt clients over TCP, TLS and WebSocket:
- a QoS 1 and a QoS 2 stream per transport between persistent sessions, numbered, every
  acknowledged message checked at the end (QoS 2 must arrive once);
- a QoS 0 stream (counted, not required);
- connection churn: clients that connect, subscribe, publish and go, half of them
  dropping their socket without DISCONNECT so that their will is published (every will
  checked);
- retained messages set and read back by fresh subscribers (every read checked);
- takeovers: a client id connected again while its first connection lives;
- a plugin chain that sees every message (the `acl` plugin, then the `tagger` transform
  that tags each message with its version), the tagger swapped between its two builds
  every 20 s, by `POST /plugins/tagger/reload` and by SIGHUP in turn; a MQTT 5 stream
  checks that every message was tagged and that each swap took effect exactly once;
- SIGHUP (configuration and plugin-chain reload) every 30 s besides.
Samples the broker's resident memory every 5 s and reports it after a warm-up (the first
fifth of the run): minimum, maximum, and the growth from the first to the last minute of
that part. Fails on any lost acknowledged message, QoS 2 duplicate, missing will or
retained message, and on an ERROR in the broker's log.

    python3 tests/reliability/soak.py --weir target/release/weir --seconds 1800
"""

import argparse
import os
import shutil
import urllib.request
import signal
import socket
import ssl
import subprocess
import sys
import tempfile
import threading
import time
import uuid

import paho.mqtt.client as mqtt


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def rss_kib(pid):
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    return 0


ROOT = os.path.abspath(os.path.join(os.path.dirname(__file__), "..", ".."))
PLUGINS = os.path.join(ROOT, "plugins")
TAGGER = {"a": os.path.join(PLUGINS, "target/wasm32-wasip2/release/tagger.wasm"),
          "b": os.path.join(PLUGINS, "target/tagger-b/wasm32-wasip2/release/tagger.wasm")}
ACL = os.path.join(PLUGINS, "target/wasm32-wasip2/release/acl.wasm")


def build_plugins():
    """The acl plugin and both builds of the tagger, from source (a no-op when built)."""
    build = ["cargo", "build", "-q", "--release", "--target", "wasm32-wasip2"]
    subprocess.run(build + ["-p", "acl", "-p", "tagger"], cwd=PLUGINS, check=True)
    subprocess.run(build + ["-p", "tagger", "--features", "b", "--target-dir", "target/tagger-b"],
                   cwd=PLUGINS, check=True)


def plugin_config(workdir):
    """The chain: acl (everything under soak/ and the test's own topics), then the tagger,
    loaded from a copy in the work directory that the run swaps. Every plugin file is a
    copy taken at the start: a rebuild of plugins/target meanwhile changes nothing."""
    for version, path in list(TAGGER.items()):
        TAGGER[version] = os.path.join(workdir, f"tagger-{version}.wasm")
        shutil.copy(path, TAGGER[version])
    acl = os.path.join(workdir, "acl.wasm")
    shutil.copy(ACL, acl)
    tagger = os.path.join(workdir, "tagger.wasm")
    shutil.copy(TAGGER["a"], tagger)
    return (f'[[plugin]]\nname = "acl"\npath = "{acl}"\n[plugin.config]\n'
            f'rules = [ {{ access = "readwrite", topic = "soak/#" }} ]\n'
            f'[[plugin]]\nname = "tagger"\npath = "{tagger}"\n'
            # A debug build on a loaded 2-core machine: the run is about stability, not
            # about the per-call deadline (10 ms by default).
            f'[plugins]\ndeadline_ms = 250\ncache_dir = "{PLUGINS}/target/cwasm-cache"\n')


class Broker:
    def __init__(self, binary, workdir):
        self.workdir = workdir
        self.ports = {"tcp": free_port(), "tls": free_port(), "ws": free_port(), "admin": free_port()}
        cert, key = os.path.join(workdir, "cert.pem"), os.path.join(workdir, "key.pem")
        subprocess.run(["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "2",
                        "-subj", "/CN=localhost", "-addext", "subjectAltName=IP:127.0.0.1",
                        "-keyout", key, "-out", cert], check=True, capture_output=True)
        self.cert = cert
        config = os.path.join(workdir, "weir.toml")
        with open(config, "w") as f:
            f.write(
                f'[[listener]]\nname = "tcp"\nbind = "127.0.0.1:{self.ports["tcp"]}"\n'
                f'[[listener]]\nname = "tls"\nkind = "tls"\nbind = "127.0.0.1:{self.ports["tls"]}"\n'
                f'cert = "{cert}"\nkey = "{key}"\n'
                f'[[listener]]\nname = "ws"\nkind = "ws"\nbind = "127.0.0.1:{self.ports["ws"]}"\n'
                f'[storage]\ndir = "{workdir}/data"\n[admin]\nbind = "127.0.0.1:{self.ports["admin"]}"\n'
                f'[log]\nlevel = "warn"\n' + plugin_config(workdir))
        self.log_path = os.path.join(workdir, "weir.log")
        self.proc = subprocess.Popen([binary, "--config", config], stdout=subprocess.DEVNULL,
                                     stderr=open(self.log_path, "wb"))
        for _ in range(300):
            try:
                socket.create_connection(("127.0.0.1", self.ports["tcp"]), timeout=0.2).close()
                return
            except OSError:
                time.sleep(0.05)
        raise SystemExit("soak: the broker did not start")


def client(broker, transport, client_id, clean=True, will=None, v5=False):
    ws = "websockets" if transport == "ws" else "tcp"
    if v5:  # MQTT 5 clients start clean (their session is not what they test)
        c = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id=client_id, transport=ws,
                        protocol=mqtt.MQTTv5)
    else:
        c = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id=client_id, clean_session=clean,
                        transport=ws)
    if transport == "tls":
        c.tls_set(ca_certs=broker.cert, cert_reqs=ssl.CERT_REQUIRED)
    if will:
        c.will_set(*will)
    c.reconnect_delay_set(0.05, 1)
    return c


class Stream:
    """Numbered messages at one QoS over one transport, persistent sessions."""

    def __init__(self, broker, transport, qos, v5=False):
        self.topic = f"soak/{transport}/q{qos}" + ("/v5" if v5 else "")
        self.qos, self.lock = qos, threading.Lock()
        self.acked, self.pending, self.early, self.got = set(), {}, set(), {}
        self.versions = {}
        tag = f"{transport}-q{qos}" + ("-v5" if v5 else "")
        ready = threading.Event()
        self.sub = client(broker, transport, f"soak-sub-{tag}", clean=False, v5=v5)
        self.sub.on_connect = lambda c, *_: (c.subscribe(self.topic, qos), ready.set())
        self.sub.on_message = self.on_message
        self.sub.connect(host="127.0.0.1", port=broker.ports[transport])
        self.sub.loop_start()
        ready.wait(10)
        self.pub = client(broker, transport, f"soak-pub-{tag}", clean=False, v5=v5)
        self.pub.on_publish = self.on_publish
        self.pub.connect(host="127.0.0.1", port=broker.ports[transport])
        self.pub.loop_start()
        self.seq = 0

    def on_message(self, _c, _u, m):
        with self.lock:
            n = int(m.payload)
            self.got[n] = self.got.get(n, 0) + 1
            props = getattr(m.properties, "UserProperty", None) or []
            self.versions[n] = ",".join(v for k, v in props if k == "version")

    def on_publish(self, _c, _u, mid, _rc, _p):
        with self.lock:
            n = self.pending.pop(mid, None)
            if n is None:
                self.early.add(mid)
            else:
                self.acked.add(n)

    def send(self):
        info = self.pub.publish(self.topic, str(self.seq), qos=self.qos)
        with self.lock:
            if info.mid in self.early:
                self.early.discard(info.mid)
                self.acked.add(self.seq)
            else:
                self.pending[info.mid] = self.seq
        self.seq += 1

    def tagging(self):
        """Messages the tagger did not tag once, and how often the version changed along
        the stream (each swap once)."""
        with self.lock:
            order = [self.versions[n] for n in sorted(self.versions)]
        untagged = sum(1 for v in order if v not in ("a", "b"))
        changes = sum(1 for x, y in zip(order, order[1:]) if x != y)
        return untagged, changes

    def verdict(self):
        with self.lock:
            lost = self.acked - self.got.keys()
            twice = sum(n - 1 for n in self.got.values() if n > 1)
        return lost, twice


def churn(broker, stop, counts, lock):
    """Clients that come and go; half drop their socket so their will is sent."""
    transports = ["tcp", "tls", "ws"]
    i = 0
    while not stop.is_set():
        t = transports[i % 3]
        cid = f"churn-{i}"
        abrupt = i % 2 == 0
        will = (f"soak/will/{cid}", b"gone", 1) if abrupt else None
        c = client(broker, t, cid, will=will)
        try:
            c.connect(host="127.0.0.1", port=broker.ports[t], keepalive=10)
            c.loop_start()
            c.subscribe("soak/churn/#", 0)
            c.publish(f"soak/churn/{cid}", b"x", qos=1).wait_for_publish(5)
            if abrupt:
                c.loop_stop()
                c.socket().close()
                with lock:
                    counts["wills_expected"].add(cid)
            else:
                c.disconnect()
                c.loop_stop()
        except Exception as e:  # a refused or failed connection is a failure of the run
            with lock:
                counts["errors"].append(f"churn {cid}: {e}")
        i += 1
        time.sleep(0.02)


def retained_round(broker, n, counts, lock):
    topic = f"soak/retained/{n % 50}"
    value = uuid.uuid4().hex.encode()
    p = client(broker, "tcp", f"ret-pub-{n}")
    p.connect(host="127.0.0.1", port=broker.ports["tcp"])
    p.loop_start()
    p.publish(topic, value, qos=1, retain=True).wait_for_publish(5)
    p.disconnect(); p.loop_stop()
    got = threading.Event()
    s = client(broker, ["tcp", "tls", "ws"][n % 3], f"ret-sub-{n}")
    s.on_message = lambda _c, _u, m: got.set() if m.retain and m.payload == value else None
    s.on_connect = lambda c, *_: c.subscribe(topic, 1)
    s.connect(host="127.0.0.1", port=broker.ports[["tcp", "tls", "ws"][n % 3]])
    s.loop_start()
    ok = got.wait(5)
    s.disconnect(); s.loop_stop()
    with lock:
        counts["retained_checked"] += 1
        if not ok:
            counts["errors"].append(f"retained {topic}: not received")


def swap_tagger(broker, n, counts, lock):
    """Puts the other build of the tagger in place and reloads it: through the admin API
    on even swaps, by SIGHUP (the whole chain) on odd ones."""
    version = "b" if n % 2 == 0 else "a"
    target = os.path.join(broker.workdir, "tagger.wasm")
    shutil.copy(TAGGER[version], target + ".new")
    os.replace(target + ".new", target)
    try:
        if n % 2 == 0:
            url = f"http://127.0.0.1:{broker.ports['admin']}/plugins/tagger/reload"
            urllib.request.urlopen(urllib.request.Request(url, method="POST"), timeout=30).read()
        else:
            broker.proc.send_signal(signal.SIGHUP)
    except Exception as e:
        with lock:
            counts["errors"].append(f"plugin swap {n}: {e}")
    with lock:
        counts["swaps"] += 1


def takeover(broker, n):
    a = client(broker, "tcp", f"taken-{n % 5}")
    a.connect(host="127.0.0.1", port=broker.ports["tcp"])
    a.loop_start()
    b = client(broker, "ws", f"taken-{n % 5}")
    b.connect(host="127.0.0.1", port=broker.ports["ws"])
    b.loop_start()
    time.sleep(0.2)
    b.disconnect()
    a.loop_stop(); b.loop_stop()


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--weir", required=True)
    ap.add_argument("--seconds", type=int, default=1800)
    a = ap.parse_args()
    build_plugins()
    workdir = tempfile.mkdtemp(prefix="weir-soak-")
    broker = Broker(a.weir, workdir)
    lock = threading.Lock()
    counts = {"wills_expected": set(), "wills": set(), "errors": [], "retained_checked": 0,
              "qos0": 0, "sighups": 0, "takeovers": 0, "swaps": 0}

    watcher = client(broker, "tcp", "will-watcher")
    watcher.on_connect = lambda c, *_: c.subscribe([("soak/will/#", 1), ("soak/q0", 0)])

    def watched(_c, _u, m):
        with lock:
            if m.topic == "soak/q0":
                counts["qos0"] += 1
            else:
                counts["wills"].add(m.topic.rsplit("/", 1)[1])
    watcher.on_message = watched
    watcher.connect(host="127.0.0.1", port=broker.ports["tcp"])
    watcher.loop_start()

    streams = [Stream(broker, t, q) for t in ("tcp", "tls", "ws") for q in (1, 2)]
    tagged = Stream(broker, "tcp", 1, v5=True)
    streams.append(tagged)
    q0 = client(broker, "tcp", "soak-q0")
    q0.connect(host="127.0.0.1", port=broker.ports["tcp"])
    q0.loop_start()
    stop = threading.Event()
    churner = threading.Thread(target=churn, args=(broker, stop, counts, lock))
    churner.start()

    samples = []
    start = time.time()
    next_sample = next_sighup = next_retained = next_takeover = start
    next_swap = start + 10
    n = 0
    while time.time() - start < a.seconds:
        for s in streams:
            s.send()
        q0.publish("soak/q0", b"x", qos=0)
        now = time.time()
        if now >= next_sample:
            samples.append((now - start, rss_kib(broker.proc.pid)))
            next_sample += 5
        if now >= next_sighup:
            broker.proc.send_signal(signal.SIGHUP)
            counts["sighups"] += 1
            next_sighup += 30
        if now >= next_swap and now < start + a.seconds - 5:
            swap_tagger(broker, counts["swaps"], counts, lock)
            next_swap += 20
        if now >= next_retained:
            threading.Thread(target=retained_round, args=(broker, n, counts, lock)).start()
            next_retained += 1
        if now >= next_takeover:
            threading.Thread(target=takeover, args=(broker, n)).start()
            counts["takeovers"] += 1
            next_takeover += 2
        n += 1
        time.sleep(0.005)
    stop.set()
    churner.join()
    time.sleep(5)  # the last acknowledgements, deliveries and wills

    failures = list(counts["errors"])
    for s in streams:
        deadline = time.time() + 30
        while s.pending and time.time() < deadline:
            time.sleep(0.2)
        lost, twice = s.verdict()
        print(f"soak: {s.topic}: sent {s.seq}, acknowledged {len(s.acked)}, lost {len(lost)}, twice {twice}")
        if lost or (s.qos == 2 and twice):
            failures.append(f"{s.topic}: lost {len(lost)}, twice {twice}")
    untagged, changes = tagged.tagging()
    print(f"soak: plugin swaps {counts['swaps']}, version changes seen {changes}, untagged {untagged}")
    if untagged or changes != counts["swaps"]:
        failures.append(f"tagger: {counts['swaps']} swaps, {changes} version changes, {untagged} untagged")
    with lock:
        missing_wills = counts["wills_expected"] - counts["wills"]
    if missing_wills:
        failures.append(f"{len(missing_wills)} wills never published")
    errors_in_log = [l for l in open(broker.log_path, errors="replace") if " ERROR " in l]
    failures += [f"log: {l.strip()}" for l in errors_in_log[:5]]
    warm = [r for t, r in samples if t >= a.seconds / 5]
    first = [r for t, r in samples if a.seconds / 5 <= t < a.seconds / 5 + 60]
    last = [r for t, r in samples if t >= a.seconds - 60]
    print(f"soak: {a.seconds} s; {len(counts['wills_expected'])} wills expected, {len(counts['wills'])} published; "
          f"{counts['retained_checked']} retained reads; {counts['takeovers']} takeovers; {counts['sighups']} SIGHUPs; "
          f"{counts['qos0']} QoS 0 received")
    if warm:
        growth = (sum(last) / len(last)) - (sum(first) / len(first)) if first and last else 0
        print(f"soak: resident memory after warm-up: min {min(warm) / 1024:.1f} MiB, max {max(warm) / 1024:.1f} MiB, "
              f"first-minute to last-minute mean {growth / 1024:+.1f} MiB")
    broker.proc.terminate()
    broker.proc.wait(timeout=20)
    if failures:
        print("soak: FAILED:\n  " + "\n  ".join(failures[:20]) + f"\n(log in {broker.log_path})", file=sys.stderr)
        sys.exit(1)
    print("soak: no loss, no errors")


if __name__ == "__main__":
    main()
