//! Desired state: manifests → [`DesiredInstance`]s, with bundles identified and params
//! resolved. This is the only step of planning that reads files other than records.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::Arc;

use serde::{Deserialize, Serialize};

use crate::clawspec::ClawSpec;
use crate::manifest::{DesiredState, Port, SourceLoc, Volume};
use crate::secret::Secret;

/// Kind of `.clawbox`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum BundleKind {
    /// tar.gz with `clawspec.json`, optional `run.qcow2`, optional `claw/`.
    TarGz,
    /// A plain JSON clawspec whose images are all remote.
    Json,
}

/// A bundle as the planner sees it: identified by the SHA-256 of its bytes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BundleDesired {
    /// SHA-256 of the bundle file; also its folder name under `bundles/`.
    pub digest: String,
    /// Where to import it from (local path, or the blob of a downloaded URL bundle).
    pub source: PathBuf,
    /// Form of the bundle.
    pub kind: BundleKind,
    /// The validated clawspec it carries.
    pub clawspec: Arc<ClawSpec>,
    /// True when `bundles/<digest>/` is complete (nothing to import).
    pub imported: bool,
}

/// A param value after resolution (manifest literal/reference, default, prompt).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ResolvedParam {
    /// Param key.
    pub key: String,
    /// The value (redacted when printed).
    pub value: Secret,
    /// Whether the clawspec marks it secret.
    pub secret: bool,
    /// Keyed digest of the value (see [`crate::digest::keyed_digest`]).
    pub digest: String,
}

/// Resources whose change needs a restart, not a replace.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct Resources {
    /// vCPUs.
    pub cpus: u32,
    /// Memory in MiB.
    pub memory_mib: u64,
    /// Port forwards.
    pub ports: Vec<Port>,
}

/// What an instance was built from; a change here needs a replace.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct BuildSpec {
    /// Bundle digest.
    pub bundle: String,
    /// Param key → keyed digest of its value.
    pub params: BTreeMap<String, String>,
    /// Volumes.
    pub volumes: Vec<Volume>,
}

/// One instance the host should have.
#[derive(Debug, Clone)]
pub struct DesiredInstance {
    /// Instance name (`metadata.name`, or `name-i` for replicas).
    pub name: String,
    /// Its CLAWID (`<name>-<suffix>`).
    pub clawid: String,
    /// Manifest document it comes from.
    pub loc: SourceLoc,
    /// Running or stopped.
    pub state: DesiredState,
    /// The bundle (shared by every instance that names the same bytes).
    pub bundle: Arc<BundleDesired>,
    /// Build inputs (replace when changed).
    pub build: BuildSpec,
    /// Resources (restart when changed).
    pub resources: Resources,
    /// Resolved params, in clawspec order (required first).
    pub params: Vec<ResolvedParam>,
    /// Volumes.
    pub volumes: Vec<Volume>,
}
