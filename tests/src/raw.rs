//! A raw MQTT client over TCP with hand-written bytes, for what a well-behaved client
//! library will not send: malformed packets, resends, exact reason codes.

use std::io::{Read, Write};
use std::net::TcpStream;
use std::time::Duration;

pub struct Raw {
    pub s: TcpStream,
    buf: Vec<u8>,
}

/// Encodes a remaining length.
pub fn varint(mut n: usize) -> Vec<u8> {
    let mut out = Vec::new();
    loop {
        let mut b = (n % 128) as u8;
        n /= 128;
        if n > 0 {
            b |= 0x80;
        }
        out.push(b);
        if n == 0 {
            return out;
        }
    }
}

pub fn string(s: &str) -> Vec<u8> {
    let mut v = (s.len() as u16).to_be_bytes().to_vec();
    v.extend_from_slice(s.as_bytes());
    v
}

/// A packet from its first byte and body.
pub fn packet(first: u8, body: &[u8]) -> Vec<u8> {
    let mut v = vec![first];
    v.extend(varint(body.len()));
    v.extend_from_slice(body);
    v
}

/// CONNECT for `level` 4 or 5 with the given flags and keep alive; 5.0 gets empty properties
/// unless `props` is given.
pub fn connect(level: u8, client_id: &str, flags: u8, keep_alive: u16, props: &[u8]) -> Vec<u8> {
    let mut b = string("MQTT");
    b.push(level);
    b.push(flags);
    b.extend_from_slice(&keep_alive.to_be_bytes());
    if level == 5 {
        b.extend(varint(props.len()));
        b.extend_from_slice(props);
    }
    b.extend(string(client_id));
    packet(0x10, &b)
}

impl Raw {
    pub fn connect(port: u16) -> Raw {
        let s = TcpStream::connect(("127.0.0.1", port)).expect("tcp connect");
        s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
        Raw { s, buf: Vec::new() }
    }

    pub fn send(&mut self, bytes: &[u8]) {
        self.s.write_all(bytes).expect("write");
    }

    /// The next whole packet as raw bytes, or `None` when the server closed the
    /// connection (or nothing came within the read timeout).
    pub fn recv(&mut self) -> Option<Vec<u8>> {
        loop {
            if self.buf.len() >= 2 {
                let mut len = 0usize;
                let mut i = 1;
                let mut shift = 0;
                let mut complete = false;
                while i < self.buf.len() && i <= 4 {
                    let b = self.buf[i];
                    len |= ((b & 0x7F) as usize) << shift;
                    shift += 7;
                    i += 1;
                    if b & 0x80 == 0 {
                        complete = true;
                        break;
                    }
                }
                if complete && self.buf.len() >= i + len {
                    return Some(self.buf.drain(..i + len).collect());
                }
            }
            let mut chunk = [0u8; 4096];
            match self.s.read(&mut chunk) {
                Ok(0) | Err(_) => return None,
                Ok(n) => self.buf.extend_from_slice(&chunk[..n]),
            }
        }
    }

    /// True if the server closes the connection (after any packets) within the read timeout.
    pub fn closed(&mut self) -> bool {
        let mut chunk = [0u8; 4096];
        loop {
            match self.s.read(&mut chunk) {
                Ok(0) => return true,
                Ok(_) => continue,
                Err(e) => return e.kind() == std::io::ErrorKind::ConnectionReset,
            }
        }
    }
}
