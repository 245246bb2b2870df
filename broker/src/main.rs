//! The `weir` binary.

use anyhow::Context;
use clap::{Parser, Subcommand};
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;
use weir::config::Config;
use weir::hooks::{DefaultHooks, Hooks};
use weir::plugin::PluginChain;

/// Messages are allocated on the thread that reads them and freed on the ones that
/// write them; glibc's allocator made those threads wait on each other's arena locks
/// (futex waits were a sixth of the broker's time with a plugin chain asked about every
/// message). jemalloc frees across threads without them.
#[global_allocator]
static ALLOCATOR: tikv_jemallocator::Jemalloc = tikv_jemallocator::Jemalloc;

/// Weir: an MQTT 3.1.1 and 5.0 broker. Without a command it runs the broker; the
/// commands operate a running one through its admin API.
#[derive(Parser)]
#[command(version, about)]
struct Args {
    /// TOML configuration file (see docs/config.md). Without it: TCP on
    /// 127.0.0.1:1883, WebSocket on 127.0.0.1:8083, anonymous clients allowed, data in
    /// ./weir-data, admin API on 127.0.0.1:9883.
    #[arg(long, short)]
    config: Option<PathBuf>,

    /// Only check the configuration, loading (and so compiling and caching) every
    /// plugin, and exit: 0 if all is valid.
    #[arg(long)]
    check: bool,

    /// Admin API address for the commands (default: `[admin] bind` of --config, else
    /// 127.0.0.1:9883).
    #[arg(long)]
    admin: Option<SocketAddr>,

    /// The admin API speaks HTTPS: trust the PEM certificates in this file (its CA, or
    /// its self-signed certificate). Default with --config whose `[admin] cert` is set:
    /// that file.
    #[arg(long)]
    admin_ca: Option<PathBuf>,

    /// The name the admin API's certificate must carry (default: the address's IP).
    #[arg(long)]
    admin_name: Option<String>,

    /// Bearer token for the admin API (default: `[admin] token` of --config).
    #[arg(long, env = "WEIR_ADMIN_TOKEN", hide_env_values = true)]
    token: Option<String>,

    #[command(subcommand)]
    command: Option<Command>,
}

#[derive(Subcommand)]
enum Command {
    /// Is the broker up?
    Health,
    /// Prometheus metrics.
    Metrics,
    /// The plugin chain: versions, hooks, counters.
    Plugins,
    /// Load a plugin's file again; the old version keeps serving if the new one fails.
    Reload { name: String },
    /// Put a disabled plugin back into the chain.
    Enable { name: String },
    /// Take a plugin out of the chain without unloading it.
    Disable { name: String },
    /// Let a candidate version (a `.wasm` file the broker can read) answer every
    /// question the plugin is asked, compared and counted but never used.
    Shadow { name: String, wasm: PathBuf },
    /// Stop a plugin's shadow.
    Unshadow { name: String },
    /// Swap a plugin's shadow in, as a reload does.
    Promote { name: String },
    /// Connected clients.
    Clients {
        #[arg(long, default_value_t = 0)]
        offset: usize,
        #[arg(long, default_value_t = 100)]
        limit: usize,
    },
    /// Disconnect a client (5.0 clients are told 0x98, administrative action).
    Kick { client_id: String },
    /// Work on a plugin without a broker.
    #[command(subcommand)]
    Plugin(PluginCommand),
}

#[derive(Subcommand)]
enum PluginCommand {
    /// Start a plugin project that builds and passes its own test (`./test.sh`).
    New {
        name: String,
        #[arg(long, value_enum)]
        lang: weir::scaffold::Lang,
        /// Where the project's directory is made.
        #[arg(long, default_value = ".")]
        dir: PathBuf,
        /// The Rust plugin SDK (default: the one this weir was built with).
        #[arg(long)]
        sdk: Option<PathBuf>,
    },
    /// Run a plugin's hooks against a file of cases (see docs/plugins.md), with the
    /// broker's sandbox and limits; exits 1 if any answer is not the expected one.
    Test {
        /// The plugin component (`.wasm`).
        wasm: PathBuf,
        /// A TOML file with the plugin's `[plugin.config]` table (its contents).
        #[arg(long)]
        config: Option<PathBuf>,
        /// The cases file (TOML, `[[case]]` entries).
        #[arg(long)]
        cases: PathBuf,
        /// Overrides the broker's default deadline per call.
        #[arg(long)]
        deadline_ms: Option<u64>,
        #[arg(long)]
        memory_mb: Option<u64>,
        /// URL prefixes the plugin may send HTTP requests to, as `allow_http`.
        #[arg(long)]
        allow_http: Vec<String>,
    },
}

/// `weir plugin new` and `weir plugin test` (whose exit code says whether every case
/// passed).
fn plugin_command(command: &PluginCommand) -> anyhow::Result<std::process::ExitCode> {
    let (wasm, config, cases, deadline_ms, memory_mb, allow_http) = match command {
        PluginCommand::New {
            name,
            lang,
            dir,
            sdk,
        } => {
            let weir = std::env::current_exe().context("locating the weir binary")?;
            let made = weir::scaffold::create(name, *lang, dir, &weir, sdk.as_deref())?;
            println!(
                "created {}; build and test it with {}/test.sh",
                made.display(),
                made.display()
            );
            return Ok(std::process::ExitCode::SUCCESS);
        }
        PluginCommand::Test {
            wasm,
            config,
            cases,
            deadline_ms,
            memory_mb,
            allow_http,
        } => (wasm, config, cases, deadline_ms, memory_mb, allow_http),
    };
    let filter = std::env::var("RUST_LOG").unwrap_or_else(|_| "warn".into());
    tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::new(filter))
        .with_writer(std::io::stderr)
        .init();
    let limits = weir::testkit::Limits {
        deadline_ms: *deadline_ms,
        memory_mb: *memory_mb,
        fuel: None,
        allow_http: allow_http.clone(),
    };
    let file = weir::testkit::read_cases(cases)?;
    let chain = weir::testkit::load(wasm, config.as_deref(), &limits)?;
    let summary = weir::testkit::run(&chain, &file, &mut std::io::stdout());
    Ok(match summary.failed {
        0 => std::process::ExitCode::SUCCESS,
        _ => std::process::ExitCode::FAILURE,
    })
}

/// Runs an operator command against the admin API; prints the answer.
fn operate(args: &Args, command: &Command) -> anyhow::Result<()> {
    use weir::admin::client::{request, segment, Target, Trust};
    let config = match &args.config {
        Some(path) => Some(Config::from_file(path)?.admin),
        None => None,
    };
    let addr = args
        .admin
        .or(config.as_ref().map(|c| c.bind))
        .unwrap_or(weir::config::Admin::default().bind);
    let ca = (args.admin_ca.clone()).or(config.as_ref().and_then(|c| c.cert.clone()));
    let tls = ca.map(|ca| Trust {
        ca,
        name: args.admin_name.clone(),
    });
    let target = Target { addr, tls };
    let token = args.token.clone().or(config.and_then(|c| c.token));
    let (method, path) = match command {
        Command::Health => ("GET", "/health".to_string()),
        Command::Metrics => ("GET", "/metrics".to_string()),
        Command::Plugins => ("GET", "/plugins".to_string()),
        Command::Reload { name } => ("POST", format!("/plugins/{}/reload", segment(name))),
        Command::Enable { name } => ("POST", format!("/plugins/{}/enable", segment(name))),
        Command::Disable { name } => ("POST", format!("/plugins/{}/disable", segment(name))),
        Command::Shadow { name, wasm } => {
            let wasm = std::path::absolute(wasm).context("the candidate's path")?;
            let path = segment(&wasm.to_string_lossy());
            (
                "POST",
                format!("/plugins/{}/shadow?path={path}", segment(name)),
            )
        }
        Command::Unshadow { name } => ("DELETE", format!("/plugins/{}/shadow", segment(name))),
        Command::Promote { name } => ("POST", format!("/plugins/{}/promote", segment(name))),
        Command::Clients { offset, limit } => {
            ("GET", format!("/clients?offset={offset}&limit={limit}"))
        }
        Command::Kick { client_id } => ("DELETE", format!("/clients/{}", segment(client_id))),
        Command::Plugin(_) => anyhow::bail!("not an admin API command"),
    };
    let (status, body) = request(&target, method, &path, token.as_deref())?;
    if (200..300).contains(&status) {
        if status == 204 {
            println!("done");
        } else {
            println!("{}", body.trim_end());
        }
        Ok(())
    } else {
        anyhow::bail!("{method} {path}: HTTP {status}: {}", body.trim_end())
    }
}

fn main() -> anyhow::Result<std::process::ExitCode> {
    let args = Args::parse();
    match &args.command {
        Some(Command::Plugin(c)) => return plugin_command(c),
        Some(command) => return operate(&args, command).map(|_| std::process::ExitCode::SUCCESS),
        None => {}
    }
    let config = match &args.config {
        Some(path) => Config::from_file(path)?,
        None => Config::default(),
    };

    let filter = std::env::var("RUST_LOG")
        .ok()
        .and_then(|f| f.parse::<tracing_subscriber::EnvFilter>().ok())
        .unwrap_or_else(|| tracing_subscriber::EnvFilter::new(&config.log.level));
    start_logging(filter, config.log.format);

    raise_open_file_limit(config.limits.max_connections);
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
        return Ok(std::process::ExitCode::SUCCESS);
    }
    let hooks: Arc<dyn Hooks> = match &chain {
        Some(c) => c.clone(),
        None => Arc::new(DefaultHooks),
    };
    if let Some(c) = chain.as_ref().filter(|_| config.plugins.watch) {
        weir::plugin::watch(c, Duration::from_millis(config.plugins.watch_ms));
    }
    runtime.block_on(async {
        reconfigure_plugins_on_sighup(chain.clone(), args.config.clone());
        weir::server::run(config, hooks, chain, shutdown_signal()).await
    })?;
    Ok(std::process::ExitCode::SUCCESS)
}

/// Logs go to stderr (journald, a container runtime or a shipper takes them from there).
/// JSON puts each event's fields beside `timestamp`, `level`, `target` and `message`, so
/// a shipper indexes `client_id` or `plugin` without parsing text.
fn start_logging(filter: tracing_subscriber::EnvFilter, format: weir::config::LogFormat) {
    let logs = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    match format {
        weir::config::LogFormat::Text => {
            let ansi = std::io::IsTerminal::is_terminal(&std::io::stderr());
            logs.with_ansi(ansi).init()
        }
        weir::config::LogFormat::Json => logs
            .json()
            .flatten_event(true)
            .with_current_span(false)
            .with_span_list(false)
            .init(),
    }
}

/// Many systems start services with a soft open-file limit of 1024. When even the hard
/// limit is below `limits.max_connections` the operator is told at startup rather than
/// by `accept` failures under load.
fn raise_open_file_limit(max_connections: usize) {
    let limit = weir::listener::raise_open_file_limit();
    // Listeners, the store, plugins and logs need some descriptors of their own.
    if limit.is_none_or(|l| l < max_connections.saturating_add(64)) {
        tracing::warn!(
            open_file_limit = limit.unwrap_or(0),
            "the open-file limit allows about {} connections, below limits.max_connections = {max_connections}; \
             raise the hard limit (ulimit -Hn, LimitNOFILE=) to hold more",
            limit.unwrap_or(0).saturating_sub(64)
        );
    }
}

/// SIGHUP re-reads the configuration file and loads the `[[plugin]]` chain it names
/// (list, order, each plugin's config and limits). If the file or any plugin fails, the
/// running chain stays. (TLS listeners reload their certificates on the same signal.)
fn reconfigure_plugins_on_sighup(chain: Option<Arc<PluginChain>>, path: Option<PathBuf>) {
    #[cfg(unix)]
    tokio::spawn(async move {
        let Ok(mut hup) = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::hangup())
        else {
            return;
        };
        while hup.recv().await.is_some() {
            let (Some(chain), Some(path)) = (chain.clone(), path.clone()) else {
                tracing::info!(
                    "SIGHUP: no plugin chain to reload: Weir started without [[plugin]] \
                     entries in a --config file (restart it to load plugins)"
                );
                continue;
            };
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
