//! The clawspec v3 format (seed 001): parse and validate, no effects.
//!
//! Parsing is strict: unknown fields are an error, and every error names the field path
//! (`bootstrap.params.required[0].key`). See `rfc/001-clawspec.md`.

use std::collections::HashMap;
use std::fmt;

use serde::{Deserialize, Serialize};

use crate::util::digest::is_sha256_hex;

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
#[serde(
    tag = "kind",
    rename_all = "snake_case",
    deny_unknown_fields,
    from = "RawValidator"
)]
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

/// How a validator is read: serde ignores unknown fields next to the tag of a unit variant,
/// so `non_empty` is read as an empty struct variant to refuse them too.
#[derive(Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case", deny_unknown_fields)]
enum RawValidator {
    NonEmpty {},
    Regex { pattern: String },
    Enum { values: Vec<String> },
}

impl From<RawValidator> for Validator {
    fn from(raw: RawValidator) -> Self {
        match raw {
            RawValidator::NonEmpty {} => Validator::NonEmpty,
            RawValidator::Regex { pattern } => Validator::Regex { pattern },
            RawValidator::Enum { values } => Validator::Enum { values },
        }
    }
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

/// Everything wrong with a clawspec: one `(field path, message)` per problem.
///
/// Serde-level problems (bad JSON, wrong type, unknown or missing field) stop at the first
/// one; semantic problems are all reported. `Display` prints one `path: message` per line.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ClawSpecError {
    /// `(field path, message)`, e.g. `("bootstrap.params.required[0].key", "must match …")`.
    /// The path is empty for problems with the document as a whole (e.g. invalid JSON).
    pub problems: Vec<(String, String)>,
}

impl ClawSpecError {
    fn one(path: impl Into<String>, message: impl Into<String>) -> Self {
        ClawSpecError {
            problems: vec![(path.into(), message.into())],
        }
    }
}

impl fmt::Display for ClawSpecError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, (path, message)) in self.problems.iter().enumerate() {
            if i > 0 {
                f.write_str("\n")?;
            }
            if path.is_empty() {
                f.write_str(message)?;
            } else {
                write!(f, "{path}: {message}")?;
            }
        }
        Ok(())
    }
}

impl std::error::Error for ClawSpecError {}

/// The message used when a param key has the wrong shape.
const KEY_RULE: &str = "must match [A-Za-z_][A-Za-z0-9_]*";

/// Whether `s` is an environment-variable style key: `[A-Za-z_][A-Za-z0-9_]*`.
pub fn is_env_key(s: &str) -> bool {
    let mut bytes = s.bytes();
    match bytes.next() {
        Some(b) if b.is_ascii_alphabetic() || b == b'_' => {}
        _ => return false,
    }
    bytes.all(|b| b.is_ascii_alphanumeric() || b == b'_')
}

/// Returned by [`ClawSpec::base`] on a spec that has no base image (never after validation).
static NO_IMAGE: Image = Image {
    name: String::new(),
    reference: String::new(),
    sha256: String::new(),
};

impl ClawSpec {
    /// Parse a clawspec from JSON bytes and [validate](Self::validate) it.
    ///
    /// A wrong or missing `schema_version` is reported on its own (the rest of a document
    /// of another version is not worth checking field by field). Otherwise the first
    /// structural problem (wrong type, missing or unknown field) is reported with its field
    /// path, or, when the structure is right, every semantic problem.
    pub fn parse(json: &[u8]) -> Result<ClawSpec, ClawSpecError> {
        // Editors that save a UTF-8 byte order mark still wrote JSON.
        let json = json.strip_prefix(&[0xef, 0xbb, 0xbf]).unwrap_or(json);
        let value: serde_json::Value = serde_json::from_slice(json).map_err(|e| {
            ClawSpecError::one(
                "",
                format!(
                    "invalid JSON: {} (line {}, column {})",
                    json_error_text(&e),
                    e.line(),
                    e.column()
                ),
            )
        })?;
        let Some(object) = value.as_object() else {
            return Err(ClawSpecError::one("", "a clawspec must be a JSON object"));
        };
        match object.get("schema_version") {
            None => {
                return Err(ClawSpecError::one(
                    "schema_version",
                    "required field is missing",
                ));
            }
            Some(v) if v.as_u64() == Some(u64::from(SCHEMA_VERSION)) => {}
            Some(serde_json::Value::Number(n)) => {
                return Err(ClawSpecError::one(
                    "schema_version",
                    format!("unsupported schema version {n} (this build reads {SCHEMA_VERSION})"),
                ));
            }
            Some(v) => {
                let found = match v {
                    serde_json::Value::String(s) => format!("the string {s:?}"),
                    serde_json::Value::Bool(b) => format!("the boolean {b}"),
                    serde_json::Value::Array(_) => "an array".to_owned(),
                    serde_json::Value::Object(_) => "an object".to_owned(),
                    _ => "null".to_owned(),
                };
                return Err(ClawSpecError::one(
                    "schema_version",
                    format!("must be the number {SCHEMA_VERSION}, found {found}"),
                ));
            }
        }
        let spec: ClawSpec = serde_path_to_error::deserialize(&value).map_err(|e| {
            let path = e.path().to_string();
            let message = e.into_inner().to_string();
            serde_problem(&path, &message)
        })?;
        spec.validate()?;
        Ok(spec)
    }

    /// Check every semantic rule of clawspec v3 and report all violations.
    pub fn validate(&self) -> Result<(), ClawSpecError> {
        let mut p = Problems::default();
        if self.schema_version != SCHEMA_VERSION {
            p.push(
                "schema_version",
                format!(
                    "unsupported schema version {} (this build reads {SCHEMA_VERSION})",
                    self.schema_version
                ),
            );
        }
        if self.name.trim().is_empty() {
            p.push("name", "must not be empty");
        }
        self.validate_images(&mut p);
        self.validate_bootstrap(&mut p);
        for (i, step) in self.provision.iter().enumerate() {
            if step.script.trim().is_empty() {
                p.push(format!("provision[{i}].script"), "must not be empty");
            }
            if let Some(shell) = &step.shell
                && shell.trim().is_empty()
            {
                p.push(
                    format!("provision[{i}].shell"),
                    "must not be empty (omit it for the default shell)",
                );
            }
        }
        p.into_result()
    }

    fn validate_images(&self, p: &mut Problems) {
        let mut base_at: Option<usize> = None;
        let mut run_at: Option<usize> = None;
        for (i, image) in self.image.iter().enumerate() {
            match image.name.as_str() {
                "base" | "run" => {
                    let seen = if image.name == "base" {
                        &mut base_at
                    } else {
                        &mut run_at
                    };
                    match seen {
                        Some(first) => p.push(
                            format!("image[{i}].name"),
                            format!(
                                "duplicate image name \"{}\" (already used by image[{first}])",
                                image.name
                            ),
                        ),
                        None => *seen = Some(i),
                    }
                }
                other => p.push(
                    format!("image[{i}].name"),
                    format!(
                        "unknown image name \"{}\" (expected \"base\" or \"run\")",
                        clip(other)
                    ),
                ),
            }
            if let Err(e) = crate::input::image_ref::parse_ref(&image.reference) {
                p.push(format!("image[{i}].ref"), e.reason);
            }
            if !is_sha256_hex(&image.sha256) {
                p.push(
                    format!("image[{i}].sha256"),
                    "must be 64 lowercase hex characters",
                );
            }
        }
        if base_at.is_none() {
            p.push("image", "must contain an image named \"base\"");
        }
    }

    fn validate_bootstrap(&self, p: &mut Problems) {
        let b = &self.bootstrap;
        if !BOOTSTRAP_IDS.contains(&b.id.as_str()) {
            p.push(
                "bootstrap.id",
                format!(
                    "unsupported bootstrap id \"{}\" (supported: {})",
                    clip(&b.id),
                    BOOTSTRAP_IDS.join(", ")
                ),
            );
        }
        if let Some(d) = &b.display_name
            && d.trim().is_empty()
        {
            p.push("bootstrap.display_name", "must not be empty when present");
        }
        if b.install_script.trim().is_empty() {
            p.push("bootstrap.install_script", "must not be empty");
        }
        if b.start_script.trim().is_empty() {
            p.push("bootstrap.start_script", "must not be empty");
        }
        let mut seen: HashMap<&str, String> = HashMap::new();
        let lists = [
            ("bootstrap.params.required", &b.params.required),
            ("bootstrap.params.optional", &b.params.optional),
        ];
        for (list, params) in lists {
            for (i, param) in params.iter().enumerate() {
                let at = format!("{list}[{i}]");
                validate_param(param, &at, p);
                if is_env_key(&param.key) {
                    if let Some(first) = seen.get(param.key.as_str()) {
                        p.push(
                            format!("{at}.key"),
                            format!(
                                "duplicate key \"{}\" (already defined at {first})",
                                param.key
                            ),
                        );
                    } else {
                        seen.insert(&param.key, at);
                    }
                }
            }
        }
    }

    /// The `base` image. Every validated spec has exactly one; on an unvalidated spec
    /// without one, an empty placeholder is returned.
    pub fn base(&self) -> &Image {
        self.image
            .iter()
            .find(|i| i.name == "base")
            .unwrap_or(&NO_IMAGE)
    }

    /// The `run` image, if the bundle has one.
    pub fn run(&self) -> Option<&Image> {
        self.image.iter().find(|i| i.name == "run")
    }

    /// Every param with whether it is required: required ones first, then optional ones,
    /// each in document order.
    pub fn params(&self) -> impl Iterator<Item = (&Param, bool)> {
        let p = &self.bootstrap.params;
        p.required
            .iter()
            .map(|x| (x, true))
            .chain(p.optional.iter().map(|x| (x, false)))
    }

    /// The param with this key (required or optional).
    pub fn param(&self, key: &str) -> Option<&Param> {
        self.params().map(|(p, _)| p).find(|p| p.key == key)
    }

    /// The spec as pretty-printed JSON (round-trips through [`ClawSpec::parse`]).
    pub fn to_json_pretty(&self) -> String {
        // Serializing these plain structs cannot fail (string keys only, no custom impls).
        serde_json::to_string_pretty(self).unwrap_or_default()
    }
}

fn validate_param(param: &Param, at: &str, p: &mut Problems) {
    if !is_env_key(&param.key) {
        p.push(format!("{at}.key"), KEY_RULE);
    }
    if param.label.trim().is_empty() {
        p.push(format!("{at}.label"), "must not be empty");
    }
    let mut validator_ok = true;
    if let Some(v) = &param.validator {
        match v {
            Validator::NonEmpty => {}
            Validator::Regex { pattern } => {
                if let Err(e) = compile_anchored(pattern) {
                    validator_ok = false;
                    p.push(
                        format!("{at}.validator.pattern"),
                        format!("invalid regular expression: {}", regex_problem(pattern, &e)),
                    );
                }
            }
            Validator::Enum { values } => {
                if values.is_empty() {
                    validator_ok = false;
                    p.push(format!("{at}.validator.values"), "must not be empty");
                }
            }
        }
    }
    if let Some(default) = &param.default {
        if param.secret {
            p.push(
                format!("{at}.default"),
                "a secret param must not have a default (secrets are never embedded in a clawspec)",
            );
        } else if validator_ok
            && let Some(v) = &param.validator
            && let Err(why) = v.check(default)
        {
            p.push(
                format!("{at}.default"),
                format!("the default does not pass the validator: {why}"),
            );
        }
    }
}

impl Validator {
    /// Check a value against this validator. The error message never contains the value
    /// (it may be a secret); it says what the value must be, e.g. `must be one of: a, b`.
    pub fn check(&self, value: &str) -> Result<(), String> {
        match self {
            Validator::NonEmpty => {
                if value.trim().is_empty() {
                    Err("must not be empty".to_owned())
                } else {
                    Ok(())
                }
            }
            Validator::Regex { pattern } => match compile_anchored(pattern) {
                Ok(re) if re.is_match(value) => Ok(()),
                Ok(_) => Err(format!("must match the pattern {pattern}")),
                Err(_) => {
                    Err("the validator's pattern is not a valid regular expression".to_owned())
                }
            },
            Validator::Enum { values } => {
                if values.iter().any(|v| v == value) {
                    Ok(())
                } else {
                    Err(format!("must be one of: {}", values.join(", ")))
                }
            }
        }
    }
}

/// The gist of a regex error, about the pattern as written (not our anchored wrapper).
fn regex_problem(pattern: &str, anchored_error: &regex::Error) -> String {
    let e = match regex::Regex::new(pattern) {
        Err(e) => e,
        Ok(_) => anchored_error.clone(),
    };
    match &e {
        regex::Error::Syntax(text) => text
            .lines()
            .find_map(|l| l.strip_prefix("error: "))
            .map_or_else(|| one_line(text), str::to_owned),
        regex::Error::CompiledTooBig(_) => "the compiled pattern is too big".to_owned(),
        other => one_line(&other.to_string()),
    }
}

/// Compile `pattern` so that it must match the whole value.
fn compile_anchored(pattern: &str) -> Result<regex::Regex, regex::Error> {
    regex::RegexBuilder::new(&format!("^(?:{pattern})$"))
        .size_limit(1 << 20)
        .build()
}

#[derive(Default)]
struct Problems(Vec<(String, String)>);

impl Problems {
    fn push(&mut self, path: impl Into<String>, message: impl Into<String>) {
        self.0.push((path.into(), message.into()));
    }
    fn into_result(self) -> Result<(), ClawSpecError> {
        if self.0.is_empty() {
            Ok(())
        } else {
            Err(ClawSpecError { problems: self.0 })
        }
    }
}

/// Turn a serde error (path + message) into a problem whose path names the field itself.
fn serde_problem(path: &str, message: &str) -> ClawSpecError {
    let parent = if path == "." { "" } else { path };
    let join = |field: &str| {
        if parent.is_empty() {
            field.to_owned()
        } else {
            format!("{parent}.{field}")
        }
    };
    // serde: "missing field `x`" / "unknown field `x`, expected one of `a`, `b`"
    if let Some(rest) = message.strip_prefix("missing field `")
        && let Some(field) = rest.split('`').next()
    {
        return ClawSpecError::one(join(field), "required field is missing");
    }
    if let Some(rest) = message.strip_prefix("unknown field `")
        && let Some((field, tail)) = rest.split_once('`')
    {
        let expected = tail.trim_start_matches(", ").replace('`', "");
        // serde_path_to_error already appends the unknown key to the path.
        let at = if parent.ends_with(field) {
            parent.to_owned()
        } else {
            join(field)
        };
        let msg = if expected.is_empty() {
            "unknown field".to_owned()
        } else {
            format!("unknown field ({expected})")
        };
        return ClawSpecError::one(at, msg);
    }
    ClawSpecError::one(parent, one_line(message))
}

/// serde_json's message without its trailing " at line L column C".
pub(crate) fn json_error_text(e: &serde_json::Error) -> String {
    let s = e.to_string();
    match s.rfind(" at line ") {
        Some(i) => s[..i].to_owned(),
        None => s,
    }
}

fn one_line(s: &str) -> String {
    s.split_whitespace().collect::<Vec<_>>().join(" ")
}

/// Shorten a user string echoed in a message.
fn clip(s: &str) -> String {
    const MAX: usize = 64;
    if s.chars().count() <= MAX {
        s.to_owned()
    } else {
        let mut out: String = s.chars().take(MAX).collect();
        out.push('…');
        out
    }
}
