//! The floor with io_uring, used as it is meant for sockets: each socket has one multishot
//! receive armed for its whole life, filling buffers the kernel picks from a ring this
//! process registers (no re-arming, no poll set up per read), and writes post a completion
//! only when they fail. The ring is set up for one issuer with deferred task work:
//! completions are processed only when the loop waits, never by interrupting it. A request
//! then costs one or two `io_uring_enter` calls, each submitting and waiting at once.

use io_uring::types::BufRingEntry;
use io_uring::{cqueue, opcode, squeue, types, IoUring};
use portico_floor::{addresses, close, connect, listen, nodelay, request_len, response_len};
use std::net::SocketAddr;
use std::os::fd::RawFd;
use std::sync::atomic::{AtomicU16, Ordering};

const BUF: usize = 16 * 1024;
/// Receive buffers in the provided-buffer ring, and their size.
const RING_BUFS: u16 = 1024;
const RING_BUF_LEN: usize = 4096;
const GROUP: u16 = 0;
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
    req: Vec<u8>,
    resp: Vec<u8>,
    inflight: u32,
    closing: bool,
}

/// The provided-buffer ring: entries the kernel takes receive buffers from, and the buffers.
struct BufRing {
    entries: *mut BufRingEntry,
    bufs: Vec<u8>,
    tail: u16,
}

impl BufRing {
    fn new() -> Self {
        let layout = std::alloc::Layout::from_size_align(
            RING_BUFS as usize * std::mem::size_of::<BufRingEntry>(),
            4096,
        )
        .expect("layout");
        // SAFETY: a non-zero size; the ring lives as long as the process.
        let entries = unsafe { std::alloc::alloc_zeroed(layout) }.cast::<BufRingEntry>();
        assert!(!entries.is_null(), "ring memory");
        let mut ring = BufRing {
            entries,
            bufs: vec![0; RING_BUFS as usize * RING_BUF_LEN],
            tail: 0,
        };
        for bid in 0..RING_BUFS {
            ring.give_back(bid);
        }
        ring.publish();
        ring
    }

    /// Buffer `bid`'s bytes.
    fn buf(&self, bid: u16, len: usize) -> &[u8] {
        &self.bufs[bid as usize * RING_BUF_LEN..][..len]
    }

    /// Puts buffer `bid` back in the ring (seen by the kernel at the next `publish`).
    fn give_back(&mut self, bid: u16) {
        let addr = self.bufs.as_ptr() as u64 + bid as u64 * RING_BUF_LEN as u64;
        // SAFETY: the index is masked into the ring's RING_BUFS entries.
        let entry = unsafe { &mut *self.entries.add((self.tail & (RING_BUFS - 1)) as usize) };
        entry.set_addr(addr);
        entry.set_len(RING_BUF_LEN as u32);
        entry.set_bid(bid);
        self.tail = self.tail.wrapping_add(1);
    }

    /// Makes the buffers given back visible to the kernel.
    fn publish(&self) {
        // SAFETY: the tail field lives in the ring's memory; the kernel reads it atomically.
        let tail = unsafe { &*(BufRingEntry::tail(self.entries).cast::<AtomicU16>()) };
        tail.store(self.tail, Ordering::Release);
    }
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
    let mut bufs = BufRing::new();
    // SAFETY: the ring's memory is page-aligned and lives as long as the process.
    unsafe {
        ring.submitter()
            .register_buf_ring_with_flags(bufs.entries as u64, RING_BUFS, GROUP, 0)
    }
    .expect("register the buffer ring");
    let mut conns: Vec<Option<Conn>> = Vec::new();
    let mut pending: Vec<squeue::Entry> = vec![accept(listener)];
    let mut done: Vec<(u64, i32, u32)> = Vec::with_capacity(256);
    loop {
        {
            let mut sq = ring.submission();
            for entry in pending.drain(..) {
                // SAFETY: a write's buffer lives in `conns` and is not written again before
                // the write is done (the next bytes come only after its peer has them).
                unsafe { sq.push(&entry).expect("submission queue has room") };
            }
        }
        if let Err(e) = ring.submit_and_wait(1) {
            assert_eq!(e.raw_os_error(), Some(libc::EINTR), "io_uring_enter: {e}");
        }
        done.extend(
            ring.completion()
                .map(|c| (c.user_data(), c.result(), c.flags())),
        );
        for (data, res, flags) in done.drain(..) {
            if data == ACCEPT {
                if res >= 0 {
                    opened(res, upstream_addr, &mut conns, &mut pending);
                }
                if !cqueue::more(flags) {
                    pending.push(accept(listener));
                }
                continue;
            }
            let slot = (data >> 2) as usize;
            let Some(conn) = conns[slot].as_mut() else {
                continue;
            };
            let op = data & 3;
            if op == SEND {
                closing(conn); // a failed write
            } else {
                if let Some(bid) = cqueue::buffer_select(flags) {
                    let bytes = bufs.buf(bid, res.max(0) as usize);
                    if op == RECV_CLIENT {
                        conn.req.extend_from_slice(bytes);
                    } else {
                        conn.resp.extend_from_slice(bytes);
                    }
                    bufs.give_back(bid);
                }
                if res > 0 && !conn.closing {
                    if op == RECV_CLIENT {
                        pass(
                            conn.upstream,
                            &mut conn.req,
                            request_len,
                            slot,
                            &mut pending,
                        );
                    } else {
                        pass(
                            conn.client,
                            &mut conn.resp,
                            response_len,
                            slot,
                            &mut pending,
                        );
                    }
                }
                if !cqueue::more(flags) {
                    conn.inflight -= 1;
                    if (res > 0 || res == -libc::ENOBUFS) && !conn.closing {
                        // The kernel ended the multishot receive (out of buffers): re-arm it.
                        let fd = if op == RECV_CLIENT {
                            conn.client
                        } else {
                            conn.upstream
                        };
                        pending.push(recv(conn, fd, slot, op));
                    } else {
                        closing(conn);
                    }
                }
            }
            if conn.closing && conn.inflight == 0 {
                close(conn.client);
                close(conn.upstream);
                conns[slot] = None;
            }
        }
        bufs.publish();
    }
}

/// Ends both sockets' receives (they complete with end of stream); the connection is closed
/// when the last one has.
fn closing(conn: &mut Conn) {
    if !conn.closing {
        conn.closing = true;
        // SAFETY: both descriptors are open until the connection's last operation completes.
        unsafe {
            libc::shutdown(conn.client, libc::SHUT_RDWR);
            libc::shutdown(conn.upstream, libc::SHUT_RDWR);
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
        req: Vec::with_capacity(BUF),
        resp: Vec::with_capacity(BUF),
        inflight: 0,
        closing: false,
    });
    let (client, upstream) = (conn.client, conn.upstream);
    pending.push(recv(conn, client, slot, RECV_CLIENT));
    pending.push(recv(conn, upstream, slot, RECV_UPSTREAM));
}

/// A multishot receive on `fd`, armed until the socket ends (or the ring runs out of buffers).
fn recv(conn: &mut Conn, fd: RawFd, slot: usize, op: u64) -> squeue::Entry {
    conn.inflight += 1;
    opcode::RecvMulti::new(types::Fd(fd), GROUP)
        .build()
        .user_data((slot as u64) << 2 | op)
}

/// A write that posts no completion unless it fails.
fn send(fd: RawFd, data: &[u8], slot: usize) -> squeue::Entry {
    opcode::Send::new(types::Fd(fd), data.as_ptr(), data.len() as u32)
        .build()
        .flags(squeue::Flags::SKIP_SUCCESS)
        .user_data((slot as u64) << 2 | SEND)
}

/// Sends a complete message in `buf` (as `complete` frames it) to `to`. The clients here do
/// not pipeline, so a message is all the buffer holds, and its bytes stay put until the answer
/// has come back: only the length is reset, and the next message overwrites them after the
/// peer has had this one.
fn pass(
    to: RawFd,
    buf: &mut Vec<u8>,
    complete: fn(&[u8]) -> Option<usize>,
    slot: usize,
    pending: &mut Vec<squeue::Entry>,
) {
    if let Some(len) = complete(buf) {
        pending.push(send(to, &buf[..len], slot));
        buf.clear();
    }
}
