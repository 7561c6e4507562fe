//! The guest's bootstrap report, independent of how it travels: the phases of one boot
//! (cloud-init, mount, install, start, provision steps, done), each started, ok or failed.
//! The QEMU driver reads it from a virtio-serial channel (its `guest` module);
//! the fake driver makes it up.

use std::fmt;

/// A phase of the guest sequence.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum GuestPhase {
    /// cloud-init itself (`started` on every boot, then `ok`/`failed`).
    CloudInit,
    /// Mounting the 9p shares.
    Mount,
    /// The install script (once per instance).
    Install,
    /// The start script (every boot).
    Start,
    /// Provision step `step` (0-based), with its optional name.
    Provision {
        /// Index in the provision list.
        step: u32,
        /// The step's name, if it has one.
        name: Option<String>,
    },
    /// Every phase succeeded.
    Done,
    /// A phase this parser does not know (newer guest); kept verbatim.
    Other(String),
}

impl fmt::Display for GuestPhase {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            GuestPhase::CloudInit => f.write_str("cloud-init"),
            GuestPhase::Mount => f.write_str("mount"),
            GuestPhase::Install => f.write_str("install"),
            GuestPhase::Start => f.write_str("start"),
            GuestPhase::Provision { step, name: None } => write!(f, "provision[{step}]"),
            GuestPhase::Provision {
                step,
                name: Some(n),
            } => write!(f, "provision[{step}] {n}"),
            GuestPhase::Done => f.write_str("done"),
            GuestPhase::Other(s) => f.write_str(s),
        }
    }
}

/// `status` of a line.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StepState {
    /// The phase began.
    Started,
    /// The phase ended with exit code 0.
    Ok,
    /// The phase ended with a non-zero code.
    Failed,
    /// The phase was not run: its work is already on the disk (an install recorded by the
    /// digest of its script, in a disk exported by `clawfarm export`).
    Skipped,
}

/// One parsed status line of the current boot.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GuestEvent {
    /// Which phase.
    pub phase: GuestPhase,
    /// What happened.
    pub state: StepState,
    /// Exit code (for `ok`/`failed`).
    pub code: Option<i32>,
    /// Last lines of the phase log (for `failed`).
    pub tail: Option<String>,
    /// Guest timestamp, as sent.
    pub ts: Option<String>,
}

/// The phase that failed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FailedPhase {
    /// The phase as displayed, e.g. `install` or `provision[1] setup`.
    pub phase: String,
    /// Its exit code.
    pub code: i32,
    /// The last lines of its log.
    pub tail: String,
}

/// What the guest reported in the current boot (lines carrying the current nonce only).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct GuestStatus {
    /// At least one line of this boot was seen (cloud-init ran).
    pub booted: bool,
    /// `done` `ok` was seen: every phase succeeded.
    pub done: bool,
    /// The phase that failed, if one did (the sequence stopped there).
    pub failed: Option<FailedPhase>,
    /// The last phase seen, as displayed (`start`, `provision[0] setup`, …).
    pub last: Option<String>,
    /// The state of that last phase.
    pub last_state: Option<StepState>,
    /// Every line of this boot, in order.
    pub events: Vec<GuestEvent>,
    /// Complete lines that were not status lines of this boot (other nonce, garbage).
    pub ignored: usize,
}

impl GuestStatus {
    /// A one-line summary for progress displays: `done`, `failed: install (exit 3)`,
    /// `start: started`, or `waiting for guest`.
    pub fn summary(&self) -> String {
        if self.done {
            "done".into()
        } else if let Some(f) = &self.failed {
            format!("failed: {} (exit {})", f.phase, f.code)
        } else if let (Some(l), Some(s)) = (&self.last, self.last_state) {
            let s = match s {
                StepState::Started => "started",
                StepState::Ok => "ok",
                StepState::Failed => "failed",
                StepState::Skipped => "skipped",
            };
            format!("{l}: {s}")
        } else {
            "waiting for guest".into()
        }
    }
}
