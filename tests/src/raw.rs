//! A raw MQTT client over TCP with hand-written bytes, for what a well-behaved client
//! library will not send: malformed packets, resends, exact reason codes.

use crate::Weir;
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

/// One complete packet at the start of `buf`: (fixed header length, body length), or
/// `None` while more bytes are needed (also for a length longer than 4 bytes, which no
/// broker sends).
pub fn frame(buf: &[u8]) -> Option<(usize, usize)> {
    let mut len = 0usize;
    for i in 1..=4 {
        let b = *buf.get(i)?;
        len |= ((b & 0x7F) as usize) << (7 * (i - 1));
        if b & 0x80 == 0 {
            return (buf.len() >= i + 1 + len).then_some((i + 1, len));
        }
    }
    None
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
            if let Some((header, body)) = frame(&self.buf) {
                return Some(self.buf.drain(..header + body).collect());
            }
            let mut chunk = [0u8; 4096];
            match self.s.read(&mut chunk) {
                Ok(0) | Err(_) => return None,
                Ok(n) => self.buf.extend_from_slice(&chunk[..n]),
            }
        }
    }

    /// The next packet if one arrives within `d`.
    pub fn recv_within(&mut self, d: Duration) -> Option<Vec<u8>> {
        self.s.set_read_timeout(Some(d)).unwrap();
        let p = self.recv();
        self.s
            .set_read_timeout(Some(Duration::from_secs(5)))
            .unwrap();
        p
    }

    /// Writes `packet` every 10 ms on a second handle to the socket for `d`, as a client
    /// that has not noticed it is being sent away; the number of writes that failed.
    pub fn keep_sending(&self, packet: Vec<u8>, d: Duration) -> std::thread::JoinHandle<usize> {
        let mut s = self.s.try_clone().expect("clone socket");
        std::thread::spawn(move || {
            let end = std::time::Instant::now() + d;
            let mut failed = 0;
            while std::time::Instant::now() < end {
                if s.write_all(&packet).is_err() {
                    failed += 1;
                }
                std::thread::sleep(Duration::from_millis(10));
            }
            failed
        })
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

/// CONNECT with a username and password (bytes), empty 5.0 properties.
pub fn connect_login(level: u8, client_id: &str, username: &str, password: &[u8]) -> Vec<u8> {
    let mut b = string("MQTT");
    b.push(level);
    b.push(CLEAN | 0x80 | 0x40);
    b.extend_from_slice(&60u16.to_be_bytes());
    if level == 5 {
        b.push(0);
    }
    b.extend(string(client_id));
    b.extend(string(username));
    b.extend_from_slice(&(password.len() as u16).to_be_bytes());
    b.extend_from_slice(password);
    packet(0x10, &b)
}

/// The reason code of a CONNACK (the return code on 3.1.1).
pub fn connack_code(p: &[u8]) -> u8 {
    assert_eq!(p[0], 0x20, "not a CONNACK: {p:?}");
    p[3]
}

/// The reason code of a PUBACK or PUBREC (0 in the short form).
pub fn ack_code(p: &[u8]) -> u8 {
    assert!(matches!(p[0], 0x40 | 0x50), "not a PUBACK/PUBREC: {p:?}");
    p.get(4).copied().unwrap_or(0)
}

/// Clean Start / Clean Session.
pub const CLEAN: u8 = 0x02;

/// Connects a 5.0 client and checks the CONNACK is a success.
pub fn v5_client(w: &Weir, id: &str, props: &[u8]) -> Raw {
    let mut r = Raw::connect(w.port);
    r.send(&connect(5, id, CLEAN, 60, props));
    let ack = r.recv().expect("CONNACK");
    assert_eq!((ack[0], ack[3]), (0x20, 0), "CONNACK success: {ack:?}");
    r
}

pub fn v4_client(w: &Weir, id: &str, flags: u8, keep_alive: u16) -> Raw {
    let mut r = Raw::connect(w.port);
    r.send(&connect(4, id, flags, keep_alive, &[]));
    assert_eq!(r.recv().expect("CONNACK"), vec![0x20, 2, 0, 0]);
    r
}

/// A 5.0 PUBLISH with empty properties unless given.
pub fn publish5(flags: u8, topic: &str, pid: Option<u16>, props: &[u8], payload: &[u8]) -> Vec<u8> {
    let mut b = string(topic);
    if let Some(p) = pid {
        b.extend_from_slice(&p.to_be_bytes());
    }
    b.extend(varint(props.len()));
    b.extend_from_slice(props);
    b.extend_from_slice(payload);
    packet(0x30 | flags, &b)
}

pub fn subscribe5(pid: u16, filter: &str, options: u8) -> Vec<u8> {
    let mut b = pid.to_be_bytes().to_vec();
    b.push(0);
    b.extend(string(filter));
    b.push(options);
    packet(0x82, &b)
}

/// The reason code of a 5.0 DISCONNECT, if that is what `p` is.
pub fn disconnect_code(p: &[u8]) -> Option<u8> {
    (p[0] == 0xE0).then(|| p.get(2).copied().unwrap_or(0))
}

/// What [`count_publishes`] saw: how many PUBLISH packets, and when the first and the
/// last arrived.
pub struct Counted {
    pub publishes: usize,
    pub first: Option<std::time::Instant>,
    pub last: std::time::Instant,
}

/// Reads `s` until `want` PUBLISH packets arrived or a read ends or times out (set the
/// read timeout first); every other packet's type goes to `other`. For the bench's
/// subscribers, which count what a load delivers without a client library's cost.
pub fn count_publishes(s: &mut impl Read, want: usize, mut other: impl FnMut(u8)) -> Counted {
    let mut buf = vec![0u8; 256 << 10];
    let mut pending: Vec<u8> = Vec::new();
    let mut c = Counted {
        publishes: 0,
        first: None,
        last: std::time::Instant::now(),
    };
    while c.publishes < want {
        let n = match s.read(&mut buf) {
            Ok(0) | Err(_) => break,
            Ok(n) => n,
        };
        pending.extend_from_slice(&buf[..n]);
        let mut at = 0;
        while let Some((hdr, len)) = frame(&pending[at..]) {
            match pending[at] >> 4 {
                3 => {
                    c.publishes += 1;
                    c.last = std::time::Instant::now();
                    c.first.get_or_insert(c.last);
                }
                kind => other(kind),
            }
            at += hdr + len;
        }
        pending.drain(..at);
    }
    c
}
