//! What a proxy tells its operators: Prometheus metrics and JSON access logs.

pub mod accesslog;
pub mod metrics;
