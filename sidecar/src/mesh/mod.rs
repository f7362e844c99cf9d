//! The mesh: this proxy's workload identity (certificate, renewal), mutual TLS between proxies,
//! the authenticated link to the operator that issues both identities and config, and the
//! backends a sidecar subscribes to on demand.

pub mod demand;
pub mod identity;
pub mod mtls;
pub mod operator;
