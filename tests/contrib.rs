//! The files in `contrib/` keep their promises: the Grafana dashboard queries
//! only metrics (and labels, and label values) that a real digue exposes, and
//! the systemd unit is hardened and reloads with SIGHUP.

mod support;

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;
use std::time::Duration;

use http::Method;
use serde_json::Value;
use support::{Digue, Origin, get, wait_until};

fn read(relative: &str) -> String {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join(relative);
    std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

// ------------------------------------------------------------------ metrics

type Labels = BTreeMap<String, BTreeSet<String>>;
static NO_LABELS: Labels = BTreeMap::new();

/// What `/metrics` says: families with their help and type, and for each
/// sample name the labels and values seen.
#[derive(Default)]
struct Exposition {
    help: BTreeSet<String>,
    types: BTreeMap<String, String>,
    labels: BTreeMap<String, Labels>,
}

impl Exposition {
    fn parse(text: &str) -> Exposition {
        let mut out = Exposition::default();
        for line in text.lines() {
            if let Some(rest) = line.strip_prefix("# HELP ") {
                let name = rest.split(' ').next().unwrap_or_default();
                out.help.insert(name.to_owned());
            } else if let Some(rest) = line.strip_prefix("# TYPE ") {
                let mut parts = rest.split(' ');
                let (Some(name), Some(kind)) = (parts.next(), parts.next()) else {
                    continue;
                };
                out.types.insert(name.to_owned(), kind.to_owned());
            } else if !line.starts_with('#') && !line.is_empty() {
                let end = line.find(['{', ' ']).unwrap_or(line.len());
                let labels = out.labels.entry(line[..end].to_owned()).or_default();
                if let Some(body) = line[end..]
                    .strip_prefix('{')
                    .and_then(|l| l.split_once('}'))
                    .map(|(body, _)| body)
                {
                    for pair in body.split("\",") {
                        if let Some((k, v)) = pair.split_once("=\"") {
                            let v = v.trim_end_matches('"');
                            labels.entry(k.to_owned()).or_default().insert(v.to_owned());
                        }
                    }
                }
            }
        }
        out
    }

    /// The sample name a query may use for `name`, or why it can't.
    fn series(&self, name: &str) -> Result<&Labels, String> {
        let kind = |n: &str| self.types.get(n).map(String::as_str);
        if self.help.contains(name) {
            if matches!(kind(name), Some("histogram" | "summary")) {
                return Err(format!(
                    "{name} is a histogram: query {name}_bucket, _sum or _count"
                ));
            }
            return Ok(self.labels.get(name).unwrap_or(&NO_LABELS));
        }
        let base = ["_bucket", "_sum", "_count"]
            .iter()
            .find_map(|suffix| name.strip_suffix(suffix));
        match base {
            Some(base) if self.help.contains(base) && kind(base) == Some("histogram") => {
                Ok(self.labels.get(name).unwrap_or(&NO_LABELS))
            }
            _ => Err(format!("{name} is not a metric digue exposes")),
        }
    }
}

// ------------------------------------------------------------------ PromQL

#[derive(Debug, PartialEq)]
enum Token {
    /// Identifiers, numbers, durations, `$variables`.
    Word(String),
    /// A quoted string, unquoted.
    Str(String),
    Punct(char),
}

/// Just enough of a PromQL lexer to find metric names, their label
/// matchers and `by (...)` clauses.
fn tokens(expr: &str) -> Vec<Token> {
    let mut out = Vec::new();
    let mut chars = expr.chars().peekable();
    while let Some(c) = chars.next() {
        if c.is_whitespace() {
            continue;
        }
        if c == '"' || c == '\'' || c == '`' {
            let mut s = String::new();
            while let Some(d) = chars.next() {
                match d {
                    '\\' => s.extend(chars.next()),
                    d if d == c => break,
                    d => s.push(d),
                }
            }
            out.push(Token::Str(s));
        } else if c.is_alphanumeric() || matches!(c, '_' | ':' | '$' | '.') {
            let mut w = String::from(c);
            while let Some(&d) = chars.peek() {
                if !(d.is_alphanumeric() || matches!(d, '_' | ':' | '.')) {
                    break;
                }
                w.push(d);
                chars.next();
            }
            out.push(Token::Word(w));
        } else {
            out.push(Token::Punct(c));
        }
    }
    out
}

/// One `name{label op "value"}` matcher.
struct Matcher {
    metric: String,
    label: String,
    op: String,
    value: String,
}

/// Metric names, label matchers and grouping labels of one expression.
#[derive(Default)]
struct Query {
    metrics: BTreeSet<String>,
    matchers: Vec<Matcher>,
    grouping: BTreeSet<String>,
}

fn query(expr: &str) -> Query {
    let toks = tokens(expr);
    let mut q = Query::default();
    let mut i = 0;
    while i < toks.len() {
        let Token::Word(w) = &toks[i] else {
            i += 1;
            continue;
        };
        let next_is = |c: char| toks.get(i + 1) == Some(&Token::Punct(c));
        if w.starts_with("digue_") {
            q.metrics.insert(w.clone());
            if next_is('{') {
                i += 2;
                while i < toks.len() && toks[i] != Token::Punct('}') {
                    if let Token::Word(label) = &toks[i] {
                        let mut op = String::new();
                        i += 1;
                        while let Some(Token::Punct(c)) = toks.get(i) {
                            op.push(*c);
                            i += 1;
                        }
                        if let Some(Token::Str(value)) = toks.get(i) {
                            q.matchers.push(Matcher {
                                metric: w.clone(),
                                label: label.clone(),
                                op,
                                value: value.clone(),
                            });
                        }
                    }
                    i += 1;
                }
            }
        } else if (w == "by" || w == "without") && next_is('(') {
            i += 2;
            while i < toks.len() && toks[i] != Token::Punct(')') {
                if let Token::Word(label) = &toks[i] {
                    q.grouping.insert(label.clone());
                }
                i += 1;
            }
        }
        i += 1;
    }
    q
}

#[test]
fn promql_lexer_finds_metrics_matchers_and_grouping() {
    let q = query(
        "histogram_quantile(0.9, sum by (le, site) (rate(digue_wait_seconds_bucket\
         {site=~\"$site\", how=~\"line|immediate\"}[$__rate_interval]))) / 60",
    );
    assert_eq!(
        q.metrics.iter().collect::<Vec<_>>(),
        ["digue_wait_seconds_bucket"]
    );
    assert_eq!(q.grouping.iter().collect::<Vec<_>>(), ["le", "site"]);
    let m: Vec<_> = q
        .matchers
        .iter()
        .map(|m| {
            (
                m.metric.as_str(),
                m.label.as_str(),
                m.op.as_str(),
                m.value.as_str(),
            )
        })
        .collect();
    assert_eq!(
        m,
        [
            ("digue_wait_seconds_bucket", "site", "=~", "$site"),
            ("digue_wait_seconds_bucket", "how", "=~", "line|immediate"),
        ]
    );
}

// ------------------------------------------------------------------ dashboard

/// Every query string of the dashboard: panel targets (rows included),
/// annotations and template variables.
fn queries(value: &Value, out: &mut Vec<String>) {
    match value {
        Value::Object(map) => {
            for (key, v) in map {
                match (key.as_str(), v) {
                    ("expr" | "definition" | "query", Value::String(s)) => out.push(s.clone()),
                    _ => queries(v, out),
                }
            }
        }
        Value::Array(items) => items.iter().for_each(|v| queries(v, out)),
        _ => {}
    }
}

/// Every panel, including those nested in collapsed rows.
fn panels(dashboard: &Value) -> Vec<&Value> {
    let mut out = Vec::new();
    let mut stack: Vec<&Value> = dashboard["panels"]
        .as_array()
        .expect("panels")
        .iter()
        .collect();
    while let Some(p) = stack.pop() {
        if let Some(nested) = p["panels"].as_array() {
            stack.extend(nested);
        }
        out.push(p);
    }
    out
}

fn dashboard() -> Value {
    serde_json::from_str(&read("contrib/grafana/digue.json"))
        .expect("contrib/grafana/digue.json is valid JSON")
}

#[test]
fn dashboard_is_importable_and_every_panel_says_how_to_read_it() {
    let d = dashboard();
    assert!(d["schemaVersion"].as_u64().expect("schemaVersion") >= 36);
    assert!(d["uid"].as_str().is_some_and(|u| !u.is_empty()));
    let vars = d["templating"]["list"].as_array().expect("templating");
    let var = |name: &str| vars.iter().find(|v| v["name"] == name);
    let ds = var("datasource").expect("a datasource variable");
    assert_eq!(ds["type"], "datasource");
    assert_eq!(ds["query"], "prometheus");
    let site = var("site").expect("a site variable");
    assert_eq!(
        site["definition"],
        "label_values(digue_requests_total, site)"
    );

    let all = panels(&d);
    let mut ids = BTreeSet::new();
    for p in &all {
        let title = p["title"].as_str().unwrap_or("?");
        assert!(ids.insert(p["id"].as_u64()), "duplicate panel id: {title}");
        if p["type"] == "row" {
            continue;
        }
        assert!(
            p["description"].as_str().is_some_and(|s| s.len() > 20),
            "panel {title:?} needs a description saying how to read it"
        );
        assert_eq!(p["datasource"]["uid"], "${datasource}", "panel {title:?}");
        let targets = p["targets"].as_array().expect("targets");
        assert!(!targets.is_empty(), "panel {title:?} has no query");
        for t in targets {
            assert_eq!(t["datasource"]["uid"], "${datasource}", "panel {title:?}");
            assert!(
                t["expr"].as_str().is_some_and(|e| e.contains("digue_")),
                "panel {title:?}: every target queries a digue metric"
            );
        }
        let pos = &p["gridPos"];
        let (x, w) = (pos["x"].as_u64(), pos["w"].as_u64());
        assert!(
            matches!((x, w), (Some(x), Some(w)) if x + w <= 24),
            "panel {title:?} is off the grid"
        );
    }
    assert!(all.len() > 20, "expected a full dashboard");
}

/// Starts digue, makes every metric family show up (some appear with their
/// first event: a reload, an admin change), and reads `/metrics`.
async fn live_metrics() -> Exposition {
    let origin = Origin::fixed(&[("cache-control", "max-age=60")], "x").await;
    let proxy = Digue::new(&origin.url())
        .admin()
        .site(
            "[site.autopilot]\nenabled = true\ninterval = \"100ms\"\n\
             [site.admission]\npaths = [\"/login\"]\nnew_users_per_minute = 60",
        )
        .start()
        .await;
    for target in ["/", "/", "/login"] {
        let res = get(&proxy.url(target), &[]).await;
        assert!(res.status.is_success(), "{target}: {}", res.status);
    }
    // Started without a file: refused, which counts a reload.
    let reload = proxy.admin_call(Method::POST, "/admin/reload", "").await;
    assert_eq!(reload.status, 400, "{}", reload.text());
    let purge = proxy
        .admin_call(
            Method::POST,
            "/admin/purge",
            r#"{"site": "portal", "path": "/"}"#,
        )
        .await;
    assert_eq!(purge.status, 200, "{}", purge.text());
    // The autopilot's first decision (a probe of the origin's latency at
    // low load, once a window has ten origin answers) makes its counter show.
    for i in 0..12 {
        get(&proxy.url(&format!("/page/{i}")), &[]).await;
    }
    wait_until(
        "the autopilot decides",
        Duration::from_secs(5),
        async || {
            proxy
                .metrics()
                .await
                .contains("digue_autopilot_decisions_total{")
        },
    )
    .await;
    let metrics = get(&proxy.admin_url("/metrics"), &[]).await;
    assert_eq!(metrics.status, 200);
    proxy.shutdown().await;
    Exposition::parse(&metrics.text())
}

#[tokio::test]
async fn dashboard_queries_only_metrics_labels_and_values_digue_exposes() {
    let live = live_metrics().await;
    assert!(live.help.len() > 20, "a full /metrics");
    let mut exprs = Vec::new();
    queries(&dashboard(), &mut exprs);
    let mut problems = BTreeSet::new();
    let mut used = BTreeSet::new();
    for expr in &exprs {
        let q = query(expr);
        let mut labels: BTreeSet<&str> = ["instance", "job"].into();
        for name in &q.metrics {
            match live.series(name) {
                Ok(seen) => labels.extend(seen.keys().map(String::as_str)),
                Err(e) => {
                    problems.insert(e);
                }
            }
            let base = ["_bucket", "_sum", "_count"]
                .iter()
                .find_map(|s| name.strip_suffix(s))
                .filter(|b| live.help.contains(*b))
                .unwrap_or(name);
            used.insert(base.to_owned());
        }
        for m in &q.matchers {
            let Ok(seen) = live.series(&m.metric) else {
                continue;
            };
            if ["instance", "job"].contains(&m.label.as_str()) {
                continue;
            }
            let Some(values) = seen.get(&m.label) else {
                problems.insert(format!("{} has no label {:?}", m.metric, m.label));
                continue;
            };
            // Literal values (plain words, or alternatives of them) must exist.
            let literal = m
                .value
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '|');
            if literal && (m.op == "=" || m.op == "=~") {
                for v in m.value.split('|') {
                    if !values.contains(v) {
                        problems.insert(format!(
                            "{}{{{}}} never takes the value {v:?} (seen: {values:?})",
                            m.metric, m.label
                        ));
                    }
                }
            }
        }
        for label in &q.grouping {
            if !labels.contains(label.as_str()) {
                problems.insert(format!(
                    "`by ({label})` groups on a label none of its metrics has: {expr}"
                ));
            }
        }
    }
    assert!(
        problems.is_empty(),
        "the dashboard queries what digue does not expose:\n{}",
        problems.into_iter().collect::<Vec<_>>().join("\n")
    );
    // The dashboard covers the families ops teams need during a surge.
    for family in [
        "digue_requests_total",
        "digue_cache_stale_total",
        "digue_origin_in_flight",
        "digue_origin_limit",
        "digue_origin_response_seconds",
        "digue_origin_errors_total",
        "digue_busy_pages_total",
        "digue_line_waiting",
        "digue_admitted_total",
        "digue_admission_rate_per_minute",
        "digue_admissions_per_second",
        "digue_tickets_issued_total",
        "digue_tickets_throttled_total",
        "digue_turns_missed_total",
        "digue_tokens_refused_total",
        "digue_sessions_active",
        "digue_wait_seconds",
        "digue_wait_eta_error_seconds",
        "digue_connections_open",
        "digue_cache_bytes",
        "digue_cache_entries",
        "digue_cache_evictions_total",
        "digue_config_reloads_total",
        "digue_admin_changes_total",
    ] {
        assert!(used.contains(family), "no panel shows {family}");
    }
}

// ------------------------------------------------------------------ systemd

/// `Key=Value` settings of a unit file, in order (keys may repeat).
fn settings(unit: &str) -> Vec<(&str, &str)> {
    unit.lines()
        .map(str::trim)
        .filter(|l| !l.starts_with(['#', ';', '[']) && !l.is_empty())
        .filter_map(|l| l.split_once('='))
        .map(|(k, v)| (k.trim(), v.trim()))
        .collect()
}

#[test]
fn systemd_unit_is_hardened_reloads_on_hup_and_lets_digue_drain() {
    let unit = read("contrib/systemd/digue.service");
    let settings = settings(&unit);
    let all = |key: &str| -> Vec<&str> {
        settings
            .iter()
            .filter(|(k, _)| *k == key)
            .map(|(_, v)| *v)
            .collect()
    };
    let one = |key: &str| -> &str {
        let values = all(key);
        assert_eq!(values.len(), 1, "{key}= set once: {values:?}");
        values[0]
    };
    assert_eq!(one("NoNewPrivileges"), "yes");
    assert!(
        all("ExecReload")
            .iter()
            .any(|v| v.contains("kill -HUP $MAINPID")),
        "`systemctl reload digue` must send SIGHUP (the README promises it)"
    );
    let start = one("ExecStart");
    assert!(start.contains(" run --config "), "{start}");
    let config = start.rsplit(' ').next().unwrap_or_default();
    for command in all("ExecReload").iter().filter(|c| !c.contains("kill")) {
        assert!(
            command.ends_with(&format!(" --config {config}")),
            "{command}: same config file as ExecStart"
        );
    }
    assert!(
        all("User").iter().any(|u| *u != "root") || all("DynamicUser") == ["yes"],
        "a dedicated user"
    );
    assert_eq!(one("ProtectSystem"), "strict");
    assert!(one("ReadOnlyPaths").contains("/etc/digue"));
    assert_eq!(one("KillSignal"), "SIGTERM");
    // systemd must not SIGKILL digue before its drain (shutdown_grace) ends.
    let stop: u64 = one("TimeoutStopSec")
        .trim_end_matches('s')
        .parse()
        .expect("TimeoutStopSec in seconds");
    assert!(
        stop > digue::config::DEFAULT_SHUTDOWN_GRACE.as_secs(),
        "TimeoutStopSec={stop} must exceed the default shutdown_grace"
    );
}
