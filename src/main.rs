//! The `digue` command: run, check, demo. Thin: the work lives in the library.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::ExitCode;

use clap::{Args, Parser, Subcommand};
use digue::config::{Config, HostPattern};
use digue::demo::{CapacitySchedule, Portal, PortalOptions, STATS_PATH};
use digue::{App, Options};

/// The example config shipped at the root of the repository; `digue demo`
/// runs it against the built-in demo portal.
const EXAMPLE_CONFIG: &str = include_str!("../config.toml");
/// The demo's admission rate: low enough that a few browser tabs make a
/// line, high enough that a short `digue surge` sees it drain.
const DEMO_USERS_PER_MINUTE: u32 = 20;
/// The demo's concurrency ceiling, as a multiple of the portal's first
/// capacity: the autopilot steers below it.
const DEMO_CEILING_FACTOR: usize = 4;
/// The demo's admission ceiling: the autopilot raises the rate towards it
/// while people wait and the portal keeps up.
const DEMO_MAX_USERS_PER_MINUTE: u32 = 600;
/// The demo's admin listener, as in config.toml and the README's
/// `--admin http://127.0.0.1:9090`; any free port when it is taken.
const DEMO_ADMIN: SocketAddr =
    SocketAddr::new(std::net::IpAddr::V4(std::net::Ipv4Addr::LOCALHOST), 9090);
/// The surge the demo suggests: 40 pupils arriving within 15 s, admitted
/// at `DEMO_USERS_PER_MINUTE` in about two minutes, so the line fills and
/// drains within the time limit.
const DEMO_SURGE_FLAGS: &str = "--pupils 40 --peak-rate 5 --duration 3m";

#[derive(Parser)]
#[command(
    name = "digue",
    version,
    about = "A caching reverse proxy and surge shield for school portals"
)]
struct Cli {
    #[command(subcommand)]
    command: Option<Command>,
    /// Log lines as `text` (default) or `json`; overrides `server.log_format`.
    #[arg(long, global = true, value_parser = ["text", "json"])]
    log_format: Option<String>,
    /// Run with this config when no subcommand is given.
    #[command(flatten)]
    run: RunArgs,
}

#[derive(Subcommand)]
enum Command {
    /// Run the proxy (the default).
    Run(RunArgs),
    /// Validate a config file, print every problem with its key path.
    Check(RunArgs),
    /// Rehearse a Monday-morning surge against a target and report what
    /// pupils and the origin experienced.
    Surge(Box<digue::surge::SurgeArgs>),
    /// Start a fragile demo portal with digue in front of it, on loopback.
    Demo {
        /// Where digue listens for the demo.
        #[arg(long, default_value = "127.0.0.1:8080")]
        listen: SocketAddr,
        /// The portal's capacity: a number (32), or how it moves from the
        /// demo's start, as offsets and capacities ("0s:32,60s:12,2m:48").
        #[arg(long, value_name = "SCHEDULE", value_parser = CapacitySchedule::parse)]
        capacity: Option<CapacitySchedule>,
    },
}

#[derive(Args)]
struct RunArgs {
    /// The config file (TOML).
    #[arg(long, short, default_value = "config.toml")]
    config: PathBuf,
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let json = cli.log_format.as_deref() == Some("json");
    match cli.command {
        Some(Command::Check(args)) => check(&args.config),
        Some(Command::Run(args)) => run(&args.config, cli.log_format.as_deref()),
        None => run(&cli.run.config, cli.log_format.as_deref()),
        Some(Command::Demo { listen, capacity }) => {
            init_logs(json);
            demo(listen, capacity)
        }
        Some(Command::Surge(args)) => match tokio::runtime::Runtime::new() {
            Ok(rt) => rt.block_on(digue::surge::run(*args)),
            Err(e) => {
                eprintln!("cannot start the runtime: {e}");
                ExitCode::FAILURE
            }
        },
    }
}

/// Human-readable lines by default, JSON on request; `RUST_LOG` filters.
fn init_logs(json: bool) {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    // Colours only for a person at a terminal, never in files or journald.
    let ansi = std::io::IsTerminal::is_terminal(&std::io::stderr());
    let logs = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_ansi(ansi)
        .with_writer(std::io::stderr);
    if json {
        logs.json().init();
    } else {
        logs.init();
    }
}

fn load(path: &Path) -> Result<Config, ExitCode> {
    digue::preflight::load(path).map_err(|errors| {
        eprintln!("{}: {} problem(s):", path.display(), errors.0.len());
        for e in &errors.0 {
            eprintln!("  {e}");
        }
        ExitCode::from(2)
    })
}

fn check(path: &Path) -> ExitCode {
    match load(path) {
        Ok(config) => {
            say(&format!(
                "{}: ok ({} site(s), listening on {})\n",
                path.display(),
                config.sites.len(),
                config.restart.server.listen
            ));
            ExitCode::SUCCESS
        }
        Err(code) => code,
    }
}

/// Writes to stdout, ignoring a reader that went away: `println!` would
/// panic on a closed pipe (`digue demo | head -2`) and take the proxy down.
fn say(text: &str) {
    use std::io::Write;
    let _ = std::io::stdout().lock().write_all(text.as_bytes());
}

fn runtime(config: &Config) -> std::io::Result<tokio::runtime::Runtime> {
    let mut builder = tokio::runtime::Builder::new_multi_thread();
    if let Some(n) = config.restart.server.worker_threads {
        builder.worker_threads(n.get());
    }
    builder.enable_all().build()
}

fn run(path: &Path, log_format: Option<&str>) -> ExitCode {
    let config = match load(path) {
        Ok(c) => c,
        Err(code) => return code,
    };
    init_logs(log_format.map_or(config.restart.server.log_json, |f| f == "json"));
    let rt = match runtime(&config) {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("cannot start the runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    let options = Options {
        config_path: Some(path.to_owned()),
        admin_token: std::env::var("DIGUE_ADMIN_TOKEN").ok(),
        ..Options::default()
    };
    if options.admin_token.is_none() {
        tracing::info!("DIGUE_ADMIN_TOKEN is unset: every /admin/ call will be refused");
    }
    rt.block_on(async {
        let running = match digue::start_with(config, options).await {
            Ok(r) => r,
            Err(e) => {
                tracing::error!(error = %e, "cannot start");
                return ExitCode::FAILURE;
            }
        };
        tracing::info!(listen = %running.listen, admin = ?running.admin, "digue is serving");
        serve_until_stopped(&running.app).await;
        running.shutdown().await;
        ExitCode::SUCCESS
    })
}

/// Returns on SIGTERM or SIGINT; reloads the config on SIGHUP.
async fn serve_until_stopped(app: &App) {
    use tokio::signal::unix::{SignalKind, signal};
    let (Ok(mut term), Ok(mut int), Ok(mut hup)) = (
        signal(SignalKind::terminate()),
        signal(SignalKind::interrupt()),
        signal(SignalKind::hangup()),
    ) else {
        tracing::error!("cannot install signal handlers; stop with SIGKILL");
        return std::future::pending().await;
    };
    loop {
        tokio::select! {
            _ = term.recv() => break,
            _ = int.recv() => break,
            _ = hup.recv() => {
                // Errors are logged with their key paths by reload().
                let _ = app.reload();
            }
        }
    }
    tracing::info!("shutdown signal received");
}

fn demo(listen: SocketAddr, schedule: Option<CapacitySchedule>) -> ExitCode {
    let mut config = match Config::parse(EXAMPLE_CONFIG) {
        Ok(c) => c,
        Err(e) => {
            eprintln!("the embedded config.toml is invalid:\n{e}");
            return ExitCode::FAILURE;
        }
    };
    let rt = match runtime(&config) {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("cannot start the runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    rt.block_on(async {
        let origin = match tokio::net::TcpListener::bind("127.0.0.1:0").await {
            Ok(l) => l,
            Err(e) => {
                eprintln!("cannot bind the demo portal: {e}");
                return ExitCode::FAILURE;
            }
        };
        let mut options = PortalOptions::default();
        let shown = match &schedule {
            Some(s) => {
                options.capacity = s.initial().get();
                s.to_string()
            }
            None => options.capacity.to_string(),
        };
        let capacity = options.capacity;
        let mut portal = Portal::spawn(origin, options);
        if let Some(schedule) = schedule {
            portal.follow(schedule);
        }
        let origin_uri: http::Uri = match format!("http://{}", portal.addr).parse() {
            Ok(u) => u,
            Err(_) => return ExitCode::FAILURE,
        };
        config.restart.server.listen = listen;
        config.restart.server.admin_listen = Some(DEMO_ADMIN);
        config.sites.truncate(1);
        for site in &mut config.sites {
            site.origin.backends = vec![origin_uri.clone()];
            site.hosts = vec![HostPattern::Any];
            // Four times what the portal holds at first, as an operator
            // who does not know would guess: the autopilot finds the real
            // capacity, and follows it when `--capacity` moves it.
            site.live.origin_concurrency = capacity * DEMO_CEILING_FACTOR;
            // `digue surge` sends every pupil from 127.0.0.1: one network,
            // whose share would be half the portal.
            site.origin_share_per_network = 100;
            site.autopilot.enabled = true;
            site.autopilot.min_origin_concurrency = 2;
            site.autopilot.min_new_users_per_minute = DEMO_USERS_PER_MINUTE / 2;
            site.autopilot.max_new_users_per_minute = DEMO_MAX_USERS_PER_MINUTE;
            // A line you can see by opening the login page in a few tabs.
            if let Some(live) = &mut site.live.admission {
                live.new_users_per_minute = DEMO_USERS_PER_MINUTE;
                live.burst = 2;
            }
            if let Some(admission) = &mut site.admission {
                admission.bypass_cidrs.clear();
                // `digue surge` sends every pupil from 127.0.0.1.
                admission.tickets_per_network_per_minute = u32::MAX;
            }
        }
        let started = match digue::start(config.clone()).await {
            Err(e) if e.kind() == std::io::ErrorKind::AddrInUse => {
                // Perhaps only the admin port (another digue): any will do,
                // the banner prints the one it got.
                config.restart.server.admin_listen = Some(SocketAddr::new(DEMO_ADMIN.ip(), 0));
                digue::start(config).await
            }
            other => other,
        };
        let running = match started {
            Ok(r) => r,
            Err(e) => {
                eprintln!(
                    "cannot listen on {listen}: {e} (try `digue demo --listen 127.0.0.1:8181`)"
                );
                return ExitCode::FAILURE;
            }
        };
        let target = format!("http://{}", reachable(running.listen));
        let mut banner = format!(
            "digue demo: a fragile school portal on http://{} (capacity {shown})\n            digue in front of it:   {target}/\n            the portal's counters:  http://{}{STATS_PATH}\n",
            portal.addr, portal.addr
        );
        let mut surge = format!("{} surge --target {target}", this_program());
        if let Some(admin) = running.admin {
            let admin = format!("http://{}", reachable(admin));
            banner += &format!("            metrics:                {admin}/metrics\n");
            surge += &format!(" --admin {admin}");
        }
        // Read from the portal itself: through digue they would wait for
        // an origin slot like any request, and lag when it matters most.
        surge += &format!(" --portal-stats http://{}{STATS_PATH}", portal.addr);
        banner += &format!("            a small surge:          {surge} {DEMO_SURGE_FLAGS}\n");
        banner += &format!("Open {target}/ in a browser; Ctrl-C to stop.\n");
        say(&banner);
        serve_until_stopped(&running.app).await;
        running.shutdown().await;
        drop(portal);
        ExitCode::SUCCESS
    })
}

/// An address a client on this machine can connect to: a listener on
/// 0.0.0.0 or [::] is reached on loopback.
fn reachable(addr: SocketAddr) -> SocketAddr {
    match addr.ip() {
        std::net::IpAddr::V4(ip) if ip.is_unspecified() => {
            SocketAddr::new(std::net::Ipv4Addr::LOCALHOST.into(), addr.port())
        }
        std::net::IpAddr::V6(ip) if ip.is_unspecified() => {
            SocketAddr::new(std::net::Ipv6Addr::LOCALHOST.into(), addr.port())
        }
        _ => addr,
    }
}

/// How this program was started (`target/release/digue` under `cargo
/// run`), quoted for a POSIX shell when needed, so the printed command
/// runs as pasted.
fn this_program() -> String {
    let name = std::env::args_os()
        .next()
        .map_or_else(|| "digue".to_owned(), |a| a.to_string_lossy().into_owned());
    if !name.is_empty()
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"/._-+:".contains(&b))
    {
        name
    } else {
        format!("'{}'", name.replace('\'', r"'\''"))
    }
}
