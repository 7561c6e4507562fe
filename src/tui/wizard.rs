//! `clawfarm new`: write a clawspec v3, and optionally a manifest using it.
//!
//! Two front ends fill the same [`Draft`] and share every check:
//!
//! * the terminal wizard (the default): one [`prompt::read_line`] per field, each validated
//!   as it is typed;
//! * flags with `--non-interactive` (for scripts): the same checks, each error naming its
//!   flag.
//!
//! Whatever the front end, the result is checked with [`ClawSpec::parse`] (and the manifest
//! with [`manifest::parse_str`]) before anything is written. See
//! `rfc/007-params-and-wizard.md`.

use std::collections::HashSet;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::LazyLock;

use anyhow::{Context, anyhow, bail};
use clap::Args;
use crossterm::style::Stylize;

use crate::input::clawspec::{
    BOOTSTRAP_IDS, Bootstrap, ClawSpec, Image, Param, Params, ProvisionStep, SCHEMA_VERSION,
    Validator, is_env_key,
};
use crate::input::manifest;
use crate::tui::prompt::{self, PromptError, read_line};
use crate::util::digest::is_sha256_hex;

/// Options of `clawfarm new`.
///
/// Without `--non-interactive` the wizard asks for everything on the terminal; the content
/// flags (under "Non-interactive") are then refused.
#[derive(Debug, Clone, Args)]
pub struct NewArgs {
    /// Where to write the clawspec (`-`: stdout). Default: NAME.clawbox, NAME being the
    /// bundle name in lowercase (the wizard asks, with that default).
    #[arg(short = 'o', long = "out", value_name = "FILE")]
    pub out: Option<PathBuf>,
    /// Also write a `kind: Claw` manifest NAME.yaml next to the clawspec, for an instance
    /// called NAME (secret params as `{env: KEY}`, others with their defaults).
    #[arg(long, value_name = "NAME", value_parser = instance_name_arg)]
    pub manifest: Option<String>,
    /// Overwrite existing files.
    #[arg(long)]
    pub force: bool,
    /// Take everything from flags and never prompt (for scripts).
    #[arg(long)]
    pub non_interactive: bool,

    /// Bootstrap type [default: openclaw].
    #[arg(long, value_name = "ID", value_parser = bootstrap_arg, requires = "non_interactive", help_heading = "Non-interactive")]
    pub bootstrap: Option<String>,
    /// Bundle name.
    #[arg(long, value_name = "NAME", value_parser = bundle_name_arg, requires = "non_interactive", help_heading = "Non-interactive")]
    pub name: Option<String>,
    /// Display name of the bootstrap.
    #[arg(long, value_name = "TEXT", value_parser = display_name_arg, requires = "non_interactive", help_heading = "Non-interactive")]
    pub display_name: Option<String>,
    /// Base image: http(s)://…, file:///…, clawbox:///… or a catalog name (ubuntu:24.04).
    #[arg(long, value_name = "REF", value_parser = image_ref_arg, requires = "non_interactive", help_heading = "Non-interactive")]
    pub base_ref: Option<String>,
    /// SHA-256 of the base image (64 lowercase hex).
    #[arg(long, value_name = "HEX", value_parser = sha256_arg, requires = "non_interactive", help_heading = "Non-interactive")]
    pub base_sha256: Option<String>,
    /// Run image (with --run-sha256).
    #[arg(long, value_name = "REF", value_parser = image_ref_arg, requires = "non_interactive", help_heading = "Non-interactive")]
    pub run_ref: Option<String>,
    /// SHA-256 of the run image (with --run-ref).
    #[arg(long, value_name = "HEX", value_parser = sha256_arg, requires = "non_interactive", help_heading = "Non-interactive")]
    pub run_sha256: Option<String>,
    /// Install script: a file, or `@-` for the default template.
    #[arg(long, value_name = "FILE", value_parser = install_script_arg, requires = "non_interactive", help_heading = "Non-interactive")]
    pub install_script: Option<Script>,
    /// Start script: a file, or `@-` for the default template.
    #[arg(long, value_name = "FILE", value_parser = start_script_arg, requires = "non_interactive", help_heading = "Non-interactive")]
    pub start_script: Option<Script>,
    /// A required param: KEY:LABEL:SECRET[:VALIDATOR]. SECRET is `secret` or `plain`;
    /// VALIDATOR is `none`, `non_empty`, `regex=PATTERN` or `enum=A,B,…`. Write `\:` for a
    /// colon in LABEL. Repeatable, in order.
    #[arg(long = "param", value_name = "SPEC", value_parser = param_arg, requires = "non_interactive", help_heading = "Non-interactive")]
    pub params: Vec<Param>,
    /// An optional param, same form as --param. Repeatable, in order.
    #[arg(long = "optional-param", value_name = "SPEC", value_parser = param_arg, requires = "non_interactive", help_heading = "Non-interactive")]
    pub optional_params: Vec<Param>,
    /// Description of a param: KEY=TEXT.
    #[arg(
        long = "description",
        value_name = "KEY=TEXT",
        requires = "non_interactive",
        help_heading = "Non-interactive"
    )]
    pub descriptions: Vec<String>,
    /// Default of a (non-secret) param: KEY=VALUE; it must pass the param's validator.
    #[arg(
        long = "default",
        value_name = "KEY=VALUE",
        requires = "non_interactive",
        help_heading = "Non-interactive"
    )]
    pub defaults: Vec<String>,
    /// A provision step: NAME=FILE, or NAME:SHELL=FILE for another interpreter than bash.
    /// Repeatable, in order.
    #[arg(long = "provision", value_name = "NAME[:SHELL]=FILE", value_parser = provision_arg, requires = "non_interactive", help_heading = "Non-interactive")]
    pub provision: Vec<ProvisionStep>,
}

/// Examples shown by `clawfarm new --help`.
pub const EXAMPLES: &str = "Examples:
  clawfarm new                                  # the wizard, on a terminal
  clawfarm new --manifest demo-a                # ... and a manifest demo-a.yaml next to it
  clawfarm new --non-interactive --name demo \\
      --base-ref https://example.com/base.qcow2 --base-sha256 HEX \\
      --install-script @- --start-script start.sh \\
      --param 'OPENAI_API_KEY:OpenAI API key:secret:non_empty' \\
      --optional-param 'MODEL:Model:plain:enum=gpt-4o,o3' --default MODEL=gpt-4o \\
      --provision setup=setup.sh -o demo.clawbox --manifest demo-a";

/// A script given on the command line: where it came from and its text.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Script {
    /// `@-` or the file path, for messages.
    pub source: String,
    /// The script.
    pub text: String,
}

/// Default install script of the `openclaw` bootstrap (`@-`): Node.js 22 and OpenClaw,
/// and a gateway config listening on port 18789 of the guest's network.
pub const OPENCLAW_INSTALL_TEMPLATE: &str = r#"#!/bin/bash
# Install the OpenClaw runtime. Runs once per instance, as root.
# Params are in the environment of every script (e.g. "$OPENAI_API_KEY").
set -euxo pipefail
export DEBIAN_FRONTEND=noninteractive
apt-get update
apt-get install -y --no-install-recommends ca-certificates curl gnupg
# Node 22 from NodeSource (OpenClaw needs Node >= 22)
curl -fsSL https://deb.nodesource.com/setup_22.x | bash -
apt-get install -y nodejs
npm install -g openclaw
install -d /root/.openclaw
cat > /root/.openclaw/openclaw.json <<'JSON'
{ "gateway": { "mode": "local", "port": 18789, "bind": "lan" } }
JSON
"#;

/// Default start script of the `openclaw` bootstrap (`@-`): the gateway in the background,
/// with the params in its environment; returns once it listens (later phases run after it).
pub const OPENCLAW_START_TEMPLATE: &str = r#"#!/bin/bash
# Start the OpenClaw gateway. Runs on every boot, as root; returns once it listens.
set -euo pipefail
setsid nohup openclaw gateway --port 18789 >>/var/log/openclaw-gateway.log 2>&1 < /dev/null &
for i in $(seq 120); do (exec 3<>/dev/tcp/127.0.0.1/18789) 2>/dev/null && exit 0; sleep 1; done
echo 'openclaw gateway did not listen on 18789' >&2
exit 1
"#;

/// Which script a template is for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ScriptKind {
    /// `bootstrap.install_script`.
    Install,
    /// `bootstrap.start_script`.
    Start,
    /// A provision step (no template).
    Provision,
}

/// The `@-` template of a script of `bootstrap` id, if there is one.
pub fn template(bootstrap: &str, kind: ScriptKind) -> Option<&'static str> {
    match (bootstrap, kind) {
        ("openclaw", ScriptKind::Install) => Some(OPENCLAW_INSTALL_TEMPLATE),
        ("openclaw", ScriptKind::Start) => Some(OPENCLAW_START_TEMPLATE),
        _ => None,
    }
}

// ---------------------------------------------------------------------------------------
// Checks shared by the wizard and the flags. Messages never repeat the value.

/// A bootstrap id this build supports.
pub fn check_bootstrap(s: &str) -> Result<(), String> {
    if BOOTSTRAP_IDS.contains(&s) {
        Ok(())
    } else {
        Err(format!("must be one of: {}", BOOTSTRAP_IDS.join(", ")))
    }
}

/// A bundle name: not blank, one line, at most 100 characters.
pub fn check_bundle_name(s: &str) -> Result<(), String> {
    if s.trim().is_empty() {
        return Err("a bundle name is required".into());
    }
    if s.chars().any(char::is_control) {
        return Err("must not contain control characters".into());
    }
    if s.trim() != s {
        return Err("must not start or end with a space".into());
    }
    if s.chars().count() > 100 {
        return Err("must be at most 100 characters".into());
    }
    Ok(())
}

/// A display name: the same rules as a bundle name.
pub fn check_display_name(s: &str) -> Result<(), String> {
    check_bundle_name(s).map_err(|m| m.replace("a bundle name", "a display name"))
}

/// An image ref, in the one grammar of [`crate::input::image_ref`] (the importer's).
pub fn check_image_ref(s: &str) -> Result<(), String> {
    crate::input::image_ref::parse_ref(s)
        .map(|_| ())
        .map_err(|e| e.reason)
}

/// A lowercase 64-hex SHA-256.
pub fn check_sha256(s: &str) -> Result<(), String> {
    if is_sha256_hex(s) {
        return Ok(());
    }
    if s.is_empty() {
        return Err("a SHA-256 (64 lowercase hex characters) is required".into());
    }
    if s.bytes().any(|b| b.is_ascii_uppercase()) {
        return Err("must be lowercase hex".into());
    }
    if !s.bytes().all(|b| b.is_ascii_hexdigit()) {
        return Err("must be hex characters 0-9 a-f only".into());
    }
    Err(format!(
        "must be 64 lowercase hex characters ({} so far)",
        s.len()
    ))
}

/// A param key: environment-variable style and not in `taken`.
pub fn check_new_key(s: &str, taken: &[String]) -> Result<(), String> {
    if !is_env_key(s) {
        return Err("must match [A-Za-z_][A-Za-z0-9_]* (environment-variable style)".into());
    }
    if taken.iter().any(|k| k == s) {
        return Err(format!("{s} is already defined"));
    }
    Ok(())
}

/// A param label: not blank.
pub fn check_label(s: &str) -> Result<(), String> {
    if s.trim().is_empty() {
        Err("a label is required".into())
    } else if s.chars().any(char::is_control) {
        Err("must not contain control characters".into())
    } else {
        Ok(())
    }
}

/// A regex validator pattern: it must compile the way [`Validator::check`] compiles it.
pub fn check_pattern(s: &str) -> Result<(), String> {
    if s.is_empty() {
        return Err("a pattern is required".into());
    }
    // `Validator::check` reports a pattern that does not compile without saying why; ask
    // the regex crate directly for the reason, with the same anchoring and size limit.
    match regex::RegexBuilder::new(&format!("^(?:{s})$"))
        .size_limit(1 << 20)
        .build()
    {
        Ok(_) => Ok(()),
        Err(e) => Err(format!(
            "invalid regular expression: {}",
            e.to_string()
                .lines()
                .last()
                .unwrap_or("")
                .trim_start_matches("error: ")
        )),
    }
}

/// Enum values, comma-separated: each non-empty after trimming, no duplicates.
pub fn parse_enum_values(s: &str) -> Result<Vec<String>, String> {
    if s.trim().is_empty() {
        return Err("at least one value is required (comma-separated, e.g. fast,slow)".into());
    }
    let mut out: Vec<String> = Vec::new();
    for v in s.split(',').map(str::trim) {
        if v.is_empty() {
            return Err("empty value in the list (comma-separated, e.g. fast,slow)".into());
        }
        if out.iter().any(|o| o == v) {
            return Err(format!("duplicate value {v}"));
        }
        out.push(v.to_owned());
    }
    Ok(out)
}

/// A validator kind as typed: `none`, `non_empty`, `regex` or `enum`.
pub fn check_validator_kind(s: &str) -> Result<(), String> {
    match s {
        "none" | "non_empty" | "regex" | "enum" => Ok(()),
        _ => Err("must be one of: none, non_empty, regex, enum".into()),
    }
}

/// An instance name for `--manifest`: a DNS label of at most
/// [`manifest::MAX_NAME_LEN`] characters.
pub fn check_instance_name(s: &str) -> Result<(), String> {
    let ok = manifest::is_dns_label(s, manifest::MAX_NAME_LEN);
    if ok {
        Ok(())
    } else {
        Err(format!(
            "must be a DNS label: a-z, 0-9 and -, not starting or ending with -, at most {} \
             characters",
            manifest::MAX_NAME_LEN
        ))
    }
}

/// The script a wizard answer or a flag value stands for, given as text.
///
/// `@-` is the template of `kind` (when the bootstrap has one); `@PATH` reads a file
/// (`~/` is the home folder). With `inline`, anything else is the script itself (one line);
/// without it (flags), anything else is a path.
pub fn resolve_script(
    input: &str,
    bootstrap: &str,
    kind: ScriptKind,
    inline: bool,
) -> Result<Script, String> {
    if input == "@-" {
        return template(bootstrap, kind)
            .map(|t| Script {
                source: "@-".into(),
                text: t.to_owned(),
            })
            .ok_or_else(|| "there is no default template for this script".to_owned());
    }
    let path = match input.strip_prefix('@') {
        Some(p) => p,
        None if !inline => input,
        None => {
            return if input.trim().is_empty() {
                Err("a script is required".into())
            } else {
                Ok(Script {
                    source: "inline".into(),
                    text: input.to_owned(),
                })
            };
        }
    };
    if path.is_empty() {
        return Err("a file name is required after @".into());
    }
    let path = expand_home(path);
    let meta =
        std::fs::metadata(&path).map_err(|e| format!("cannot read {path}: {}", io_why(&e)))?;
    if !meta.is_file() {
        return Err(format!("{path} is not a file"));
    }
    if meta.len() > 1 << 20 {
        return Err(format!("{path} is larger than 1 MiB"));
    }
    let text = std::fs::read_to_string(&path)
        .map_err(|e| format!("cannot read {path}: {}", io_why(&e)))?;
    if text.trim().is_empty() {
        return Err(format!("{path} is empty"));
    }
    Ok(Script { source: path, text })
}

fn io_why(e: &std::io::Error) -> String {
    match e.kind() {
        std::io::ErrorKind::NotFound => "no such file".into(),
        std::io::ErrorKind::PermissionDenied => "permission denied".into(),
        std::io::ErrorKind::InvalidData => "not UTF-8 text".into(),
        _ => e.to_string(),
    }
}

fn expand_home(p: &str) -> String {
    match (p.strip_prefix("~/"), std::env::var("HOME")) {
        (Some(rest), Ok(home)) => format!("{home}/{rest}"),
        _ => p.to_owned(),
    }
}

/// A param from `KEY:LABEL:SECRET[:VALIDATOR]` (the `--param` form).
pub fn parse_param_spec(s: &str) -> Result<Param, String> {
    let (key, rest) = s
        .split_once(':')
        .ok_or("expected KEY:LABEL:SECRET[:VALIDATOR]")?;
    check_new_key(key, &[]).map_err(|m| format!("key: {m}"))?;
    // LABEL runs to the first colon not written `\:`.
    let mut label = String::new();
    let mut chars = rest.char_indices();
    let mut after_label = None;
    while let Some((i, c)) = chars.next() {
        match c {
            '\\' if rest[i + 1..].starts_with(':') => {
                label.push(':');
                chars.next();
            }
            ':' => {
                after_label = Some(&rest[i + 1..]);
                break;
            }
            c => label.push(c),
        }
    }
    let after_label =
        after_label.ok_or("expected KEY:LABEL:SECRET[:VALIDATOR] (SECRET is secret or plain)")?;
    check_label(&label).map_err(|m| format!("label: {m}"))?;
    let (secret, validator) = match after_label.split_once(':') {
        Some((s, v)) => (s, Some(v)),
        None => (after_label, None),
    };
    let secret = match secret.to_ascii_lowercase().as_str() {
        "secret" | "true" | "yes" | "y" => true,
        "plain" | "false" | "no" | "n" => false,
        _ => return Err("SECRET must be secret or plain".into()),
    };
    let validator = match validator {
        None => None,
        Some(v) => parse_validator_spec(v)?,
    };
    Ok(Param {
        key: key.to_owned(),
        label,
        description: None,
        secret,
        default: None,
        validator,
    })
}

/// `none`, `non_empty`, `regex=PATTERN` or `enum=A,B,…` (`:` may replace `=`).
pub fn parse_validator_spec(v: &str) -> Result<Option<Validator>, String> {
    let (kind, arg) = match v.find(['=', ':']) {
        Some(i) => (&v[..i], Some(&v[i + 1..])),
        None => (v, None),
    };
    match (kind, arg) {
        ("none", None) => Ok(None),
        ("non_empty", None) => Ok(Some(Validator::NonEmpty)),
        ("regex", Some(p)) => {
            check_pattern(p).map_err(|m| format!("validator: {m}"))?;
            Ok(Some(Validator::Regex {
                pattern: p.to_owned(),
            }))
        }
        ("enum", Some(vals)) => Ok(Some(Validator::Enum {
            values: parse_enum_values(vals).map_err(|m| format!("validator: {m}"))?,
        })),
        _ => Err("VALIDATOR must be none, non_empty, regex=PATTERN or enum=A,B,...".into()),
    }
}

fn bootstrap_arg(s: &str) -> Result<String, String> {
    check_bootstrap(s).map(|()| s.to_owned())
}
fn bundle_name_arg(s: &str) -> Result<String, String> {
    check_bundle_name(s).map(|()| s.to_owned())
}
fn display_name_arg(s: &str) -> Result<String, String> {
    check_display_name(s).map(|()| s.to_owned())
}
fn image_ref_arg(s: &str) -> Result<String, String> {
    check_image_ref(s).map(|()| s.to_owned())
}
fn sha256_arg(s: &str) -> Result<String, String> {
    check_sha256(s).map(|()| s.to_owned())
}
fn instance_name_arg(s: &str) -> Result<String, String> {
    check_instance_name(s).map(|()| s.to_owned())
}
fn install_script_arg(s: &str) -> Result<Script, String> {
    // Only openclaw has templates today; the bootstrap is checked separately.
    resolve_script(s, "openclaw", ScriptKind::Install, false)
}
fn start_script_arg(s: &str) -> Result<Script, String> {
    resolve_script(s, "openclaw", ScriptKind::Start, false)
}
fn param_arg(s: &str) -> Result<Param, String> {
    parse_param_spec(s)
}
fn provision_arg(s: &str) -> Result<ProvisionStep, String> {
    let (head, file) = s
        .split_once('=')
        .ok_or("expected NAME=FILE or NAME:SHELL=FILE")?;
    let (name, shell) = match head.split_once(':') {
        Some((n, sh)) => (n, Some(sh)),
        None => (head, None),
    };
    if name.trim().is_empty() {
        return Err("NAME must not be empty".into());
    }
    if let Some(sh) = shell
        && sh.trim().is_empty()
    {
        return Err("SHELL must not be empty (leave it out for bash)".into());
    }
    let script = resolve_script(file, "", ScriptKind::Provision, false)?;
    Ok(ProvisionStep {
        name: Some(name.to_owned()),
        shell: shell.map(str::to_owned),
        script: script.text,
    })
}

// ---------------------------------------------------------------------------------------
// The draft both front ends fill.

/// Everything `clawfarm new` collects, before it becomes a [`ClawSpec`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Draft {
    /// `bootstrap.id`.
    pub bootstrap: String,
    /// `name`.
    pub name: String,
    /// `bootstrap.display_name`.
    pub display_name: Option<String>,
    /// The `base` image `(ref, sha256)`.
    pub base: (String, String),
    /// The `run` image, if any.
    pub run: Option<(String, String)>,
    /// `bootstrap.install_script`.
    pub install_script: String,
    /// `bootstrap.start_script`.
    pub start_script: String,
    /// `bootstrap.params.required`.
    pub required: Vec<Param>,
    /// `bootstrap.params.optional`.
    pub optional: Vec<Param>,
    /// `provision`.
    pub provision: Vec<ProvisionStep>,
}

impl Draft {
    /// The clawspec, checked by [`ClawSpec::parse`] on its own JSON.
    pub fn to_spec(&self) -> anyhow::Result<ClawSpec> {
        let mut image = vec![Image {
            name: "base".into(),
            reference: self.base.0.clone(),
            sha256: self.base.1.clone(),
        }];
        if let Some((r, s)) = &self.run {
            image.push(Image {
                name: "run".into(),
                reference: r.clone(),
                sha256: s.clone(),
            });
        }
        let spec = ClawSpec {
            schema_version: SCHEMA_VERSION,
            name: self.name.clone(),
            image,
            bootstrap: Bootstrap {
                id: self.bootstrap.clone(),
                display_name: self.display_name.clone(),
                install_script: self.install_script.clone(),
                start_script: self.start_script.clone(),
                params: Params {
                    required: self.required.clone(),
                    optional: self.optional.clone(),
                },
            },
            provision: self.provision.clone(),
        };
        let parsed = ClawSpec::parse(spec.to_json_pretty().as_bytes())
            .map_err(|e| anyhow!("the clawspec would be invalid:\n{e}"))?;
        Ok(parsed)
    }
}

/// The text `clawfarm new` writes for `spec`: pretty JSON and a final newline.
pub fn spec_text(spec: &ClawSpec) -> String {
    let mut s = spec.to_json_pretty();
    s.push('\n');
    s
}

/// A `kind: Claw` manifest for an instance `name` of the clawspec at `clawbox` (a path
/// relative to the manifest's folder, or absolute).
///
/// Secret params are `{env: KEY}` references, as are required non-secret params without
/// a default; non-secret params with a default are written with it; optional params
/// without a default are left as comments.
pub fn manifest_text(spec: &ClawSpec, name: &str, clawbox: &str) -> String {
    let mut out = format!(
        "# Written by `clawfarm new`. Check it with: clawfarm validate -f {name}.yaml\n\
         apiVersion: {}\nkind: {}\nmetadata:\n  name: {name}\nspec:\n  clawbox: {}\n",
        manifest::API_VERSION,
        manifest::KIND,
        yaml_str(clawbox)
    );
    let mut lines = Vec::new();
    for (p, required) in spec.params() {
        let k = &p.key;
        if p.secret {
            lines.push(format!(
                "    {k}: {{env: {k}}}  # secret: set {k} in the environment of clawfarm apply"
            ));
        } else if let Some(d) = &p.default {
            lines.push(format!("    {k}: {}", yaml_str(d)));
        } else if required {
            lines.push(format!(
                "    {k}: {{env: {k}}}  # required: set {k} in the environment, or write the value"
            ));
        } else {
            lines.push(format!("    # {k}: <value>  # optional"));
        }
    }
    if lines.iter().any(|l| !l.trim_start().starts_with('#')) {
        out.push_str("  params:\n");
        for l in lines {
            out.push_str(&l);
            out.push('\n');
        }
    } else if !lines.is_empty() {
        out.push_str("  # params:\n");
        for l in lines {
            out.push_str(&l);
            out.push('\n');
        }
    }
    out
}

/// A YAML scalar for `s`: plain when that reads back as the same string, else a
/// double-quoted (JSON-escaped, which YAML reads) string.
fn yaml_str(s: &str) -> String {
    static PLAIN: LazyLock<regex::Regex> = LazyLock::new(|| {
        regex::Regex::new(r"^[A-Za-z0-9_./][A-Za-z0-9._/+-]*$").expect("plain scalar pattern")
    });
    let special = ["null", "true", "false", "yes", "no", "on", "off", "y", "n"]
        .iter()
        .any(|w| s.eq_ignore_ascii_case(w));
    if PLAIN.is_match(s) && !special {
        s.to_owned()
    } else {
        serde_json::to_string(s).unwrap_or_default()
    }
}

/// A lowercase file-name stem for a bundle name (`Demo OpenClaw` → `demo-openclaw`).
pub fn slug(name: &str) -> String {
    let mut out = String::new();
    for c in name.chars() {
        if c.is_ascii_alphanumeric() {
            out.push(c.to_ascii_lowercase());
        } else if !out.ends_with('-') {
            out.push('-');
        }
    }
    let out = out.trim_matches('-').to_owned();
    if out.is_empty() {
        "clawspec".into()
    } else {
        out
    }
}

// ---------------------------------------------------------------------------------------
// Flags.

/// The draft the `--non-interactive` flags describe; every error names its flag.
pub fn draft_from_flags(a: &NewArgs) -> anyhow::Result<Draft> {
    fn need<T: Clone>(v: &Option<T>, flag: &str) -> anyhow::Result<T> {
        v.clone()
            .ok_or_else(|| anyhow!("{flag} is required with --non-interactive"))
    }
    let bootstrap = a.bootstrap.clone().unwrap_or_else(|| "openclaw".into());
    let name = need(&a.name, "--name")?;
    let base = (
        need(&a.base_ref, "--base-ref")?,
        need(&a.base_sha256, "--base-sha256")?,
    );
    let run = match (&a.run_ref, &a.run_sha256) {
        (Some(r), Some(s)) => Some((r.clone(), s.clone())),
        (None, None) => None,
        (Some(_), None) => bail!("--run-ref needs --run-sha256"),
        (None, Some(_)) => bail!("--run-sha256 needs --run-ref"),
    };
    let install = need(&a.install_script, "--install-script")?;
    let start = need(&a.start_script, "--start-script")?;
    for (s, flag, kind) in [
        (&install, "--install-script", ScriptKind::Install),
        (&start, "--start-script", ScriptKind::Start),
    ] {
        if s.source == "@-" && template(&bootstrap, kind).is_none() {
            bail!("{flag}: bootstrap {bootstrap} has no default template");
        }
    }
    let mut taken: Vec<String> = Vec::new();
    let mut required = Vec::new();
    let mut optional = Vec::new();
    for (list, flag, out) in [
        (&a.params, "--param", &mut required),
        (&a.optional_params, "--optional-param", &mut optional),
    ] {
        for p in list {
            if taken.contains(&p.key) {
                bail!("{flag} {}: key {} is defined twice", p.key, p.key);
            }
            taken.push(p.key.clone());
            out.push(p.clone());
        }
    }
    let mut seen_desc = HashSet::new();
    for d in &a.descriptions {
        let (key, text) = d
            .split_once('=')
            .ok_or_else(|| anyhow!("--description: expected KEY=TEXT"))?;
        if !seen_desc.insert(key.to_owned()) {
            bail!("--description {key}: given twice");
        }
        let p = param_mut(&mut required, &mut optional, key).ok_or_else(|| {
            anyhow!("--description {key}: no --param or --optional-param defines {key}")
        })?;
        if text.trim().is_empty() {
            bail!("--description {key}: the text is empty");
        }
        p.description = Some(text.to_owned());
    }
    let mut seen_default = HashSet::new();
    for d in &a.defaults {
        // The value is never shown in an error: it may be a secret given by mistake.
        let (key, value) = d
            .split_once('=')
            .ok_or_else(|| anyhow!("--default: expected KEY=VALUE (the value is not shown)"))?;
        if !seen_default.insert(key.to_owned()) {
            bail!("--default {key}: given twice");
        }
        let p = param_mut(&mut required, &mut optional, key).ok_or_else(|| {
            anyhow!("--default {key}: no --param or --optional-param defines {key}")
        })?;
        if p.secret {
            bail!("--default {key}: {key} is secret, and a secret param has no default");
        }
        if value.is_empty() {
            bail!("--default {key}: the value is empty (leave --default out instead)");
        }
        if let Some(v) = &p.validator
            && let Err(m) = v.check(value)
        {
            bail!("--default {key}: the default {m}");
        }
        p.default = Some(value.to_owned());
    }
    Ok(Draft {
        bootstrap,
        name,
        display_name: a.display_name.clone(),
        base,
        run,
        install_script: install.text,
        start_script: start.text,
        required,
        optional,
        provision: a.provision.clone(),
    })
}

fn param_mut<'p>(
    required: &'p mut [Param],
    optional: &'p mut [Param],
    key: &str,
) -> Option<&'p mut Param> {
    required
        .iter_mut()
        .chain(optional.iter_mut())
        .find(|p| p.key == key)
}

// ---------------------------------------------------------------------------------------
// The wizard.

/// Ask one field that must be answered (the validator refuses an empty answer).
fn ask(
    label: &str,
    help: Option<&str>,
    check: impl Fn(&str) -> Result<(), String>,
    default: Option<&str>,
) -> Result<String, PromptError> {
    let required = |s: &str| {
        if s.is_empty() {
            check(s).and(Err("a value is required".to_owned()))
        } else {
            check(s)
        }
    };
    loop {
        // Empty is refused, so only Ctrl-C ends the prompt without a value.
        if let Some(v) = read_line(label, help, false, required, default)? {
            return Ok(v);
        }
    }
}

/// Ask for the next item of a list; an empty answer ends the list (`(done)`).
fn ask_next(
    label: &str,
    help: Option<&str>,
    check: impl Fn(&str) -> Result<(), String>,
) -> Result<Option<String>, PromptError> {
    prompt::Field {
        label,
        help,
        secret: false,
        default: None,
        skip_note: "(done)",
    }
    .read(|s| if s.is_empty() { Ok(()) } else { check(s) })
}

/// Ask a field that may be skipped (Esc or an empty Enter).
fn ask_optional(
    label: &str,
    help: Option<&str>,
    check: impl Fn(&str) -> Result<(), String>,
) -> Result<Option<String>, PromptError> {
    read_line(
        label,
        help,
        false,
        |s| if s.is_empty() { Ok(()) } else { check(s) },
        None,
    )
}

fn section(title: &str) {
    eprintln!("\n{}", title.bold());
}

const SCRIPT_HELP: &str = "@- the default template, @FILE to read a file, << to type several \
                           lines (end with a line holding only .), or a one-line command";
const SCRIPT_HELP_NO_TEMPLATE: &str = "@FILE to read a file, << to type several lines (end with a line holding only .), \
     or a one-line command";

/// Ask for a script: `@-`, `@FILE`, `<<` (lines until `.`) or one line.
fn ask_script(label: &str, bootstrap: &str, kind: ScriptKind) -> Result<String, PromptError> {
    let has_template = template(bootstrap, kind).is_some();
    let help = if has_template {
        SCRIPT_HELP
    } else {
        SCRIPT_HELP_NO_TEMPLATE
    };
    let check = |s: &str| {
        if s == "<<" {
            Ok(())
        } else {
            resolve_script(s, bootstrap, kind, true).map(|_| ())
        }
    };
    loop {
        let answer = ask(label, Some(help), check, has_template.then_some("@-"))?;
        if answer == "<<" {
            break;
        }
        // Checked as typed; a file can still vanish before it is read: ask again.
        match resolve_script(&answer, bootstrap, kind, true) {
            Ok(s) => return Ok(s.text),
            Err(m) => eprintln!("{}", format!("  ! {m}").red()),
        }
    }
    eprintln!(
        "{}",
        "  type the script; a line holding only . ends it".dim()
    );
    let mut lines: Vec<String> = Vec::new();
    loop {
        let blank = lines.iter().all(|l| l.trim().is_empty());
        let check = |s: &str| {
            if s == "." && blank {
                Err("the script is empty so far; type at least one line".to_owned())
            } else {
                Ok(())
            }
        };
        match read_line("  | ", None, false, check, None)? {
            Some(l) if l == "." => break,
            Some(l) => lines.push(l),
            None => lines.push(String::new()),
        }
    }
    let mut text = lines.join("\n");
    text.push('\n');
    Ok(text)
}

fn ask_image(what: &str, default_ref: Option<&str>) -> Result<(String, String), PromptError> {
    let r = ask(
        &format!("{what} image ref"),
        Some(
            "http(s)://URL, file:///PATH, clawbox:///PATH (inside the bundle) or a catalog \
             name such as ubuntu:24.04",
        ),
        check_image_ref,
        default_ref,
    )?;
    let s = ask(
        &format!("{what} image sha256"),
        Some("64 lowercase hex characters (sha256sum IMAGE)"),
        check_sha256,
        None,
    )?;
    Ok((r, s))
}

fn guess_secret(key: &str) -> bool {
    let k = key.to_ascii_uppercase();
    ["KEY", "TOKEN", "SECRET", "PASSWORD", "PASSWD", "CREDENTIAL"]
        .iter()
        .any(|w| k.contains(w))
}

fn ask_params(required: bool, taken: &mut Vec<String>) -> Result<Vec<Param>, PromptError> {
    let kind = if required { "Required" } else { "Optional" };
    section(&format!(
        "{kind} params{}",
        if required {
            " (an instance cannot start without them)"
        } else {
            " (may be left unset)"
        }
    ));
    let mut out = Vec::new();
    loop {
        let n = out.len() + 1;
        let help = (n == 1).then_some(
            "environment-variable style, e.g. OPENAI_API_KEY; an empty Enter ends the list",
        );
        let Some(key) = ask_next(&format!("{kind} param #{n} key"), help, |s| {
            check_new_key(s, taken)
        })?
        else {
            break;
        };
        let label = ask(
            "  Label",
            Some("shown when the value is asked for"),
            check_label,
            None,
        )?;
        let description = ask_optional("  Description (optional)", None, |_| Ok(()))?;
        let secret = prompt::confirm(
            "  Secret?",
            Some("secret values are masked when typed and never stored in a clawspec"),
            guess_secret(&key),
        )?;
        let kind_answer = ask(
            "  Validator",
            Some("none, non_empty, regex or enum"),
            check_validator_kind,
            Some("none"),
        )?;
        let validator = match kind_answer.as_str() {
            "non_empty" => Some(Validator::NonEmpty),
            "regex" => Some(Validator::Regex {
                pattern: ask(
                    "  Pattern",
                    Some("matched against the whole value (Rust regex syntax)"),
                    check_pattern,
                    None,
                )?,
            }),
            "enum" => Some(Validator::Enum {
                values: parse_enum_values(&ask(
                    "  Values",
                    Some("comma-separated, e.g. fast,slow"),
                    |s| parse_enum_values(s).map(|_| ()),
                    None,
                )?)
                .unwrap_or_default(),
            }),
            _ => None,
        };
        let default = if secret {
            None
        } else {
            ask_optional("  Default (optional)", None, |s| match &validator {
                Some(v) => v.check(s),
                None => Ok(()),
            })?
        };
        taken.push(key.clone());
        out.push(Param {
            key,
            label,
            description,
            secret,
            default,
            validator,
        });
    }
    Ok(out)
}

fn ask_provision() -> Result<Vec<ProvisionStep>, PromptError> {
    section("Provision steps (run in order after bootstrap, once per instance)");
    let mut out = Vec::new();
    loop {
        let n = out.len() + 1;
        let help =
            (n == 1).then_some("a name shown in status and logs; an empty Enter ends the list");
        let Some(name) = ask_next(&format!("Provision step #{n} name"), help, |s| {
            if s.trim().is_empty() {
                Err("must not be blank".into())
            } else {
                Ok(())
            }
        })?
        else {
            break;
        };
        let shell = ask_optional(
            "  Shell (optional)",
            Some("the interpreter; empty for bash"),
            |s| {
                if s.trim().is_empty() {
                    Err("must not be blank".into())
                } else {
                    Ok(())
                }
            },
        )?;
        let script = ask_script("  Script", "", ScriptKind::Provision)?;
        out.push(ProvisionStep {
            name: Some(name),
            shell,
            script,
        });
    }
    Ok(out)
}

/// Ask for the whole draft on the terminal.
pub fn draft_from_terminal() -> Result<Draft, PromptError> {
    eprintln!(
        "{}",
        "clawfarm new: writes a clawspec v3. Ctrl-C aborts; nothing is written until the end."
            .bold()
    );
    section("Bundle");
    let bootstrap = ask(
        "Bootstrap type",
        Some(&format!("one of: {}", BOOTSTRAP_IDS.join(", "))),
        check_bootstrap,
        Some(BOOTSTRAP_IDS[0]),
    )?;
    let name = ask(
        "Bundle name",
        Some("a human name for the bundle, e.g. demo-openclaw"),
        check_bundle_name,
        None,
    )?;
    let display_name = ask_optional(
        "Display name (optional)",
        Some("a user-facing label of the runtime, e.g. OpenClaw"),
        check_display_name,
    )?;
    section("Images");
    let base = ask_image("Base", None)?;
    let run = if prompt::confirm(
        "Add a run image?",
        Some("a prepared disk the VM boots from instead of the base, e.g. clawbox:///run.qcow2"),
        false,
    )? {
        Some(ask_image("Run", Some("clawbox:///run.qcow2"))?)
    } else {
        None
    };
    section("Bootstrap scripts (params are in the environment of every script)");
    let install_script = ask_script("Install script", &bootstrap, ScriptKind::Install)?;
    let start_script = ask_script("Start script", &bootstrap, ScriptKind::Start)?;
    let mut taken = Vec::new();
    let required = ask_params(true, &mut taken)?;
    let optional = ask_params(false, &mut taken)?;
    let provision = ask_provision()?;
    Ok(Draft {
        bootstrap,
        name,
        display_name,
        base,
        run,
        install_script,
        start_script,
        required,
        optional,
        provision,
    })
}

// ---------------------------------------------------------------------------------------
// Output.

/// Where a file may be written: its folder exists, it is not a folder, and it does not
/// exist unless `force`.
pub fn check_out_path(p: &Path, force: bool) -> Result<(), String> {
    if p.as_os_str().is_empty() {
        return Err("a file name is required".into());
    }
    if p.is_dir() {
        return Err(format!("{} is a folder", p.display()));
    }
    let dir = parent_dir(p);
    if !dir.is_dir() {
        return Err(format!("folder {} does not exist", dir.display()));
    }
    if p.exists() && !force {
        return Err(format!(
            "{} exists (choose another name, or run with --force)",
            p.display()
        ));
    }
    Ok(())
}

fn parent_dir(p: &Path) -> PathBuf {
    match p.parent() {
        Some(d) if !d.as_os_str().is_empty() => d.to_owned(),
        _ => PathBuf::from("."),
    }
}

fn manifest_path(out: &Path, name: &str) -> PathBuf {
    let dir = match out.parent() {
        Some(d) if !d.as_os_str().is_empty() => d.to_owned(),
        _ => PathBuf::new(),
    };
    dir.join(format!("{name}.yaml"))
}

fn check_manifest_name(name: &str, out: &Path, force: bool) -> Result<(), String> {
    check_instance_name(name)?;
    let p = manifest_path(out, name);
    if p.exists() && !force {
        return Err(format!(
            "{} exists (choose another name, or run with --force)",
            p.display()
        ));
    }
    Ok(())
}

/// Run `clawfarm new`; returns the exit code.
pub fn run(args: &NewArgs) -> anyhow::Result<u8> {
    let to_stdout = args.out.as_deref() == Some(Path::new("-"));
    if to_stdout && args.manifest.is_some() {
        bail!("--manifest needs the clawspec in a file (not -o -)");
    }
    if let Some(out) = &args.out
        && !to_stdout
    {
        check_out_path(out, args.force).map_err(|m| anyhow!("--out: {m}"))?;
        if let Some(n) = &args.manifest {
            check_manifest_name(n, out, args.force).map_err(|m| anyhow!("--manifest: {m}"))?;
        }
    }
    let (spec, out, manifest_name) = if args.non_interactive {
        let spec = draft_from_flags(args)?.to_spec()?;
        let out = match &args.out {
            Some(o) => o.clone(),
            None => {
                let o = PathBuf::from(format!("{}.clawbox", slug(&spec.name)));
                check_out_path(&o, args.force).map_err(|m| anyhow!("--out: {m}"))?;
                o
            }
        };
        if let Some(n) = &args.manifest {
            check_manifest_name(n, &out, args.force).map_err(|m| anyhow!("--manifest: {m}"))?;
        }
        (spec, out, args.manifest.clone())
    } else {
        if !prompt::is_interactive() {
            bail!(
                "clawfarm new asks its questions on a terminal (stdin and stderr); for scripts \
                 use --non-interactive with flags (see clawfarm new --help)"
            );
        }
        interactive(args)?
    };
    write_outputs(&spec, &out, manifest_name.as_deref(), args.force)?;
    Ok(0)
}

fn prompt_error(e: PromptError) -> anyhow::Error {
    match e {
        PromptError::Interrupted => anyhow!("interrupted; nothing was written"),
        other => anyhow!(other),
    }
}

fn interactive(args: &NewArgs) -> anyhow::Result<(ClawSpec, PathBuf, Option<String>)> {
    let spec = draft_from_terminal().map_err(prompt_error)?.to_spec()?;
    section("Output");
    let out = match &args.out {
        Some(o) => o.clone(),
        None => {
            let default = format!("{}.clawbox", slug(&spec.name));
            PathBuf::from(ask(
                "Write the clawspec to",
                Some(
                    ".clawbox keeps it out of manifest folder scans (they read .yaml, .yml, .json)",
                ),
                |s| check_out_path(Path::new(s), args.force),
                Some(&default),
            )
            .map_err(prompt_error)?)
        }
    };
    let manifest_name = match &args.manifest {
        Some(n) => Some(n.clone()),
        None if out.as_os_str() == "-" => None,
        None => ask_optional(
            "Manifest instance name (optional)",
            Some("also write NAME.yaml, a kind: Claw manifest using this clawspec, next to it"),
            |s| check_manifest_name(s, &out, args.force),
        )
        .map_err(prompt_error)?,
    };
    Ok((spec, out, manifest_name))
}

/// Write the clawspec (and the manifest), each checked first; report on stderr.
pub fn write_outputs(
    spec: &ClawSpec,
    out: &Path,
    manifest_name: Option<&str>,
    force: bool,
) -> anyhow::Result<()> {
    let text = spec_text(spec);
    ClawSpec::parse(text.as_bytes()).map_err(|e| anyhow!("the clawspec would be invalid:\n{e}"))?;
    if out.as_os_str() == "-" {
        let mut o = std::io::stdout().lock();
        o.write_all(text.as_bytes())?;
        o.flush()?;
        return Ok(());
    }
    let manifest = match manifest_name {
        Some(name) => {
            let path = manifest_path(out, name);
            let file_name = out
                .file_name()
                .ok_or_else(|| anyhow!("--out: {} has no file name", out.display()))?
                .to_string_lossy();
            let m = manifest_text(spec, name, &format!("./{file_name}"));
            // The manifest is checked at the path it will have, so `clawbox` resolves.
            let abs = std::path::absolute(&path).unwrap_or_else(|_| path.clone());
            manifest::parse_str(&abs, &m).map_err(|ds| {
                anyhow!(
                    "the manifest would be invalid:\n{}",
                    ds.iter()
                        .map(ToString::to_string)
                        .collect::<Vec<_>>()
                        .join("\n")
                )
            })?;
            if path.exists() && !force {
                bail!("{} exists (run with --force to overwrite)", path.display());
            }
            Some((path, m))
        }
        None => None,
    };
    if out.exists() && !force {
        bail!("{} exists (run with --force to overwrite)", out.display());
    }
    let out_w = parent_dir(out).join(out.file_name().unwrap_or_default());
    crate::util::fsutil::write_atomic(&out_w, text.as_bytes(), 0o644)
        .with_context(|| format!("cannot write {}", out.display()))?;
    let p = &spec.bootstrap.params;
    eprintln!(
        "wrote {} (clawspec v3 \"{}\": {} required and {} optional param(s), {} provision step(s))",
        out.display(),
        spec.name,
        p.required.len(),
        p.optional.len(),
        spec.provision.len()
    );
    if let Some((path, m)) = manifest {
        let w = parent_dir(&path).join(path.file_name().unwrap_or_default());
        crate::util::fsutil::write_atomic(&w, m.as_bytes(), 0o644)
            .with_context(|| format!("cannot write {}", path.display()))?;
        eprintln!("wrote {}", path.display());
        let envs: Vec<&str> = spec
            .params()
            .filter(|(p, req)| p.secret || (*req && p.default.is_none()))
            .map(|(p, _)| p.key.as_str())
            .collect();
        if !envs.is_empty() {
            eprintln!(
                "before clawfarm apply, set in the environment: {}",
                envs.join(", ")
            );
        }
        eprintln!("check it with: clawfarm validate -f {}", path.display());
    }
    if out
        .extension()
        .is_some_and(|e| manifest::EXTENSIONS.iter().any(|x| e == *x))
        && manifest_name.is_some()
    {
        eprintln!(
            "note: a manifest folder scan reads *.{} files as manifests; keep {} out of the \
             folder you apply, or name it *.clawbox",
            out.extension().unwrap_or_default().to_string_lossy(),
            out.display()
        );
    }
    if spec
        .image
        .iter()
        .any(|i| i.reference.starts_with("clawbox://"))
    {
        eprintln!(
            "note: clawbox:/// refs name files inside a .clawbox archive; pack this clawspec \
             with them before use"
        );
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn image_refs() {
        for ok in [
            "https://example.com/base.qcow2",
            "http://10.0.0.1:8080/x",
            "file:///srv/base.qcow2",
            "clawbox:///run.qcow2",
            "ubuntu:24.04",
            "library/debian:bookworm-slim",
        ] {
            assert_eq!(check_image_ref(ok), Ok(()), "{ok}");
        }
        for bad in [
            "",
            "https://",
            "ftp://x/y",
            "file://relative",
            "clawbox://run.qcow2",
            "clawbox:///../x",
            // import refuses files below the top level of the archive: so does the wizard
            "clawbox:///images/run.qcow2",
            "clawbox:///a/b",
            "ubuntu",
            "Ubuntu:24.04",
            "a b:1",
        ] {
            assert!(check_image_ref(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn sha256_messages_never_repeat_the_value() {
        let m = check_sha256("abc").unwrap_err();
        assert!(m.contains("3 so far") && !m.contains("abc"), "{m}");
        assert!(
            check_sha256(&"A".repeat(64))
                .unwrap_err()
                .contains("lowercase")
        );
        assert!(check_sha256(&"a".repeat(64)).is_ok());
    }

    #[test]
    fn param_specs() {
        let p = parse_param_spec("OPENAI_API_KEY:OpenAI key:secret:non_empty").unwrap();
        assert_eq!(p.key, "OPENAI_API_KEY");
        assert_eq!(p.label, "OpenAI key");
        assert!(p.secret);
        assert_eq!(p.validator, Some(Validator::NonEmpty));
        let p = parse_param_spec(r"MODE:Mode\: how:plain:enum=a,b").unwrap();
        assert_eq!(p.label, "Mode: how");
        assert_eq!(
            p.validator,
            Some(Validator::Enum {
                values: vec!["a".into(), "b".into()]
            })
        );
        let p = parse_param_spec("PORT:Port:plain:regex=[0-9]+:x").unwrap();
        assert_eq!(
            p.validator,
            Some(Validator::Regex {
                pattern: "[0-9]+:x".into()
            })
        );
        assert!(parse_param_spec("1X:a:plain").unwrap_err().contains("key"));
        assert!(parse_param_spec("X:a").is_err());
        assert!(parse_param_spec("X::plain").unwrap_err().contains("label"));
        assert!(
            parse_param_spec("X:a:maybe")
                .unwrap_err()
                .contains("SECRET")
        );
        assert!(
            parse_param_spec("X:a:plain:regex=(")
                .unwrap_err()
                .contains("regular")
        );
        assert!(parse_param_spec("X:a:plain:enum=").is_err());
        assert!(parse_param_spec("X:a:plain:length=3").is_err());
    }

    #[test]
    fn manifest_text_parses() {
        let d = Draft {
            bootstrap: "openclaw".into(),
            name: "Demo".into(),
            display_name: None,
            base: ("ubuntu:24.04".into(), "a".repeat(64)),
            run: None,
            install_script: "true".into(),
            start_script: "true".into(),
            required: vec![
                parse_param_spec("API_KEY:Key:secret").unwrap(),
                parse_param_spec("REGION:Region:plain").unwrap(),
            ],
            optional: vec![
                Param {
                    default: Some("a: \"b\" #c".into()),
                    ..parse_param_spec("ODD:Odd:plain").unwrap()
                },
                parse_param_spec("NOTE:Note:plain").unwrap(),
            ],
            provision: vec![],
        };
        let spec = d.to_spec().unwrap();
        let m = manifest_text(&spec, "demo-a", "./demo.clawbox");
        let claws = manifest::parse_str(Path::new("/x/demo-a.yaml"), &m).unwrap();
        assert_eq!(claws.len(), 1);
        let c = &claws[0];
        assert_eq!(
            c.params.get("API_KEY"),
            Some(&manifest::ParamSource::Env("API_KEY".into()))
        );
        assert_eq!(
            c.params.get("ODD"),
            Some(&manifest::ParamSource::Literal("a: \"b\" #c".into()))
        );
        assert!(!c.params.contains_key("NOTE"));
        assert_eq!(slug("Demo OpenClaw!"), "demo-openclaw");
        assert_eq!(slug("!!"), "clawspec");
    }
}
