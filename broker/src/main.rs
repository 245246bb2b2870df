//! The `weir` binary.

use anyhow::Context;
use clap::Parser;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;
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
    let chain = match config.plugin.is_empty() {
        true => None,
        false => Some(Arc::new(PluginChain::load(&config)?)),
    };
    if args.check {
        println!(
            "configuration is valid ({} plugins loaded)",
            config.plugin.len()
        );
        return Ok(());
    }
    let hooks: Arc<dyn Hooks> = match &chain {
        Some(c) => c.clone(),
        None => Arc::new(DefaultHooks),
    };
    if let Some(c) = chain.as_ref().filter(|_| config.plugins.watch) {
        weir::plugin::watch(c, Duration::from_millis(config.plugins.watch_ms));
    }
    runtime.block_on(async {
        if let (Some(c), Some(path)) = (chain.clone(), args.config.clone()) {
            reconfigure_plugins_on_sighup(c, path);
        }
        weir::server::run(config, hooks, chain, shutdown_signal()).await
    })?;
    Ok(())
}

/// SIGHUP re-reads the configuration file and loads the `[[plugin]]` chain it names
/// (list, order, each plugin's config and limits). If the file or any plugin fails, the
/// running chain stays.
fn reconfigure_plugins_on_sighup(chain: Arc<PluginChain>, path: PathBuf) {
    #[cfg(unix)]
    tokio::spawn(async move {
        let Ok(mut hup) = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::hangup())
        else {
            return;
        };
        while hup.recv().await.is_some() {
            let (chain, path) = (chain.clone(), path.clone());
            let outcome = tokio::task::spawn_blocking(move || {
                let config = Config::from_file(&path).map_err(|e| e.to_string())?;
                chain.reconfigure(&config.plugin).map_err(|e| e.to_string())
            })
            .await;
            match outcome {
                Ok(Ok(())) => {}
                Ok(Err(e)) => tracing::error!("SIGHUP: plugin chain not changed: {e}"),
                Err(e) => tracing::error!("SIGHUP: reload task failed: {e}"),
            }
        }
    });
    #[cfg(not(unix))]
    drop((chain, path));
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
