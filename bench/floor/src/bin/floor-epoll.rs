//! The floor with epoll: edge-triggered readiness (as nginx and tokio register sockets), one
//! `recv` per readiness report unless it fills the buffer, one `write` per message. Per
//! request that is what nginx does: 2 reads, 2 writes and the `epoll_wait` calls that find
//! them ready.

use portico_floor::{addresses, close, connect, listen, nodelay, request_len, response_len};
use std::net::SocketAddr;
use std::os::fd::RawFd;

const BUF: usize = 16 * 1024;
const LISTENER: u64 = u64::MAX;

/// A client connection and the upstream connection it forwards to.
struct Conn {
    client: RawFd,
    upstream: RawFd,
    req: Vec<u8>,
    resp: Vec<u8>,
}

fn main() {
    let (listen_addr, upstream_addr) = addresses();
    let listener = listen(listen_addr);
    // SAFETY: plain system calls on descriptors this process owns; buffers outlive the calls.
    unsafe {
        let ep = libc::epoll_create1(libc::EPOLL_CLOEXEC);
        assert!(ep >= 0, "epoll_create1");
        add(ep, listener, LISTENER);
        let mut conns: Vec<Option<Conn>> = Vec::new();
        let mut events = vec![libc::epoll_event { events: 0, u64: 0 }; 256];
        loop {
            let n = libc::epoll_wait(ep, events.as_mut_ptr(), events.len() as i32, -1);
            if n < 0 {
                continue; // EINTR
            }
            for ev in &events[..n as usize] {
                let token = ev.u64;
                if token == LISTENER {
                    accept_all(ep, listener, upstream_addr, &mut conns);
                    continue;
                }
                let (slot, from_upstream) = ((token >> 1) as usize, token & 1 == 1);
                let done = match conns[slot].as_mut() {
                    Some(c) if from_upstream => {
                        !pass(c.upstream, c.client, &mut c.resp, response_len)
                    }
                    Some(c) => !pass(c.client, c.upstream, &mut c.req, request_len),
                    None => false,
                };
                if done {
                    if let Some(conn) = conns[slot].take() {
                        close(conn.client);
                        close(conn.upstream);
                    }
                }
            }
        }
    }
}

unsafe fn add(ep: RawFd, fd: RawFd, token: u64) {
    let mut ev = libc::epoll_event {
        events: (libc::EPOLLIN | libc::EPOLLET) as u32,
        u64: token,
    };
    assert_eq!(
        libc::epoll_ctl(ep, libc::EPOLL_CTL_ADD, fd, &mut ev),
        0,
        "epoll_ctl"
    );
}

unsafe fn accept_all(
    ep: RawFd,
    listener: RawFd,
    upstream: SocketAddr,
    conns: &mut Vec<Option<Conn>>,
) {
    loop {
        let fd = libc::accept4(
            listener,
            std::ptr::null_mut(),
            std::ptr::null_mut(),
            libc::SOCK_NONBLOCK | libc::SOCK_CLOEXEC,
        );
        if fd < 0 {
            return;
        }
        nodelay(fd);
        let up = connect(upstream, true);
        let slot = conns.iter().position(Option::is_none).unwrap_or_else(|| {
            conns.push(None);
            conns.len() - 1
        });
        conns[slot] = Some(Conn {
            client: fd,
            upstream: up,
            req: Vec::with_capacity(BUF),
            resp: Vec::with_capacity(BUF),
        });
        add(ep, fd, (slot as u64) << 1);
        add(ep, up, (slot as u64) << 1 | 1);
    }
}

/// Reads what `from` sent into `buf` and writes a complete message (as `complete` frames it)
/// to `to`. False when the connection ends.
unsafe fn pass(
    from: RawFd,
    to: RawFd,
    buf: &mut Vec<u8>,
    complete: fn(&[u8]) -> Option<usize>,
) -> bool {
    if !read_into(from, buf) {
        return false;
    }
    if let Some(len) = complete(buf) {
        write_all(to, &buf[..len]);
        buf.drain(..len);
    }
    true
}

/// Reads into the spare capacity of `buf` until a `recv` leaves room (so the socket is
/// drained and the next arrival raises a new edge). False on end of stream or an error other
/// than "not ready".
unsafe fn read_into(fd: RawFd, buf: &mut Vec<u8>) -> bool {
    loop {
        if buf.capacity() - buf.len() < 4096 {
            buf.reserve(BUF);
        }
        let spare = buf.capacity() - buf.len();
        let n = libc::recv(fd, buf.as_mut_ptr().add(buf.len()).cast(), spare, 0);
        if n <= 0 {
            return n < 0 && *libc::__errno_location() == libc::EAGAIN;
        }
        buf.set_len(buf.len() + n as usize);
        if (n as usize) < spare {
            return true;
        }
    }
}

/// Writes all of `data`; the messages here are small, so a short write is retried at once.
unsafe fn write_all(fd: RawFd, mut data: &[u8]) {
    while !data.is_empty() {
        let n = libc::write(fd, data.as_ptr().cast(), data.len());
        if n > 0 {
            data = &data[n as usize..];
        } else if n < 0 && *libc::__errno_location() != libc::EAGAIN {
            return;
        }
    }
}
