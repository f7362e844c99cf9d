//! Accepting and serving client connections: listeners, protocol detection, the fast HTTP/1
//! path, hyper's HTTP/1 and HTTP/2, opaque TCP, the sidecar's interception and inbound side,
//! and the admin server.

pub mod admin;
pub mod detect;
pub mod h1;
pub mod hyper;
pub mod inbound;
pub mod intercept;
pub mod listeners;
pub mod tcp;
