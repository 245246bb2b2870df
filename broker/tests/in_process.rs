//! Connections driven in-process: `serve` over `tokio::io::duplex`, a scripted store and
//! scripted hooks, and a client made of the broker's own codec. Fast and exact where the
//! black-box tests (which start the real binary) cannot be: acknowledgements held for a
//! commit the test controls, takeover, throttling on a paused clock, and the fragile
//! spots where one slow thing (a plugin, a disk) must not stall other clients.

use bytes::{Bytes, BytesMut};
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Condvar, Mutex};
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt, DuplexStream};
use tokio::sync::watch;
use weir::broker::Broker;
use weir::codec::{
    self, Ack, AckKind, ConnAck, Connect, Disconnect, Packet, Properties, PropertySet, Publish,
    QoS, ReasonCode, SubAck, Subscribe, SubscriptionOptions, Version,
};
use weir::config::Config;
use weir::connection::{serve, ListenerInfo, Peer};
use weir::hooks::{
    Action, AllowAll, AuthOutcome, ClientHooks, ClientInfo, ConnectInfo, Decision, Hooks, Identity,
    PublishOutcome, RateEvent, RateOutcome,
};
use weir::message::Message;
use weir::server::Housekeeper;
use weir::store::{
    Commit, RetainedStore, SessionMeta, SessionStore, SpillStore, StoreError, StoredDelivery,
    StoredSession,
};

const PATIENCE: Duration = Duration::from_secs(10);

// ---- a latch: a thread waits in it until the test opens it

#[derive(Default)]
struct Latch {
    open: Mutex<bool>,
    opened: Condvar,
    entered: AtomicUsize,
}

impl Latch {
    fn wait(&self) {
        self.entered.fetch_add(1, Ordering::SeqCst);
        let mut open = self.open.lock().unwrap();
        while !*open {
            open = self.opened.wait(open).unwrap();
        }
    }

    fn open(&self) {
        *self.open.lock().unwrap() = true;
        self.opened.notify_all();
    }

    /// Waits until some thread is inside [`Latch::wait`].
    async fn entered(&self) {
        let deadline = tokio::time::Instant::now() + PATIENCE;
        while self.entered.load(Ordering::SeqCst) == 0 {
            assert!(
                tokio::time::Instant::now() < deadline,
                "nobody reached the latch"
            );
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    }
}

/// Opens the latch when the test ends, passed or failed, so no runtime thread is left
/// waiting in it.
struct OpenOnDrop(Arc<Latch>);

impl Drop for OpenOnDrop {
    fn drop(&mut self) {
        self.0.open();
    }
}

// ---- a store whose commits are durable only when the test says, and whose session
// deletion can be held in a latch

struct Scripted {
    issued: AtomicU64,
    durable: watch::Sender<u64>,
    manual: bool,
    deleting: Option<Arc<Latch>>,
}

impl Scripted {
    fn new(manual: bool, deleting: Option<Arc<Latch>>) -> Arc<Scripted> {
        Arc::new(Scripted {
            issued: AtomicU64::new(0),
            durable: watch::channel(0).0,
            manual,
            deleting,
        })
    }

    /// Makes everything committed so far durable.
    fn sync(&self) {
        self.durable
            .send_replace(self.issued.load(Ordering::SeqCst));
    }
}

impl RetainedStore for Scripted {
    fn save_retained(&self, _: &str, _: Option<&Message>) -> Result<(), StoreError> {
        Ok(())
    }
    fn load_retained(&self) -> Result<Vec<Message>, StoreError> {
        Ok(Vec::new())
    }
}

impl SessionStore for Scripted {
    fn save_session(&self, _: &SessionMeta) -> Result<(), StoreError> {
        Ok(())
    }
    fn delete_session(&self, _: &str) -> Result<(), StoreError> {
        if let Some(latch) = &self.deleting {
            latch.wait();
        }
        Ok(())
    }
    fn load_sessions(&self) -> Result<Vec<StoredSession>, StoreError> {
        Ok(Vec::new())
    }
    fn save_delivery(&self, _: &str, _: u64, _: &StoredDelivery) -> Result<(), StoreError> {
        Ok(())
    }
    fn delete_delivery(&self, _: &str, _: u64) -> Result<(), StoreError> {
        Ok(())
    }
    fn save_incoming(&self, _: &str, _: u16, _: bool) -> Result<(), StoreError> {
        Ok(())
    }
}

impl SpillStore for Scripted {}

impl Commit for Scripted {
    fn commit(&self) -> u64 {
        if !self.manual {
            return 0;
        }
        self.issued.fetch_add(1, Ordering::SeqCst) + 1
    }
    fn durable(&self) -> watch::Receiver<u64> {
        self.durable.subscribe()
    }
    fn flush(&self) -> Result<(), StoreError> {
        Ok(())
    }
}

// ---- hooks that do what the test says

#[derive(Default)]
struct Script {
    /// Refuse every CONNECT with this reason string.
    refuse: Option<String>,
    /// Throttle the publisher for this long after a message to this topic.
    throttle: Option<(&'static str, Duration)>,
    /// Authorizations with no connection behind them (a shared subscription's member
    /// being picked) wait here for topics under `held/`.
    picking: Option<Arc<Latch>>,
}

struct ScriptClient(Arc<Script>);

impl Hooks for Script {
    fn authenticate(&self, _: &ConnectInfo<'_>) -> AuthOutcome {
        match &self.refuse {
            Some(reason) => AuthOutcome::Deny {
                code: ReasonCode::NotAuthorized,
                reason: reason.clone(),
            },
            None => AuthOutcome::Allow {
                username: None,
                attributes: Vec::new(),
            },
        }
    }

    fn open(self: Arc<Self>, _: Arc<Identity>) -> Box<dyn ClientHooks> {
        Box::new(ScriptClient(self))
    }

    fn authorize(&self, _: &ClientInfo<'_>, _: Action, topic: &str, _: QoS, _: bool) -> Decision {
        if let Some(latch) = self.picking.as_ref().filter(|_| topic.starts_with("held/")) {
            latch.wait();
        }
        Decision::Allow
    }

    fn authorizes(&self) -> bool {
        true
    }

    fn limits_rate(&self) -> bool {
        false
    }
}

impl ClientHooks for ScriptClient {
    fn authorize(&mut self, a: Action, t: &str, q: QoS, r: bool) -> Decision {
        AllowAll.authorize(a, t, q, r)
    }

    fn publish(&mut self, m: &mut Message) -> PublishOutcome {
        let throttle = self
            .0
            .throttle
            .filter(|(topic, _)| *topic == &*m.topic)
            .map(|(_, d)| d);
        PublishOutcome::Route { throttle }
    }

    fn rate_limit(&mut self, _: RateEvent) -> RateOutcome {
        RateOutcome::Allow
    }
}

// ---- a broker, and clients speaking to it over in-memory pipes

struct Setup {
    broker: Arc<Broker>,
    listener: Arc<ListenerInfo>,
    shutdown: watch::Sender<bool>,
}

impl Setup {
    fn new(hooks: Script, store: Arc<Scripted>) -> Setup {
        let broker = Broker::with_store(Config::default(), Arc::new(hooks), store)
            .expect("a broker over the scripted store");
        Setup {
            broker,
            listener: Arc::new(ListenerInfo::new(Arc::from("test"), true, 1 << 20, false)),
            shutdown: watch::channel(false).0,
        }
    }

    /// A new connection to the broker, served by its own task.
    fn dial(&self) -> Client {
        let (client, server) = tokio::io::duplex(1 << 16);
        let peer = Peer {
            addr: "127.0.0.1:1".parse().unwrap(),
            certificate: None,
            accepted: tokio::time::Instant::now(),
        };
        let (b, l, s) = (
            self.broker.clone(),
            self.listener.clone(),
            self.shutdown.subscribe(),
        );
        tokio::spawn(serve(server, peer, l, b, s, None));
        Client {
            io: client,
            buf: BytesMut::new(),
        }
    }

    /// A 5.0 client, connected: its CONNACK.
    async fn connect(&self, id: &str, clean: bool, expiry: u32) -> (Client, ConnAck) {
        let mut c = self.dial();
        let mut properties = Properties::default();
        if expiry > 0 {
            properties.session_expiry_interval = Some(expiry);
        }
        c.send(connect_packet(id, clean, properties)).await;
        match c.recv().await {
            Some(Packet::ConnAck(a)) => (c, a),
            other => panic!("{id}: expected CONNACK, got {other:?}"),
        }
    }
}

fn connect_packet(id: &str, clean: bool, properties: Properties) -> Packet {
    Packet::Connect(Box::new(Connect {
        version: Version::V5,
        clean_start: clean,
        keep_alive: 0,
        client_id: id.into(),
        will: None,
        username: None,
        password: None,
        properties,
    }))
}

struct Client {
    io: DuplexStream,
    buf: BytesMut,
}

impl Client {
    async fn send(&mut self, p: Packet) {
        let mut b = BytesMut::new();
        p.encode(Version::V5, &mut b).expect("encodable");
        self.io.write_all(&b).await.expect("the broker is reading");
    }

    /// The next packet from the broker; `None` if it closed or said nothing for
    /// `within`.
    async fn recv_within(&mut self, within: Duration) -> Option<Packet> {
        let read = async {
            loop {
                if let Some(n) = codec::frame_len(&self.buf, usize::MAX).expect("valid frame") {
                    let frame: Bytes = self.buf.split_to(n).freeze();
                    return Some(codec::decode(frame, Version::V5).expect("decodable"));
                }
                if self.io.read_buf(&mut self.buf).await.ok()? == 0 {
                    return None;
                }
            }
        };
        tokio::time::timeout(within, read).await.ok().flatten()
    }

    async fn recv(&mut self) -> Option<Packet> {
        self.recv_within(PATIENCE).await
    }

    async fn subscribe(&mut self, pid: u16, filter: &str, qos: QoS) {
        let options = SubscriptionOptions {
            qos,
            ..Default::default()
        };
        self.send(Packet::Subscribe(Subscribe {
            pid,
            filters: vec![(filter.into(), options)],
            properties: Properties::default(),
        }))
        .await;
    }

    async fn publish(&mut self, pid: u16, topic: &str, qos: QoS, retain: bool) {
        self.send(Packet::Publish(Publish {
            dup: false,
            qos,
            retain,
            topic: topic.into(),
            pid,
            properties: Properties::default(),
            payload: Bytes::from_static(b"x"),
        }))
        .await;
    }
}

fn suback_of(p: Option<Packet>) -> SubAck {
    match p {
        Some(Packet::SubAck(s)) => s,
        other => panic!("expected SUBACK, got {other:?}"),
    }
}

fn puback_pid(p: Option<Packet>) -> u16 {
    match p {
        Some(Packet::Ack(a)) if a.kind == AckKind::PubAck => a.pid,
        other => panic!("expected PUBACK, got {other:?}"),
    }
}

// ---- the tests

/// An acknowledgement that promises durability waits for the commit, and nothing that
/// comes after it overtakes it: not a later PUBACK that needed no commit, not the
/// retained message a SUBACK brings.
#[tokio::test]
async fn held_acknowledgements_wait_for_the_commit_and_keep_their_order() {
    let store = Scripted::new(true, None);
    let setup = Setup::new(Script::default(), store.clone());
    let (mut sub, _) = setup.connect("keeper", true, 600).await;
    sub.subscribe(1, "kept/#", QoS::AtLeastOnce).await;
    assert!(
        sub.recv_within(Duration::from_millis(200)).await.is_none(),
        "SUBACK before the commit"
    );
    store.sync();
    assert_eq!(suback_of(sub.recv().await).codes, [ReasonCode::GrantedQos1]);

    let (mut publisher, _) = setup.connect("publisher", true, 0).await;
    publisher.publish(1, "kept/a", QoS::AtLeastOnce, true).await; // stored for `keeper`
    publisher.publish(2, "other", QoS::AtLeastOnce, false).await; // nothing to store
    assert!(
        publisher
            .recv_within(Duration::from_millis(200))
            .await
            .is_none(),
        "a PUBACK went out before the commit"
    );
    store.sync();
    assert_eq!(puback_pid(publisher.recv().await), 1);
    assert_eq!(puback_pid(publisher.recv().await), 2);

    // A retained message follows its SUBACK, which waits for the commit.
    let (mut late, _) = setup.connect("late", true, 600).await;
    late.subscribe(7, "kept/#", QoS::AtLeastOnce).await;
    assert!(late.recv_within(Duration::from_millis(200)).await.is_none());
    store.sync();
    assert_eq!(suback_of(late.recv().await).pid, 7);
    // The retained message is stored for the session, and sent once its packet id is.
    store.sync();
    match late.recv().await {
        Some(Packet::Publish(p)) => assert!(p.retain && &*p.topic == "kept/a", "{p:?}"),
        other => panic!("expected the retained PUBLISH, got {other:?}"),
    }
}

#[tokio::test]
async fn a_second_connection_with_the_client_id_takes_the_session_over() {
    let setup = Setup::new(Script::default(), Scripted::new(false, None));
    let (mut first, ack) = setup.connect("twin", false, 600).await;
    assert!(!ack.session_present);
    first.subscribe(1, "t", QoS::AtLeastOnce).await;
    suback_of(first.recv().await);
    let (_second, ack) = setup.connect("twin", false, 600).await;
    assert!(ack.session_present, "the session is resumed");
    match first.recv().await {
        Some(Packet::Disconnect(d)) => assert_eq!(d.code, ReasonCode::SessionTakenOver),
        other => panic!("expected DISCONNECT 0x8E, got {other:?}"),
    }
    assert!(
        first.recv().await.is_none(),
        "the first connection is closed"
    );
    assert_eq!(setup.broker.connected_clients().len(), 1);
}

/// A throttle from the hooks stops reading the client for that long after the
/// message: the next message is acknowledged only when it is over.
#[tokio::test(start_paused = true)]
async fn a_throttled_client_is_not_read_until_the_throttle_ends() {
    let script = Script {
        throttle: Some(("slow", Duration::from_secs(5))),
        ..Default::default()
    };
    let setup = Setup::new(script, Scripted::new(false, None));
    let (mut c, _) = setup.connect("hurried", true, 0).await;
    c.publish(1, "slow", QoS::AtLeastOnce, false).await;
    c.publish(2, "fast", QoS::AtLeastOnce, false).await;
    assert_eq!(
        puback_pid(c.recv().await),
        1,
        "the throttled message itself goes"
    );
    let started = tokio::time::Instant::now();
    assert!(
        c.recv_within(Duration::from_secs(4)).await.is_none(),
        "read during the throttle"
    );
    assert_eq!(puback_pid(c.recv().await), 2);
    assert!(started.elapsed() >= Duration::from_secs(5) - Duration::from_millis(10));
}

/// Picking a shared subscription's member asks the hooks (a plugin call with a
/// deadline). It happens after the router's lock is released: a SUBSCRIBE of another
/// client, which needs that lock to write, does not wait for the plugin.
#[tokio::test(flavor = "multi_thread", worker_threads = 3)]
async fn a_slow_pick_of_a_shared_member_does_not_hold_up_subscribes() {
    let latch = Arc::new(Latch::default());
    let _open = OpenOnDrop(latch.clone());
    let script = Script {
        picking: Some(latch.clone()),
        ..Default::default()
    };
    let setup = Setup::new(script, Scripted::new(false, None));
    let (mut member, _) = setup.connect("member", true, 0).await;
    member
        .subscribe(1, "$share/g/held/#", QoS::AtMostOnce)
        .await;
    suback_of(member.recv().await);
    let (mut publisher, _) = setup.connect("publisher", true, 0).await;
    publisher.publish(0, "held/x", QoS::AtMostOnce, false).await;
    latch.entered().await;

    let (mut other, _) = setup.connect("other", true, 0).await;
    other.subscribe(2, "else/#", QoS::AtMostOnce).await;
    let suback = other.recv().await;
    assert_eq!(suback_of(suback).pid, 2, "SUBSCRIBE waited for the plugin");

    latch.open();
    match member.recv().await {
        Some(Packet::Publish(p)) => assert_eq!(&*p.topic, "held/x"),
        other => panic!("the member got {other:?}"),
    }
}

/// Ending a session deletes its stored backlog. That happens under the claim of its own
/// client id only: other clients connect and disconnect meanwhile.
#[tokio::test(flavor = "multi_thread", worker_threads = 3)]
async fn deleting_a_session_holds_up_no_other_client() {
    let latch = Arc::new(Latch::default());
    let _open = OpenOnDrop(latch.clone());
    let setup = Setup::new(Script::default(), Scripted::new(false, Some(latch.clone())));
    let (mut heavy, _) = setup.connect("heavy", false, 600).await;
    heavy.send(Packet::Disconnect(Disconnect::default())).await;
    assert!(heavy.recv().await.is_none());
    // A clean start ends the stored session: its deletion waits in the latch.
    let mut again = setup.dial();
    again
        .send(connect_packet("heavy", true, Properties::default()))
        .await;
    latch.entered().await;

    for round in 0..3 {
        let (mut other, ack) = setup.connect("light", round == 0, 600).await;
        assert_eq!(ack.code, ReasonCode::Success);
        other.send(Packet::Disconnect(Disconnect::default())).await;
        assert!(other.recv().await.is_none(), "round {round}");
    }
    assert!(again
        .recv_within(Duration::from_millis(100))
        .await
        .is_none());
    latch.open();
    match again.recv().await {
        Some(Packet::ConnAck(a)) => assert!(!a.session_present),
        other => panic!("heavy got {other:?}"),
    }
}

/// Housekeeping (expiring sessions, which deletes what they stored) runs on a thread of
/// its own: while it waits on the store, connections on the runtime are served.
#[tokio::test]
async fn housekeeping_waits_on_the_store_off_the_runtime() {
    let latch = Arc::new(Latch::default());
    let _open = OpenOnDrop(latch.clone());
    let setup = Setup::new(Script::default(), Scripted::new(false, Some(latch.clone())));
    let (mut brief, _) = setup.connect("brief", true, 1).await;
    brief.send(Packet::Disconnect(Disconnect::default())).await;
    assert!(brief.recv().await.is_none());
    let _housekeeping =
        Housekeeper::every(setup.broker.clone(), Duration::from_millis(50)).unwrap();
    latch.entered().await;
    // This runtime has one thread: had housekeeping run on it, nothing would answer.
    let (mut c, _) = setup.connect("pinger", true, 0).await;
    c.send(Packet::PingReq).await;
    assert_eq!(
        c.recv_within(Duration::from_secs(5)).await,
        Some(Packet::PingResp)
    );
    latch.open();
}

/// A refusal's reason string is the hooks' to choose, of any length: one too long for
/// MQTT, or for the client's Maximum Packet Size, is left out, never a corrupt CONNACK.
#[tokio::test]
async fn an_overlong_refusal_reason_is_left_out_of_a_valid_connack() {
    let script = Script {
        refuse: Some("no ".repeat(30_000)),
        ..Default::default()
    };
    let setup = Setup::new(script, Scripted::new(false, None));
    for max in [None, Some(64)] {
        let mut c = setup.dial();
        let properties: Properties = PropertySet {
            maximum_packet_size: max,
            ..Default::default()
        }
        .into();
        c.send(connect_packet("refused", true, properties)).await;
        match c.recv().await {
            Some(Packet::ConnAck(a)) => {
                assert_eq!(a.code, ReasonCode::NotAuthorized);
                assert_eq!(a.properties.reason_string, None, "max {max:?}");
            }
            other => panic!("expected CONNACK, got {other:?}"),
        }
    }
    let short = Script {
        refuse: Some("go away".into()),
        ..Default::default()
    };
    let setup = Setup::new(short, Scripted::new(false, None));
    let mut c = setup.dial();
    c.send(connect_packet("refused", true, Properties::default()))
        .await;
    match c.recv().await {
        Some(Packet::ConnAck(a)) => assert_eq!(
            a.properties.reason_string.as_deref(),
            Some("authentication failed: go away")
        ),
        other => panic!("expected CONNACK, got {other:?}"),
    }
}

#[test]
fn acks_carry_typed_codes() {
    let a = Ack::with_code(AckKind::PubAck, 1, ReasonCode::QuotaExceeded);
    let mut b = BytesMut::new();
    Packet::Ack(a.clone()).encode(Version::V5, &mut b).unwrap();
    assert_eq!(&b[..], &[0x40, 3, 0, 1, 0x97]);
    assert_eq!(codec::decode(b.freeze(), Version::V5), Ok(Packet::Ack(a)));
}

/// The DISCONNECT that ends a connection for a protocol error carries the cause as a
/// reason string, unless the client's Maximum Packet Size has no room for it.
#[tokio::test]
async fn a_disconnect_leaves_out_the_reason_string_a_small_client_cannot_take() {
    let setup = Setup::new(Script::default(), Scripted::new(false, None));
    for (max, reason) in [(None, true), (Some(16), false)] {
        let mut c = setup.dial();
        let properties: Properties = PropertySet {
            maximum_packet_size: max,
            ..Default::default()
        }
        .into();
        c.send(connect_packet("clumsy", true, properties)).await;
        assert!(matches!(c.recv().await, Some(Packet::ConnAck(_))));
        c.send(Packet::ConnAck(ConnAck::default())).await; // only servers send CONNACK
        match c.recv().await {
            Some(Packet::Disconnect(d)) => {
                assert_eq!(d.code, ReasonCode::ProtocolError);
                assert_eq!(d.properties.reason_string.is_some(), reason, "max {max:?}");
            }
            other => panic!("expected DISCONNECT, got {other:?}"),
        }
    }
}

fn ack_of(p: Option<Packet>, kind: AckKind) -> u16 {
    match p {
        Some(Packet::Ack(a)) if a.kind == kind => a.pid,
        other => panic!("expected {kind:?}, got {other:?}"),
    }
}

/// A PUBREL waits for the record that the client has the message: were it to go first,
/// a crash could leave the PUBLISH to be sent again after the client had completed it,
/// and the client would take it twice. A PUBCOMP waits for the record of the release:
/// the client may use the packet id again once it has it. (Both found by
/// tests/reliability/chaos.)
#[tokio::test]
async fn pubrel_and_pubcomp_wait_for_the_commit() {
    let store = Scripted::new(true, None);
    let setup = Setup::new(Script::default(), store.clone());
    let (mut sub, _) = setup.connect("taker", true, 600).await;
    sub.subscribe(1, "q2/#", QoS::ExactlyOnce).await;
    // Each step is handled (and waits for its commit) before the store syncs.
    let quiet = Duration::from_millis(200);
    assert!(sub.recv_within(quiet).await.is_none());
    store.sync();
    suback_of(sub.recv().await);
    let (mut publisher, _) = setup.connect("giver", true, 600).await;
    publisher.publish(5, "q2/a", QoS::ExactlyOnce, false).await;
    assert!(publisher.recv_within(quiet).await.is_none());
    store.sync();
    assert_eq!(ack_of(publisher.recv().await, AckKind::PubRec), 5);
    // The delivery goes out once its packet id is durable (by now, or after this sync).
    store.sync();
    let pid = match sub.recv().await {
        Some(Packet::Publish(p)) => p.pid,
        other => panic!("expected the PUBLISH, got {other:?}"),
    };
    sub.send(Packet::Ack(Ack::new(AckKind::PubRec, pid))).await;
    assert!(
        sub.recv_within(Duration::from_millis(200)).await.is_none(),
        "PUBREL before the commit"
    );
    store.sync();
    assert_eq!(ack_of(sub.recv().await, AckKind::PubRel), pid);

    publisher
        .send(Packet::Ack(Ack::new(AckKind::PubRel, 5)))
        .await;
    assert!(
        publisher
            .recv_within(Duration::from_millis(200))
            .await
            .is_none(),
        "PUBCOMP before the commit"
    );
    store.sync();
    assert_eq!(ack_of(publisher.recv().await, AckKind::PubComp), 5);
}
