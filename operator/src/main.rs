//! `portico-operator`: Portico's control plane. See the library for the parts.

use clap::Parser;

fn main() -> anyhow::Result<()> {
    let _ = rustls::crypto::ring::default_provider().install_default();
    let args = portico_operator::Args::parse();
    portico_operator::init_logging(&args.log_level, args.log_format);
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;
    runtime.block_on(portico_operator::run_until_signal(args))
}
