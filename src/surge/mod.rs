//! `digue surge`: rehearse the Monday 8 a.m. surge against a portal behind
//! digue, and report what pupils and the origin lived through.
//!
//! The simulator plays pupils, not requests. Each virtual pupil is one
//! browser tab with its own keep-alive connection and cookie jar: it opens
//! the entry page, waits in the waiting room as the page's script would
//! (honouring `Retry-After`, polling the JSON status, keeping its ticket),
//! gets in, loads the page's assets and makes a few per-user calls with
//! think times. Some are impatient and reload (the 2020 retry bubble), some
//! give up, some are cookie-less bots. Arrivals follow a curve; the run is
//! bounded by a time limit and a concurrency ceiling.
//!
//! # Layout
//!
//! - [`scenario`]: defaults, the TOML scenario file, flags → a validated [`Plan`].
//! - [`arrivals`]: the arrival curve (ramp, constant, spike).
//! - `pupil`: one pupil's session script, and the mix of personas.
//! - `client`: one pupil's connection and cookie jar; what an answer means.
//! - `record`: what pupils lived, recorded lock-free as they go.
//! - `sampler`: digue's `/metrics`, the demo portal's counters and the
//!   pupils' state, every 250 ms.
//! - `progress`: the progress bar.
//! - [`report`]: the end report, as text and JSON.
//! - [`chart`]: the SVG chart.
//! - `cost`: the simulator's own CPU time and memory, from `/proc`.
//! - `rng`: a seeded generator, so runs replay.

pub mod arrivals;
pub mod chart;
mod client;
mod cost;
mod progress;
mod pupil;
mod record;
pub mod report;
mod rng;
mod sampler;
pub mod scenario;

use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use tokio::sync::{Semaphore, watch};
use tokio::task::JoinSet;
use tokio::time::{Instant, sleep_until};

pub use arrivals::Curve;
pub use report::Report;
pub use scenario::{Plan, Target};

use progress::Progress;
use pupil::{Persona, Pupil};
use record::Recorder;
use sampler::{PortalReader, Scraper};

/// How long the target (and the admin URL) get to accept a first connection.
const REACH_TIMEOUT: Duration = Duration::from_secs(3);
/// File descriptors kept for everything but pupils (stdio, the metrics
/// connection, the runtime's own): the ceiling is lowered to fit the rest.
const FD_RESERVE: u64 = 64;

/// The `digue surge` arguments. Flags override the `--scenario` file, which
/// overrides the built-in defaults.
#[derive(clap::Args, Debug, Clone)]
pub struct SurgeArgs {
    /// Where digue (or any portal) listens: http://host:port.
    #[arg(long, value_name = "URL")]
    pub target: String,
    /// A scenario file (TOML), e.g. scenarios/lundi-8h.toml.
    #[arg(long, value_name = "FILE")]
    pub scenario: Option<PathBuf>,
    /// Pupils in all, bots included [default: 500].
    #[arg(long, value_name = "N", allow_negative_numbers = true)]
    pub pupils: Option<i64>,
    /// Arrivals per second at the peak of the curve [default: 50].
    #[arg(long, value_name = "N", allow_negative_numbers = true)]
    pub peak_rate: Option<f64>,
    /// How long the ramp takes from 0 to the peak rate [default: 10s].
    #[arg(long, value_name = "DURATION", value_parser = parse_duration)]
    pub ramp: Option<Duration>,
    /// The arrival curve [default: ramp].
    #[arg(long, value_enum)]
    pub curve: Option<Curve>,
    /// Time limit of the whole run [default: 2m].
    #[arg(long, value_name = "DURATION", value_parser = parse_duration)]
    pub duration: Option<Duration>,
    /// Pupils active at once at most, bots aside [default: 10000].
    #[arg(long, value_name = "N", allow_negative_numbers = true)]
    pub concurrency: Option<i64>,
    /// digue's admin base URL (http://host:port), to sample /metrics.
    #[arg(long, value_name = "URL")]
    pub admin: Option<String>,
    /// The demo portal's own counters (http://host:port/__demo/stats, as
    /// `digue demo` prints it), to report the share of its capacity used
    /// and its own failures.
    #[arg(long, value_name = "URL")]
    pub portal_stats: Option<String>,
    /// Also write the report as JSON to this file.
    #[arg(long, value_name = "FILE.json")]
    pub report: Option<PathBuf>,
    /// Draw line length, admissions/s and origin in-flight to this SVG file.
    #[arg(long, value_name = "FILE.svg")]
    pub chart: Option<PathBuf>,
    /// The gated entry page every pupil opens [default: /pronote/eleve.html].
    #[arg(long, value_name = "PATH")]
    pub entry: Option<String>,
    /// Longest wait for one whole response [default: 30s].
    #[arg(long, value_name = "DURATION", value_parser = parse_duration)]
    pub request_timeout: Option<Duration>,
    /// Seed of the pupils' mix, think times and jitter [default: 2020].
    #[arg(long, value_name = "N")]
    pub seed: Option<u64>,
    /// No progress bar (it is also hidden when stderr is not a terminal).
    #[arg(long)]
    pub quiet: bool,
}

fn parse_duration(s: &str) -> Result<Duration, String> {
    humantime::parse_duration(s)
        .map_err(|e| format!("{e} (write it like \"500ms\", \"30s\", \"10m\")"))
}

/// Why a surge could not run or be saved.
#[derive(Debug)]
pub enum SurgeError {
    /// Bad flags or scenario file: every problem, each with its key or flag.
    Input(Vec<String>),
    /// The target, the admin URL or the portal stats URL does not answer.
    Unreachable {
        /// "target", "admin URL" or "portal stats URL".
        what: &'static str,
        url: String,
        error: String,
    },
    /// The run completed but the report or chart file could not be written.
    Output {
        /// The report of the run, still worth printing.
        report: Box<Report>,
        errors: Vec<String>,
    },
}

impl SurgeError {
    /// 2 for bad input (like `digue check`), 1 otherwise.
    pub fn exit_code(&self) -> ExitCode {
        match self {
            SurgeError::Input(_) => ExitCode::from(2),
            SurgeError::Unreachable { .. } | SurgeError::Output { .. } => ExitCode::FAILURE,
        }
    }
}

impl std::fmt::Display for SurgeError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            SurgeError::Input(problems) => {
                write!(f, "{} problem(s):", problems.len())?;
                for p in problems {
                    write!(f, "\n  {p}")?;
                }
                Ok(())
            }
            SurgeError::Unreachable { what, url, error } => {
                write!(f, "cannot reach the {what} {url}: {error}")
            }
            SurgeError::Output { errors, .. } => f.write_str(&errors.join("\n")),
        }
    }
}

impl std::error::Error for SurgeError {}

/// Prints the report; a closed stdout loses it but must not panic (the JSON
/// report, when asked for, is already written).
fn print_report(report: &Report) {
    use std::io::Write;
    let _ = write!(std::io::stdout().lock(), "{report}");
}

/// Runs a surge and prints the report; returns the process exit code:
/// 0 done, 1 target unreachable or output not written, 2 bad input, 3 a
/// pupil was shown another pupil's session.
pub async fn run(args: SurgeArgs) -> ExitCode {
    match execute(&args).await {
        Ok(report) => {
            print_report(&report);
            if report.session.sessions_mismatched > 0 {
                eprintln!("digue surge: a pupil was shown another pupil's session");
                return ExitCode::from(3);
            }
            ExitCode::SUCCESS
        }
        Err(SurgeError::Output { report, errors }) => {
            print_report(&report);
            for e in errors {
                eprintln!("digue surge: {e}");
            }
            ExitCode::FAILURE
        }
        Err(e) => {
            eprintln!("digue surge: {e}");
            e.exit_code()
        }
    }
}

/// Everything `run` does but printing: plan, simulate, write `--report`
/// and `--chart`. Returns the report.
pub async fn execute(args: &SurgeArgs) -> Result<Report, SurgeError> {
    let plan = Plan::from_args(args).map_err(SurgeError::Input)?;
    // A typo in an output path should not cost a twenty-minute run.
    let outputs = [("--report", &args.report), ("--chart", &args.chart)];
    let unwritable: Vec<String> = outputs
        .iter()
        .filter_map(|(flag, path)| check_output(flag, path.as_deref()?).err())
        .collect();
    if !unwritable.is_empty() {
        return Err(SurgeError::Input(unwritable));
    }
    let report = simulate(&plan, !args.quiet).await?;
    let mut errors = Vec::new();
    if let Some(path) = &args.report {
        write_report(&report, path).unwrap_or_else(|e| errors.push(e));
    }
    if let Some(path) = &args.chart {
        chart::write_svg(&report, path).unwrap_or_else(|e| errors.push(e));
    }
    if errors.is_empty() {
        Ok(report)
    } else {
        Err(SurgeError::Output {
            report: Box::new(report),
            errors,
        })
    }
}

/// Whether `path` can take an output file: not a directory, in a directory
/// that exists, writable now. A file created to find out is removed again;
/// an existing one is left as it is until the run ends.
fn check_output(flag: &str, path: &Path) -> Result<(), String> {
    if path.is_dir() {
        return Err(format!(
            "{flag}: {} is a directory; give a file name",
            path.display()
        ));
    }
    if let Some(dir) = path.parent()
        && !dir.as_os_str().is_empty()
        && !dir.is_dir()
    {
        return Err(format!(
            "{flag}: directory {} does not exist",
            dir.display()
        ));
    }
    let existed = path.exists();
    match std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(false)
        .open(path)
    {
        Ok(_) => {
            if !existed {
                // Only tidiness: the real write at the end recreates it.
                let _ = std::fs::remove_file(path);
            }
            Ok(())
        }
        Err(e) => Err(format!("{flag}: cannot write {}: {e}", path.display())),
    }
}

/// Writes the report as JSON.
pub fn write_report(report: &Report, path: &Path) -> Result<(), String> {
    std::fs::write(path, report.to_json() + "\n")
        .map_err(|e| format!("cannot write {}: {e}", path.display()))
}

/// Runs `plan` against its target and returns what happened. Fails before
/// sending any load when the target, the admin URL or the portal stats URL
/// does not answer.
pub async fn simulate(plan: &Plan, show_progress: bool) -> Result<Report, SurgeError> {
    let addr = client::reach(&plan.target.host, plan.target.port, REACH_TIMEOUT)
        .await
        .map_err(|error| SurgeError::Unreachable {
            what: "target",
            url: plan.target.url.clone(),
            error,
        })?;
    let scraper = match &plan.admin {
        Some(admin) => {
            Some(
                Scraper::connect(admin)
                    .await
                    .map_err(|error| SurgeError::Unreachable {
                        what: "admin URL",
                        url: admin.url.clone(),
                        error,
                    })?,
            )
        }
        None => None,
    };
    let portal =
        match &plan.portal_stats {
            Some(stats) => Some(PortalReader::connect(stats).await.map_err(|error| {
                SurgeError::Unreachable {
                    what: "portal stats URL",
                    url: stats.url.clone(),
                    error,
                }
            })?),
            None => None,
        };
    let personas = pupil::personas(plan.arrivals.pupils, plan.mix, plan.seed);
    let bots = personas.iter().filter(|p| **p == Persona::Bot).count();
    let people = personas.len() - bots;
    let mut warnings = Vec::new();
    let mut concurrency = plan.concurrency;
    if let Some(files) = cost::open_files_limit() {
        // Bots hold one connection each for the whole run, outside the ceiling.
        let room = usize::try_from(files.saturating_sub(FD_RESERVE))
            .unwrap_or(usize::MAX)
            .saturating_sub(bots);
        if room == 0 && people > 0 {
            return Err(SurgeError::Input(vec![format!(
                "mix.bots: {bots} bots need one open file each and leave none for pupils \
                 under the open-files limit of {files} (raise it with `ulimit -n`, or lower \
                 the share of bots)"
            )]));
        }
        if concurrency > room {
            warnings.push(format!(
                "concurrency ceiling lowered from {concurrency} to {room}: the open-files limit \
                 is {files} and {bots} bots take one each (raise it with `ulimit -n`)"
            ));
            concurrency = room.max(1);
        }
    }

    let plan = Arc::new(plan.clone());
    let cpu_before = cost::cpu_time();
    let start = Instant::now();
    let deadline = start + plan.time_limit;
    let rec = Arc::new(Recorder::new(start, plan.time_limit));
    let progress = Progress::new(plan.arrivals.pupils, show_progress);
    let (stop, stopped) = watch::channel(false);
    let sampler = tokio::spawn(sampler::run(
        Arc::clone(&rec),
        scraper,
        portal,
        progress.clone(),
        stopped,
    ));

    // Pupils hold a slot from arrival to the end of their visit. Bots take
    // none: they hammer until the time limit, and holding slots they would
    // keep every later pupil out (their number is known and bounded above).
    let slots = Arc::new(Semaphore::new(concurrency));
    let mut pupils = JoinSet::new();
    let mut bots = JoinSet::new();
    let mut panicked = 0;
    let everybody_done = async {
        for (i, persona) in personas.iter().enumerate() {
            let i = i as u64;
            // The plan checked that the curve fits in the time limit; the
            // bound only keeps a rounding error from overflowing `Instant`.
            let arrived = start + plan.arrivals.offset(i).min(plan.time_limit);
            sleep_until(arrived).await;
            let pupil = Pupil::new(
                i,
                *persona,
                Arc::clone(&plan),
                Arc::clone(&rec),
                addr,
                arrived,
            );
            if *persona == Persona::Bot {
                bots.spawn(pupil.live());
                continue;
            }
            let slot = match Arc::clone(&slots).try_acquire_owned() {
                Ok(slot) => slot,
                Err(_) => {
                    rec.held_by_ceiling.fetch_add(1, Ordering::Relaxed);
                    Arc::clone(&slots)
                        .acquire_owned()
                        .await
                        .expect("invariant: the semaphore is never closed")
                }
            };
            pupils.spawn(async move {
                pupil.live().await;
                drop(slot);
            });
            // Reap finished pupils as we go: the set stays as small as the
            // number of active ones.
            while let Some(done) = pupils.try_join_next() {
                panicked += u64::from(is_panic(done));
            }
        }
        while let Some(done) = pupils.join_next().await {
            panicked += u64::from(is_panic(done));
        }
        if people == 0 {
            // Only bots: they hammer until the time limit.
            sleep_until(deadline).await;
        }
    };
    let finished = tokio::time::timeout_at(deadline, everybody_done)
        .await
        .is_ok();
    // Whoever is still running stops here; phases recorded so far stand.
    for set in [&mut pupils, &mut bots] {
        while let Some(done) = set.try_join_next() {
            panicked += u64::from(is_panic(done));
        }
        set.shutdown().await;
    }
    if panicked > 0 {
        warnings.push(format!(
            "{panicked} virtual pupils panicked (a bug in digue surge): where they stood \
             when it happened is all the report knows of them"
        ));
    }
    let elapsed = start.elapsed();
    rec.close_line(Instant::now());
    // The receiver may be gone only if the sampler panicked; the report
    // then goes without samples.
    let _ = stop.send(true);
    let samples = sampler.await.unwrap_or_default();
    progress.finish();
    let cpu = match (cpu_before, cost::cpu_time()) {
        (Some(before), Some(after)) => Some(after.saturating_sub(before)),
        _ => None,
    };
    Ok(Report::build(report::Inputs {
        plan: &plan,
        rec: &rec,
        samples,
        personas: &personas,
        elapsed,
        time_limit_reached: !finished,
        cpu,
        peak_rss_bytes: cost::peak_rss_bytes(),
        concurrency,
        warnings,
    }))
}

/// Whether a pupil's task panicked (logged here; counted in the report).
fn is_panic(done: Result<(), tokio::task::JoinError>) -> bool {
    match done {
        Err(e) if e.is_panic() => {
            tracing::error!(error = %e, "a virtual pupil panicked");
            true
        }
        _ => false,
    }
}
