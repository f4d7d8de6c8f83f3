//! The PROXY protocol (HAProxy's `proxy-protocol.txt`, versions 1 and 2): the header a load
//! balancer writes before the client's first byte, naming the client it connected for.
//!
//! [`parse`] is sans-I/O (bytes in, "need more", a header, or an error); the header's text and
//! binary forms are decoded by the `ppp` crate once [`parse`] has framed them, so `ppp` only
//! ever sees one whole header within our caps. [`read_header`] takes exactly the header's bytes
//! off the socket — never one byte of what follows (an implicit-TLS ClientHello may be in the
//! same segment) — under one deadline.
//!
//! What the node does with it (`node::accept`): a listener with `proxy-from` takes connections
//! only from those networks, and each must start with a header within [`HEADER_TIMEOUT`];
//! from then on the client is the address the header names, for every check, limit and line.
//!
//! Health checks: a v2 `LOCAL` command (HAProxy's `check-send-proxy`) and a v1 `UNKNOWN` carry
//! no client; as the protocol's text asks, the connection is accepted and the balancer's own
//! address is the client ([`Header::client`] is `None`).

pub mod fuzz;

use std::net::SocketAddr;
use std::time::Duration;
use tokio::io::AsyncReadExt;
use tokio::net::TcpStream;

/// How long a balancer has to send the header. HAProxy writes it with the connect, so this
/// only bounds a client that reached the port directly and says nothing.
pub const HEADER_TIMEOUT: Duration = Duration::from_secs(3);

/// The longest v1 header, CRLF included (the protocol's own bound).
pub const MAX_V1: usize = 107;

/// The longest v2 header we take: 16 fixed bytes, the addresses (216 for AF_UNIX) and TLVs.
/// The format allows 64 KiB; balancers' TLVs (ALPN, authority, TLS, AWS/Azure/GCP ids) are
/// tens of bytes, so a bigger header is refused rather than buffered.
pub const MAX_V2: usize = 16 + 1024;

/// The first bytes of a v1 header.
const V1_PREFIX: &[u8] = b"PROXY ";

/// The v2 signature (12 bytes); the fixed part is 16 bytes with the length last.
const V2_SIGNATURE: &[u8] = b"\r\n\r\n\0\r\nQUIT\n";
const V2_FIXED: usize = 16;

/// A whole header, as far as the node needs it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Header {
    /// Its length in bytes: what the session's input starts after.
    pub len: usize,
    /// The client the balancer connected for; `None` for a health check (v2 `LOCAL`, v1
    /// `UNKNOWN`), which is served as the balancer itself.
    pub client: Option<SocketAddr>,
}

/// Why a connection on a PROXY listener was closed before its greeting.
#[derive(Debug, thiserror::Error, Clone, PartialEq, Eq)]
pub enum ProxyError {
    #[error("not a PROXY protocol header")]
    NotProxy,
    #[error("PROXY header malformed: {0}")]
    Malformed(String),
    #[error("PROXY header longer than {0} bytes")]
    TooLong(usize),
    #[error("PROXY v2 header for a family or transport mtac cannot serve (UNIX, UDP)")]
    Unsupported,
    #[error("no PROXY header within {} s", HEADER_TIMEOUT.as_secs())]
    Timeout,
    #[error("connection closed before the PROXY header ended")]
    Closed,
    #[error("reading the PROXY header: {0}")]
    Io(String),
}

impl ProxyError {
    /// The `reason` label of `mtac_connections_refused` (a closed set).
    pub fn reason(&self) -> &'static str {
        match self {
            ProxyError::Timeout | ProxyError::Closed => "proxy-missing",
            _ => "proxy-header",
        }
    }
}

/// Frame and decode a header at the start of `input`: `Ok(None)` when `input` is a header's
/// beginning that needs more bytes.
pub fn parse(input: &[u8]) -> Result<Option<Header>, ProxyError> {
    if input.starts_with(V2_SIGNATURE) {
        return parse_v2(input);
    }
    if input.len() < V2_SIGNATURE.len() && V2_SIGNATURE.starts_with(input) {
        // Could still be either: `\r` starts no v1 header, so this is v2 or nothing.
        return Ok(None);
    }
    if input.starts_with(V1_PREFIX) {
        return parse_v1(input);
    }
    if input.len() < V1_PREFIX.len() && V1_PREFIX.starts_with(input) {
        return Ok(None);
    }
    Err(ProxyError::NotProxy)
}

fn parse_v1(input: &[u8]) -> Result<Option<Header>, ProxyError> {
    let window = input.get(..input.len().min(MAX_V1)).unwrap_or(input);
    // The first CR ends the header (ppp reads up to it too), and must be followed by LF.
    let Some(end) = window.iter().position(|&b| b == b'\r') else {
        return if input.len() >= MAX_V1 { Err(ProxyError::TooLong(MAX_V1)) } else { Ok(None) };
    };
    match input.get(end + 1) {
        None => return Ok(None),
        Some(b'\n') => {}
        Some(_) => return Err(ProxyError::Malformed("v1 header not ended by CRLF".into())),
    }
    let len = end + 2;
    if len > MAX_V1 {
        return Err(ProxyError::TooLong(MAX_V1));
    }
    let text = input.get(..len).and_then(|bytes| std::str::from_utf8(bytes).ok());
    let text = text.ok_or_else(|| ProxyError::Malformed("v1 header is not ASCII".into()))?;
    let header = ppp::v1::Header::try_from(text).map_err(|e| ProxyError::Malformed(format!("v1: {e}")))?;
    let client = match header.addresses {
        ppp::v1::Addresses::Tcp4(a) => Some(SocketAddr::new(a.source_address.into(), a.source_port)),
        ppp::v1::Addresses::Tcp6(a) => Some(SocketAddr::new(a.source_address.into(), a.source_port)),
        ppp::v1::Addresses::Unknown => None,
    };
    Ok(Some(Header { len, client }))
}

fn parse_v2(input: &[u8]) -> Result<Option<Header>, ProxyError> {
    let Some(&[high, low]) = input.get(V2_FIXED - 2..V2_FIXED) else { return Ok(None) };
    let len = V2_FIXED + usize::from(u16::from_be_bytes([high, low]));
    if len > MAX_V2 {
        return Err(ProxyError::TooLong(MAX_V2));
    }
    let Some(bytes) = input.get(..len) else { return Ok(None) };
    let header = ppp::v2::Header::try_from(bytes).map_err(|e| ProxyError::Malformed(format!("v2: {e}")))?;
    // The TLVs are not used, but a header whose TLVs do not frame is not one a balancer wrote.
    for tlv in header.tlvs() {
        tlv.map_err(|e| ProxyError::Malformed(format!("v2 TLV: {e}")))?;
    }
    let client = match header.command {
        ppp::v2::Command::Local => None,
        ppp::v2::Command::Proxy => {
            if !matches!(header.protocol, ppp::v2::Protocol::Stream) {
                return Err(ProxyError::Unsupported);
            }
            match header.addresses {
                ppp::v2::Addresses::IPv4(a) => Some(SocketAddr::new(a.source_address.into(), a.source_port)),
                ppp::v2::Addresses::IPv6(a) => Some(SocketAddr::new(a.source_address.into(), a.source_port)),
                ppp::v2::Addresses::Unspecified | ppp::v2::Addresses::Unix(_) => return Err(ProxyError::Unsupported),
            }
        }
    };
    Ok(Some(Header { len, client }))
}

/// Read one header off `stream`, consuming exactly its bytes, within [`HEADER_TIMEOUT`].
pub async fn read_header(stream: &mut TcpStream) -> Result<Header, ProxyError> {
    match tokio::time::timeout(HEADER_TIMEOUT, read_untimed(stream)).await {
        Ok(result) => result,
        Err(_) => Err(ProxyError::Timeout),
    }
}

/// Peek at what has arrived and consume only what belongs to the header: while it is
/// incomplete, everything that arrived is header (so it is taken, and the next peek waits for
/// new bytes instead of spinning); once complete, exactly its remaining bytes are taken.
async fn read_untimed(stream: &mut TcpStream) -> Result<Header, ProxyError> {
    let io = |e: std::io::Error| ProxyError::Io(e.to_string());
    let mut header: Vec<u8> = Vec::with_capacity(128);
    let mut peeked = vec![0u8; MAX_V2];
    loop {
        let room = MAX_V2.saturating_sub(header.len());
        let window = peeked.get_mut(..room).ok_or(ProxyError::TooLong(MAX_V2))?;
        if window.is_empty() {
            return Err(ProxyError::TooLong(MAX_V2));
        }
        let n = stream.peek(window).await.map_err(io)?;
        if n == 0 {
            return Err(ProxyError::Closed);
        }
        let before = header.len();
        header.extend_from_slice(window.get(..n).unwrap_or_default());
        match parse(&header)? {
            Some(found) => {
                let rest = found.len.saturating_sub(before);
                let take = window.get_mut(..rest).ok_or(ProxyError::TooLong(MAX_V2))?;
                stream.read_exact(take).await.map_err(io)?;
                return Ok(found);
            }
            None => {
                let take = window.get_mut(..n).ok_or(ProxyError::TooLong(MAX_V2))?;
                stream.read_exact(take).await.map_err(io)?;
            }
        }
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::indexing_slicing)]
mod tests {
    use super::*;

    fn v2(command: u8, family: u8, body: &[u8]) -> Vec<u8> {
        let mut out = V2_SIGNATURE.to_vec();
        out.push(0x20 | command);
        out.push(family);
        out.extend_from_slice(&u16::try_from(body.len()).unwrap().to_be_bytes());
        out.extend_from_slice(body);
        out
    }

    fn v4_body(tlvs: &[u8]) -> Vec<u8> {
        let mut body = vec![192, 0, 2, 7, 10, 0, 0, 1, 0xC3, 0x50, 0, 25];
        body.extend_from_slice(tlvs);
        body
    }

    #[test]
    fn a_v1_header_names_the_client_and_its_length_stops_before_the_smtp_bytes() {
        let input = b"PROXY TCP4 192.0.2.7 10.0.0.1 50000 25\r\nEHLO x\r\n";
        let header = parse(input).unwrap().unwrap();
        assert_eq!(header.len, input.len() - b"EHLO x\r\n".len());
        assert_eq!(header.client, Some("192.0.2.7:50000".parse().unwrap()));
        let v6 = parse(b"PROXY TCP6 2001:db8::7 2001:db8::1 50000 25\r\n").unwrap().unwrap();
        assert_eq!(v6.client, Some("[2001:db8::7]:50000".parse().unwrap()));
        assert_eq!(parse(b"PROXY UNKNOWN\r\n").unwrap().unwrap().client, None, "health check: the balancer");
    }

    #[test]
    fn a_v2_header_names_the_client_and_a_local_one_is_a_health_check() {
        let tlv = [0x01, 0x00, 0x02, b'h', b'2']; // ALPN
        let input = v2(1, 0x11, &v4_body(&tlv));
        let header = parse(&input).unwrap().unwrap();
        assert_eq!(header, Header { len: input.len(), client: Some("192.0.2.7:50000".parse().unwrap()) });
        let local = v2(0, 0x00, &[]);
        assert_eq!(parse(&local).unwrap().unwrap(), Header { len: 16, client: None });
    }

    #[test]
    fn partial_headers_ask_for_more_and_anything_else_is_refused() {
        let full = v2(1, 0x11, &v4_body(&[]));
        for cut in 0..full.len() {
            assert_eq!(parse(&full[..cut]), Ok(None), "v2 cut at {cut}");
        }
        assert_eq!(parse(b"PROXY TCP4 192.0.2.7"), Ok(None));
        assert_eq!(parse(b"PRO"), Ok(None));
        assert_eq!(parse(b"EHLO client.example\r\n"), Err(ProxyError::NotProxy));
        assert_eq!(parse(b"\x16\x03\x01\x02\x00"), Err(ProxyError::NotProxy), "a TLS ClientHello");
        assert!(matches!(parse(b"PROXY TCP4 300.0.2.7 10.0.0.1 1 25\r\n"), Err(ProxyError::Malformed(_))));
        assert_eq!(parse(&[b"PROXY ".as_slice(), &[b'1'; 120]].concat()), Err(ProxyError::TooLong(MAX_V1)));
        let huge = v2(1, 0x11, &vec![0; MAX_V2]);
        assert_eq!(parse(&huge[..20]), Err(ProxyError::TooLong(MAX_V2)), "refused from its length alone");
        let udp = v2(1, 0x12, &v4_body(&[]));
        assert_eq!(parse(&udp), Err(ProxyError::Unsupported));
        let unix = v2(1, 0x31, &[0; 216]);
        assert_eq!(parse(&unix), Err(ProxyError::Unsupported));
        let bad_tlv = v2(1, 0x11, &v4_body(&[0x01, 0x00, 0x09, b'x']));
        assert!(matches!(parse(&bad_tlv), Err(ProxyError::Malformed(_))), "a TLV longer than the header");
    }

    #[tokio::test]
    async fn read_header_takes_the_header_and_leaves_the_next_bytes_on_the_socket() {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let client = tokio::spawn(async move {
            use tokio::io::AsyncWriteExt;
            let mut s = TcpStream::connect(addr).await.unwrap();
            // Split inside the header: the reader must wait, not spin or give up.
            s.write_all(b"PROXY TCP4 192.0.2.7 10.0.").await.unwrap();
            tokio::time::sleep(Duration::from_millis(50)).await;
            s.write_all(b"0.1 50000 25\r\nNEXT").await.unwrap();
            s
        });
        let (mut stream, _) = listener.accept().await.unwrap();
        let header = read_header(&mut stream).await.unwrap();
        assert_eq!(header.client, Some("192.0.2.7:50000".parse().unwrap()));
        let mut next = [0u8; 4];
        stream.read_exact(&mut next).await.unwrap();
        assert_eq!(&next, b"NEXT");
        drop(client.await.unwrap());
    }
}
