//! The upstream side: connecting (plain or mesh mTLS), connection pools and HTTP clients,
//! backends with their endpoints, balancers, outlier detection, limits and request bodies.

pub mod backend;
pub mod balance;
pub mod body;
pub mod connect;
pub mod health;
pub mod limits;
pub mod outlier;
pub mod pool;
pub mod upstream;
