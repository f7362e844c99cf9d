//! Routing tables: which rule a request matches on a listener ([`router`]) and which Service a
//! sidecar's outbound connection was for ([`services`]).

pub mod router;
pub mod services;
