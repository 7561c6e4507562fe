//! The manifest format (`apiVersion: clawfarm/v1`, `kind: Claw`): parse and validate YAML
//! into [`Claw`]s, no effects. Every problem is a [`Diagnostic`] with `FILE:LINE:COL`; all
//! files are checked in one run. See `rfc/002-manifest.md`.

use std::collections::BTreeMap;
use std::fmt;
use std::path::PathBuf;

use serde::{Deserialize, Serialize};

/// Where something is in a manifest file (1-based line and column; 0 when unknown).
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct SourceLoc {
    /// The manifest file.
    pub file: PathBuf,
    /// 1-based line.
    pub line: u64,
    /// 1-based column.
    pub col: u64,
}

impl fmt::Display for SourceLoc {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}:{}:{}", self.file.display(), self.line, self.col)
    }
}

/// One problem found in the input, printed as `FILE:LINE:COL: message`.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
pub struct Diagnostic {
    /// Where.
    pub loc: SourceLoc,
    /// What (never contains a secret value).
    pub message: String,
}

impl fmt::Display for Diagnostic {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {}", self.loc, self.message)
    }
}

/// Desired run state of an instance.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum DesiredState {
    /// The VM should be running (default).
    #[default]
    Running,
    /// The VM should exist but be stopped.
    Stopped,
}

/// Where the bundle comes from.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ClawboxRef {
    /// A local `.clawbox` file (absolute: resolved against the manifest's folder).
    Path(PathBuf),
    /// A remote bundle, pinned by digest.
    Url {
        /// `http(s)://` or `file://` URL.
        url: String,
        /// Lowercase 64-hex SHA-256 of the bundle bytes.
        sha256: String,
    },
}

/// A host port forward (always bound to 127.0.0.1).
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub struct Port {
    /// Host port on 127.0.0.1.
    pub host: u16,
    /// Guest port.
    pub guest: u16,
    /// Optional name; `gateway` marks the port whose answer is part of readiness.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
}

/// A named persistent volume shared into the guest.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub struct Volume {
    /// Volume name (DNS-label style), unique within the manifest.
    pub name: String,
    /// Absolute mount point in the guest.
    pub guest_path: String,
}

/// How a param gets its value.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ParamSource {
    /// A literal value in the manifest (refused for secret params).
    Literal(String),
    /// `{env: NAME}`: read from the applier's environment.
    Env(String),
    /// `{file: PATH}`: read from a file (absolute: resolved against the manifest's folder);
    /// one trailing newline is stripped.
    File(PathBuf),
}

/// One validated manifest document (`kind: Claw`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Claw {
    /// Where the document starts.
    pub loc: SourceLoc,
    /// `metadata.name` (DNS label, unique across the applied set).
    pub name: String,
    /// `spec.clawbox`.
    pub clawbox: ClawboxRef,
    /// Location of `spec.clawbox` (for errors found later, e.g. a bundle that will not load).
    pub clawbox_loc: SourceLoc,
    /// `spec.state`.
    pub state: DesiredState,
    /// `spec.replicas` (1 = a single instance named `name`; N > 1 = `name-0`..`name-(N-1)`).
    pub replicas: u32,
    /// `spec.cpus`.
    pub cpus: u32,
    /// `spec.memory` in MiB.
    pub memory_mib: u64,
    /// `spec.ports`.
    pub ports: Vec<Port>,
    /// `spec.params`, by key.
    pub params: BTreeMap<String, ParamSource>,
    /// Location of each `spec.params` entry (for errors found against the clawspec).
    pub param_locs: BTreeMap<String, SourceLoc>,
    /// `spec.volumes`.
    pub volumes: Vec<Volume>,
}

impl Claw {
    /// Instance names this document expands to (`replicas`).
    pub fn instance_names(&self) -> Vec<String> {
        if self.replicas <= 1 {
            vec![self.name.clone()]
        } else {
            (0..self.replicas)
                .map(|i| format!("{}-{}", self.name, i))
                .collect()
        }
    }
}

/// Default `spec.cpus`.
pub const DEFAULT_CPUS: u32 = 1;
/// Default `spec.memory` in MiB.
pub const DEFAULT_MEMORY_MIB: u64 = 1024;

// TEMP-STUB: replaced by the formats branch.
/// Result of [`load`].
#[derive(Debug, Default)]
pub struct LoadResult {
    /// Good documents.
    pub claws: Vec<Claw>,
    /// Problems.
    pub diagnostics: Vec<Diagnostic>,
    /// Files read.
    pub files: Vec<PathBuf>,
    /// Files with errors.
    pub bad_files: std::collections::BTreeSet<PathBuf>,
}
/// Load manifests.
pub fn load(_paths: &[PathBuf]) -> LoadResult {
    LoadResult::default()
}
/// Names in a broken file.
pub fn names_in_file_best_effort(_text: &str) -> Vec<String> {
    Vec::new()
}
/// JSON schema (stub).
pub fn json_schema() -> serde_json::Value {
    serde_json::json!({})
}
