//! Portico's control plane.
//!
//! ```text
//!  watch ──► index ──► server (config streams to proxies)       read path: every replica
//!              └─────► status, gateway (behind lease)            write path: the Lease holder
//! ```

pub mod index;
