//! The `weir` binary.

use anyhow::Context;
use clap::Parser;
use std::path::PathBuf;
use std::sync::Arc;
use weir::config::Config;
use weir::hooks::{DefaultHooks, Hooks};
use weir::plugin::PluginChain;

/// Weir: an MQTT 3.1.1 and 5.0 broker.
#[derive(Parser)]
#[command(version, about)]
struct Args {
    /// TOML configuration file (see docs/config.md). Without it: TCP on
    /// 127.0.0.1:1883, anonymous clients allowed, data in ./weir-data.
    #[arg(long, short)]
    config: Option<PathBuf>,

    /// Only check the configuration, loading (and so compiling and caching) every
    /// plugin, and exit: 0 if all is valid.
    #[arg(long)]
    check: bool,
}

fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    let config = match &args.config {
        Some(path) => Config::from_file(path)?,
        None => Config::default(),
    };

    let filter = std::env::var("RUST_LOG")
        .ok()
        .and_then(|f| f.parse::<tracing_subscriber::EnvFilter>().ok())
        .unwrap_or_else(|| tracing_subscriber::EnvFilter::new(&config.log.level));
    let ansi = std::io::IsTerminal::is_terminal(&std::io::stderr());
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_ansi(ansi)
        .with_writer(std::io::stderr)
        .init();

    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .context("starting the runtime")?;
    // Plugins are compiled and `init`ed before anything listens, so a broken plugin
    // stops startup instead of letting clients in without its checks.
    let hooks: Arc<dyn Hooks> = if config.plugin.is_empty() {
        Arc::new(DefaultHooks)
    } else {
        Arc::new(PluginChain::load(&config)?)
    };
    if args.check {
        println!(
            "configuration is valid ({} plugins loaded)",
            config.plugin.len()
        );
        return Ok(());
    }
    runtime.block_on(async { weir::server::run(config, hooks, shutdown_signal()).await })?;
    Ok(())
}

/// Completes on SIGINT or SIGTERM.
async fn shutdown_signal() {
    let ctrl_c = tokio::signal::ctrl_c();
    #[cfg(unix)]
    {
        let mut term =
            match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
                Ok(s) => s,
                Err(e) => {
                    tracing::warn!(error = %e, "cannot listen for SIGTERM");
                    let _ = ctrl_c.await;
                    return;
                }
            };
        tokio::select! {
            _ = ctrl_c => {}
            _ = term.recv() => {}
        }
    }
    #[cfg(not(unix))]
    let _ = ctrl_c.await;
}
