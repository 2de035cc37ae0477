//! The run seen from above, every [`SAMPLE_EVERY`]: digue's `/metrics`
//! (origin in flight, line length) when an admin URL is given, the demo
//! portal's own counters (`/__demo/stats`) when their URL is given, where
//! the pupils stand, and the progress bar. Samples are folded into one
//! bucket per second for the report's timeline and the chart.
//!
//! Sampling is not tracing: an origin peak shorter than the interval can
//! fall between two samples, so the reported peak is a lower bound (digue
//! itself never lets `digue_origin_in_flight` pass `digue_origin_limit`).

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http::{HeaderValue, Request, header};
use http_body_util::Full;
use tokio::sync::watch;
use tokio::time::MissedTickBehavior;

use super::client::{Conn, reach};
use super::progress::Progress;
use super::record::{Phase, Recorder};
use super::scenario::Target;
use crate::demo::Stats;

/// Four samples a second: fine enough for a chart, cheap for digue.
pub(crate) const SAMPLE_EVERY: Duration = Duration::from_millis(250);
/// A scrape slower than this is skipped, not waited for.
const SCRAPE_TIMEOUT: Duration = Duration::from_secs(2);

/// What one read of `/metrics` says, summed over sites.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub(crate) struct Scrape {
    pub(crate) origin_in_flight: Option<u64>,
    pub(crate) origin_limit: Option<u64>,
    pub(crate) line_waiting: Option<u64>,
}

/// GETs one URL over its own keep-alive connection.
struct Reader {
    target: Target,
    conn: Conn,
}

impl Reader {
    async fn connect(target: &Target) -> Result<Reader, String> {
        let addr: SocketAddr = reach(&target.host, target.port, SCRAPE_TIMEOUT).await?;
        Ok(Reader {
            target: target.clone(),
            conn: Conn::new(addr),
        })
    }

    /// The body of a 2xx answer.
    async fn get(&mut self) -> Result<Bytes, String> {
        let path = self.target.path.clone();
        let host = HeaderValue::from_str(&self.target.authority).ok();
        let make = || {
            let mut req = Request::new(Full::new(Bytes::new()));
            // The plan parsed the URL, so its path is a valid URI.
            *req.uri_mut() = path.parse().unwrap_or_else(|_| http::Uri::from_static("/"));
            if let Some(host) = &host {
                req.headers_mut().insert(header::HOST, host.clone());
            }
            req
        };
        let answer = self
            .conn
            .send(make, SCRAPE_TIMEOUT)
            .await
            .map_err(|e| format!("{}: {e}", self.target.url))?;
        if !answer.head.status.is_success() {
            return Err(format!("{}: HTTP {}", self.target.url, answer.head.status));
        }
        Ok(answer.body)
    }
}

/// Reads digue's `/metrics`.
pub(crate) struct Scraper(Reader);

impl Scraper {
    /// Connects and reads once, so a wrong admin URL fails the run at once.
    pub(crate) async fn connect(target: &Target) -> Result<Scraper, String> {
        let mut scraper = Scraper(Reader::connect(target).await?);
        let first = scraper.scrape().await?;
        if first.origin_in_flight.is_none() {
            return Err(format!(
                "{} answers, but without digue_origin_in_flight: is it digue's admin listener?",
                target.url
            ));
        }
        Ok(scraper)
    }

    pub(crate) async fn scrape(&mut self) -> Result<Scrape, String> {
        let body = self.0.get().await?;
        let text = String::from_utf8_lossy(&body);
        Ok(Scrape {
            origin_in_flight: sum_samples(&text, "digue_origin_in_flight"),
            origin_limit: sum_samples(&text, "digue_origin_limit"),
            line_waiting: sum_samples(&text, "digue_line_waiting"),
        })
    }
}

/// Reads the demo portal's own counters (`digue demo` prints their URL).
pub(crate) struct PortalReader {
    reader: Reader,
    /// The read before any load: the run's figures are counted from it.
    first: Stats,
}

impl PortalReader {
    /// Connects and reads once, so a wrong URL fails the run before any load.
    pub(crate) async fn connect(target: &Target) -> Result<PortalReader, String> {
        let mut reader = Reader::connect(target).await?;
        let first = read_stats(&mut reader).await?;
        Ok(PortalReader { reader, first })
    }

    async fn read(&mut self) -> Result<Stats, String> {
        read_stats(&mut self.reader).await
    }
}

async fn read_stats(reader: &mut Reader) -> Result<Stats, String> {
    let body = reader.get().await?;
    serde_json::from_slice(&body).map_err(|e| {
        format!(
            "{} answers, but not with the demo portal's counters ({e}): is it `digue demo`'s \
             portal stats URL?",
            reader.target.url
        )
    })
}

/// The sum of every sample of `name` (all label sets) in Prometheus text,
/// or `None` when the metric is absent.
pub(crate) fn sum_samples(text: &str, name: &str) -> Option<u64> {
    let mut sum = None;
    for line in text.lines() {
        let Some(rest) = line.strip_prefix(name) else {
            continue;
        };
        let value = if let Some(labelled) = rest.strip_prefix('{') {
            labelled.rsplit_once('}').map(|(_, v)| v)
        } else if rest.starts_with(' ') {
            Some(rest)
        } else {
            None // another metric whose name starts the same
        };
        if let Some(v) = value
            .and_then(|v| v.split_ascii_whitespace().next())
            .and_then(|v| v.parse::<f64>().ok())
        {
            *sum.get_or_insert(0) += v.max(0.0) as u64;
        }
    }
    sum
}

/// The maxima seen within one second of the run.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub(crate) struct Second {
    pub(crate) pupils_waiting: u64,
    pub(crate) line_waiting: Option<u64>,
    pub(crate) origin_in_flight: Option<u64>,
    /// The portal's capacity at the last read of this second.
    pub(crate) portal_capacity: Option<u64>,
    /// What the portal's `busy_seconds` and `capacity_seconds` grew by
    /// since the read before this second's reads: their ratio is the share
    /// of its capacity used, over about this second.
    pub(crate) portal_busy: f64,
    pub(crate) portal_offered: f64,
}

/// Everything sampled during the run.
#[derive(Debug, Default)]
pub(crate) struct Samples {
    pub(crate) seconds: Vec<Second>,
    pub(crate) origin_limit: Option<u64>,
    pub(crate) scrapes: u64,
    pub(crate) failed_scrapes: u64,
    pub(crate) last_error: Option<String>,
    /// The portal's counters, when their URL was given.
    pub(crate) portal: Option<PortalSamples>,
}

/// The portal's counters before the load, at the last read, and the range
/// its capacity was read in.
#[derive(Debug)]
pub(crate) struct PortalSamples {
    pub(crate) url: String,
    pub(crate) first: Stats,
    pub(crate) last: Stats,
    pub(crate) capacity_min: u64,
    pub(crate) capacity_max: u64,
    /// Reads during the run (the one before the load aside).
    pub(crate) reads: u64,
    pub(crate) failed_reads: u64,
    pub(crate) last_error: Option<String>,
}

impl PortalSamples {
    fn new(reader: &PortalReader) -> PortalSamples {
        let first = reader.first;
        PortalSamples {
            url: reader.reader.target.url.clone(),
            first,
            last: first,
            capacity_min: first.capacity,
            capacity_max: first.capacity,
            reads: 0,
            failed_reads: 0,
            last_error: None,
        }
    }

    /// Takes a read; returns the growth of (busy, offered) since the last.
    fn observe(&mut self, stats: Stats) -> (f64, f64) {
        let grown = (
            (stats.busy_seconds - self.last.busy_seconds).max(0.0),
            (stats.capacity_seconds - self.last.capacity_seconds).max(0.0),
        );
        self.capacity_min = self.capacity_min.min(stats.capacity);
        self.capacity_max = self.capacity_max.max(stats.capacity);
        self.last = stats;
        grown
    }
}

/// Counts a read as done or failed, keeping the last error.
fn tally<T>(
    read: Result<T, String>,
    done: &mut u64,
    failed: &mut u64,
    last_error: &mut Option<String>,
) -> Option<T> {
    match read {
        Ok(v) => {
            *done += 1;
            Some(v)
        }
        Err(e) => {
            *failed += 1;
            *last_error = Some(e);
            None
        }
    }
}

/// Samples until `stop` turns true, then once more, and returns the lot.
pub(crate) async fn run(
    rec: Arc<Recorder>,
    mut scraper: Option<Scraper>,
    mut portal: Option<PortalReader>,
    progress: Progress,
    mut stop: watch::Receiver<bool>,
) -> Samples {
    let mut samples = Samples {
        portal: portal.as_ref().map(PortalSamples::new),
        ..Samples::default()
    };
    let mut ticker = tokio::time::interval(SAMPLE_EVERY);
    ticker.set_missed_tick_behavior(MissedTickBehavior::Skip);
    loop {
        let last = tokio::select! {
            _ = ticker.tick() => *stop.borrow(),
            _ = stop.changed() => true,
        };
        let second = usize::try_from(rec.start.elapsed().as_secs()).unwrap_or(usize::MAX);
        let scrape = match &mut scraper {
            Some(s) => tally(
                s.scrape().await,
                &mut samples.scrapes,
                &mut samples.failed_scrapes,
                &mut samples.last_error,
            ),
            None => None,
        };
        let stats = match (&mut portal, &mut samples.portal) {
            (Some(reader), Some(p)) => tally(
                reader.read().await,
                &mut p.reads,
                &mut p.failed_reads,
                &mut p.last_error,
            ),
            _ => None,
        };
        if second < usize::MAX / 2 {
            if samples.seconds.len() <= second {
                samples.seconds.resize(second + 1, Second::default());
            }
            let s = &mut samples.seconds[second];
            let waiting = rec.in_phase(Phase::Waiting) + rec.in_phase(Phase::Arriving);
            s.pupils_waiting = s.pupils_waiting.max(waiting);
            if let Some(scrape) = scrape {
                s.line_waiting = max_opt(s.line_waiting, scrape.line_waiting);
                s.origin_in_flight = max_opt(s.origin_in_flight, scrape.origin_in_flight);
                samples.origin_limit = scrape.origin_limit.or(samples.origin_limit);
            }
            if let (Some(stats), Some(p)) = (stats, &mut samples.portal) {
                let (busy, offered) = p.observe(stats);
                s.portal_capacity = Some(stats.capacity);
                s.portal_busy += busy;
                s.portal_offered += offered;
            }
        }
        progress.update(&rec);
        if last {
            return samples;
        }
    }
}

fn max_opt(a: Option<u64>, b: Option<u64>) -> Option<u64> {
    match (a, b) {
        (Some(a), Some(b)) => Some(a.max(b)),
        (a, None) => a,
        (None, b) => b,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn samples_are_summed_across_sites() {
        let text = "# HELP digue_origin_in_flight Requests in flight\n\
                    # TYPE digue_origin_in_flight gauge\n\
                    digue_origin_in_flight{site=\"a\"} 3\n\
                    digue_origin_in_flight{site=\"b\"} 4\n\
                    digue_origin_in_flight_other 100\n\
                    digue_line_waiting{site=\"a\"} 12\n";
        assert_eq!(sum_samples(text, "digue_origin_in_flight"), Some(7));
        assert_eq!(sum_samples(text, "digue_line_waiting"), Some(12));
        assert_eq!(sum_samples(text, "digue_origin_limit"), None);
        assert_eq!(sum_samples("plain 5\n", "plain"), Some(5));
    }
}
