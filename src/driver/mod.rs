//! The one seam for effects. The executor calls a [`Driver`] for every action of a plan;
//! [`fake::FakeDriver`] records calls for fast tests, [`host::QemuDriver`] does the real
//! work (blob store, bundle import, qcow2 overlays, cloud-init seeds, QEMU).
//!
//! Every method must check before it acts: called twice, or after a crash half-way, it
//! converges instead of duplicating work.

use async_trait::async_trait;

use crate::desired::{BundleDesired, DesiredInstance};
use crate::input::clawspec::Image;
use crate::state::record::{ProcessId, Record, Runtime};

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

/// The effects the engine needs. Methods take the data they need and nothing more;
/// records are written by the executor, not by drivers.
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

    /// Stop the VM: graceful first, forced after a timeout. Stopping a stopped VM is fine.
    async fn stop(&self, rec: &Record) -> Result<(), DriverError>;

    /// Remove the instance folder (a stopped VM). Volumes are kept unless `purge`.
    async fn remove(&self, clawid: &str, purge: bool) -> Result<(), DriverError>;

    /// Probe the live process of `rec`. Cheap: no guest round trip.
    fn probe(&self, rec: &Record) -> Liveness;

    /// Read what the guest reported in the current boot of `rec`.
    fn guest_health(&self, rec: &Record) -> GuestHealth;
}
