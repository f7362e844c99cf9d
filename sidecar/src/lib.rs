//! Portico's data plane: an HTTP/1.1, HTTP/2, gRPC and TCP proxy configured with the
//! [`portico_proxy_api`] contract.
//!
//! [`Proxy::start`] runs a proxy inside the current tokio runtime and returns a handle with the
//! bound addresses; [`Proxy::apply`] swaps in a new config without dropping requests in flight.
//! The `portico-proxy` binary wraps this with a config file, signals and logs ([`app::cli`]).
//!
//! The modules are layers; each uses only the ones listed before it (`tests/layers.rs` checks):
//!
//! ```text
//! error, observe, wire   errors as responses; metrics and access logs; HTTP/1 wire format
//! mesh                   workload identity, mesh mTLS, the authenticated link to the operator
//! policy                 request filters, retry policy and budget, rate limits, inbound authorization
//! forward                upstream side: connecting (plain or mTLS), pools, backends and balancing
//! route                  routing tables: listeners' routes and the mesh's Services
//! config                 a contract config compiled into the snapshot that serves it
//! shared                 what every connection shares (the snapshot in force, metrics, identity)
//! pipeline               one request's trip: route, request stages, attempts, response stages
//! serve                  accepting and serving connections: fast HTTP/1, hyper, TCP, mesh, admin
//! runtime                a running proxy: start, apply, shutdown
//! app                    the binary: flags, the operator's config stream, file reload, init
//! ```

pub mod error;
pub mod observe;
pub mod wire;

pub mod mesh;
pub mod policy;

pub mod forward;
pub mod route;

pub mod config;
pub mod shared;

pub mod pipeline;
pub mod serve;

pub mod app;
pub mod runtime;

pub use config::snapshot::ApplyError;
pub use mesh::identity;
pub use runtime::{Options, Proxy, StartError};
pub use shared::Shared;
