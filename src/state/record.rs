//! Instance records: `claws/<CLAWID>/record.json`, versioned, written atomically.
//!
//! A record holds what clawfarm knows about an instance: who owns it, the digests of the
//! spec it was built from (params by keyed digest only, never values), its phase and
//! conditions, the identity of its QEMU process (pid plus the process start time, which
//! defeats pid reuse), ports and the last error. See `state/README.md` for the format.

use std::io;
use std::path::{Path, PathBuf};
use std::time::SystemTime;

use serde::{Deserialize, Serialize};

use crate::desired::{BuildSpec, Resources};
use crate::home::Home;
use crate::input::manifest::DesiredState;
use crate::util::fsutil;

/// Current record format version.
pub const RECORD_VERSION: u32 = 1;
/// File name of the record inside the instance folder.
pub const RECORD_FILE: &str = "record.json";

/// Who created an instance; `apply --prune` only deletes what `apply` owns.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Origin {
    /// Created from a manifest by `apply`/`watch`.
    Manifest,
    /// Created imperatively by `clawfarm run`.
    Run,
}

/// Lifecycle phase as last recorded by clawfarm (liveness is probed separately).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Phase {
    /// Create or replace in progress (disk/seed may be incomplete).
    Creating,
    /// Created but never started, or stopped on purpose.
    Stopped,
    /// QEMU started, guest not yet ready.
    Booting,
    /// Every guest phase succeeded.
    Ready,
    /// A guest phase failed, or readiness timed out.
    Unhealthy,
    /// An action on this instance failed.
    Failed,
}

/// A kube-style condition.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Condition {
    /// Condition type, e.g. `Ready`.
    #[serde(rename = "type")]
    pub kind: String,
    /// `true`/`false`/`unknown`.
    pub status: String,
    /// Machine-readable reason.
    pub reason: String,
    /// Human message (never contains a secret).
    pub message: String,
    /// When the status last changed.
    #[serde(with = "rfc3339")]
    pub since: SystemTime,
}

/// The identity of a running QEMU process.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ProcessId {
    /// Process id.
    pub pid: u32,
    /// Start time in clock ticks since boot (`/proc/<pid>/stat` field 22); a reused pid has
    /// a different start time.
    pub start_time: u64,
}

/// What the driver reports after a start.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
pub struct Runtime {
    /// The QEMU process, when started.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub process: Option<ProcessId>,
    /// Per-start nonce; guest status lines from other boots are ignored.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub boot_nonce: Option<String>,
    /// Accelerator in use (`kvm`/`tcg`/`fake`), and why when it fell back.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub accel: Option<String>,
    /// Host port forwarded to the guest's sshd (127.0.0.1).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ssh_port: Option<u16>,
    /// When the current process was started.
    #[serde(
        default,
        skip_serializing_if = "Option::is_none",
        with = "rfc3339::option"
    )]
    pub started_at: Option<SystemTime>,
}

/// One instance record.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Record {
    /// Format version ([`RECORD_VERSION`]).
    pub version: u32,
    /// CLAWID.
    pub clawid: String,
    /// Instance name (manifest name, or the `--name` of `run`).
    pub name: String,
    /// Who owns it.
    pub origin: Origin,
    /// Manifest file it came from (for messages).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub manifest: Option<PathBuf>,
    /// Desired run state at the last apply.
    pub desired_state: DesiredState,
    /// Build inputs of the disk and seed on disk (digests only).
    pub build: BuildSpec,
    /// Resources the current (or next) QEMU process uses.
    pub resources: Resources,
    /// Phase.
    pub phase: Phase,
    /// Conditions (latest state per type).
    #[serde(default)]
    pub conditions: Vec<Condition>,
    /// Runtime identity of the QEMU process.
    #[serde(default)]
    pub runtime: Runtime,
    /// Number of restarts after unexpected exits (watch mode).
    #[serde(default)]
    pub restart_count: u32,
    /// Consecutive unexpected exits without a stable run in between (drives the backoff).
    #[serde(default, skip_serializing_if = "is_zero")]
    pub crash_streak: u32,
    /// No automatic restart before this time (watch-mode backoff).
    #[serde(
        default,
        skip_serializing_if = "Option::is_none",
        with = "rfc3339::option"
    )]
    pub backoff_until: Option<SystemTime>,
    /// The last error, without secrets.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_error: Option<String>,
    /// Creation time.
    #[serde(with = "rfc3339")]
    pub created_at: SystemTime,
    /// Last update.
    #[serde(with = "rfc3339")]
    pub updated_at: SystemTime,
}

fn is_zero(n: &u32) -> bool {
    *n == 0
}

/// Errors reading or writing records.
#[derive(Debug, thiserror::Error)]
pub enum RecordError {
    /// I/O on a record file.
    #[error("cannot {op} record {path}")]
    Io {
        /// `read`/`write`/`remove`.
        op: &'static str,
        /// The record file.
        path: PathBuf,
        /// Cause.
        #[source]
        source: io::Error,
    },
    /// The record file is not valid JSON of a known version.
    #[error("record {path} is corrupt")]
    Corrupt {
        /// The record file.
        path: PathBuf,
        /// Cause.
        #[source]
        source: serde_json::Error,
    },
    /// The record has a version this build does not understand.
    #[error("record {path} has version {found}, this clawfarm understands {RECORD_VERSION}")]
    Version {
        /// The record file.
        path: PathBuf,
        /// Version found.
        found: u32,
    },
}

impl RecordError {
    /// The CLAWID of the instance folder this record file belongs to.
    pub fn clawid(&self) -> Option<String> {
        let path = match self {
            RecordError::Io { path, .. }
            | RecordError::Corrupt { path, .. }
            | RecordError::Version { path, .. } => path,
        };
        path.parent()
            .and_then(|d| d.file_name())
            .map(|n| n.to_string_lossy().into_owned())
    }
}

impl Record {
    /// A stand-in for an instance whose record cannot be read: enough for the driver to
    /// find its VM by the instance folder (runtime file, pidfile) and stop or remove it.
    /// Never written: the unreadable file stays as it is for a person (or a newer
    /// clawfarm) to read.
    pub fn placeholder(clawid: &str) -> Record {
        let name = clawid
            .rsplit_once('-')
            .map_or(clawid, |(n, _)| n)
            .to_string();
        Record {
            version: RECORD_VERSION,
            clawid: clawid.to_string(),
            name,
            origin: Origin::Run,
            manifest: None,
            desired_state: DesiredState::Running,
            build: BuildSpec::default(),
            resources: Resources::default(),
            phase: Phase::Failed,
            conditions: Vec::new(),
            runtime: Runtime::default(),
            restart_count: 0,
            crash_streak: 0,
            backoff_until: None,
            last_error: None,
            created_at: SystemTime::UNIX_EPOCH,
            updated_at: SystemTime::UNIX_EPOCH,
        }
    }

    /// Path of the record of `clawid`.
    pub fn path(home: &Home, clawid: &str) -> PathBuf {
        home.claw_dir(clawid).join(RECORD_FILE)
    }

    /// Read a record file.
    pub fn read(path: &Path) -> Result<Record, RecordError> {
        let data = std::fs::read(path).map_err(|source| RecordError::Io {
            op: "read",
            path: path.to_owned(),
            source,
        })?;
        Self::parse(path, &data)
    }

    /// Parse record bytes (`path` only names the file in errors).
    pub fn parse(path: &Path, data: &[u8]) -> Result<Record, RecordError> {
        #[derive(Deserialize)]
        struct V {
            version: u32,
        }
        let v: V = serde_json::from_slice(data).map_err(|source| RecordError::Corrupt {
            path: path.to_owned(),
            source,
        })?;
        if v.version != RECORD_VERSION {
            return Err(RecordError::Version {
                path: path.to_owned(),
                found: v.version,
            });
        }
        serde_json::from_slice(data).map_err(|source| RecordError::Corrupt {
            path: path.to_owned(),
            source,
        })
    }

    /// Write the record atomically (0600), creating the instance folder if needed.
    pub fn write(&self, home: &Home) -> Result<(), RecordError> {
        let path = Self::path(home, &self.clawid);
        let io_err = |source| RecordError::Io {
            op: "write",
            path: path.clone(),
            source,
        };
        if let Some(dir) = path.parent() {
            fsutil::create_dir_mode(dir, 0o700).map_err(io_err)?;
        }
        let mut data = serde_json::to_vec_pretty(self).expect("records always serialize");
        data.push(b'\n');
        fsutil::write_atomic(&path, &data, 0o600).map_err(io_err)
    }

    /// Read every record under `claws/`. Unreadable records are returned as errors next to
    /// the good ones, so one corrupt file never hides the others.
    pub fn read_all(home: &Home) -> (Vec<Record>, Vec<RecordError>) {
        let mut good = Vec::new();
        let mut bad = Vec::new();
        let Ok(rd) = std::fs::read_dir(home.claws_dir()) else {
            return (good, bad);
        };
        let mut dirs: Vec<PathBuf> = rd.flatten().map(|e| e.path()).collect();
        dirs.sort();
        let read = crate::util::par::par_map(&dirs, |d| {
            let p = d.join(RECORD_FILE);
            match Record::read(&p) {
                Err(RecordError::Io { source, .. }) if source.kind() == io::ErrorKind::NotFound => {
                    None
                }
                r => Some(r),
            }
        });
        for r in read.into_iter().flatten() {
            match r {
                Ok(r) => good.push(r),
                Err(e) => bad.push(e),
            }
        }
        (good, bad)
    }

    // -- The state machine. Every phase change of a record goes through one of these, so
    // the executor, watch and the imperative verbs agree on what a phase means: its
    // `Ready` condition, its runtime and its last error.

    /// The VM was started (or adopted) with `runtime`; the guest has not reported yet.
    pub fn mark_booting(&mut self, runtime: Runtime) {
        self.runtime = runtime;
        self.phase = Phase::Booting;
        self.last_error = None;
        self.set_condition(
            "Ready",
            "false",
            "Booting",
            "VM started, waiting for the guest",
        );
        self.touch();
    }

    /// Every bootstrap phase succeeded (and the gateway answers, when there is one).
    pub fn mark_ready(&mut self) {
        self.phase = Phase::Ready;
        self.last_error = None;
        self.set_condition(
            "Ready",
            "true",
            "GuestReady",
            "every bootstrap phase succeeded",
        );
        self.touch();
    }

    /// The guest runs but is not healthy: a phase failed, or readiness timed out.
    /// `reason` is machine-readable (`PhaseFailed`, `wait-ready`), `message` is for people.
    pub fn mark_unhealthy(&mut self, reason: &str, message: String) {
        self.phase = Phase::Unhealthy;
        self.set_condition("Ready", "false", reason, &message);
        self.last_error = Some(message);
        self.touch();
    }

    /// The VM was stopped on purpose (`by` says who, e.g. `clawfarm stop`), or was never
    /// started after a create.
    pub fn mark_stopped(&mut self, by: &str) {
        self.phase = Phase::Stopped;
        self.runtime.process = None;
        self.set_condition("Ready", "false", "Stopped", &format!("stopped by {by}"));
        self.touch();
    }

    /// The VM's running state was saved and the VM ended (`by` says who); the next start
    /// resumes it. The phase is `stopped`; the `Ready` condition's reason says `Suspended`.
    pub fn mark_suspended(&mut self, by: &str) {
        self.phase = Phase::Stopped;
        self.runtime.process = None;
        self.set_condition(
            "Ready",
            "false",
            "Suspended",
            &format!("suspended by {by}; start resumes it"),
        );
        self.touch();
    }

    /// Action `verb` failed with `message`. An instance still being created stays
    /// `creating` (the next pass finishes the create); any other becomes `failed`.
    pub fn mark_failed(&mut self, verb: &str, message: String) {
        if self.phase != Phase::Creating {
            self.phase = Phase::Failed;
        }
        self.set_condition("Ready", "false", verb, &message);
        self.last_error = Some(message);
        self.touch();
    }

    /// Set `updated_at` to now.
    pub fn touch(&mut self) {
        self.updated_at = SystemTime::now();
    }

    /// Set (or replace) the condition of `kind`, keeping `since` when the status is unchanged.
    pub fn set_condition(&mut self, kind: &str, status: &str, reason: &str, message: &str) {
        let now = SystemTime::now();
        if let Some(c) = self.conditions.iter_mut().find(|c| c.kind == kind) {
            if c.status != status {
                c.since = now;
            }
            c.status = status.into();
            c.reason = reason.into();
            c.message = message.into();
        } else {
            self.conditions.push(Condition {
                kind: kind.into(),
                status: status.into(),
                reason: reason.into(),
                message: message.into(),
                since: now,
            });
        }
    }
}

/// RFC 3339 (UTC, seconds) serde for `SystemTime`.
pub mod rfc3339 {
    use serde::{Deserialize, Deserializer, Serializer};
    use std::time::SystemTime;

    /// Serialize.
    pub fn serialize<S: Serializer>(t: &SystemTime, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&humantime::format_rfc3339_seconds(*t).to_string())
    }
    /// Deserialize.
    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<SystemTime, D::Error> {
        let s = String::deserialize(d)?;
        humantime::parse_rfc3339_weak(&s).map_err(serde::de::Error::custom)
    }

    /// RFC 3339 with milliseconds (event log timestamps).
    pub mod millis {
        use serde::{Deserializer, Serializer};
        use std::time::SystemTime;

        /// Serialize.
        pub fn serialize<S: Serializer>(t: &SystemTime, s: S) -> Result<S::Ok, S::Error> {
            s.serialize_str(&humantime::format_rfc3339_millis(*t).to_string())
        }
        /// Deserialize (any RFC 3339 precision).
        pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<SystemTime, D::Error> {
            super::deserialize(d)
        }
    }

    /// The same for `Option<SystemTime>`.
    pub mod option {
        use serde::{Deserialize, Deserializer, Serializer};
        use std::time::SystemTime;

        /// Serialize.
        pub fn serialize<S: Serializer>(t: &Option<SystemTime>, s: S) -> Result<S::Ok, S::Error> {
            match t {
                Some(t) => super::serialize(t, s),
                None => s.serialize_none(),
            }
        }
        /// Deserialize.
        pub fn deserialize<'de, D: Deserializer<'de>>(
            d: D,
        ) -> Result<Option<SystemTime>, D::Error> {
            let s = Option::<String>::deserialize(d)?;
            s.map(|s| humantime::parse_rfc3339_weak(&s).map_err(serde::de::Error::custom))
                .transpose()
        }
    }
}
