//! The least a forwarding HTTP/1.1 proxy can do per request, to measure the floor that the
//! kernel sets under issue 18's CPU goal: one worker, one upstream connection per client
//! connection, requests forwarded byte for byte once their head has arrived, responses framed
//! by `Content-Length` only. No routing, no header edits, no metrics, no timeouts. Two event
//! loops share this: `floor-epoll` (the system calls nginx and portico-proxy make) and
//! `floor-uring` (io_uring: one `io_uring_enter` submits the writes and waits).
//!
//! It takes portico-proxy's command line so that `bench/compare.sh` can run it in its place,
//! and reads the two addresses it needs (listener, then the first endpoint) from the config.

use std::net::SocketAddr;
use std::os::fd::{IntoRawFd, RawFd};

/// The listener's and the upstream's addresses, from `--config FILE` (the first two
/// `address: "..."` values of the file `bench/lib.sh`'s `portico_conf` writes).
pub fn addresses() -> (SocketAddr, SocketAddr) {
    let args: Vec<String> = std::env::args().collect();
    let file = args
        .iter()
        .position(|a| a == "--config")
        .and_then(|i| args.get(i + 1))
        .expect("--config FILE");
    let text = std::fs::read_to_string(file).expect("readable config");
    let mut found = text.split("address: \"").skip(1).map(|rest| {
        rest.split('"')
            .next()
            .and_then(|a| a.parse::<SocketAddr>().ok())
            .expect("a socket address")
    });
    let listen = found.next().expect("a listener address");
    let upstream = found.next().expect("an endpoint address");
    (listen, upstream)
}

/// A non-blocking listening socket on `addr`, its descriptor owned by the caller.
pub fn listen(addr: SocketAddr) -> RawFd {
    let listener = std::net::TcpListener::bind(addr).expect("bind");
    listener.set_nonblocking(true).expect("non-blocking");
    listener.into_raw_fd()
}

/// A connection to the upstream with `TCP_NODELAY`, non-blocking when `nonblocking`.
pub fn connect(addr: SocketAddr, nonblocking: bool) -> RawFd {
    let stream = std::net::TcpStream::connect(addr).expect("upstream connect");
    stream.set_nodelay(true).expect("nodelay");
    stream.set_nonblocking(nonblocking).expect("non-blocking");
    stream.into_raw_fd()
}

/// Sets `TCP_NODELAY` on an accepted socket.
pub fn nodelay(fd: RawFd) {
    let one: libc::c_int = 1;
    // SAFETY: fd is an open socket; the option value is a c_int that outlives the call.
    let rc = unsafe {
        libc::setsockopt(
            fd,
            libc::IPPROTO_TCP,
            libc::TCP_NODELAY,
            (&one as *const libc::c_int).cast(),
            std::mem::size_of::<libc::c_int>() as libc::socklen_t,
        )
    };
    assert_eq!(rc, 0, "TCP_NODELAY");
}

/// Closes a descriptor this process owns.
pub fn close(fd: RawFd) {
    // SAFETY: the caller owns fd and does not use it afterwards.
    unsafe { libc::close(fd) };
}

/// The length of a complete request head in `buf` (bodiless requests only: the benchmark
/// sends GETs), or `None` while the head is incomplete.
pub fn request_len(buf: &[u8]) -> Option<usize> {
    head_end(buf)
}

/// The length of a complete response in `buf` (head plus `Content-Length` bytes), or `None`
/// while it is incomplete.
pub fn response_len(buf: &[u8]) -> Option<usize> {
    let head = head_end(buf)?;
    let body = content_length(&buf[..head]);
    (buf.len() >= head + body).then_some(head + body)
}

fn head_end(buf: &[u8]) -> Option<usize> {
    buf.windows(4).position(|w| w == b"\r\n\r\n").map(|i| i + 4)
}

fn content_length(head: &[u8]) -> usize {
    for line in head.split(|&b| b == b'\n') {
        if line.len() > 15 && line[..15].eq_ignore_ascii_case(b"content-length:") {
            let digits = std::str::from_utf8(&line[15..]).unwrap_or("").trim();
            return digits.parse().unwrap_or(0);
        }
    }
    0
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn frames_requests_and_responses() {
        assert_eq!(request_len(b"GET / HTTP/1.1\r\nHost: a\r\n\r\n"), Some(27));
        assert_eq!(request_len(b"GET / HTTP/1.1\r\nHost: a\r\n"), None);
        let resp = b"HTTP/1.1 200 OK\r\nContent-Length: 3\r\n\r\nabc";
        assert_eq!(response_len(resp), Some(resp.len()));
        assert_eq!(response_len(&resp[..resp.len() - 1]), None);
    }
}
