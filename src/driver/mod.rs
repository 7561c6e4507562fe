//! The one seam for effects. The executor calls a [`Driver`] for every action of a plan;
//! [`fake::FakeDriver`] records calls for fast tests, [`host::QemuDriver`] does the real
//! work (blob store, bundle import, qcow2 overlays, cloud-init seeds, QEMU).
//!
//! Every method must check before it acts: called twice, or after a crash half-way, it
//! converges instead of duplicating work.

use std::fmt;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use async_trait::async_trait;

use crate::desired::{BundleDesired, DesiredInstance};
use crate::driver::boot::GuestStatus;
use crate::input::clawspec::Image;
use crate::state::record::{ProcessId, Record, Runtime};
use crate::util::secret::Secret;

pub mod boot;
pub mod fake;
pub mod qemu;

/// Errors from a driver. The chain is printed once, outermost first (`{:#}`).
pub type DriverError = anyhow::Error;

/// What a probe of a record's process found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Liveness {
    /// The process the record names is alive and really is this instance's VM.
    Running(ProcessId),
    /// It was started and is gone (or the pid now belongs to something else).
    Exited,
    /// Never started, or stopped on purpose.
    NotStarted,
}

/// What the guest reports about itself (phases of the bootstrap).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum GuestHealth {
    /// No report yet from this boot.
    Booting {
        /// Last phase seen, if any.
        last: Option<String>,
    },
    /// Every phase succeeded (and the gateway answers, when there is one).
    Ready,
    /// A phase failed.
    Unhealthy {
        /// The phase, e.g. `provision[1] setup`.
        phase: String,
        /// Its exit code.
        code: i32,
        /// The tail of its log.
        tail: String,
    },
}

/// How a stop ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StopOutcome {
    /// Nothing was running.
    NotRunning,
    /// The guest powered off after being asked to (graceful).
    PoweredOff(Duration),
    /// The guest did not power off in time; the VM monitor ended the VM (QMP `quit`).
    Quit(Duration),
    /// The monitor was unreachable; SIGTERM ended the VM.
    Terminated(Duration),
    /// Nothing else worked; SIGKILL ended the VM.
    Killed(Duration),
}

impl StopOutcome {
    /// True when the guest shut itself down (or nothing ran).
    pub fn graceful(&self) -> bool {
        matches!(self, StopOutcome::PoweredOff(_) | StopOutcome::NotRunning)
    }
}

impl fmt::Display for StopOutcome {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            StopOutcome::NotRunning => f.write_str("not running"),
            StopOutcome::PoweredOff(d) => write!(
                f,
                "guest powered off after system_powerdown ({:.1}s)",
                d.as_secs_f64()
            ),
            StopOutcome::Quit(d) => write!(
                f,
                "guest did not power off; QEMU ended by QMP quit ({:.1}s)",
                d.as_secs_f64()
            ),
            StopOutcome::Terminated(d) => write!(
                f,
                "QMP unreachable; QEMU ended by SIGTERM ({:.1}s)",
                d.as_secs_f64()
            ),
            StopOutcome::Killed(d) => {
                write!(f, "QEMU ended by SIGKILL ({:.1}s)", d.as_secs_f64())
            }
        }
    }
}

/// One checkpoint of an instance: an internal snapshot (RAM, devices and disks together)
/// inside the instance's qcow2 overlay and its volume disks.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct Checkpoint {
    /// Its tag.
    pub tag: String,
    /// When it was taken.
    #[serde(with = "crate::state::record::rfc3339")]
    pub created_at: std::time::SystemTime,
    /// Bytes of saved VM state (RAM and devices).
    pub vm_state_bytes: u64,
    /// Names of the volumes it includes.
    pub volumes: Vec<String>,
    /// Bundle digest of the instance when it was taken.
    pub bundle: Option<String>,
}

/// The tag prefix clawfarm keeps for itself (`clawfarm-suspend`).
pub const RESERVED_TAG_PREFIX: &str = "clawfarm-";

/// Check a checkpoint tag given by a user: 1-64 characters `[A-Za-z0-9._-]`, not starting
/// with `-` or [`RESERVED_TAG_PREFIX`], and not all digits (QEMU would take it for a
/// snapshot id).
pub fn check_tag(tag: &str) -> Result<(), DriverError> {
    let ok_chars = tag
        .chars()
        .all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-'));
    if tag.is_empty() || tag.len() > 64 || !ok_chars || tag.starts_with('-') {
        anyhow::bail!(
            "checkpoint tag {tag:?} must be 1-64 characters [A-Za-z0-9._-], not starting with '-'"
        );
    }
    if tag.starts_with(RESERVED_TAG_PREFIX) {
        anyhow::bail!("checkpoint tag {tag:?}: the prefix {RESERVED_TAG_PREFIX} is reserved");
    }
    if tag.chars().all(|c| c.is_ascii_digit()) {
        anyhow::bail!("checkpoint tag {tag:?} must not be all digits");
    }
    Ok(())
}

/// A default checkpoint tag from the time: `YYYYmmdd-HHMMSS` (UTC).
pub fn default_tag() -> String {
    let t = humantime::format_rfc3339_seconds(std::time::SystemTime::now()).to_string();
    t.trim_end_matches('Z')
        .replace(['-', ':'], "")
        .replace('T', "-")
}

/// A log file of an instance.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LogKind {
    /// The serial console of the current boot.
    Serial,
    /// The VM monitor's own output, plus one line per start and stop.
    Vmm,
}

/// What an export of a disk layer measured.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct ExportFigures {
    /// Size of the instance's own disk file (its overlay) before export.
    pub disk_bytes: u64,
    /// How long the scrub took (booting the copy, scrubbing, powering off).
    pub scrub: Duration,
    /// How long writing the compressed layer took.
    pub flatten: Duration,
}

/// The effects the engine needs. Methods take the data they need and nothing more;
/// records are written by the executor and the lifecycle verbs (`reconcile::ops`), not by
/// drivers.
#[async_trait]
pub trait Driver: Send + Sync {
    /// Short name (`fake`, `qemu`) for logs and `ps`.
    fn kind(&self) -> &'static str;

    /// Import a bundle into `bundles/<digest>/` (and its `run.qcow2` into the blob store).
    async fn import_bundle(&self, bundle: &BundleDesired) -> Result<(), DriverError>;

    /// Make sure the blob of `image` is in the store, fetched and verified.
    async fn fetch_blob(&self, image: &Image) -> Result<(), DriverError>;

    /// Create the instance folder and its qcow2 overlay on the bundle's image blob.
    async fn create_disk(&self, inst: &DesiredInstance) -> Result<(), DriverError>;

    /// Write the cloud-init seed (params, scripts, keys) for the instance.
    async fn write_seed(&self, inst: &DesiredInstance) -> Result<(), DriverError>;

    /// Start the VM described by `rec` (disk and seed exist). Adopts an already-running VM
    /// of this instance instead of starting a second one.
    async fn start(&self, rec: &Record) -> Result<Runtime, DriverError>;

    /// Wait until the guest reports ready, or fail with the failed phase or a timeout.
    async fn wait_ready(&self, rec: &Record) -> Result<(), DriverError>;

    /// Stop the VM: graceful first, forced after a timeout. Stopping a stopped VM is fine
    /// ([`StopOutcome::NotRunning`]).
    async fn stop(&self, rec: &Record) -> Result<StopOutcome, DriverError>;

    /// Remove the instance folder (a stopped VM). Volumes are kept unless `purge`.
    async fn remove(&self, clawid: &str, purge: bool) -> Result<(), DriverError>;

    /// Probe the live process of `rec`. Cheap: no guest round trip.
    fn probe(&self, rec: &Record) -> Liveness;

    /// Read what the guest reported in the current boot of `rec`.
    fn guest_health(&self, rec: &Record) -> GuestHealth;

    /// The runtime of the live VM of `rec` as the driver knows it now (it may have been
    /// adopted after the record was written); `None` when it does not run.
    fn live_runtime(&self, rec: &Record) -> Option<Runtime>;

    /// The bootstrap report of boot `nonce` of instance `clawid` (empty before the guest
    /// says anything).
    fn boot_report(&self, clawid: &str, nonce: &str) -> std::io::Result<GuestStatus>;

    /// Where a log of instance `clawid` is written (it may not exist yet).
    fn log_path(&self, clawid: &str, kind: LogKind) -> PathBuf;

    /// The command that logs in to the running guest of `rec` as user `claw` (or runs
    /// `command` there). Drivers without a guest to log in to refuse with a reason.
    fn ssh_command(&self, rec: &Record, command: &[String]) -> Result<Command, DriverError>;

    /// True when instance `clawid` has a disk that has been booted at least once.
    fn has_booted(&self, clawid: &str) -> bool;

    /// The param values instance `clawid` was given (read back from where the driver keeps
    /// them for the guest), for the export's secret scan. Never logged.
    fn param_values(&self, clawid: &str) -> Result<Vec<(String, Secret)>, DriverError>;

    /// Copy the disk of `rec` (stopped: the caller quiesced it) into the folder `work`.
    async fn export_snapshot(&self, rec: &Record, work: &Path) -> Result<(), DriverError>;

    /// Scrub the copy in `work` (rfc/010) and write its changes relative to the image
    /// `base` at `out`: a compressed qcow2 without backing file.
    async fn export_layer(
        &self,
        rec: &Record,
        base: &Image,
        work: &Path,
        out: &Path,
    ) -> Result<ExportFigures, DriverError>;

    /// The bytes a layer written by [`Driver::export_layer`] holds, as a (sparse) raw file
    /// at `raw`, for the secret scan.
    async fn layer_raw(&self, layer: &Path, raw: &Path) -> Result<(), DriverError>;
    /// Take checkpoint `tag` of the running VM of `rec` (RAM, devices, disk and volumes);
    /// the guest is paused only while the state is written. An existing tag is refused.
    async fn checkpoint(&self, rec: &Record, tag: &str) -> Result<Checkpoint, DriverError>;

    /// The checkpoints of `rec`, oldest first (its suspend state is not one).
    async fn checkpoints(&self, rec: &Record) -> Result<Vec<Checkpoint>, DriverError>;

    /// Put the VM of `rec` back to checkpoint `tag`, running (a stopped VM is started from
    /// it). Returns the runtime; the guest is ready at once when it was at the checkpoint.
    async fn restore(&self, rec: &Record, tag: &str) -> Result<Runtime, DriverError>;

    /// Save the running state of `rec` and end its VM; the next [`Driver::start`] resumes
    /// it. Suspending a suspended instance is fine.
    async fn suspend(&self, rec: &Record) -> Result<Duration, DriverError>;

    /// True when instance `clawid` has a saved state that `start` resumes.
    fn suspended(&self, clawid: &str) -> bool;

    /// Copy the files of volume `volume` of the stopped instance `rec` into folder `dest`.
    async fn export_volume(
        &self,
        rec: &Record,
        volume: &str,
        dest: &std::path::Path,
    ) -> Result<(), DriverError>;
}

/// The driver for `home`: the fake when `CLAWFARM_DRIVER=fake` (tests), else QEMU,
/// configured from the environment, with `accel` (the `--accel` flag) winning over
/// `CLAWFARM_ACCEL`.
pub fn from_env(
    home: &crate::home::Home,
    accel: Option<qemu::accel::AccelMode>,
) -> Result<std::sync::Arc<dyn Driver>, DriverError> {
    match std::env::var("CLAWFARM_DRIVER").as_deref() {
        Ok("fake") => Ok(std::sync::Arc::new(fake::FakeDriver::new(home.clone()))),
        Ok("qemu") | Err(_) => {
            let mut cfg = qemu::QemuConfig::from_env()?;
            if let Some(a) = accel {
                cfg.accel = a;
            }
            Ok(std::sync::Arc::new(qemu::QemuDriver::with_config(
                home.clone(),
                cfg,
            )))
        }
        Ok(other) => anyhow::bail!("unknown CLAWFARM_DRIVER {other:?} (expected qemu or fake)"),
    }
}
