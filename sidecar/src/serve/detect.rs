//! Protocol detection for intercepted connections: the proxy peeks at the client's first bytes
//! (without consuming them) to tell HTTP/2 (the connection preface, RFC 9113 §3.4) and HTTP/1
//! (a request line, RFC 9112 §3) from anything else, which is forwarded as opaque TCP.
//!
//! A client that sends nothing may be waiting for the server to speak first (MySQL, SMTP), so
//! detection gives up after a short timeout; ports declared opaque skip it altogether.

use std::sync::Arc;
use std::time::Duration;

use tokio::net::TcpStream;
use tokio::time::Instant;

use crate::config::snapshot::Snapshot;

/// The HTTP/2 connection preface a prior-knowledge (h2c) client sends first.
const H2_PREFACE: &[u8] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";

/// A request line longer than this is not worth waiting for; the connection is treated as
/// opaque. hyper's own limit on a whole HTTP/1 head is larger, but the line comes first.
const MAX_REQUEST_LINE: usize = 8 * 1024;

/// Longest method worth accepting (`PROPPATCH`, `MKCALENDAR`, extension methods).
const MAX_METHOD: usize = 24;

/// What a connection speaks.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Detected {
    /// An HTTP/1.0 or HTTP/1.1 request line.
    Http1,
    /// The HTTP/2 connection preface.
    Http2,
    /// Anything else, or nothing in time.
    Opaque,
}

impl Detected {
    /// The `protocol` label in metrics.
    pub fn label(self) -> &'static str {
        match self {
            Self::Http1 => "http1",
            Self::Http2 => "http2",
            Self::Opaque => "opaque",
        }
    }
}

fn is_tchar(c: u8) -> bool {
    // RFC 9110 §5.6.2 token characters.
    c.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&c)
}

/// Classifies the bytes seen so far; `None` means more bytes are needed to decide.
pub fn classify(buf: &[u8]) -> Option<Detected> {
    if buf.is_empty() {
        return None;
    }
    if buf.starts_with(H2_PREFACE) {
        return Some(Detected::Http2);
    }
    if H2_PREFACE.starts_with(buf) {
        return None;
    }
    let Some(sp) = buf.iter().position(|&c| c == b' ') else {
        return if buf.len() <= MAX_METHOD && buf.iter().all(|&c| is_tchar(c)) {
            None
        } else {
            Some(Detected::Opaque)
        };
    };
    if sp == 0 || sp > MAX_METHOD || !buf[..sp].iter().all(|&c| is_tchar(c)) {
        return Some(Detected::Opaque);
    }
    let rest = &buf[sp + 1..];
    let Some(nl) = rest.iter().position(|&c| c == b'\n') else {
        // The target and version are visible ASCII and spaces; a control byte means binary.
        let plausible = rest
            .iter()
            .all(|&c| c == b'\r' || (b' '..=b'~').contains(&c));
        return if plausible && buf.len() < MAX_REQUEST_LINE {
            None
        } else {
            Some(Detected::Opaque)
        };
    };
    let line = rest[..nl].strip_suffix(b"\r").unwrap_or(&rest[..nl]);
    if line.ends_with(b" HTTP/1.1") || line.ends_with(b" HTTP/1.0") {
        Some(Detected::Http1)
    } else {
        Some(Detected::Opaque)
    }
}

/// The protocol of an intercepted connection to `port`: opaque without looking when the port
/// is in `interception.opaquePorts` or the caller knows it is (`opaque`: a Service declared
/// so), else what [`detect`] sees within the configured timeout. The snapshot is taken by value
/// and let go before waiting, so a config swap is not held up by a silent client.
pub async fn protocol(
    stream: &TcpStream,
    snap: Arc<Snapshot>,
    port: u16,
    opaque: bool,
) -> Detected {
    if opaque || snap.config.interception.opaque_ports.contains(&port) {
        return Detected::Opaque;
    }
    let timeout = snap.config.interception.detect_timeout().get();
    drop(snap);
    detect(stream, timeout).await
}

/// Peeks at `stream` until its protocol is known or `timeout` passes. Nothing is consumed:
/// whoever serves the connection next reads it from the first byte.
pub async fn detect(stream: &TcpStream, timeout: Duration) -> Detected {
    let deadline = Instant::now() + timeout;
    let mut buf = vec![0; MAX_REQUEST_LINE];
    loop {
        match tokio::time::timeout_at(deadline, stream.peek(&mut buf)).await {
            Err(_) | Ok(Err(_) | Ok(0)) => return Detected::Opaque,
            Ok(Ok(n)) => {
                if let Some(d) = classify(&buf[..n]) {
                    return d;
                }
            }
        }
        // Peek returns at once while unread bytes wait in the socket, so pause briefly for the
        // rest of a request line that arrived in pieces instead of spinning on it.
        if Instant::now() + Duration::from_millis(1) >= deadline {
            return Detected::Opaque;
        }
        tokio::time::sleep(Duration::from_millis(1)).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn http1_request_lines_are_recognised() {
        assert_eq!(
            classify(b"GET /x HTTP/1.1\r\nHost: a\r\n\r\n"),
            Some(Detected::Http1)
        );
        assert_eq!(classify(b"POST * HTTP/1.0\n"), Some(Detected::Http1));
        assert_eq!(classify(b"GE"), None, "partial method");
        assert_eq!(classify(b"GET /some/pa"), None, "partial target");
    }

    #[test]
    fn the_h2_preface_is_recognised_even_in_pieces() {
        assert_eq!(classify(H2_PREFACE), Some(Detected::Http2));
        assert_eq!(classify(&H2_PREFACE[..10]), None);
        let mut with_settings = H2_PREFACE.to_vec();
        with_settings.extend([0, 0, 0, 4, 0]);
        assert_eq!(classify(&with_settings), Some(Detected::Http2));
    }

    #[test]
    fn other_protocols_are_opaque() {
        // A TLS ClientHello, a Postgres startup message, a Redis command, a bad version.
        assert_eq!(classify(&[0x16, 3, 1, 0, 0xa5]), Some(Detected::Opaque));
        assert_eq!(classify(&[0, 0, 0, 8, 4, 0xd2]), Some(Detected::Opaque));
        assert_eq!(classify(b"*1\r\n$4\r\nPING\r\n"), Some(Detected::Opaque));
        assert_eq!(classify(b"GET / SPDY/3\r\n"), Some(Detected::Opaque));
        assert_eq!(classify(b"HELLO\x00"), Some(Detected::Opaque));
    }

    #[tokio::test]
    async fn a_silent_client_is_opaque_after_the_timeout() {
        let l = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind");
        let _client = TcpStream::connect(l.local_addr().expect("addr"))
            .await
            .expect("connect");
        let (server, _) = l.accept().await.expect("accept");
        let start = Instant::now();
        assert_eq!(
            detect(&server, Duration::from_millis(50)).await,
            Detected::Opaque
        );
        assert!(start.elapsed() >= Duration::from_millis(50));
    }

    #[tokio::test]
    async fn a_request_line_in_two_writes_is_http1_and_not_consumed() {
        use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
        let l = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind");
        let mut client = TcpStream::connect(l.local_addr().expect("addr"))
            .await
            .expect("connect");
        let (mut server, _) = l.accept().await.expect("accept");
        client.write_all(b"GET /a").await.expect("write");
        let writer = tokio::spawn(async move {
            tokio::time::sleep(Duration::from_millis(20)).await;
            client.write_all(b" HTTP/1.1\r\n\r\n").await.expect("write");
            client
        });
        assert_eq!(
            detect(&server, Duration::from_secs(5)).await,
            Detected::Http1
        );
        let _client = writer.await.expect("writer");
        let mut first = [0; 3];
        server.read_exact(&mut first).await.expect("read");
        assert_eq!(&first, b"GET");
    }
}
