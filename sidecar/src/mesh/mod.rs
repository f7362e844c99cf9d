//! The mesh: this proxy's workload identity (certificate, renewal), mutual TLS between proxies,
//! and the authenticated link to the operator that issues both identities and config.

pub mod identity;
pub mod mtls;
pub mod operator;
