//! The progress bar on stderr: pupils arrived out of the total, and where
//! they stand. Hidden with `--quiet` or when stderr is not a terminal, so
//! logs and CI output stay clean.

use std::io::IsTerminal;

use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};

use super::record::{Kind, Phase, Recorder};

const TEMPLATE: &str =
    "{spinner} {elapsed_precise} [{bar:30.cyan/blue}] {pos}/{len} arrived  {msg}";

/// A cheap handle; clones draw the same bar.
#[derive(Clone)]
pub(crate) struct Progress(Option<ProgressBar>);

impl Progress {
    pub(crate) fn new(pupils: u64, show: bool) -> Progress {
        if !show || !std::io::stderr().is_terminal() {
            return Progress(None);
        }
        let bar = ProgressBar::with_draw_target(Some(pupils), ProgressDrawTarget::stderr());
        if let Ok(style) = ProgressStyle::with_template(TEMPLATE) {
            bar.set_style(style.progress_chars("=> "));
        }
        Progress(Some(bar))
    }

    pub(crate) fn update(&self, rec: &Recorder) {
        let Some(bar) = &self.0 else { return };
        let started = rec.started.load(std::sync::atomic::Ordering::Relaxed)
            + rec.bots_started.load(std::sync::atomic::Ordering::Relaxed);
        bar.set_position(started);
        let errors = rec.latency(Kind::Error).count() + rec.latency(Kind::Timeout).count();
        bar.set_message(format!(
            "waiting {} · in {} · gave up {} · errors {}",
            rec.in_phase(Phase::Waiting) + rec.in_phase(Phase::Arriving),
            rec.in_phase(Phase::In) + rec.in_phase(Phase::Done),
            rec.in_phase(Phase::GaveUp) + rec.in_phase(Phase::Failed),
            errors
        ));
    }

    pub(crate) fn finish(&self) {
        if let Some(bar) = &self.0 {
            bar.finish_and_clear();
        }
    }
}
