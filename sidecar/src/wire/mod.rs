//! HTTP/1 on the wire, shared by the fast path's server and its upstream client: the codec,
//! read buffers, client streams, replay of bytes already read, and the hop-by-hop rules.

pub mod buffers;
pub mod codec;
pub mod fields;
pub mod headers;
pub mod raw;
pub mod rewind;
pub mod stream;

pub use stream::{ClientStream, MaybeTls};
