//! Why a connection ends, and the ending: the last word to the client, the session
//! handed back, the will published or scheduled.

use super::framed::WRITE_TIMEOUT;
use super::Connection;
use crate::codec::{self, Disconnect, Packet, Properties, ReasonCode, Version};
use crate::events::Event;
use crate::metrics::Ending;
use crate::session::will_message;
use bytes::BytesMut;
use std::sync::Arc;
use tokio::io::{AsyncRead, AsyncWrite};

/// Why a connection ended. Decides the DISCONNECT sent, whether the will is published,
/// and the log line.
#[derive(Debug)]
pub(super) enum Exit {
    /// The client sent DISCONNECT; `will` for 5.0 reason 0x04.
    ClientDisconnect {
        will: bool,
    },
    Closed,
    Io(std::io::Error),
    Protocol {
        code: ReasonCode,
        cause: String,
    },
    KeepAlive,
    /// The client stopped reading: a write made no progress for `WRITE_TIMEOUT`.
    WriteStalled,
    TakenOver,
    Kicked(ReasonCode),
    Shutdown,
}

impl Exit {
    pub(super) fn protocol(code: ReasonCode, cause: impl Into<String>) -> Exit {
        Exit::Protocol {
            code,
            cause: cause.into(),
        }
    }

    fn sends_will(&self) -> bool {
        match self {
            Exit::ClientDisconnect { will } => *will,
            Exit::Shutdown => false,
            _ => true,
        }
    }

    /// The reason code of the DISCONNECT a 5.0 client is sent.
    fn disconnect_code(&self) -> Option<ReasonCode> {
        match self {
            Exit::Protocol { code, .. } => Some(*code),
            Exit::KeepAlive => Some(ReasonCode::KeepAliveTimeout),
            Exit::TakenOver => Some(ReasonCode::SessionTakenOver),
            Exit::Kicked(c) => Some(*c),
            Exit::Shutdown => Some(ReasonCode::ServerShuttingDown),
            _ => None,
        }
    }

    /// The reason code observers are told: the DISCONNECT's, whichever side sent it;
    /// 0x80 for a connection that ended without one.
    fn event_code(&self) -> u8 {
        match self {
            Exit::ClientDisconnect { will: false } => 0x00,
            Exit::ClientDisconnect { will: true } => 0x04,
            other => other
                .disconnect_code()
                .unwrap_or(ReasonCode::UnspecifiedError)
                .into(),
        }
    }

    /// How `/metrics` counts it.
    fn ending(&self) -> Ending {
        match self {
            Exit::ClientDisconnect { .. } => Ending::Client,
            Exit::Closed => Ending::Closed,
            Exit::Io(_) => Ending::NetworkError,
            Exit::Protocol { .. } => Ending::ProtocolError,
            Exit::KeepAlive => Ending::KeepAlive,
            Exit::WriteStalled => Ending::WriteStalled,
            Exit::TakenOver => Ending::TakenOver,
            Exit::Kicked(_) => Ending::Kicked,
            Exit::Shutdown => Ending::Shutdown,
        }
    }

    pub(super) fn describe(&self) -> String {
        match self {
            Exit::ClientDisconnect { will: false } => "client sent DISCONNECT".into(),
            Exit::ClientDisconnect { will: true } => "client sent DISCONNECT with will".into(),
            Exit::Closed => "connection closed by client without DISCONNECT".into(),
            Exit::Io(e) => format!("network error: {e}"),
            Exit::Protocol { code, cause } => format!("{cause} (reason {code})"),
            Exit::KeepAlive => "keep alive timeout".into(),
            Exit::WriteStalled => format!("client read nothing for {}s", WRITE_TIMEOUT.as_secs()),
            Exit::TakenOver => "session taken over by a new connection".into(),
            Exit::Kicked(c) => format!("disconnected by the server (reason {c})"),
            Exit::Shutdown => "server shutting down".into(),
        }
    }
}

impl From<codec::Error> for Exit {
    fn from(e: codec::Error) -> Exit {
        Exit::protocol(e.reason_code(), e.to_string())
    }
}

impl<S: AsyncRead + AsyncWrite + Unpin + Send> Connection<S> {
    /// Says goodbye (5.0 DISCONNECT where the server ends it), hands the session back
    /// and publishes or schedules the will.
    pub(super) async fn finish(mut self, exit: Exit) {
        let mut last = BytesMut::new();
        if let (Version::V5, Some(code)) = (self.client.version, exit.disconnect_code()) {
            let mut properties = Properties::default();
            if let Exit::Protocol { cause, .. } = &exit {
                properties.reason_string = Some(cause.clone());
            }
            let mut bye = Packet::Disconnect(Disconnect { code, properties });
            let max = self.outbound.client_max_packet();
            if let Err(e) = bye.encode_within(Version::V5, max, &mut last) {
                tracing::warn!(client_id = %self.client.client_id, error = %e, "DISCONNECT not sent");
            }
        }
        self.io.goodbye(&last).await;
        let said_why = !last.is_empty() && !matches!(exit, Exit::Shutdown);
        let client_id = &self.client.client_id;
        let will = self
            .inbound
            .take_will()
            .filter(|_| exit.sends_will())
            .map(|w| {
                let delay = w.properties.will_delay_interval.unwrap_or(0);
                (Arc::new(will_message(&w, client_id)), delay)
            });
        match exit {
            // The new connection resumed or replaced the session.
            Exit::TakenOver => (self.broker).leave_taken_over(client_id, self.client.conn_id, will),
            _ => self.broker.detach(&self.session, self.client.conn_id, will),
        }
        self.broker.metrics().disconnected();
        self.broker.metrics().ended(exit.ending());
        self.client.listener.disconnected(self.client.version);
        let reason = exit.describe();
        tracing::info!(client_id = %client_id, peer = %self.client.peer, listener = %self.client.listener.name,
            protocol = %self.client.version, reason = %reason, "client disconnected");
        self.broker.events().emit(|| Event::Disconnected {
            client_id: client_id.clone(),
            reason_code: exit.event_code(),
            reason,
        });
        // Only now: the session and the will must not wait on a client's last bytes.
        if said_why {
            self.io.linger().await;
        }
    }
}
