//! The plan of a surge: built-in defaults, then a scenario file (TOML, see
//! `scenarios/lundi-8h.toml`), then flags. Like `digue check`, every
//! problem is reported at once, each with its key path or flag; unknown
//! keys are errors.

use std::path::Path;
use std::time::Duration;

use serde::Deserialize;

use super::SurgeArgs;
use super::arrivals::{Arrivals, Curve};
use crate::demo::STATS_PATH;

/// Pupils when neither the scenario nor `--pupils` says.
pub const DEFAULT_PUPILS: u64 = 500;
pub const DEFAULT_PEAK_RATE_PER_SEC: f64 = 50.0;
pub const DEFAULT_RAMP: Duration = Duration::from_secs(10);
pub const DEFAULT_TIME_LIMIT: Duration = Duration::from_secs(120);
pub const DEFAULT_CONCURRENCY: usize = 10_000;
/// Browsers wait long; digue's own `origin_timeout` defaults to 20 s.
pub const DEFAULT_REQUEST_TIMEOUT: Duration = Duration::from_secs(30);
pub const DEFAULT_ENTRY: &str = "/pronote/eleve.html";
pub const DEFAULT_IMPATIENT_SHARE: f64 = 0.2;
pub const DEFAULT_QUITTER_SHARE: f64 = 0.1;
pub const DEFAULT_BOT_SHARE: f64 = 0.01;
pub const DEFAULT_IMPATIENT_RELOAD: Duration = Duration::from_secs(3);
pub const DEFAULT_GIVE_UP_AFTER: Duration = Duration::from_secs(120);
pub const DEFAULT_BOT_INTERVAL: Duration = Duration::from_secs(1);
pub const DEFAULT_MAX_ERRORS: u32 = 5;
pub const DEFAULT_THINK_MIN: Duration = Duration::from_secs(1);
pub const DEFAULT_THINK_MAX: Duration = Duration::from_secs(5);
/// 2020 is the year the portals fell.
pub const DEFAULT_SEED: u64 = 2020;

/// Bounds past which a value is a typo, not a rehearsal.
const MAX_PUPILS: i64 = 10_000_000;
const MAX_PEAK_RATE_PER_SEC: f64 = 1_000_000.0;
const MAX_TIME_LIMIT: Duration = Duration::from_secs(24 * 3600);
const MAX_CONCURRENCY: i64 = 1_000_000;
const MAX_REQUEST_TIMEOUT: Duration = Duration::from_secs(600);
/// Faster than this a bot or an impatient pupil is a busy loop.
const MIN_RELOAD: Duration = Duration::from_millis(10);

/// A validated surge: what to send, to whom, how fast, for how long.
#[derive(Debug, Clone)]
pub struct Plan {
    /// Shown in the report (`name` in the scenario, else "surge").
    pub name: String,
    pub target: Target,
    /// The gated page every pupil opens first (path and query).
    pub entry: String,
    pub arrivals: Arrivals,
    /// The whole run stops at this time limit, whatever is in flight.
    pub time_limit: Duration,
    /// Pupils active at once at most; later arrivals wait for a slot. Bots
    /// take none (they would keep every later pupil out).
    pub concurrency: usize,
    /// Longest wait for one whole response.
    pub request_timeout: Duration,
    pub mix: Mix,
    pub patience: Patience,
    pub script: Script,
    /// digue's `/metrics`, sampled during the run.
    pub admin: Option<Target>,
    /// The demo portal's own counters (`/__demo/stats`), read during the run.
    pub portal_stats: Option<Target>,
    /// Seeds the mix of personas, think times and jitter.
    pub seed: u64,
}

/// An `http://host:port` address and a path on it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Target {
    /// As given (with `/metrics` added to a bare admin URL), for the report.
    pub url: String,
    /// Name or address to connect to (IPv6 without brackets).
    pub host: String,
    /// 80 when the URL gives none.
    pub port: u16,
    /// `host:port` as written, the `Host` header.
    pub authority: String,
    /// `/` for a target; the metrics path for an admin URL.
    pub path: String,
}

impl Target {
    /// Parses a plain-HTTP URL.
    pub fn parse(url: &str) -> Result<Target, String> {
        let uri: http::Uri = url
            .parse()
            .map_err(|e| format!("{url:?} is not a URL ({e})"))?;
        match uri.scheme_str() {
            Some("http") => {}
            Some("https") => {
                return Err(format!(
                    "{url:?}: https is not supported; point the simulator at digue's plain \
                     HTTP listener"
                ));
            }
            Some(other) => return Err(format!("{url:?}: scheme {other:?} is not http")),
            None => {
                return Err(format!(
                    "{url:?} is not a URL: write it like http://host:port"
                ));
            }
        }
        let authority = uri
            .authority()
            .ok_or_else(|| format!("{url:?} has no host"))?;
        let host = authority
            .host()
            .trim_start_matches('[')
            .trim_end_matches(']')
            .to_owned();
        Ok(Target {
            url: url.to_owned(),
            host,
            port: authority.port_u16().unwrap_or(80),
            authority: authority.as_str().to_owned(),
            path: uri.path().to_owned(),
        })
    }
}

/// A URL given by `flag`; `default_path` when it names none.
fn read_url(url: &str, flag: &str, default_path: &str, p: &mut Problems) -> Option<Target> {
    match Target::parse(url) {
        Ok(mut t) => {
            if t.path == "/" || t.path.is_empty() {
                default_path.clone_into(&mut t.path);
                t.url = format!("http://{}{default_path}", t.authority);
            }
            Some(t)
        }
        Err(e) => {
            p.push(flag, e);
            None
        }
    }
}

/// Shares of pupils who do not wait patiently; the rest do.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Mix {
    /// Reload the entry page every `impatient_reload` while waiting.
    pub impatient: f64,
    /// Wait patiently but leave after `give_up_after`.
    pub quitters: f64,
    /// Cookie-less clients hammering the entry page.
    pub bots: f64,
}

/// How long people (and bots) hold on.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Patience {
    /// An impatient pupil reloads the entry page this often while waiting.
    pub impatient_reload: Duration,
    /// A quitter leaves after this long without getting in.
    pub give_up_after: Duration,
    /// A bot requests the entry page this often (±20 %).
    pub bot_interval: Duration,
    /// Errors or timeouts in a row before a pupil stops trying.
    pub max_errors: u32,
}

/// What a pupil does once in.
#[derive(Debug, Clone, PartialEq)]
pub struct Script {
    /// Assets to fetch after the entry page; `None` reads them from the page
    /// (`<link href>`, `<script src>`, `<img src>` on the same host).
    pub assets: Option<Vec<String>>,
    /// Think time before each step, uniform in this range.
    pub think_min: Duration,
    pub think_max: Duration,
    /// The per-user requests, in order.
    pub steps: Vec<Step>,
}

/// One per-user request. `{n}` in the path or body becomes the step's
/// number in the session (1, 2, …: Pronote's call order), `{pupil}` the
/// pupil's number.
#[derive(Debug, Clone, PartialEq)]
pub struct Step {
    /// `GET` unless the scenario says otherwise (in any case: `post` is POST).
    pub method: http::Method,
    /// Path and query, with placeholders.
    pub path: String,
    /// Sent as `application/json`, with placeholders.
    pub body: Option<String>,
}

impl Step {
    /// The path and body with `{n}` and `{pupil}` filled in.
    pub(crate) fn render(&self, n: usize, pupil: u64) -> (String, Option<String>) {
        let fill = |s: &str| {
            s.replace("{n}", &n.to_string())
                .replace("{pupil}", &pupil.to_string())
        };
        (fill(&self.path), self.body.as_deref().map(fill))
    }
}

fn default_steps() -> Vec<Step> {
    vec![
        Step {
            method: http::Method::GET,
            path: "/api/notes".to_owned(),
            body: None,
        },
        Step {
            method: http::Method::POST,
            path: "/pronote/appelfonction/3/{pupil}/{n}".to_owned(),
            body: Some(r#"{"nom":"PageCahierDeTexte","numeroOrdre":{n}}"#.to_owned()),
        },
    ]
}

/// Every problem found, each prefixed with where it comes from.
#[derive(Default)]
struct Problems(Vec<String>, RateSource);

/// Where the peak rate was last set, to name it when the curve does not fit
/// in the time limit.
#[derive(Default, Clone, Copy)]
enum RateSource {
    #[default]
    Default,
    File,
    Flag,
}

impl Problems {
    fn push(&mut self, at: &str, message: impl std::fmt::Display) {
        self.0.push(format!("{at}: {message}"));
    }
}

impl Plan {
    /// Defaults, then the `--scenario` file, then the other flags.
    pub fn from_args(args: &SurgeArgs) -> Result<Plan, Vec<String>> {
        let mut p = Problems::default();
        let target = match Target::parse(&args.target) {
            Ok(t) if t.path == "/" || t.path.is_empty() => Some(t),
            Ok(t) => {
                p.push(
                    "--target",
                    format!(
                        "give only http://host:port; the entry page ({}) goes in --entry",
                        t.path
                    ),
                );
                None
            }
            Err(e) => {
                p.push("--target", e);
                None
            }
        };
        let mut plan = Plan::defaults(target.clone().unwrap_or_else(|| Target {
            url: args.target.clone(),
            host: String::new(),
            port: 0,
            authority: String::new(),
            path: "/".to_owned(),
        }));
        if let Some(path) = &args.scenario {
            plan.apply_file(path, &mut p);
        }
        plan.apply_flags(args, &mut p);
        plan.check(&mut p);
        if p.0.is_empty() { Ok(plan) } else { Err(p.0) }
    }

    fn defaults(target: Target) -> Plan {
        Plan {
            name: "surge".to_owned(),
            target,
            entry: DEFAULT_ENTRY.to_owned(),
            arrivals: Arrivals {
                curve: Curve::Ramp,
                pupils: DEFAULT_PUPILS,
                peak_rate: DEFAULT_PEAK_RATE_PER_SEC,
                ramp: DEFAULT_RAMP,
            },
            time_limit: DEFAULT_TIME_LIMIT,
            concurrency: DEFAULT_CONCURRENCY,
            request_timeout: DEFAULT_REQUEST_TIMEOUT,
            mix: Mix {
                impatient: DEFAULT_IMPATIENT_SHARE,
                quitters: DEFAULT_QUITTER_SHARE,
                bots: DEFAULT_BOT_SHARE,
            },
            patience: Patience {
                impatient_reload: DEFAULT_IMPATIENT_RELOAD,
                give_up_after: DEFAULT_GIVE_UP_AFTER,
                bot_interval: DEFAULT_BOT_INTERVAL,
                max_errors: DEFAULT_MAX_ERRORS,
            },
            script: Script {
                assets: None,
                think_min: DEFAULT_THINK_MIN,
                think_max: DEFAULT_THINK_MAX,
                steps: default_steps(),
            },
            admin: None,
            portal_stats: None,
            seed: DEFAULT_SEED,
        }
    }

    fn apply_file(&mut self, path: &Path, p: &mut Problems) {
        let at = path.display().to_string();
        let text = match std::fs::read_to_string(path) {
            Ok(t) => t,
            Err(e) => {
                p.push(&at, format!("cannot read the scenario: {e}"));
                return;
            }
        };
        let mut file = Problems::default();
        self.apply_text(&text, &mut file);
        p.1 = match file.1 {
            RateSource::Default => p.1,
            set => set,
        };
        for problem in file.0 {
            p.0.push(format!("{at}: {problem}"));
        }
    }

    /// Applies scenario text; problems are named by key path.
    fn apply_text(&mut self, text: &str, p: &mut Problems) {
        let mut unknown = Vec::new();
        let raw: RawScenario = match toml::Deserializer::parse(text).and_then(|de| {
            serde_ignored::deserialize(de, |path| unknown.push(crate::config::key_path(&path)))
        }) {
            Ok(raw) => raw,
            Err(e) => {
                p.0.push(e.to_string().trim_end().to_owned());
                return;
            }
        };
        for key in unknown {
            p.push(&key, "unknown key");
        }
        if let Some(name) = raw.name {
            self.name = name;
        }
        if let Some(seed) = raw.seed {
            self.seed = seed;
        }
        if let Some(a) = raw.arrivals {
            if let Some(c) = a.curve {
                match Curve::parse(&c) {
                    Some(c) => self.arrivals.curve = c,
                    None => p.push(
                        "arrivals.curve",
                        format!("{c:?} is not one of ramp, constant, spike"),
                    ),
                }
            }
            if let Some(n) = a.pupils.and_then(|n| pupils(n, "arrivals.pupils", p)) {
                self.arrivals.pupils = n;
            }
            if let Some(r) = a.peak_rate.and_then(|r| rate(r, "arrivals.peak_rate", p)) {
                self.arrivals.peak_rate = r;
                p.1 = RateSource::File;
            }
            if let Some(d) = duration(a.ramp, "arrivals.ramp", p) {
                self.arrivals.ramp = bounded(d, "arrivals.ramp", Duration::ZERO, MAX_TIME_LIMIT, p);
            }
        }
        if let Some(l) = raw.limits {
            if let Some(d) = duration(l.duration, "limits.duration", p) {
                self.time_limit = time_limit(d, "limits.duration", p);
            }
            if let Some(n) = l
                .concurrency
                .and_then(|n| concurrency(n, "limits.concurrency", p))
            {
                self.concurrency = n;
            }
            if let Some(d) = duration(l.request_timeout, "limits.request_timeout", p) {
                self.request_timeout = request_timeout(d, "limits.request_timeout", p);
            }
        }
        if let Some(m) = raw.mix {
            let mut share = |v: Option<f64>, at: &str, into: &mut f64| {
                if let Some(v) = v {
                    if (0.0..=1.0).contains(&v) {
                        *into = v;
                    } else {
                        p.push(at, format!("{v} is not a share between 0 and 1"));
                    }
                }
            };
            share(m.impatient, "mix.impatient", &mut self.mix.impatient);
            share(m.quitters, "mix.quitters", &mut self.mix.quitters);
            share(m.bots, "mix.bots", &mut self.mix.bots);
        }
        if let Some(pa) = raw.patience {
            let max = MAX_TIME_LIMIT;
            if let Some(d) = duration(pa.impatient_reload, "patience.impatient_reload", p) {
                self.patience.impatient_reload =
                    bounded(d, "patience.impatient_reload", MIN_RELOAD, max, p);
            }
            if let Some(d) = duration(pa.give_up_after, "patience.give_up_after", p) {
                self.patience.give_up_after =
                    bounded(d, "patience.give_up_after", Duration::from_secs(1), max, p);
            }
            if let Some(d) = duration(pa.bot_interval, "patience.bot_interval", p) {
                self.patience.bot_interval =
                    bounded(d, "patience.bot_interval", MIN_RELOAD, max, p);
            }
            if let Some(n) = pa.max_errors {
                match u32::try_from(n) {
                    Ok(n) if n >= 1 => self.patience.max_errors = n,
                    _ => p.push(
                        "patience.max_errors",
                        format!("must be at least 1 (got {n})"),
                    ),
                }
            }
        }
        if let Some(s) = raw.script {
            if let Some(entry) = s.entry {
                check_path(&entry, "script.entry", p);
                self.entry = entry;
            }
            if let Some(assets) = s.assets {
                for (i, a) in assets.iter().enumerate() {
                    check_path(a, &format!("script.assets[{i}]"), p);
                }
                self.script.assets = Some(assets);
            }
            if let Some(d) = duration(s.think_min, "script.think_min", p) {
                self.script.think_min =
                    bounded(d, "script.think_min", Duration::ZERO, MAX_TIME_LIMIT, p);
            }
            if let Some(d) = duration(s.think_max, "script.think_max", p) {
                self.script.think_max =
                    bounded(d, "script.think_max", Duration::ZERO, MAX_TIME_LIMIT, p);
            }
            if let Some(steps) = s.step {
                self.script.steps = steps
                    .into_iter()
                    .enumerate()
                    .filter_map(|(i, raw)| raw.validate(&format!("script.step[{i}]"), p))
                    .collect();
            }
        }
    }

    fn apply_flags(&mut self, args: &SurgeArgs, p: &mut Problems) {
        if let Some(n) = args.pupils.and_then(|n| pupils(n, "--pupils", p)) {
            self.arrivals.pupils = n;
        }
        if let Some(r) = args.peak_rate.and_then(|r| rate(r, "--peak-rate", p)) {
            self.arrivals.peak_rate = r;
            p.1 = RateSource::Flag;
        }
        if let Some(d) = args.ramp {
            self.arrivals.ramp = bounded(d, "--ramp", Duration::ZERO, MAX_TIME_LIMIT, p);
        }
        if let Some(c) = args.curve {
            self.arrivals.curve = c;
        }
        if let Some(d) = args.duration {
            self.time_limit = time_limit(d, "--duration", p);
        }
        if let Some(n) = args
            .concurrency
            .and_then(|n| concurrency(n, "--concurrency", p))
        {
            self.concurrency = n;
        }
        if let Some(d) = args.request_timeout {
            self.request_timeout = request_timeout(d, "--request-timeout", p);
        }
        if let Some(entry) = &args.entry {
            check_path(entry, "--entry", p);
            self.entry.clone_from(entry);
        }
        if let Some(seed) = args.seed {
            self.seed = seed;
        }
        if let Some(url) = &args.admin {
            self.admin = read_url(url, "--admin", "/metrics", p);
        }
        if let Some(url) = &args.portal_stats {
            self.portal_stats = read_url(url, "--portal-stats", STATS_PATH, p);
        }
    }

    /// Checks that span several keys.
    fn check(&self, p: &mut Problems) {
        let span = self.arrivals.span();
        if span >= self.time_limit {
            let at = match p.1 {
                RateSource::File => "arrivals.peak_rate",
                RateSource::Default | RateSource::Flag => "--peak-rate",
            };
            let needs = if span > MAX_TIME_LIMIT {
                "more than a day".to_owned()
            } else {
                format!("{:.0} s", span.as_secs_f64())
            };
            p.push(
                at,
                format!(
                    "at {}/s the last of {} pupils arrives after {needs}, past the time limit \
                     ({}): raise --peak-rate (arrivals.peak_rate), lower --pupils \
                     (arrivals.pupils) or raise --duration (limits.duration)",
                    self.arrivals.peak_rate,
                    self.arrivals.pupils,
                    humantime::format_duration(self.time_limit)
                ),
            );
        }
        let m = self.mix;
        if m.impatient + m.quitters + m.bots > 1.0 + 1e-9 {
            p.push(
                "mix",
                format!(
                    "impatient + quitters + bots = {} is more than 1 (the rest are patient pupils)",
                    m.impatient + m.quitters + m.bots
                ),
            );
        }
        if self.script.think_min > self.script.think_max {
            p.push(
                "script.think_min",
                format!(
                    "{} is above script.think_max ({})",
                    humantime::format_duration(self.script.think_min),
                    humantime::format_duration(self.script.think_max)
                ),
            );
        }
    }
}

/// `path` as the request target of an origin-form request (`/path?query`),
/// or `None`: what the simulator sends is exactly what the scenario says.
/// Stricter than `http::Uri`, which lets raw `"`, `{` or
/// UTF-8 through: only RFC 3986 characters and valid `%XX` escapes, as a
/// browser would put them on the wire.
pub(crate) fn request_target(path: &str) -> Option<http::Uri> {
    if !path.starts_with('/') || path.starts_with("//") {
        return None;
    }
    let bytes = path.as_bytes();
    for (i, b) in bytes.iter().enumerate() {
        let fine = b.is_ascii_alphanumeric()
            || b"-._~!$&'()*+,;=:@/?".contains(b)
            || (*b == b'%'
                && bytes.get(i + 1).is_some_and(u8::is_ascii_hexdigit)
                && bytes.get(i + 2).is_some_and(u8::is_ascii_hexdigit));
        if !fine {
            return None;
        }
    }
    let uri: http::Uri = path.parse().ok()?;
    (uri.scheme().is_none() && uri.authority().is_none()).then_some(uri)
}

fn check_path(path: &str, at: &str, p: &mut Problems) {
    if request_target(path).is_none() {
        p.push(at, not_a_path(path));
    }
}

fn not_a_path(path: &str) -> String {
    format!(
        "{path:?} is not a path and query (/…) that can be sent as is \
         (percent-encode spaces and other special characters)"
    )
}

fn pupils(n: i64, at: &str, p: &mut Problems) -> Option<u64> {
    if (1..=MAX_PUPILS).contains(&n) {
        u64::try_from(n).ok()
    } else {
        p.push(
            at,
            format!("must be between 1 and {MAX_PUPILS} pupils (got {n})"),
        );
        None
    }
}

fn rate(r: f64, at: &str, p: &mut Problems) -> Option<f64> {
    if r.is_finite() && r > 0.0 && r <= MAX_PEAK_RATE_PER_SEC {
        Some(r)
    } else {
        p.push(
            at,
            format!("{r} arrivals/s is not a usable rate: it must be above 0 and at most 1000000"),
        );
        None
    }
}

fn concurrency(n: i64, at: &str, p: &mut Problems) -> Option<usize> {
    if (1..=MAX_CONCURRENCY).contains(&n) {
        usize::try_from(n).ok()
    } else {
        p.push(
            at,
            format!("must be between 1 and {MAX_CONCURRENCY} (got {n})"),
        );
        None
    }
}

fn time_limit(d: Duration, at: &str, p: &mut Problems) -> Duration {
    bounded(d, at, Duration::from_millis(100), MAX_TIME_LIMIT, p)
}

fn request_timeout(d: Duration, at: &str, p: &mut Problems) -> Duration {
    bounded(d, at, Duration::from_millis(10), MAX_REQUEST_TIMEOUT, p)
}

/// `d` when within `[min, max]`; else a problem, and `d` clamped so later
/// checks still see a sensible value.
fn bounded(d: Duration, at: &str, min: Duration, max: Duration, p: &mut Problems) -> Duration {
    if d < min || d > max {
        p.push(
            at,
            format!(
                "{} is out of range ({} to {})",
                humantime::format_duration(d),
                humantime::format_duration(min),
                humantime::format_duration(max)
            ),
        );
    }
    d.clamp(min, max)
}

fn duration(raw: Option<String>, at: &str, p: &mut Problems) -> Option<Duration> {
    let raw = raw?;
    match humantime::parse_duration(&raw) {
        Ok(d) => Some(d),
        Err(_) => {
            p.push(
                at,
                format!("{raw:?} is not a duration (write it like \"500ms\", \"30s\", \"10m\")"),
            );
            None
        }
    }
}

#[derive(Deserialize)]
struct RawScenario {
    name: Option<String>,
    seed: Option<u64>,
    arrivals: Option<RawArrivals>,
    limits: Option<RawLimits>,
    mix: Option<RawMix>,
    patience: Option<RawPatience>,
    script: Option<RawScript>,
}

#[derive(Deserialize)]
struct RawArrivals {
    curve: Option<String>,
    pupils: Option<i64>,
    peak_rate: Option<f64>,
    ramp: Option<String>,
}

#[derive(Deserialize)]
struct RawLimits {
    duration: Option<String>,
    concurrency: Option<i64>,
    request_timeout: Option<String>,
}

#[derive(Deserialize)]
struct RawMix {
    impatient: Option<f64>,
    quitters: Option<f64>,
    bots: Option<f64>,
}

#[derive(Deserialize)]
struct RawPatience {
    impatient_reload: Option<String>,
    give_up_after: Option<String>,
    bot_interval: Option<String>,
    max_errors: Option<i64>,
}

#[derive(Deserialize)]
struct RawScript {
    entry: Option<String>,
    assets: Option<Vec<String>>,
    think_min: Option<String>,
    think_max: Option<String>,
    step: Option<Vec<RawStep>>,
}

#[derive(Deserialize)]
struct RawStep {
    method: Option<String>,
    path: String,
    body: Option<String>,
}

impl RawStep {
    fn validate(self, at: &str, p: &mut Problems) -> Option<Step> {
        // Methods are case-sensitive on the wire, but "post" in a scenario
        // means POST, not an extension method nobody implements.
        let raw = self.method.as_deref().unwrap_or("GET");
        let Ok(method) = raw.to_ascii_uppercase().parse::<http::Method>() else {
            p.push(
                &format!("{at}.method"),
                format!("{raw:?} is not an HTTP method"),
            );
            return None;
        };
        let step = Step {
            method,
            path: self.path,
            body: self.body,
        };
        // Checked as sent: with its placeholders filled in.
        if request_target(&step.render(1, 0).0).is_none() {
            p.push(&format!("{at}.path"), not_a_path(&step.path));
            return None;
        }
        Some(step)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn plan(text: &str) -> Result<Plan, Vec<String>> {
        let mut plan = Plan::defaults(Target::parse("http://127.0.0.1:8080").expect("url"));
        let mut p = Problems::default();
        plan.apply_text(text, &mut p);
        plan.check(&mut p);
        if p.0.is_empty() { Ok(plan) } else { Err(p.0) }
    }

    #[test]
    fn the_shipped_scenario_is_valid() {
        let plan = plan(include_str!("../../scenarios/lundi-8h.toml"))
            .unwrap_or_else(|e| panic!("scenarios/lundi-8h.toml: {e:?}"));
        assert_eq!(plan.name, "lundi 8h");
        assert_eq!(plan.arrivals.curve, Curve::Ramp);
        assert!(plan.script.steps.len() >= 2, "browses a few pages");
    }

    #[test]
    fn unknown_keys_are_named_with_their_path() {
        let errors =
            plan("[arrivals]\npeak_rat = 3\n[[script.step]]\npath = \"/a\"\nmethd = \"GET\"\n")
                .expect_err("unknown keys");
        assert!(
            errors.iter().any(|e| e.starts_with("arrivals.peak_rat:")),
            "{errors:?}"
        );
        assert!(
            errors
                .iter()
                .any(|e| e.starts_with("script.step[0].methd:")),
            "{errors:?}"
        );
    }

    #[test]
    fn every_problem_is_reported_at_once() {
        let errors = plan(
            "[arrivals]\npupils = 0\npeak_rate = -3\ncurve = \"wave\"\nramp = \"soon\"\n\
             [mix]\nbots = 1.5\n",
        )
        .expect_err("bad values");
        for key in [
            "arrivals.pupils",
            "arrivals.peak_rate",
            "arrivals.curve",
            "arrivals.ramp",
            "mix.bots",
        ] {
            assert!(
                errors.iter().any(|e| e.starts_with(key)),
                "{key} missing from {errors:?}"
            );
        }
    }

    #[test]
    fn absurd_rates_are_refused() {
        for bad in ["0", "-1", "2e6", "nan", "inf"] {
            let errors = plan(&format!("[arrivals]\npeak_rate = {bad}\n")).expect_err(bad);
            assert!(errors[0].contains("not a usable rate"), "{bad}: {errors:?}");
        }
        assert!(plan("[arrivals]\npeak_rate = 1000000\n").is_ok());
    }

    #[test]
    fn shares_may_not_add_up_past_everybody() {
        let errors = plan("[mix]\nimpatient = 0.6\nquitters = 0.3\nbots = 0.2\n").expect_err("sum");
        assert!(errors[0].starts_with("mix:"), "{errors:?}");
    }

    #[test]
    fn targets_are_plain_http() {
        let t = Target::parse("http://localhost:8080").expect("http");
        assert_eq!(
            (t.host.as_str(), t.port, t.path.as_str()),
            ("localhost", 8080, "/")
        );
        assert_eq!(Target::parse("http://[::1]").expect("v6").host, "::1");
        assert!(
            Target::parse("https://x")
                .expect_err("tls")
                .contains("https")
        );
        assert!(Target::parse("localhost:80").is_err());
        assert!(Target::parse("not a url").is_err());
    }

    #[test]
    fn methods_are_read_in_any_case() {
        let read = plan("[[script.step]]\nmethod = \"post\"\npath = \"/a\"\n").expect("valid");
        assert_eq!(
            read.script.steps[0].method,
            http::Method::POST,
            "post is POST"
        );
        let errors = plan("[[script.step]]\nmethod = \"GE T\"\npath = \"/a\"\n").expect_err("bad");
        assert!(
            errors[0].starts_with("script.step[0].method:"),
            "{errors:?}"
        );
    }

    #[test]
    fn paths_must_be_sendable_as_written() {
        let errors = plan(
            "[script]\nentry = \"/a b\"\nassets = [\"/ok.css?v=2&x=%C3%A9\", \"/é\", \"//cdn/x\", \"/a%zz\"]\n\
             [[script.step]]\npath = \"/api/{n}/ok?p={pupil}\"\n\
             [[script.step]]\npath = \"/api/{n} notes\"\n",
        )
        .expect_err("bad paths");
        for key in [
            "script.entry:",
            "script.assets[1]:",
            "script.assets[2]:",
            "script.assets[3]:",
            "script.step[1].path:",
        ] {
            assert!(
                errors.iter().any(|e| e.starts_with(key)),
                "{key} missing from {errors:?}"
            );
        }
        assert!(
            !errors
                .iter()
                .any(|e| e.starts_with("script.assets[0]") || e.starts_with("script.step[0]")),
            "queries and placeholders are fine: {errors:?}"
        );
        assert!(
            errors.iter().any(|e| e.contains("{n} notes")),
            "the step's path is shown as written: {errors:?}"
        );
    }

    #[test]
    fn the_arrival_curve_must_fit_in_the_time_limit() {
        let errors = plan("[arrivals]\npeak_rate = 1e-20\npupils = 2\n").expect_err("tiny rate");
        assert!(
            errors[0].starts_with("arrivals.peak_rate:") && errors[0].contains("more than a day"),
            "{errors:?}"
        );
        let errors = plan("[arrivals]\npeak_rate = 0.01\npupils = 500\ncurve = \"constant\"\n")
            .expect_err("slow");
        assert!(errors[0].contains("49900 s"), "{errors:?}");
        assert!(
            plan(
                "[arrivals]\npeak_rate = 0.01\npupils = 500\ncurve = \"constant\"\n\
                  [limits]\nduration = \"14h\"\n"
            )
            .is_ok(),
            "a long enough run is fine"
        );
        for curve in ["ramp", "constant", "spike"] {
            let errors = plan(&format!(
                "[arrivals]\ncurve = \"{curve}\"\npeak_rate = 1e-300\npupils = 10000000\n"
            ))
            .expect_err(curve);
            assert_eq!(errors.len(), 1, "{curve}: {errors:?}");
        }
    }

    #[test]
    fn steps_fill_in_their_number_and_pupil() {
        let step = &default_steps()[1];
        let (path, body) = step.render(2, 17);
        assert_eq!(path, "/pronote/appelfonction/3/17/2");
        assert!(body.expect("body").contains("\"numeroOrdre\":2"));
    }
}
