//! A small Redis client: RESP2 over TCP, just what the shared rate limit needs (run a script,
//! load it again after Redis restarts). A few connections per client are kept open between
//! requests; a connection that failed in any way is dropped rather than reused, so a reply can
//! never be read by the wrong request.
//!
//! ```text
//!  request  *3\r\n $7\r\nEVALSHA\r\n $40\r\n<sha>\r\n ...     an array of bulk strings
//!  replies  +OK  -ERR msg  :42  $5\r\nhello  $-1 (nil)  *2\r\n...   (RESP2)
//! ```

use std::sync::{Mutex, PoisonError};
use std::time::Duration;

use bytes::{Buf, BytesMut};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// Idle connections kept per client; more are opened under load and closed after use.
const IDLE_CONNECTIONS: usize = 16;
/// The longest reply accepted (the script's replies are a few bytes).
const MAX_REPLY: usize = 64 * 1024;

/// One RESP2 reply.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Reply {
    /// `+OK`.
    Simple(String),
    /// `-ERR …`: Redis refused the command.
    Error(String),
    /// `:42`.
    Integer(i64),
    /// `$5\r\nhello`; `None` is nil (`$-1`).
    Bulk(Option<Vec<u8>>),
    /// `*2\r\n…`; `None` is a nil array (`*-1`).
    Array(Option<Vec<Reply>>),
}

/// Why a command got no usable reply.
#[derive(Debug, thiserror::Error)]
pub enum RedisError {
    /// Redis did not answer in time (connecting included).
    #[error("redis {0}: no answer within {1:?}")]
    Timeout(String, Duration),
    /// Connecting, writing or reading failed.
    #[error("redis {0}: {1}")]
    Io(String, std::io::Error),
    /// The reply is not RESP2, or too long.
    #[error("redis {0}: malformed reply")]
    Protocol(String),
    /// Redis answered with an error.
    #[error("redis {0}: {1}")]
    Server(String, String),
}

/// Bytes that are not a RESP2 reply.
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
#[error("malformed RESP2 reply")]
pub struct Malformed;

/// Encodes a command as RESP2: an array of bulk strings.
pub fn encode(args: &[&[u8]], out: &mut Vec<u8>) {
    out.extend_from_slice(format!("*{}\r\n", args.len()).as_bytes());
    for a in args {
        out.extend_from_slice(format!("${}\r\n", a.len()).as_bytes());
        out.extend_from_slice(a);
        out.extend_from_slice(b"\r\n");
    }
}

/// Parses one reply from the start of `buf`: `Ok(None)` when more bytes are needed, else the
/// reply and how many bytes it took.
pub fn parse(buf: &[u8]) -> Result<Option<(Reply, usize)>, Malformed> {
    let Some(end) = buf.windows(2).position(|w| w == b"\r\n") else {
        return Ok(None);
    };
    let (&kind, line) = buf[..end].split_first().ok_or(Malformed)?;
    let line = std::str::from_utf8(line).map_err(|_| Malformed)?;
    let mut used = end + 2;
    let reply = match kind {
        b'+' => Reply::Simple(line.to_owned()),
        b'-' => Reply::Error(line.to_owned()),
        b':' => Reply::Integer(line.parse().map_err(|_| Malformed)?),
        b'$' => {
            let len: i64 = line.parse().map_err(|_| Malformed)?;
            if len < 0 {
                Reply::Bulk(None)
            } else {
                let len = usize::try_from(len).map_err(|_| Malformed)?;
                if len > MAX_REPLY {
                    return Err(Malformed);
                }
                if buf.len() < used + len + 2 {
                    return Ok(None);
                }
                if &buf[used + len..used + len + 2] != b"\r\n" {
                    return Err(Malformed);
                }
                let data = buf[used..used + len].to_vec();
                used += len + 2;
                Reply::Bulk(Some(data))
            }
        }
        b'*' => {
            let n: i64 = line.parse().map_err(|_| Malformed)?;
            if n < 0 {
                Reply::Array(None)
            } else {
                let n = usize::try_from(n).map_err(|_| Malformed)?;
                if n > MAX_REPLY {
                    return Err(Malformed);
                }
                let mut items = Vec::with_capacity(n.min(16));
                for _ in 0..n {
                    match parse(&buf[used..])? {
                        Some((item, took)) => {
                            items.push(item);
                            used += took;
                        }
                        None => return Ok(None),
                    }
                }
                Reply::Array(Some(items))
            }
        }
        _ => return Err(Malformed),
    };
    Ok(Some((reply, used)))
}

/// Connections to one Redis server.
#[derive(Debug)]
pub struct Client {
    address: String,
    timeout: Duration,
    idle: Mutex<Vec<Conn>>,
}

#[derive(Debug)]
struct Conn {
    stream: TcpStream,
    buf: BytesMut,
}

impl Client {
    /// A client of the server at `address` (`host:port`), each command limited to `timeout`.
    /// Connects on first use.
    pub fn new(address: &str, timeout: Duration) -> Self {
        Self {
            address: address.to_owned(),
            timeout,
            idle: Mutex::new(Vec::new()),
        }
    }

    /// The server's address.
    pub fn address(&self) -> &str {
        &self.address
    }

    /// The per-command time limit.
    pub fn timeout(&self) -> Duration {
        self.timeout
    }

    /// Sends one command and reads its reply, within the client's timeout. An error reply is
    /// [`RedisError::Server`].
    pub async fn call(&self, args: &[&[u8]]) -> Result<Reply, RedisError> {
        let result = tokio::time::timeout(self.timeout, self.call_untimed(args)).await;
        match result {
            Ok(Ok(Reply::Error(e))) => Err(RedisError::Server(self.address.clone(), e)),
            Ok(r) => r,
            // The connection in use is dropped with the cancelled future.
            Err(_) => Err(RedisError::Timeout(self.address.clone(), self.timeout)),
        }
    }

    async fn call_untimed(&self, args: &[&[u8]]) -> Result<Reply, RedisError> {
        let mut out = Vec::with_capacity(128);
        encode(args, &mut out);
        let idle = self
            .idle
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .pop();
        if let Some(conn) = idle {
            match self.exchange(conn, &out).await {
                // An idle connection the server closed meanwhile (Redis restarted, or timed it
                // out): the command never ran, so it is sent once more on a new connection.
                Err(Stale::Closed) => {}
                Err(Stale::Failed(e)) => return Err(e),
                Ok(reply) => return Ok(reply),
            }
        }
        let stream = TcpStream::connect(&self.address)
            .await
            .map_err(|e| RedisError::Io(self.address.clone(), e))?;
        let _ = stream.set_nodelay(true);
        let conn = Conn {
            stream,
            buf: BytesMut::with_capacity(256),
        };
        self.exchange(conn, &out).await.map_err(|e| match e {
            Stale::Failed(e) => e,
            Stale::Closed => RedisError::Io(
                self.address.clone(),
                std::io::ErrorKind::UnexpectedEof.into(),
            ),
        })
    }

    /// Writes a command on `conn` and reads its reply; puts `conn` back in the pool when
    /// nothing is left unread.
    async fn exchange(&self, mut conn: Conn, command: &[u8]) -> Result<Reply, Stale> {
        let io = |e: std::io::Error| {
            use std::io::ErrorKind::{BrokenPipe, ConnectionReset, UnexpectedEof};
            if matches!(e.kind(), BrokenPipe | ConnectionReset | UnexpectedEof) {
                Stale::Closed
            } else {
                Stale::Failed(RedisError::Io(self.address.clone(), e))
            }
        };
        conn.stream.write_all(command).await.map_err(io)?;
        let reply = loop {
            match parse(&conn.buf) {
                Ok(Some((reply, used))) => {
                    conn.buf.advance(used);
                    break reply;
                }
                Ok(None) if conn.buf.len() < MAX_REPLY => {}
                _ => {
                    return Err(Stale::Failed(RedisError::Protocol(self.address.clone())));
                }
            }
            let n = conn.stream.read_buf(&mut conn.buf).await.map_err(io)?;
            if n == 0 {
                // Closed before the whole reply: the command may have run only if part of the
                // reply came.
                return Err(if conn.buf.is_empty() {
                    Stale::Closed
                } else {
                    Stale::Failed(RedisError::Protocol(self.address.clone()))
                });
            }
        };
        // Only a connection with nothing left unread goes back to the pool.
        if conn.buf.is_empty() {
            let mut idle = self.idle.lock().unwrap_or_else(PoisonError::into_inner);
            if idle.len() < IDLE_CONNECTIONS {
                idle.push(conn);
            }
        }
        Ok(reply)
    }
}

/// How an exchange on a connection failed.
enum Stale {
    /// The server had closed the connection (no reply came).
    Closed,
    /// Anything else.
    Failed(RedisError),
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_command_is_an_array_of_bulk_strings() {
        let mut out = Vec::new();
        encode(&[b"GET", b"k\r\n", b""], &mut out);
        assert_eq!(out, b"*3\r\n$3\r\nGET\r\n$3\r\nk\r\n\r\n$0\r\n\r\n");
    }

    #[test]
    fn every_reply_kind_parses_with_its_length() {
        let cases: &[(&[u8], Reply)] = &[
            (b"+OK\r\n", Reply::Simple("OK".into())),
            (
                b"-NOSCRIPT No matching script\r\n",
                Reply::Error("NOSCRIPT No matching script".into()),
            ),
            (b":-42\r\n", Reply::Integer(-42)),
            (b"$5\r\nhe\r\no\r\n", Reply::Bulk(Some(b"he\r\no".to_vec()))),
            (b"$-1\r\n", Reply::Bulk(None)),
            (b"*-1\r\n", Reply::Array(None)),
            (
                b"*3\r\n:1\r\n$2\r\nab\r\n*1\r\n:7\r\n",
                Reply::Array(Some(vec![
                    Reply::Integer(1),
                    Reply::Bulk(Some(b"ab".to_vec())),
                    Reply::Array(Some(vec![Reply::Integer(7)])),
                ])),
            ),
        ];
        for (wire, want) in cases {
            let mut with_next = wire.to_vec();
            with_next.extend_from_slice(b"+next\r\n");
            assert_eq!(
                parse(&with_next),
                Ok(Some((want.clone(), wire.len()))),
                "{}",
                String::from_utf8_lossy(wire)
            );
        }
    }

    #[test]
    fn a_partial_reply_asks_for_more_and_garbage_is_refused() {
        for partial in [
            &b""[..],
            b"+OK",
            b"$5\r\nhel",
            b"*2\r\n:1\r\n",
            b"$5\r\nhello\r",
        ] {
            assert_eq!(parse(partial), Ok(None), "{partial:?}");
        }
        for bad in [&b"?x\r\n"[..], b":x\r\n", b"$3\r\nabcd\r\n", b"\r\n"] {
            assert_eq!(parse(bad), Err(Malformed), "{bad:?}");
        }
    }

    /// A server that answers one command per connection, then closes it (as Redis does to
    /// idle clients after `timeout`, or when it restarts).
    async fn one_reply_per_connection() -> std::net::SocketAddr {
        let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = l.local_addr().unwrap();
        tokio::spawn(async move {
            for i in 0.. {
                let (mut s, _) = l.accept().await.unwrap();
                let mut buf = [0u8; 64];
                let _ = s.read(&mut buf).await;
                let _ = s.write_all(format!(":{i}\r\n").as_bytes()).await;
            }
        });
        addr
    }

    #[tokio::test]
    async fn a_pooled_connection_the_server_closed_is_replaced_without_failing_the_command() {
        let addr = one_reply_per_connection().await;
        let client = Client::new(&addr.to_string(), Duration::from_secs(2));
        for want in 0..3 {
            let reply = client.call(&[b"PING"]).await.expect("answered");
            assert_eq!(reply, Reply::Integer(want), "a new connection each time");
        }
    }

    #[tokio::test]
    async fn a_server_that_does_not_answer_is_a_timeout() {
        let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let client = Client::new(
            &l.local_addr().unwrap().to_string(),
            Duration::from_millis(50),
        );
        let e = client.call(&[b"PING"]).await.expect_err("no answer");
        assert!(
            matches!(e, RedisError::Timeout(_, d) if d == Duration::from_millis(50)),
            "{e}"
        );
    }
}
