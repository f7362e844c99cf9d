//! Read buffers, head buffers and header maps, reused per thread. Every request needs one of
//! each for itself and for its response while it is in progress, and none while its connection
//! is idle; taking them from a short per-thread list instead of the allocator saves large
//! allocations per request (sizes that glibc serves from its slower bins). The lists are
//! bounded, so what a burst leaves behind is at most `KEEP` of each per thread.

use std::cell::RefCell;
use std::thread::LocalKey;

use bytes::{Bytes, BytesMut};
use http::HeaderMap;

/// The size of every pooled buffer: a request or response head and a typical small body fit.
pub const SIZE: usize = 8 * 1024;
/// Buffers kept per thread.
const KEEP: usize = 128;

thread_local! {
    static FREE: RefCell<Vec<BytesMut>> = const { RefCell::new(Vec::new()) };
    static HEADS: RefCell<Vec<Vec<u8>>> = const { RefCell::new(Vec::new()) };
    static MAPS: RefCell<Vec<HeaderMap>> = const { RefCell::new(Vec::new()) };
}

/// Header maps whose capacity grew past this (a request with many fields) go back to the
/// allocator.
const MAP_MAX: usize = 64;

/// An empty header map with room for at least `fields` fields: a request's, built from its
/// head. Taken from a per-thread list: a new map costs two allocations (its index table and its
/// entries, about 1.5 KiB for a dozen fields).
pub fn header_map(fields: usize) -> HeaderMap {
    let mut map = MAPS.with_borrow_mut(Vec::pop).unwrap_or_default();
    map.reserve(fields);
    map
}

/// Gives a request's header map back once the request is done, emptied (its values, slices
/// of the read buffer, are dropped here, so that buffer can be reused).
pub fn put_header_map(mut map: HeaderMap) {
    // An empty one (a request forwarded without a map) holds no memory worth keeping.
    if map.capacity() == 0 || map.capacity() > MAP_MAX {
        return;
    }
    map.clear();
    keep(&MAPS, map);
}

/// Puts `item` on this thread's `list` unless it holds [`KEEP`] already. `try_with`: an item
/// dropped while the thread exits finds the list gone.
fn keep<T>(list: &'static LocalKey<RefCell<Vec<T>>>, item: T) {
    let _ = list.try_with(|list| {
        let mut list = list.borrow_mut();
        if list.len() < KEEP {
            list.push(item);
        }
    });
}

/// The capacity of a pooled [`Head`]: a request or response head as the proxy writes it.
const HEAD_SIZE: usize = 512;
/// Head buffers grown past this (a big head) go back to the allocator.
const HEAD_MAX: usize = 4 * 1024;

/// An empty buffer with room for [`SIZE`] bytes.
pub fn take() -> BytesMut {
    FREE.with_borrow_mut(Vec::pop)
        .unwrap_or_else(|| BytesMut::with_capacity(SIZE))
}

/// Gives a buffer back (bigger or smaller ones, grown for a big head, are left to the
/// allocator).
pub fn put(mut buf: BytesMut) {
    if buf.capacity() != SIZE {
        return;
    }
    buf.clear();
    keep(&FREE, buf);
}

/// Gives back a frozen buffer once nothing else refers to it (header values of a finished
/// request shared it).
pub fn recycle(bytes: Bytes) {
    if let Ok(buf) = bytes.try_into_mut() {
        put(buf);
    }
}

/// A buffer for a head the proxy writes (the request it sends upstream, the response head it
/// sends the client), taken from a per-thread list and given back when dropped: two
/// allocations fewer per request.
#[derive(Debug)]
pub struct Head(Vec<u8>);

impl Head {
    /// An empty head buffer.
    pub fn take() -> Self {
        Self(
            HEADS
                .with_borrow_mut(Vec::pop)
                .unwrap_or_else(|| Vec::with_capacity(HEAD_SIZE)),
        )
    }
}

impl std::ops::Deref for Head {
    type Target = Vec<u8>;

    fn deref(&self) -> &Vec<u8> {
        &self.0
    }
}

impl std::ops::DerefMut for Head {
    fn deref_mut(&mut self) -> &mut Vec<u8> {
        &mut self.0
    }
}

impl Drop for Head {
    fn drop(&mut self) {
        let mut buf = std::mem::take(&mut self.0);
        if buf.capacity() > HEAD_MAX {
            return;
        }
        buf.clear();
        keep(&HEADS, buf);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn buffers_come_back_once_unshared() {
        let mut b = take();
        b.extend_from_slice(b"abc");
        let frozen = b.freeze();
        let value = frozen.slice(1..2);
        recycle(frozen.clone());
        drop(value);
        recycle(frozen);
        let again = take();
        assert!(again.is_empty());
        assert_eq!(again.capacity(), SIZE);
    }

    #[test]
    fn header_maps_come_back_empty_unless_grown_big() {
        let mut m = header_map(8);
        m.insert("x-a", http::HeaderValue::from_static("1"));
        let cap = m.capacity();
        put_header_map(m);
        let again = header_map(4);
        assert!(again.is_empty(), "an emptied map");
        assert_eq!(again.capacity(), cap, "the same map, reused");
        let mut big = header_map(MAP_MAX * 2);
        big.insert("x-a", http::HeaderValue::from_static("1"));
        let kept = MAPS.with_borrow(Vec::len);
        put_header_map(big);
        assert_eq!(MAPS.with_borrow(Vec::len), kept, "a grown map is not kept");
        put_header_map(HeaderMap::new());
        assert_eq!(MAPS.with_borrow(Vec::len), kept, "nor one never filled");
    }

    #[test]
    fn head_buffers_come_back_empty_unless_grown_big() {
        let mut h = Head::take();
        h.extend_from_slice(b"GET / HTTP/1.1\r\n");
        let addr = h.as_ptr();
        drop(h);
        let again = Head::take();
        assert!(again.is_empty());
        assert_eq!(again.as_ptr(), addr, "the same buffer, reused");
        let mut big = again;
        big.extend_from_slice(&[b'x'; HEAD_MAX + 1]);
        let kept = HEADS.with_borrow(Vec::len);
        drop(big);
        assert_eq!(
            HEADS.with_borrow(Vec::len),
            kept,
            "a grown buffer is not kept"
        );
        assert_eq!(Head::take().capacity(), HEAD_SIZE);
    }
}
