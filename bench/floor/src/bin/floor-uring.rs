//! The floor with io_uring: each write is linked to the read that waits for its answer
//! (the upstream's response, the client's next request) and posts no completion when it
//! succeeds, so a request costs two `io_uring_enter` calls, each submitting and waiting at
//! once. The ring is set up for one issuer with deferred task work: completions are
//! processed only when the loop waits, never by interrupting it.

use io_uring::{opcode, squeue, types, IoUring};
use portico_floor::{addresses, close, connect, listen, nodelay, request_len, response_len};
use std::net::SocketAddr;
use std::os::fd::RawFd;

const BUF: usize = 16 * 1024;
const ACCEPT: u64 = u64::MAX;
const RECV_CLIENT: u64 = 0;
const RECV_UPSTREAM: u64 = 1;
/// Writes post a completion only when they fail.
const SEND: u64 = 2;

/// A client connection, its upstream connection, and the operations in flight on them
/// (its buffers stay until the last one completes).
struct Conn {
    client: RawFd,
    upstream: RawFd,
    req: Box<[u8]>,
    req_len: usize,
    resp: Box<[u8]>,
    resp_len: usize,
    inflight: u32,
    closing: bool,
}

fn main() {
    let (listen_addr, upstream_addr) = addresses();
    let listener = listen(listen_addr);
    let mut ring: IoUring = IoUring::builder()
        .setup_single_issuer()
        .setup_defer_taskrun()
        .setup_coop_taskrun()
        .build(1024)
        .expect("io_uring");
    let mut conns: Vec<Option<Conn>> = Vec::new();
    let mut pending: Vec<squeue::Entry> = vec![accept(listener)];
    let mut done: Vec<(u64, i32, bool)> = Vec::with_capacity(256);
    loop {
        {
            let mut sq = ring.submission();
            for entry in pending.drain(..) {
                // SAFETY: every buffer an entry points into lives in `conns` until its
                // operation completes (`inflight`).
                unsafe { sq.push(&entry).expect("submission queue has room") };
            }
        }
        if let Err(e) = ring.submit_and_wait(1) {
            assert_eq!(e.raw_os_error(), Some(libc::EINTR), "io_uring_enter: {e}");
        }
        done.extend(
            ring.completion()
                .map(|c| (c.user_data(), c.result(), io_uring::cqueue::more(c.flags()))),
        );
        for (data, res, more) in done.drain(..) {
            if data == ACCEPT {
                if res >= 0 {
                    opened(res, upstream_addr, &mut conns, &mut pending);
                }
                if !more {
                    pending.push(accept(listener));
                }
                continue;
            }
            let slot = (data >> 2) as usize;
            let Some(conn) = conns[slot].as_mut() else {
                continue;
            };
            if data & 3 != SEND {
                conn.inflight -= 1; // writes were counted done when queued
            }
            let alive = !conn.closing
                && res > 0
                && match data & 3 {
                    RECV_CLIENT => request_in(conn, slot, res as usize, &mut pending),
                    RECV_UPSTREAM => response_in(conn, slot, res as usize, &mut pending),
                    _ => false, // a failed write
                };
            if !alive {
                conn.closing = true;
                if conn.inflight == 0 {
                    close(conn.client);
                    close(conn.upstream);
                    conns[slot] = None;
                }
            }
        }
    }
}

fn accept(listener: RawFd) -> squeue::Entry {
    opcode::AcceptMulti::new(types::Fd(listener))
        .build()
        .user_data(ACCEPT)
}

fn opened(
    fd: RawFd,
    upstream: SocketAddr,
    conns: &mut Vec<Option<Conn>>,
    pending: &mut Vec<squeue::Entry>,
) {
    nodelay(fd);
    let slot = conns.iter().position(Option::is_none).unwrap_or_else(|| {
        conns.push(None);
        conns.len() - 1
    });
    let conn = conns[slot].insert(Conn {
        client: fd,
        upstream: connect(upstream, true),
        req: vec![0; BUF].into_boxed_slice(),
        req_len: 0,
        resp: vec![0; BUF].into_boxed_slice(),
        resp_len: 0,
        inflight: 0,
        closing: false,
    });
    pending.push(recv_client(conn, slot));
}

fn recv_client(conn: &mut Conn, slot: usize) -> squeue::Entry {
    conn.inflight += 1;
    let spare = &mut conn.req[conn.req_len..];
    opcode::Recv::new(
        types::Fd(conn.client),
        spare.as_mut_ptr(),
        spare.len() as u32,
    )
    .build()
    .user_data((slot as u64) << 2 | RECV_CLIENT)
}

fn recv_upstream(conn: &mut Conn, slot: usize) -> squeue::Entry {
    conn.inflight += 1;
    let spare = &mut conn.resp[conn.resp_len..];
    opcode::Recv::new(
        types::Fd(conn.upstream),
        spare.as_mut_ptr(),
        spare.len() as u32,
    )
    .build()
    .user_data((slot as u64) << 2 | RECV_UPSTREAM)
}

/// A write linked to the read after it: no completion unless it fails, and then the read
/// is cancelled (and completes with an error).
fn send(fd: RawFd, data: &[u8], slot: usize, conn_inflight: &mut u32) -> squeue::Entry {
    *conn_inflight += 1;
    opcode::Send::new(types::Fd(fd), data.as_ptr(), data.len() as u32)
        .build()
        .flags(squeue::Flags::IO_LINK | squeue::Flags::SKIP_SUCCESS)
        .user_data((slot as u64) << 2 | SEND)
}

/// The client sent `n` bytes: a complete head goes upstream, with the read of its response.
/// The clients here do not pipeline, so a head is all the buffer holds.
fn request_in(conn: &mut Conn, slot: usize, n: usize, pending: &mut Vec<squeue::Entry>) -> bool {
    conn.req_len += n;
    match request_len(&conn.req[..conn.req_len]) {
        Some(len) => {
            let entry = send(conn.upstream, &conn.req[..len], slot, &mut conn.inflight);
            // A write that succeeds posts no completion: count it done now.
            conn.inflight -= 1;
            pending.push(entry);
            conn.req_len = 0;
            pending.push(recv_upstream(conn, slot));
        }
        None if conn.req_len == conn.req.len() => return false,
        None => pending.push(recv_client(conn, slot)),
    }
    true
}

/// The upstream sent `n` bytes: a complete response goes to the client, with the read of
/// its next request.
fn response_in(conn: &mut Conn, slot: usize, n: usize, pending: &mut Vec<squeue::Entry>) -> bool {
    conn.resp_len += n;
    match response_len(&conn.resp[..conn.resp_len]) {
        Some(len) => {
            let entry = send(conn.client, &conn.resp[..len], slot, &mut conn.inflight);
            conn.inflight -= 1;
            pending.push(entry);
            conn.resp_len = 0;
            pending.push(recv_client(conn, slot));
        }
        None if conn.resp_len == conn.resp.len() => return false,
        None => pending.push(recv_upstream(conn, slot)),
    }
    true
}
