//! The `portico-proxy` binary: flags and modes, the operator's config stream, config file
//! reload, and the init container's traffic redirection.

pub mod cli;
pub mod control;
pub mod init;
pub mod reload;
