//! A contract config compiled into the [`snapshot::Snapshot`] that serves it, with its
//! listeners' TLS.

pub mod snapshot;
pub mod tls;
