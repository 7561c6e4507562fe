//! Injectable progress reporting for long transfers (downloads, bundle imports).
//!
//! Library code never prints: it reports to a [`Progress`] handle that the caller chooses.
//!
//! * [`Progress::silent`] reports nothing (tests, `--quiet`, the engine routing elsewhere);
//! * [`Progress::stderr`] draws an indicatif bar (size, rate, ETA) when stderr is a terminal,
//!   and otherwise prints a quiet line every 10 % or 5 s; it never writes to stdout;
//! * [`Progress::from_fn`] forwards [`ProgressEvent`]s to a callback (event log, UI);
//! * [`Progress::new`] wraps any [`ProgressSink`].
//!
//! A [`Progress`] is a cheap handle (`Arc` inside): clone it into worker threads.

use std::io::{IsTerminal, Write};
use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::util::text::human_bytes;
use indicatif::{MultiProgress, ProgressBar, ProgressDrawTarget, ProgressStyle};

/// Receives the start of transfers. Implement it to route progress somewhere else.
pub trait ProgressSink: Send + Sync {
    /// A transfer named `label` starts; `total` is its size in bytes when known.
    fn start(&self, label: &str, total: Option<u64>) -> Box<dyn ProgressTask>;
}

/// One running transfer, as reported to a [`ProgressSink`].
pub trait ProgressTask: Send {
    /// Bytes done so far (monotonic, except after a restart from zero).
    fn set_position(&mut self, pos: u64);
    /// The total became known or changed (e.g. after a `Range` response).
    fn set_total(&mut self, total: Option<u64>);
    /// The transfer ended; `ok` is false on error.
    fn finish(&mut self, ok: bool);
}

/// What a callback given to [`Progress::from_fn`] sees.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ProgressEvent {
    /// A transfer starts.
    Start {
        /// Transfer label (file or image name).
        label: String,
        /// Size in bytes, when known.
        total: Option<u64>,
    },
    /// Bytes done so far (sent at most every 1 MiB or so, and at the end).
    Update {
        /// Transfer label.
        label: String,
        /// Bytes done.
        position: u64,
        /// Size in bytes, when known.
        total: Option<u64>,
    },
    /// The transfer ended.
    Finish {
        /// Transfer label.
        label: String,
        /// Bytes done.
        position: u64,
        /// False on error.
        ok: bool,
    },
}

/// A cloneable progress handle passed to every long operation.
#[derive(Clone)]
pub struct Progress {
    sink: Option<Arc<dyn ProgressSink>>,
}

impl std::fmt::Debug for Progress {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(if self.sink.is_some() {
            "Progress(sink)"
        } else {
            "Progress(silent)"
        })
    }
}

impl Default for Progress {
    fn default() -> Self {
        Progress::silent()
    }
}

impl Progress {
    /// Report nothing.
    pub fn silent() -> Self {
        Progress { sink: None }
    }

    /// Wrap a custom sink.
    pub fn new(sink: impl ProgressSink + 'static) -> Self {
        Progress {
            sink: Some(Arc::new(sink)),
        }
    }

    /// Bars on a terminal stderr, quiet lines on a non-terminal stderr, never stdout.
    pub fn stderr() -> Self {
        if std::io::stderr().is_terminal() {
            Progress::new(BarSink {
                multi: MultiProgress::with_draw_target(ProgressDrawTarget::stderr()),
            })
        } else {
            Progress::new(LineSink)
        }
    }

    /// Forward every event to `f` (called from worker threads too).
    pub fn from_fn(f: impl Fn(&ProgressEvent) + Send + Sync + 'static) -> Self {
        Progress::new(FnSink(Arc::new(f)))
    }

    /// Start a transfer. The returned tracker throttles updates and reports a failed
    /// finish if it is dropped without [`Tracker::finish`].
    pub fn start(&self, label: &str, total: Option<u64>) -> Tracker {
        Tracker {
            task: self.sink.as_ref().map(|s| s.start(label, total)),
            pos: 0,
            reported: 0,
            finished: false,
        }
    }
}

/// A running transfer: call [`Tracker::advance`]/[`Tracker::set_position`], then
/// [`Tracker::finish`].
pub struct Tracker {
    task: Option<Box<dyn ProgressTask>>,
    pos: u64,
    reported: u64,
    finished: bool,
}

/// Updates smaller than this are not forwarded to the sink.
const REPORT_STEP: u64 = 1 << 20;

impl Tracker {
    /// Add `n` bytes done.
    pub fn advance(&mut self, n: u64) {
        self.set_position(self.pos.saturating_add(n));
    }

    /// Set the bytes done (a restart from zero may move it back).
    pub fn set_position(&mut self, pos: u64) {
        self.pos = pos;
        if let Some(t) = self.task.as_mut()
            && (pos < self.reported || pos - self.reported >= REPORT_STEP)
        {
            self.reported = pos;
            t.set_position(pos);
        }
    }

    /// Set or change the total.
    pub fn set_total(&mut self, total: Option<u64>) {
        if let Some(t) = self.task.as_mut() {
            t.set_total(total);
        }
    }

    /// Bytes done so far.
    pub fn position(&self) -> u64 {
        self.pos
    }

    /// End the transfer.
    pub fn finish(mut self, ok: bool) {
        self.end(ok);
    }

    fn end(&mut self, ok: bool) {
        if self.finished {
            return;
        }
        self.finished = true;
        if let Some(t) = self.task.as_mut() {
            if self.reported != self.pos {
                t.set_position(self.pos);
            }
            t.finish(ok);
        }
    }
}

impl Drop for Tracker {
    fn drop(&mut self) {
        self.end(false);
    }
}

// ---- callback sink -------------------------------------------------------------------

type EventFn = dyn Fn(&ProgressEvent) + Send + Sync;

struct FnSink(Arc<EventFn>);

struct FnTask {
    f: Arc<EventFn>,
    label: String,
    total: Option<u64>,
    pos: u64,
}

impl ProgressSink for FnSink {
    fn start(&self, label: &str, total: Option<u64>) -> Box<dyn ProgressTask> {
        (self.0)(&ProgressEvent::Start {
            label: label.to_string(),
            total,
        });
        Box::new(FnTask {
            f: self.0.clone(),
            label: label.to_string(),
            total,
            pos: 0,
        })
    }
}

impl ProgressTask for FnTask {
    fn set_position(&mut self, pos: u64) {
        self.pos = pos;
        (self.f)(&ProgressEvent::Update {
            label: self.label.clone(),
            position: pos,
            total: self.total,
        });
    }
    fn set_total(&mut self, total: Option<u64>) {
        self.total = total;
    }
    fn finish(&mut self, ok: bool) {
        (self.f)(&ProgressEvent::Finish {
            label: self.label.clone(),
            position: self.pos,
            ok,
        });
    }
}

// ---- terminal bars --------------------------------------------------------------------

struct BarSink {
    multi: MultiProgress,
}

struct BarTask(ProgressBar);

const BAR_TEMPLATE: &str = "{msg:30!} [{bar:30}] {binary_bytes:>10}/{binary_total_bytes:<10} {binary_bytes_per_sec:>12} ETA {eta}";
const SPINNER_TEMPLATE: &str = "{msg:30!} {spinner} {binary_bytes:>10} {binary_bytes_per_sec:>12}";

fn bar_style(total: Option<u64>) -> ProgressStyle {
    let t = if total.is_some() {
        BAR_TEMPLATE
    } else {
        SPINNER_TEMPLATE
    };
    ProgressStyle::with_template(t)
        .unwrap_or_else(|_| ProgressStyle::default_bar())
        .progress_chars("=> ")
}

impl ProgressSink for BarSink {
    fn start(&self, label: &str, total: Option<u64>) -> Box<dyn ProgressTask> {
        let bar = ProgressBar::with_draw_target(total, ProgressDrawTarget::hidden());
        bar.set_style(bar_style(total));
        bar.set_message(label.to_string());
        let bar = self.multi.add(bar);
        Box::new(BarTask(bar))
    }
}

impl ProgressTask for BarTask {
    fn set_position(&mut self, pos: u64) {
        self.0.set_position(pos);
    }
    fn set_total(&mut self, total: Option<u64>) {
        self.0.set_style(bar_style(total));
        match total {
            Some(t) => self.0.set_length(t),
            None => self.0.unset_length(),
        }
    }
    fn finish(&mut self, ok: bool) {
        if ok {
            self.0.finish();
        } else {
            self.0.abandon();
        }
    }
}

// ---- quiet lines ----------------------------------------------------------------------

struct LineSink;

struct LineTask {
    label: String,
    total: Option<u64>,
    pos: u64,
    started: Instant,
    last_at: Instant,
    last_decile: u64,
    announced: bool,
}

/// A line at least this often when there is progress.
const LINE_EVERY: Duration = Duration::from_secs(5);

fn stderr_line(line: &str) {
    // Progress is best effort: a closed stderr must not fail a download.
    let mut e = std::io::stderr().lock();
    let _ = writeln!(e, "{line}");
}

impl LineTask {
    /// The "started" line waits for the first news, so that it can carry the size
    /// (a download learns it from the response headers).
    fn announce(&mut self) {
        if self.announced {
            return;
        }
        self.announced = true;
        match self.total {
            Some(n) => stderr_line(&format!("{}: started ({})", self.label, human_bytes(n))),
            None => stderr_line(&format!("{}: started", self.label)),
        }
    }

    fn line(&self, what: &str) -> String {
        let secs = self.started.elapsed().as_secs_f64().max(1e-3);
        let rate = human_bytes((self.pos as f64 / secs) as u64);
        match self.total {
            Some(t) if t > 0 => format!(
                "{}: {what} {}% ({} of {}, {rate}/s)",
                self.label,
                self.pos.saturating_mul(100) / t,
                human_bytes(self.pos),
                human_bytes(t)
            ),
            _ => format!(
                "{}: {what} {} ({rate}/s)",
                self.label,
                human_bytes(self.pos)
            ),
        }
    }
}

impl ProgressSink for LineSink {
    fn start(&self, label: &str, total: Option<u64>) -> Box<dyn ProgressTask> {
        let now = Instant::now();
        let mut t = LineTask {
            label: label.to_string(),
            total,
            pos: 0,
            started: now,
            last_at: now,
            last_decile: 0,
            announced: false,
        };
        if total.is_some() {
            t.announce();
        }
        Box::new(t)
    }
}

impl ProgressTask for LineTask {
    fn set_position(&mut self, pos: u64) {
        let t = self;
        t.announce();
        t.pos = pos;
        let decile = match t.total {
            Some(total) if total > 0 => pos.saturating_mul(10) / total,
            _ => 0,
        };
        let now = Instant::now();
        if decile > t.last_decile || now.duration_since(t.last_at) >= LINE_EVERY {
            t.last_decile = t.last_decile.max(decile);
            t.last_at = now;
            stderr_line(&t.line("at"));
        }
    }
    fn set_total(&mut self, total: Option<u64>) {
        self.total = total;
        self.announce();
    }
    fn finish(&mut self, ok: bool) {
        let t = self;
        t.announce();
        let secs = t.started.elapsed().as_secs_f64();
        if ok {
            stderr_line(&format!(
                "{}: done, {} in {secs:.1}s",
                t.label,
                human_bytes(t.pos)
            ));
        } else {
            stderr_line(&t.line("failed at"));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Mutex;

    #[test]
    fn callback_sees_start_updates_and_finish() {
        let seen = Arc::new(Mutex::new(Vec::new()));
        let s2 = seen.clone();
        let p = Progress::from_fn(move |e| s2.lock().unwrap().push(e.clone()));
        let mut t = p.start("x", Some(3 << 20));
        t.advance(10); // below the report step: not forwarded
        t.advance(2 << 20);
        t.advance(1 << 20);
        t.finish(true);
        let seen = seen.lock().unwrap();
        assert!(matches!(seen[0], ProgressEvent::Start { .. }));
        assert_eq!(seen.len(), 4, "{seen:?}");
        assert!(
            matches!(seen[3], ProgressEvent::Finish { ok: true, position, .. } if position == (3 << 20) + 10)
        );
    }

    #[test]
    fn dropped_tracker_reports_failure() {
        let seen = Arc::new(Mutex::new(Vec::new()));
        let s2 = seen.clone();
        let p = Progress::from_fn(move |e| s2.lock().unwrap().push(e.clone()));
        drop(p.start("y", None));
        assert!(matches!(
            seen.lock().unwrap().last(),
            Some(ProgressEvent::Finish { ok: false, .. })
        ));
    }
}
