//! A real local Kubernetes control plane and the support code of Portico's end-to-end tests.
//!
//! - [`cluster`]: etcd, kube-apiserver, kube-controller-manager, kube-scheduler and kwok as
//!   local processes, with fresh certificates ([`certs`]).
//! - [`harness`]: one control plane per test binary, one namespace per test.
//! - [`crds`]: installing the generated CRDs.
//! - [`support`]: helpers the test binaries share (objects, waiting, HTTP, base64).
//! - [`capture`]: packets between two pods as the node sees them.

pub mod capture;
pub mod certs;
pub mod cluster;
pub mod crds;
pub mod harness;
pub mod node;
pub mod support;
