//! The event log: every action and state change, appended to `<home>/events.jsonl` as
//! JSON lines (time, instance, action, result, message), and optionally echoed to a
//! human-readable stream. Messages never contain secret values (they come from errors
//! and action names, and secrets are only ever wrapped in [`crate::util::secret::Secret`]).

use std::fs::OpenOptions;
use std::io::Write;
use std::os::unix::fs::OpenOptionsExt;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::SystemTime;

use serde::{Deserialize, Serialize};

/// One event.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Event {
    /// When.
    #[serde(with = "crate::state::record::rfc3339::millis")]
    pub time: SystemTime,
    /// CLAWID, or `-` for shared work.
    pub instance: String,
    /// Action or state change, e.g. `start`, `exited`.
    pub action: String,
    /// `started`, `ok`, `failed`, `skipped`, …
    pub result: String,
    /// Details.
    pub message: String,
}

impl Event {
    /// An event stamped now.
    pub fn new(instance: &str, action: &str, result: &str, message: String) -> Self {
        Event {
            time: SystemTime::now(),
            instance: instance.into(),
            action: action.into(),
            result: result.into(),
            message,
        }
    }
}

type Echo = Arc<dyn Fn(&Event) + Send + Sync>;

/// Where events go: the JSON-lines file and/or an echo callback. Cheap to clone.
#[derive(Clone, Default)]
pub struct EventSink {
    file: Option<PathBuf>,
    echo: Option<Echo>,
    lock: Arc<Mutex<()>>,
}

impl std::fmt::Debug for EventSink {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("EventSink")
            .field("file", &self.file)
            .finish()
    }
}

impl EventSink {
    /// A sink that drops everything.
    pub fn none() -> Self {
        Self::default()
    }
    /// Append to `file` (created 0600).
    pub fn to_file(file: PathBuf) -> Self {
        EventSink {
            file: Some(file),
            ..Self::default()
        }
    }
    /// Also call `f` for every event.
    pub fn with_echo(mut self, f: impl Fn(&Event) + Send + Sync + 'static) -> Self {
        self.echo = Some(Arc::new(f));
        self
    }
    /// Record one event. A write failure is logged, never fatal.
    pub fn emit(&self, e: Event) {
        if let Some(echo) = &self.echo {
            echo(&e);
        }
        let Some(path) = &self.file else { return };
        let _g = self.lock.lock().expect("event lock");
        let mut line = serde_json::to_vec(&e).expect("events serialize");
        line.push(b'\n');
        // One write(2) of a whole line with O_APPEND: lines from concurrent processes
        // do not interleave.
        let r = OpenOptions::new()
            .create(true)
            .append(true)
            .mode(0o600)
            .open(path)
            .and_then(|mut f| f.write_all(&line));
        if let Err(err) = r {
            tracing::warn!("cannot append to {}: {err}", path.display());
        }
    }
}

/// Read the event log (skipping lines that do not parse, e.g. a torn last line).
pub fn read(path: &std::path::Path) -> std::io::Result<Vec<Event>> {
    let text = match std::fs::read_to_string(path) {
        Ok(t) => t,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(e) => return Err(e),
    };
    Ok(text
        .lines()
        .filter_map(|l| serde_json::from_str(l).ok())
        .collect())
}
