//! Read buffers, reused per thread. Every request needs one for itself and one for its response
//! while it is in progress, and none while its connection is idle; taking them from a short
//! per-thread list instead of the allocator saves two large allocations per request (sizes that
//! glibc serves from its slower bins). The list is bounded, so what a burst leaves behind is
//! at most `KEEP` × `SIZE` per thread.

use std::cell::RefCell;

use bytes::{Bytes, BytesMut};

/// The size of every pooled buffer: a request or response head and a typical small body fit.
pub const SIZE: usize = 8 * 1024;
/// Buffers kept per thread.
const KEEP: usize = 128;

thread_local! {
    static FREE: RefCell<Vec<BytesMut>> = const { RefCell::new(Vec::new()) };
}

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
    FREE.with_borrow_mut(|free| {
        if free.len() < KEEP {
            free.push(buf);
        }
    });
}

/// Gives back a frozen buffer once nothing else refers to it (header values of a finished
/// request shared it).
pub fn recycle(bytes: Bytes) {
    if let Ok(buf) = bytes.try_into_mut() {
        put(buf);
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
}
