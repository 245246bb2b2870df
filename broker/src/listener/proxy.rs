//! The PROXY protocol (HAProxy's, versions 1 and 2): a load balancer in front of a
//! listener (HAProxy `send-proxy`, an AWS NLB, Envoy) writes the client's real address
//! before the client's first byte, so logs, plugins and per-address limits see the
//! client rather than the balancer.
//!
//! On a listener with `proxy_protocol = true` the header is required: anyone who can
//! reach such a listener directly could otherwise claim any address. `LOCAL` (v2) and
//! `UNKNOWN` (v1) headers, which balancers send for their own health checks, keep the
//! socket's address.

use std::io;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::pin::Pin;
use std::task::{Context, Poll};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, ReadBuf};

/// The first 12 bytes of every v2 header.
const V2_SIGNATURE: &[u8; 12] = b"\r\n\r\n\0\r\nQUIT\n";
/// A v1 header is at most 107 bytes, `\r\n` included.
const V1_MAX: usize = 107;
/// v2 headers carry TLVs after the addresses (AWS puts its VPC endpoint ID there);
/// bigger than this is not a balancer.
const V2_MAX: usize = 4096;

#[derive(Debug, thiserror::Error)]
pub enum ProxyError {
    #[error("no PROXY protocol header (the listener has proxy_protocol = true): the connection starts with neither \"PROXY \" nor the v2 signature")]
    Missing,
    #[error("bad PROXY protocol v1 header: {0}")]
    V1(&'static str),
    #[error("bad PROXY protocol v2 header: {0}")]
    V2(&'static str),
    #[error("the connection closed inside its PROXY protocol header")]
    Closed,
    #[error("reading the PROXY protocol header: {0}")]
    Io(#[from] io::Error),
}

/// What the start of a connection says, once enough of it has arrived.
#[derive(Debug, PartialEq, Eq)]
pub enum Parsed {
    /// More bytes are needed.
    Incomplete,
    /// The header is `len` bytes long; `source` is the client's address, `None` when
    /// the socket's own address stands (LOCAL, UNKNOWN, a non-IP family).
    Header {
        source: Option<SocketAddr>,
        len: usize,
    },
}

/// Reads a header from the start of `buf` (which holds what has arrived so far).
pub fn parse(buf: &[u8]) -> Result<Parsed, ProxyError> {
    let n = buf.len().min(V2_SIGNATURE.len());
    if buf[..n] == V2_SIGNATURE[..n] {
        return if n < V2_SIGNATURE.len() {
            Ok(Parsed::Incomplete)
        } else {
            parse_v2(buf)
        };
    }
    let n = buf.len().min(6);
    if buf[..n] == b"PROXY "[..n] {
        return parse_v1(buf);
    }
    Err(ProxyError::Missing)
}

fn parse_v1(buf: &[u8]) -> Result<Parsed, ProxyError> {
    let Some(end) = buf.windows(2).position(|w| w == b"\r\n") else {
        return match buf.len() < V1_MAX {
            true => Ok(Parsed::Incomplete),
            false => Err(ProxyError::V1("no CRLF within 107 bytes")),
        };
    };
    let len = end + 2;
    if len > V1_MAX {
        return Err(ProxyError::V1("longer than 107 bytes"));
    }
    let line = std::str::from_utf8(&buf[6..end]).map_err(|_| ProxyError::V1("not ASCII"))?;
    let fields: Vec<&str> = line.split(' ').collect();
    let source = match fields.as_slice() {
        ["UNKNOWN", ..] => None,
        [family @ ("TCP4" | "TCP6"), src, dst, sport, _dport] => {
            let ip: IpAddr = match *family {
                "TCP4" => IpAddr::V4(src.parse().map_err(|_| ProxyError::V1("bad IPv4 source"))?),
                _ => IpAddr::V6(src.parse().map_err(|_| ProxyError::V1("bad IPv6 source"))?),
            };
            let dst_ok = match *family {
                "TCP4" => dst.parse::<Ipv4Addr>().is_ok(),
                _ => dst.parse::<Ipv6Addr>().is_ok(),
            };
            if !dst_ok {
                return Err(ProxyError::V1("bad destination address"));
            }
            let port = sport
                .parse::<u16>()
                .map_err(|_| ProxyError::V1("bad source port"))?;
            Some(SocketAddr::new(ip, port))
        }
        [_, ..] if !matches!(fields[0], "TCP4" | "TCP6") => {
            return Err(ProxyError::V1("protocol is not TCP4, TCP6 or UNKNOWN"))
        }
        _ => return Err(ProxyError::V1("wants: PROXY TCP4|TCP6 src dst sport dport")),
    };
    Ok(Parsed::Header { source, len })
}

fn parse_v2(buf: &[u8]) -> Result<Parsed, ProxyError> {
    let Some(fixed) = buf.get(..16) else {
        return Ok(Parsed::Incomplete);
    };
    let (version_command, family) = (fixed[12], fixed[13]);
    let len = 16 + u16::from_be_bytes([fixed[14], fixed[15]]) as usize;
    if version_command >> 4 != 2 {
        return Err(ProxyError::V2("version is not 2"));
    }
    if len > V2_MAX {
        return Err(ProxyError::V2("longer than 4096 bytes"));
    }
    let Some(body) = buf.get(16..len) else {
        return Ok(Parsed::Incomplete);
    };
    let source = match (version_command & 0x0F, family) {
        // LOCAL: the balancer's own connection (a health check); addresses are ignored.
        (0x0, _) => None,
        // PROXY over TCP (STREAM) on IPv4, then IPv6.
        (0x1, 0x11) => {
            let a = body
                .get(..12)
                .ok_or(ProxyError::V2("IPv4 addresses cut short"))?;
            let ip = Ipv4Addr::new(a[0], a[1], a[2], a[3]);
            Some(SocketAddr::new(ip.into(), u16::from_be_bytes([a[8], a[9]])))
        }
        (0x1, 0x21) => {
            let a = body
                .get(..36)
                .ok_or(ProxyError::V2("IPv6 addresses cut short"))?;
            let mut octets = [0u8; 16];
            octets.copy_from_slice(&a[..16]);
            let ip = Ipv6Addr::from(octets);
            Some(SocketAddr::new(
                ip.into(),
                u16::from_be_bytes([a[32], a[33]]),
            ))
        }
        // UNSPEC, UNIX or datagram families carry no TCP client address.
        (0x1, _) => None,
        _ => return Err(ProxyError::V2("command is neither LOCAL nor PROXY")),
    };
    Ok(Parsed::Header { source, len })
}

/// Reads the header off `io`. Reads may take bytes past its end (the client's first
/// packet or TLS hello): they come back as the second value, to be read first.
pub async fn read_header<S>(io: &mut S) -> Result<(Option<SocketAddr>, Vec<u8>), ProxyError>
where
    S: AsyncRead + Unpin,
{
    let mut buf = Vec::with_capacity(256);
    loop {
        if let Parsed::Header { source, len } = parse(&buf)? {
            return Ok((source, buf.split_off(len)));
        }
        let n = io.read_buf(&mut buf).await?;
        if n == 0 {
            return Err(ProxyError::Closed);
        }
        if buf.capacity() == buf.len() {
            buf.reserve(buf.len().min(V2_MAX));
        }
    }
}

/// A stream whose first bytes were already read (past a PROXY header): they are read
/// again, then the stream itself.
pub struct Prefixed<S> {
    prefix: Vec<u8>,
    at: usize,
    inner: S,
}

impl<S> Prefixed<S> {
    pub fn new(prefix: Vec<u8>, inner: S) -> Prefixed<S> {
        Prefixed {
            prefix,
            at: 0,
            inner,
        }
    }

    /// A stream with nothing read ahead.
    pub fn plain(inner: S) -> Prefixed<S> {
        Prefixed::new(Vec::new(), inner)
    }
}

impl<S: AsyncRead + Unpin> AsyncRead for Prefixed<S> {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let me = self.get_mut();
        if me.at < me.prefix.len() {
            let n = (me.prefix.len() - me.at).min(buf.remaining());
            buf.put_slice(&me.prefix[me.at..me.at + n]);
            me.at += n;
            if me.at == me.prefix.len() {
                me.prefix = Vec::new();
                me.at = 0;
            }
            return Poll::Ready(Ok(()));
        }
        Pin::new(&mut me.inner).poll_read(cx, buf)
    }
}

impl<S: AsyncWrite + Unpin> AsyncWrite for Prefixed<S> {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.get_mut().inner).poll_write(cx, buf)
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.get_mut().inner).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().inner).poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().inner).poll_shutdown(cx)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn header(buf: &[u8]) -> (Option<SocketAddr>, usize) {
        match parse(buf).expect("a header") {
            Parsed::Header { source, len } => (source, len),
            Parsed::Incomplete => panic!("incomplete: {buf:?}"),
        }
    }

    fn v2(command: u8, family: u8, body: &[u8]) -> Vec<u8> {
        let mut v = V2_SIGNATURE.to_vec();
        v.extend([0x20 | command, family]);
        v.extend((body.len() as u16).to_be_bytes());
        v.extend_from_slice(body);
        v
    }

    #[test]
    fn v1_gives_the_source_address_and_the_header_length() {
        let line = b"PROXY TCP4 203.0.113.7 10.0.0.1 51234 1883\r\n\x10\x0c";
        let (source, len) = header(line);
        assert_eq!(source, Some("203.0.113.7:51234".parse().unwrap()));
        assert_eq!(&line[len..], b"\x10\x0c");
        let six = b"PROXY TCP6 2001:db8::1 2001:db8::2 4000 8883\r\n";
        assert_eq!(header(six).0, Some("[2001:db8::1]:4000".parse().unwrap()));
        assert_eq!(header(b"PROXY UNKNOWN\r\n"), (None, 15));
        assert_eq!(header(b"PROXY UNKNOWN x y 1 2\r\n").0, None);
    }

    #[test]
    fn v1_is_incomplete_until_its_crlf_and_refused_past_107_bytes() {
        let line = b"PROXY TCP4 203.0.113.7 10.0.0.1 51234 1883\r\n";
        for cut in 0..line.len() {
            assert_eq!(parse(&line[..cut]).unwrap(), Parsed::Incomplete, "{cut}");
        }
        let long = [b"PROXY TCP4 ".as_slice(), &[b'1'; 120]].concat();
        assert!(matches!(parse(&long), Err(ProxyError::V1(_))));
    }

    #[test]
    fn bad_v1_headers_are_refused() {
        for bad in [
            &b"PROXY TCP4 1.2.3 10.0.0.1 1 2\r\n"[..],
            b"PROXY TCP4 2001:db8::1 10.0.0.1 1 2\r\n",
            b"PROXY TCP6 1.2.3.4 ::1 1 2\r\n",
            b"PROXY TCP4 1.2.3.4 10.0.0.1 70000 2\r\n",
            b"PROXY TCP4 1.2.3.4 10.0.0.1 1\r\n",
            b"PROXY UDP4 1.2.3.4 10.0.0.1 1 2\r\n",
            b"PROXY TCP4 1.2.3.4 nope 1 2\r\n",
        ] {
            assert!(matches!(parse(bad), Err(ProxyError::V1(_))), "{bad:?}");
        }
    }

    #[test]
    fn v2_gives_ipv4_and_ipv6_sources_and_skips_tlvs() {
        let mut body = vec![198, 51, 100, 9, 10, 0, 0, 1];
        body.extend(40000u16.to_be_bytes());
        body.extend(1883u16.to_be_bytes());
        body.extend([0x04, 0x00, 0x02, b'a', b'b']); // a TLV, ignored
        let mut h = v2(1, 0x11, &body);
        let len = h.len();
        h.extend(b"\x10rest");
        assert_eq!(
            header(&h),
            (Some("198.51.100.9:40000".parse().unwrap()), len)
        );
        let mut body6 = [0u8; 36];
        body6[15] = 1; // ::1
        body6[32..34].copy_from_slice(&5000u16.to_be_bytes());
        assert_eq!(
            header(&v2(1, 0x21, &body6)).0,
            Some("[::1]:5000".parse().unwrap())
        );
    }

    #[test]
    fn v2_local_and_unspecified_keep_the_socket_address() {
        assert_eq!(header(&v2(0, 0x00, &[])), (None, 16));
        assert_eq!(header(&v2(0, 0x11, &[0; 12])).0, None);
        assert_eq!(header(&v2(1, 0x00, &[])).0, None);
        assert_eq!(header(&v2(1, 0x31, &[0; 216])).0, None);
    }

    #[test]
    fn v2_is_incomplete_until_its_length_and_bad_ones_are_refused() {
        let h = v2(1, 0x11, &[1, 2, 3, 4, 5, 6, 7, 8, 0, 1, 0, 2]);
        for cut in 0..h.len() {
            assert_eq!(parse(&h[..cut]).unwrap(), Parsed::Incomplete, "{cut}");
        }
        let mut wrong_version = h.clone();
        wrong_version[12] = 0x11;
        let short = v2(1, 0x11, &[1, 2, 3]);
        let mut huge = v2(1, 0x11, &[]);
        huge[14..16].copy_from_slice(&5000u16.to_be_bytes());
        for bad in [wrong_version, short, v2(2, 0x11, &[0; 12]), huge] {
            assert!(matches!(parse(&bad), Err(ProxyError::V2(_))), "{bad:?}");
        }
    }

    #[test]
    fn anything_else_is_refused_at_its_first_byte() {
        assert!(matches!(parse(b"\x10"), Err(ProxyError::Missing)));
        assert!(matches!(parse(b"PROXX"), Err(ProxyError::Missing)));
        assert!(matches!(parse(b"\x16\x03\x01"), Err(ProxyError::Missing)));
        assert_eq!(parse(b"").unwrap(), Parsed::Incomplete);
    }

    #[tokio::test]
    async fn bytes_read_past_the_header_are_read_again() {
        let (mut a, mut b) = tokio::io::duplex(64);
        tokio::io::AsyncWriteExt::write_all(&mut a, b"PROXY UNKNOWN\r\nhello")
            .await
            .unwrap();
        drop(a);
        let (source, rest) = read_header(&mut b).await.unwrap();
        assert_eq!(source, None);
        let mut s = Prefixed::new(rest, b);
        let mut all = Vec::new();
        s.read_to_end(&mut all).await.unwrap();
        assert_eq!(all, b"hello");
    }
}
