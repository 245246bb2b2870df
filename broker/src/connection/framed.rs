//! The socket of one connection with its read and write buffers: reading frames,
//! sizing the buffers for a quiet or a busy client, writing with a timeout.

use super::exit::Exit;
use crate::codec::{self, ReasonCode};
use bytes::{Bytes, BytesMut};
use std::time::Duration;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};

/// Read buffer of a quiet client, and the size below which a write buffer is not kept.
pub(super) const READ_SMALL: usize = 256;
/// Read buffer of a client that keeps the socket full.
const READ_LARGE: usize = 16 * 1024;
/// Bytes buffered for writing before the connection writes instead of taking more.
pub(super) const WRITE_HIGH_WATER: usize = 256 * 1024;
/// A client that reads nothing for this long while we have data for it is given up on,
/// so a dead peer cannot hold its connection task (and session) forever.
pub(super) const WRITE_TIMEOUT: Duration = Duration::from_secs(60);
/// How long a last word (a refusal, a DISCONNECT) may take to write.
const GOODBYE_TIMEOUT: Duration = Duration::from_secs(1);
/// How long a connection that said its last word keeps reading, so a client still
/// sending reads that word instead of a reset (see [`Framed::linger`]).
const LINGER: Duration = Duration::from_secs(2);
/// How much a lingering connection reads and drops before it closes anyway.
const LINGER_BYTES: usize = 1024 * 1024;

pub(super) struct Framed<S> {
    io: S,
    rbuf: BytesMut,
    wbuf: BytesMut,
    /// The last read was not small: more is coming, so read in large chunks.
    busy_reader: bool,
}

impl<S: AsyncRead + AsyncWrite + Unpin> Framed<S> {
    pub(super) fn new(io: S) -> Framed<S> {
        Framed {
            io,
            rbuf: BytesMut::with_capacity(2 * READ_SMALL),
            wbuf: BytesMut::new(),
            busy_reader: false,
        }
    }

    /// Reads until the first frame is buffered; gives up as soon as the bytes cannot
    /// start a CONNECT.
    pub(super) async fn first_frame(&mut self, max: usize) -> Result<Bytes, Exit> {
        loop {
            if let Some(why) = not_connect(&self.rbuf) {
                return Err(Exit::protocol(ReasonCode::ProtocolError, why));
            }
            if let Some(frame) = self.next_frame(max)? {
                return Ok(frame);
            }
            self.rbuf.reserve(READ_SMALL);
            match self.io.read_buf(&mut self.rbuf).await {
                Ok(0) => return Err(Exit::Closed),
                Ok(_) => {}
                Err(e) => return Err(Exit::Io(e)),
            }
        }
    }

    /// Reads until a whole frame is buffered (during the handshake, an AUTH).
    pub(super) async fn frame(&mut self, max: usize) -> Result<Bytes, Exit> {
        loop {
            if let Some(frame) = self.next_frame(max)? {
                return Ok(frame);
            }
            match self.read().await {
                Ok(0) => return Err(Exit::Closed),
                Ok(_) => {}
                Err(e) => return Err(Exit::Io(e)),
            }
        }
    }

    /// The next complete frame in the read buffer, if one has arrived.
    pub(super) fn next_frame(&mut self, max: usize) -> Result<Option<Bytes>, codec::Error> {
        Ok(codec::frame_len(&self.rbuf, max)?.map(|n| self.rbuf.split_to(n).freeze()))
    }

    /// Where output goes until the next [`Framed::flush`].
    pub(super) fn out(&mut self) -> &mut BytesMut {
        &mut self.wbuf
    }

    /// Writes what is buffered, giving up on a client that reads nothing for
    /// [`WRITE_TIMEOUT`]; the bytes written.
    pub(super) async fn flush(&mut self) -> Result<usize, Exit> {
        let n = self.wbuf.len();
        if n == 0 {
            return Ok(0);
        }
        let write = async {
            self.io.write_all(&self.wbuf).await?;
            // TLS and WebSocket streams buffer; a plain socket flushes for free.
            self.io.flush().await
        };
        match tokio::time::timeout(WRITE_TIMEOUT, write).await {
            Ok(Ok(())) => {}
            Ok(Err(e)) => return Err(Exit::Io(e)),
            Err(_) => return Err(Exit::WriteStalled),
        }
        self.wbuf.clear();
        // Neither a small write nor a past burst should leave a buffer behind that an
        // idle client would keep for hours.
        if n < READ_SMALL || self.wbuf.capacity() > 4 * WRITE_HIGH_WATER {
            self.wbuf = BytesMut::new();
        }
        Ok(n)
    }

    /// Reads what has arrived (at least one byte; 0 at the end of the stream). Most of
    /// a large fleet is idle, so a quiet client reads into a small buffer and keeps
    /// nothing between packets; a client whose last read filled its buffer gets a large
    /// one, so a busy publisher needs few reads.
    pub(super) async fn read(&mut self) -> std::io::Result<usize> {
        if !self.busy_reader && self.rbuf.is_empty() && self.rbuf.capacity() > 4 * READ_SMALL {
            self.rbuf = BytesMut::new();
        }
        let spare = self.rbuf.capacity() - self.rbuf.len();
        if self.busy_reader && spare < 1024 {
            self.rbuf.reserve(READ_LARGE);
        } else if spare < READ_SMALL {
            self.rbuf.reserve(READ_SMALL);
        }
        let spare = self.rbuf.capacity() - self.rbuf.len();
        let n = self.io.read_buf(&mut self.rbuf).await?;
        self.busy_reader = n >= READ_SMALL.min(spare);
        Ok(n)
    }

    /// Writes what is buffered plus `last` within a second, and closes the stream.
    pub(super) async fn goodbye(&mut self, last: &[u8]) {
        self.wbuf.extend_from_slice(last);
        let write = async {
            self.io.write_all(&self.wbuf).await?;
            self.io.flush().await
        };
        let _ = tokio::time::timeout(GOODBYE_TIMEOUT, write).await;
        let _ = tokio::time::timeout(GOODBYE_TIMEOUT, self.io.shutdown()).await;
    }

    /// After [`Framed::goodbye`], reads and drops what the client still sends until it
    /// closes, for at most [`LINGER`] and [`LINGER_BYTES`]. A socket closed under a client
    /// still sending answers its next bytes with a reset; the client's write fails, and
    /// client libraries take that as a lost connection without reading what had arrived
    /// (some stacks even discard it): the very DISCONNECT or CONNACK that says why.
    pub(super) async fn linger(&mut self) {
        self.rbuf = BytesMut::new();
        let mut scratch = vec![0u8; 1024];
        let drain = async {
            let mut total = 0;
            while total < LINGER_BYTES {
                match self.io.read(&mut scratch).await {
                    Ok(0) | Err(_) => break,
                    Ok(n) => total += n,
                }
            }
        };
        let _ = tokio::time::timeout(LINGER, drain).await;
    }
}

/// What the first bytes are, when they cannot start a CONNECT: said in the log so an
/// operator sees at once that, say, a browser or a TLS client hit a plain MQTT port.
fn not_connect(buf: &[u8]) -> Option<&'static str> {
    let first = *buf.first()?;
    if first == 0x10 {
        return None;
    }
    const HTTP: [&[u8]; 6] = [b"GET ", b"POST", b"HEAD", b"PUT ", b"OPTI", b"DELE"];
    Some(
        if HTTP
            .iter()
            .any(|m| buf.starts_with(m) || m.starts_with(buf))
        {
            "plain HTTP request on an MQTT listener"
        } else if first == 0x16 {
            "TLS handshake on a listener without TLS"
        } else {
            "first packet is not CONNECT"
        },
    )
}
