//! `portico-proxy`: Portico's data plane.

use clap::Parser as _;

fn main() -> anyhow::Result<()> {
    // One crypto provider for the whole process, chosen before anything touches TLS.
    let _ = rustls::crypto::ring::default_provider().install_default();
    // `portico-proxy init` shares the image but not the proxy's flags: the init container runs
    // it once to install iptables rules, before the proxy itself starts.
    if std::env::args_os().nth(1).is_some_and(|a| a == "init") {
        let args = portico_proxy::init::InitArgs::parse_from(std::env::args_os().skip(1));
        return portico_proxy::init::run(args);
    }
    portico_proxy::cli::run(portico_proxy::cli::Args::parse())
}
