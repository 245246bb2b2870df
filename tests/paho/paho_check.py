"""Black-box checks of a running Weir broker with paho-mqtt (Python), MQTT 3.1.1 and 5.0.

Usage: python3 paho_check.py PORT. Exits non-zero with a message on the first failure.
"""

import queue
import sys
import time
import uuid

import paho.mqtt.client as mqtt
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties
from paho.mqtt.subscribeoptions import SubscribeOptions

PORT = int(sys.argv[1])
WAIT = 5.0


def client(protocol, client_id=None, clean=True, **kw):
    """A connected, looping client whose received messages land in `c.inbox`."""
    cid = client_id or f"paho-{uuid.uuid4().hex[:8]}"
    if protocol == mqtt.MQTTv5:
        c = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id=cid, protocol=protocol)
    else:
        c = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id=cid, protocol=protocol, clean_session=clean)
    c.inbox = queue.Queue()
    c.connack = queue.Queue()
    c.subacks = queue.Queue()
    c.on_message = lambda cl, ud, msg: c.inbox.put(msg)
    c.on_connect = lambda cl, ud, flags, rc, props: c.connack.put((flags, rc, props))
    c.on_subscribe = lambda cl, ud, mid, rcs, props: c.subacks.put(rcs)
    if "will" in kw:
        c.will_set(*kw.pop("will"))
    if protocol == mqtt.MQTTv5:
        c.connect("127.0.0.1", PORT, keepalive=30, clean_start=clean, properties=kw.pop("properties", None))
    else:
        c.connect("127.0.0.1", PORT, keepalive=30)
    c.loop_start()
    flags, rc, props = c.connack.get(timeout=WAIT)
    check(rc == 0, f"connect refused: {rc}")
    c.session_present = flags.session_present
    return c


def subscribe(c, topic, qos_or_opts, properties=None):
    if isinstance(qos_or_opts, SubscribeOptions):
        c.subscribe(topic, options=qos_or_opts, properties=properties)
    else:
        c.subscribe(topic, qos_or_opts, properties=properties)
    return c.subacks.get(timeout=WAIT)


def check(ok, what):
    if not ok:
        print(f"FAILED: {what}", file=sys.stderr)
        sys.exit(1)


def receive(c, timeout=WAIT):
    try:
        return c.inbox.get(timeout=timeout)
    except queue.Empty:
        return None


def nothing(c, timeout=0.5):
    return receive(c, timeout) is None


def each_qos(protocol):
    sub = client(protocol)
    pub = client(protocol)
    subscribe(sub, "paho/q/#", 2)
    for qos in (0, 1, 2):
        pub.publish(f"paho/q/{qos}", f"m{qos}", qos=qos).wait_for_publish(WAIT)
        m = receive(sub)
        check(m is not None and m.payload == f"m{qos}".encode() and m.qos == qos, f"qos {qos} round trip ({protocol})")
    for c in (sub, pub):
        c.disconnect()
        c.loop_stop()


def retained(protocol):
    pub = client(protocol)
    topic = f"paho/r/{protocol}"
    pub.publish(topic, "kept", qos=1, retain=True).wait_for_publish(WAIT)
    sub = client(protocol)
    subscribe(sub, topic, 1)
    m = receive(sub)
    check(m is not None and m.retain and m.payload == b"kept", f"retained message on subscribe ({protocol})")
    pub.publish(topic, b"", qos=1, retain=True).wait_for_publish(WAIT)
    late = client(protocol)
    subscribe(late, topic, 1)
    check(nothing(late), f"empty payload deletes the retained message ({protocol})")


def will(protocol):
    watcher = client(protocol)
    subscribe(watcher, "paho/will/#", 1)
    dying = client(protocol, will=("paho/will/x", "gone", 1, False))
    dying.loop_stop()
    dying.socket().close()  # no DISCONNECT
    m = receive(watcher)
    check(m is not None and m.payload == b"gone", f"will on unclean disconnect ({protocol})")


def persistent_311():
    cid = f"paho-keeper-{uuid.uuid4().hex[:6]}"
    c = client(mqtt.MQTTv311, cid, clean=False)
    subscribe(c, "paho/p/#", 1)
    c.disconnect()
    c.loop_stop()
    pub = client(mqtt.MQTTv311)
    pub.publish("paho/p/1", "while away", qos=1).wait_for_publish(WAIT)
    c = client(mqtt.MQTTv311, cid, clean=False)
    check(c.session_present, "3.1.1 session present on resume")
    m = receive(c)
    check(m is not None and m.payload == b"while away", "queued message delivered on resume")


def v5_features():
    sub = client(mqtt.MQTTv5)
    sp = Properties(PacketTypes.SUBSCRIBE)
    sp.SubscriptionIdentifier = 42
    subscribe(sub, "paho/v5/#", SubscribeOptions(qos=1, noLocal=True), properties=sp)
    pub = client(mqtt.MQTTv5)
    props = Properties(PacketTypes.PUBLISH)
    props.ContentType = "application/json"
    props.ResponseTopic = "paho/reply"
    props.CorrelationData = b"\x01\x02"
    props.UserProperty = [("k", "v")]
    props.MessageExpiryInterval = 60
    pub.publish("paho/v5/x", "{}", qos=1, properties=props).wait_for_publish(WAIT)
    m = receive(sub)
    check(m is not None, "5.0 publish received")
    p = m.properties
    check(p.ContentType == "application/json", "content type forwarded")
    check(p.ResponseTopic == "paho/reply", "response topic forwarded")
    check(p.CorrelationData == b"\x01\x02", "correlation data forwarded")
    check(("k", "v") in p.UserProperty, "user property forwarded")
    check(p.SubscriptionIdentifier == [42], f"subscription identifier: {p.SubscriptionIdentifier}")
    check(0 < p.MessageExpiryInterval <= 60, "message expiry forwarded and not increased")
    # No Local: our own publish is not sent back.
    sub.publish("paho/v5/mine", "mine", qos=1).wait_for_publish(WAIT)
    check(nothing(sub), "No Local")
    # Session expiry and resume in 5.0.
    cid = f"paho-v5-{uuid.uuid4().hex[:6]}"
    cp = Properties(PacketTypes.CONNECT)
    cp.SessionExpiryInterval = 60
    c = client(mqtt.MQTTv5, cid, clean=True, properties=cp)
    subscribe(c, "paho/v5s/#", 1)
    c.disconnect()
    c.loop_stop()
    pub.publish("paho/v5s/1", "queued", qos=1).wait_for_publish(WAIT)
    c = client(mqtt.MQTTv5, cid, clean=False, properties=cp)
    check(c.session_present, "5.0 session present on resume")
    m = receive(c)
    check(m is not None and m.payload == b"queued", "5.0 queued message delivered")


if __name__ == "__main__":
    for proto in (mqtt.MQTTv311, mqtt.MQTTv5):
        each_qos(proto)
        retained(proto)
        will(proto)
    persistent_311()
    v5_features()
    print("paho: all checks passed")
