//! `portico-proxy`: Portico's data plane.

fn main() -> anyhow::Result<()> {
    // One crypto provider for the whole process, chosen before anything touches TLS.
    let _ = rustls::crypto::ring::default_provider().install_default();
    portico_proxy::app::cli::main(std::env::args_os())
}
