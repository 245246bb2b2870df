//! rumqttc's 3.1.1 (`C4`) and 5.0 (`C5`) clients, each driven by a task that forwards
//! its events, so a test can wait for the packet it expects with a timeout.

use std::time::Duration;
use tokio::sync::mpsc;
use tokio::task::JoinHandle;

/// How long a test waits for something that should happen.
pub const WAIT: Duration = Duration::from_secs(5);
/// How long a test watches for something that should not happen.
pub const QUIET: Duration = Duration::from_millis(500);

macro_rules! client {
    ($name:ident) => {
        pub struct $name {
            pub client: m::AsyncClient,
            events: mpsc::UnboundedReceiver<Result<m::Incoming, String>>,
            task: JoinHandle<()>,
        }

        #[allow(dead_code)]
        impl $name {
            pub fn opts(port: u16, id: &str) -> m::MqttOptions {
                let mut o = m::MqttOptions::new(id, "127.0.0.1", port);
                o.set_keep_alive(Duration::from_secs(30));
                o
            }

            /// Connects and returns the client with the broker's CONNACK.
            pub async fn connect_with(opts: m::MqttOptions) -> ($name, p::ConnAck) {
                let c = Self::start(opts);
                c.await_connack().await
            }

            /// Starts connecting; the caller reads the outcome from the events.
            pub fn start(opts: m::MqttOptions) -> $name {
                let (client, mut eventloop) = m::AsyncClient::new(opts, 100);
                let (tx, events) = mpsc::unbounded_channel();
                let task = tokio::spawn(async move {
                    loop {
                        match eventloop.poll().await {
                            Ok(m::Event::Incoming(p)) => {
                                if tx.send(Ok(p)).is_err() {
                                    return;
                                }
                            }
                            Ok(_) => {}
                            Err(e) => {
                                let _ = tx.send(Err(e.to_string()));
                                return;
                            }
                        }
                    }
                });
                $name {
                    client,
                    events,
                    task,
                }
            }

            pub async fn await_connack(mut self) -> ($name, p::ConnAck) {
                loop {
                    match self.next(WAIT).await {
                        Some(Ok(m::Incoming::ConnAck(c))) => return (self, c),
                        Some(Ok(_)) => {}
                        other => panic!("expected CONNACK, got {other:?}"),
                    }
                }
            }

            /// The next packet or connection error, or `None` on timeout.
            pub async fn next(&mut self, d: Duration) -> Option<Result<m::Incoming, String>> {
                tokio::time::timeout(d, self.events.recv())
                    .await
                    .ok()
                    .flatten()
            }

            pub async fn publish_within(&mut self, d: Duration) -> Option<p::Publish> {
                let deadline = tokio::time::Instant::now() + d;
                loop {
                    let left = deadline.saturating_duration_since(tokio::time::Instant::now());
                    match self.next(left).await {
                        Some(Ok(m::Incoming::Publish(p))) => return Some(p),
                        Some(Ok(_)) => {}
                        _ => return None,
                    }
                }
            }

            /// The next PUBLISH; panics if none arrives in time.
            pub async fn publish(&mut self) -> p::Publish {
                self.publish_within(WAIT).await.expect("expected a PUBLISH")
            }

            /// Collects PUBLISH packets until `QUIET` passes without one.
            pub async fn drain_publishes(&mut self) -> Vec<p::Publish> {
                let mut out = Vec::new();
                while let Some(p) = self.publish_within(QUIET).await {
                    out.push(p);
                }
                out
            }

            /// Publishes; panics if the client refuses the request.
            pub async fn send(
                &self,
                topic: impl Into<String>,
                qos: QoS,
                retain: bool,
                payload: impl Into<Vec<u8>>,
            ) {
                self.client
                    .publish(topic, qos, retain, payload.into())
                    .await
                    .expect("publish request");
            }

            /// The payloads of the PUBLISH packets `drain_publishes` collects, as text.
            pub async fn drain_payloads(&mut self) -> Vec<String> {
                let msgs = self.drain_publishes().await;
                msgs.iter()
                    .map(|m| String::from_utf8_lossy(&m.payload).into_owned())
                    .collect()
            }

            pub async fn suback(&mut self) -> p::SubAck {
                loop {
                    match self.next(WAIT).await {
                        Some(Ok(m::Incoming::SubAck(s))) => return s,
                        Some(Ok(_)) => {}
                        other => panic!("expected SUBACK, got {other:?}"),
                    }
                }
            }

            pub async fn subscribe(&mut self, filter: &str, qos: QoS) -> p::SubAck {
                self.client
                    .subscribe(filter, qos)
                    .await
                    .expect("subscribe request");
                self.suback().await
            }

            /// Waits for the connection to end. Returns what was seen last, packets and the
            /// client's closing error (which names a server DISCONNECT's reason code).
            pub async fn closed_within(&mut self, d: Duration) -> Option<String> {
                let deadline = tokio::time::Instant::now() + d;
                let mut seen = String::new();
                loop {
                    let left = deadline.saturating_duration_since(tokio::time::Instant::now());
                    match tokio::time::timeout(left, self.events.recv()).await {
                        Ok(Some(Ok(p))) => seen.push_str(&format!("{p:?}; ")),
                        Ok(Some(Err(e))) => return Some(seen + &e),
                        Ok(None) => return Some(seen),
                        Err(_) => return None,
                    }
                }
            }

            /// Drops the network connection without DISCONNECT.
            pub fn drop_connection(self) {
                self.task.abort();
            }

            /// A clean DISCONNECT, then waits for the event loop to finish.
            pub async fn disconnect(mut self) {
                let _ = self.client.disconnect().await;
                let _ = self.closed_within(WAIT).await;
            }
        }
    };
}

/// The 3.1.1 client.
pub mod v4 {
    use super::*;
    use rumqttc as m;
    use rumqttc as p;
    pub use rumqttc::QoS;
    client!(C4);
}

/// The 5.0 client.
pub mod v5 {
    use super::*;
    use rumqttc::v5 as m;
    pub use rumqttc::v5::mqttbytes::v5 as p;
    pub use rumqttc::v5::mqttbytes::QoS;
    client!(C5);

    /// Will properties with only a Will Delay Interval (rumqttc's type has no `Default`).
    pub fn will_delay(delay: u32) -> p::LastWillProperties {
        p::LastWillProperties {
            delay_interval: Some(delay),
            payload_format_indicator: None,
            message_expiry_interval: None,
            content_type: None,
            response_topic: None,
            correlation_data: None,
            user_properties: vec![],
        }
    }
}

pub use v4::C4;
pub use v5::C5;
