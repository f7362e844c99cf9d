//! Traffic policies that decide about a request without forwarding it: request and response
//! filters, retry policy and budget, rate limits (local, or shared in Redis), authentication,
//! inbound authorization, the response cache and fallbacks.

pub mod authn;
pub mod cache;
pub mod compress;
pub mod cors;
pub mod fallback;
pub mod filters;
pub mod ids;
pub mod inbound;
pub mod jwks;
pub mod jwt;
pub mod limit_store;
pub mod ratelimit;
pub mod redis;
pub mod retry;
pub mod stages;
