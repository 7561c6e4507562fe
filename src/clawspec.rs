//! The clawspec v3 format (seed 001): parse and validate, no effects.
//!
//! Parsing is strict: unknown fields are an error, and every error names the field path
//! (`bootstrap.params.required[0].key`). See `rfc/001-clawspec.md`.

use serde::{Deserialize, Serialize};

/// The only schema version this build understands.
pub const SCHEMA_VERSION: u32 = 3;
/// Supported `bootstrap.id` values.
pub const BOOTSTRAP_IDS: &[&str] = &["openclaw"];

/// A validated clawspec.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ClawSpec {
    /// Always [`SCHEMA_VERSION`].
    pub schema_version: u32,
    /// Human name of the bundle.
    pub name: String,
    /// Images: exactly one `base`, at most one `run`.
    pub image: Vec<Image>,
    /// How the agent runtime is installed and started.
    pub bootstrap: Bootstrap,
    /// Steps run in order after bootstrap.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub provision: Vec<ProvisionStep>,
}

/// One `image[]` entry.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Image {
    /// `base` or `run`.
    pub name: String,
    /// `clawbox:///run.qcow2`, `http(s)://…`, `file://…` or a catalog name such as `ubuntu:24.04`.
    #[serde(rename = "ref")]
    pub reference: String,
    /// Lowercase 64-hex SHA-256 of the image bytes.
    pub sha256: String,
}

/// The `bootstrap` object.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Bootstrap {
    /// Bootstrap type; one of [`BOOTSTRAP_IDS`].
    pub id: String,
    /// User-facing label.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub display_name: Option<String>,
    /// Shell script installing the runtime (run once per instance).
    pub install_script: String,
    /// Shell script starting the runtime (run on every boot).
    pub start_script: String,
    /// Parameter schema.
    pub params: Params,
}

/// `bootstrap.params`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Params {
    /// Params that must be resolved before a VM is created.
    pub required: Vec<Param>,
    /// Params that may be left unset.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub optional: Vec<Param>,
}

/// One param definition.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Param {
    /// Environment-variable style key (`[A-Za-z_][A-Za-z0-9_]*`).
    pub key: String,
    /// Prompt label.
    pub label: String,
    /// Longer help text.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub description: Option<String>,
    /// Secret params are masked when typed and never stored or printed.
    pub secret: bool,
    /// Default value (must pass the validator).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub default: Option<String>,
    /// Input validator.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub validator: Option<Validator>,
}

/// `validator` of a param.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case", deny_unknown_fields)]
pub enum Validator {
    /// Value must contain a non-whitespace character.
    NonEmpty,
    /// Value must match `pattern` (whole value, anchored).
    Regex {
        /// The regular expression (Rust `regex` syntax).
        pattern: String,
    },
    /// Value must be one of `values`.
    Enum {
        /// Allowed values (non-empty).
        values: Vec<String>,
    },
}

/// One `provision[]` step.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ProvisionStep {
    /// Step name, shown in status and logs.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    /// Interpreter (default `bash`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub shell: Option<String>,
    /// Script body.
    pub script: String,
}

// TEMP-STUB: replaced by the formats branch.
impl ClawSpec {
    /// Param by key.
    pub fn param(&self, key: &str) -> Option<&Param> {
        self.params().map(|(p, _)| p).find(|p| p.key == key)
    }
    /// Params, required first.
    pub fn params(&self) -> impl Iterator<Item = (&Param, bool)> {
        let b = &self.bootstrap.params;
        b.required
            .iter()
            .map(|p| (p, true))
            .chain(b.optional.iter().map(|p| (p, false)))
    }
}
impl Validator {
    /// Check a value.
    pub fn check(&self, value: &str) -> Result<(), String> {
        match self {
            Validator::NonEmpty if value.trim().is_empty() => Err("must not be empty".into()),
            Validator::Enum { values } if !values.iter().any(|v| v == value) => {
                Err(format!("must be one of {}", values.join(", ")))
            }
            _ => Ok(()),
        }
    }
}
