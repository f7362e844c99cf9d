//! `portico-proxy`: Portico's data plane.

use clap::Parser as _;

fn main() -> anyhow::Result<()> {
    // One crypto provider for the whole process, chosen before anything touches TLS.
    let _ = rustls::crypto::ring::default_provider().install_default();
    portico_proxy::cli::run(portico_proxy::cli::Args::parse())
}
