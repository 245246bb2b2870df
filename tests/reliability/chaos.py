"""Chaos: kill -9 the broker at random moments while QoS 1 and QoS 2 messages flow
between persistent sessions, and check that nothing acknowledged is lost and nothing
sent at QoS 2 arrives twice.

A paho-mqtt publisher (clean session off) sends numbered messages on chaos/q1 (QoS 1)
and chaos/q2 (QoS 2) without pause; paho keeps what is not yet acknowledged and sends
it again after each reconnect, as a device would. A paho-mqtt subscriber (clean
session off, QoS 2 subscription) counts what arrives. Each round waits a random
moment, kills the broker with SIGKILL, and starts it again on the same data directory:
it must come up every time. At the end the publisher stops, everything it sent must be
acknowledged, and the subscriber must have every acknowledged message; a QoS 2
message twice is a failure, a QoS 1 message twice is allowed and counted.

    python3 tests/reliability/chaos.py --weir target/release/weir [--rounds 20]
"""

import argparse
import os
import random
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time

import paho.mqtt.client as mqtt


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Broker:
    def __init__(self, binary, workdir, port):
        self.binary, self.port = binary, port
        self.config = os.path.join(workdir, "weir.toml")
        self.log = open(os.path.join(workdir, "weir.log"), "ab")
        with open(self.config, "w") as f:
            f.write(
                f'[[listener]]\nname = "tcp"\nbind = "127.0.0.1:{port}"\n'
                f'[storage]\ndir = "{workdir}/data"\n[admin]\nenabled = false\n'
                f'[log]\nlevel = "{os.environ.get("CHAOS_LOG", "warn")}"\n'
            )
        self.proc = None

    def start(self):
        self.proc = subprocess.Popen([self.binary, "--config", self.config],
                                     stdout=subprocess.DEVNULL, stderr=self.log)
        deadline = time.time() + 30
        while time.time() < deadline:
            if self.proc.poll() is not None:
                raise SystemExit(f"chaos: the broker exited with {self.proc.returncode} on start: the store did not open")
            try:
                socket.create_connection(("127.0.0.1", self.port), timeout=0.2).close()
                return
            except OSError:
                time.sleep(0.05)
        raise SystemExit("chaos: the broker did not listen within 30 s")

    def kill9(self):
        self.proc.send_signal(signal.SIGKILL)
        self.proc.wait()

    def stop(self):
        self.proc.terminate()
        self.proc.wait(timeout=15)


def client(client_id, port, on_connect=None):
    c = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id=client_id,
                    clean_session=False, protocol=mqtt.MQTTv311)
    c.reconnect_delay_set(min_delay=0.05, max_delay=0.5)
    c.max_inflight_messages_set(50)
    if on_connect:
        c.on_connect = on_connect
    c.connect_async("127.0.0.1", port, keepalive=30)
    c.loop_start()
    return c


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--weir", required=True)
    ap.add_argument("--rounds", type=int, default=20)
    ap.add_argument("--seed", type=int, default=int(time.time()))
    a = ap.parse_args()
    rnd = random.Random(a.seed)
    workdir = tempfile.mkdtemp(prefix="weir-chaos-")
    port = free_port()
    broker = Broker(a.weir, workdir, port)
    broker.start()

    lock = threading.Lock()
    received = {1: {}, 2: {}}
    subscribed = threading.Event()

    def on_message(_c, _u, m):
        qos = 1 if m.topic == "chaos/q1" else 2
        seq = int(m.payload)
        with lock:
            received[qos][seq] = received[qos].get(seq, 0) + 1

    def sub_connected(c, _u, _f, rc, _p):
        if rc == 0:
            c.subscribe("chaos/#", qos=2)
            subscribed.set()

    sub = client("chaos-sub", port, sub_connected)
    sub.on_message = on_message
    if not subscribed.wait(10):
        raise SystemExit("chaos: the subscriber did not connect")
    time.sleep(0.5)

    acked = {1: set(), 2: set()}
    pending = {}  # mid -> (qos, seq)
    early = set()  # acknowledged before publish() returned its mid

    # paho calls on_publish holding its own lock, which publish() takes too: never call
    # publish() holding ours.
    def on_publish(_c, _u, mid, _rc, _p):
        with lock:
            q = pending.pop(mid, None)
            if q:
                acked[q[0]].add(q[1])
            else:
                early.add(mid)

    pub = client("chaos-pub", port)
    pub.on_publish = on_publish
    stop = threading.Event()
    sent = {1: 0, 2: 0}

    def publish():
        seq = 0
        while not stop.is_set():
            for qos in (1, 2):
                info = pub.publish(f"chaos/q{qos}", str(seq), qos=qos)
                with lock:
                    sent[qos] += 1
                    if info.mid in early:
                        early.discard(info.mid)
                        acked[qos].add(seq)
                    else:
                        pending[info.mid] = (qos, seq)
            seq += 1
            time.sleep(0.002)

    t = threading.Thread(target=publish)
    t.start()
    for r in range(a.rounds):
        time.sleep(rnd.uniform(0.2, 1.5))
        broker.kill9()
        time.sleep(rnd.uniform(0, 0.3))
        broker.start()
        print(f"chaos: round {r + 1}: killed and restarted; {len(acked[1]) + len(acked[2])} acknowledged so far", flush=True)
    time.sleep(1)
    stop.set()
    t.join()

    deadline = time.time() + 120
    while time.time() < deadline:
        with lock:
            if not pending:
                break
        time.sleep(0.2)
    with lock:
        unacked = len(pending)
    deadline = time.time() + 120
    while time.time() < deadline:
        with lock:
            missing = {q: acked[q] - received[q].keys() for q in (1, 2)}
        if not missing[1] and not missing[2]:
            break
        time.sleep(0.2)
    time.sleep(1)  # anything still coming would be a duplicate
    with lock:
        dup1 = sum(n - 1 for n in received[1].values() if n > 1)
        dup2 = sum(n - 1 for n in received[2].values() if n > 1)
    pub.loop_stop(); sub.loop_stop()
    broker.stop()
    lost = len(missing[1]) + len(missing[2])
    print(f"chaos: seed {a.seed}, {a.rounds} kill -9 rounds, the store opened every time; "
          f"sent {sent[1]} QoS 1 + {sent[2]} QoS 2, acknowledged {len(acked[1])} + {len(acked[2])}, "
          f"never acknowledged {unacked}; lost {len(missing[1])} + {len(missing[2])}; "
          f"duplicates QoS 1 {dup1}, QoS 2 {dup2}")
    if lost or dup2 or unacked:
        print(f"chaos: FAILED (log in {workdir}/weir.log); first missing: "
              f"{sorted(missing[1])[:5]} {sorted(missing[2])[:5]}", file=sys.stderr)
        sys.exit(1)


if __name__ == "__main__":
    main()
