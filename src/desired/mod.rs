//! Desired state: manifests → [`DesiredInstance`]s, with bundles identified and params
//! resolved. This is the only step of planning that reads files other than records.

pub mod resolve;
pub mod run;

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::Arc;

use serde::{Deserialize, Serialize};

use crate::input::manifest::{DesiredState, Port, SourceLoc, Volume};
use crate::util::secret::Secret;

/// The bundle types the desired state refers to (defined by the store).
pub use crate::store::bundle::{BundleDesired, BundleKind};

/// A param value after resolution (manifest literal/reference, default, prompt).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ResolvedParam {
    /// Param key.
    pub key: String,
    /// The value (redacted when printed).
    pub value: Secret,
    /// Whether the clawspec marks it secret.
    pub secret: bool,
    /// Keyed digest of the value (see [`crate::util::digest::keyed_digest`]).
    pub digest: String,
}

/// Resources whose change needs a restart, not a replace.
#[derive(Debug, Clone, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct Resources {
    /// vCPUs.
    pub cpus: u32,
    /// Memory in MiB.
    pub memory_mib: u64,
    /// Port forwards.
    pub ports: Vec<Port>,
    /// Network policy (`rfc/012-sandbox.md`); records without one read as `none`.
    #[serde(default)]
    pub network: crate::input::network::Network,
}

/// What an instance was built from; a change here needs a replace.
#[derive(Debug, Clone, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
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

use std::collections::{BTreeSet, HashMap};

use crate::home::Home;
use crate::input::clawspec::Param;
use crate::input::manifest::{Claw, ClawboxRef, Diagnostic, ParamSource};
use crate::util::digest::{keyed_digest, sha256_hex};

/// The CLAWID of a manifest-managed instance: `<name>-<6 hex>`, derived from the name so
/// that plans are deterministic and a crash between "create folder" and "write record"
/// cannot leak a second folder for the same instance.
pub fn clawid_for(name: &str) -> String {
    format!(
        "{name}-{}",
        &sha256_hex(format!("clawfarm/v1:{name}").as_bytes())[..6]
    )
}

/// Asks a person for a param value (only used when stdin and stderr are terminals).
pub trait Prompter: Send + Sync {
    /// Ask for `param` of `instance`; `None` when the person gives up.
    fn prompt(&self, instance: &str, param: &Param, required: bool) -> Option<String>;
}

/// Identifies bundles for the loader; the real one is [`crate::store::bundle`], tests may stub it.
#[async_trait::async_trait]
pub trait BundleResolver: Send + Sync {
    /// Identify the bundle a manifest names.
    async fn resolve(&self, home: &Home, r: &ClawboxRef) -> anyhow::Result<BundleDesired>;
}

/// The desired state of a set of manifests.
#[derive(Debug, Default)]
pub struct Desired {
    /// Instances, sorted by name.
    pub instances: Vec<Arc<DesiredInstance>>,
    /// Every problem found, `FILE:LINE:COL: message`, sorted.
    pub diagnostics: Vec<Diagnostic>,
    /// Instance names that must not be deleted (their file or document had an error).
    pub protected: BTreeSet<String>,
    /// Manifest files read.
    pub files: Vec<PathBuf>,
    /// Files (by [`crate::input::manifest::file_key`]) with any problem: every instance whose
    /// record names one of them is protected from prune for the pass, whatever the file
    /// now holds (it may not even be readable).
    pub bad_files: BTreeSet<PathBuf>,
    /// Some input could not be read at all (a mistyped `-f` path, an unreadable folder):
    /// the names it holds are unknown, so nothing may be pruned in this pass.
    pub incomplete: bool,
}

/// How params are looked up.
pub struct ParamEnv<'a> {
    /// Per-home HMAC key for digests.
    pub key: &'a [u8],
    /// Environment lookup (normally `std::env::var`).
    pub env: &'a (dyn Fn(&str) -> Option<String> + Sync),
    /// Interactive prompt, when allowed.
    pub prompter: Option<&'a dyn Prompter>,
    /// Values come from the command line (`run`), not a manifest: hints say so.
    pub command_line: bool,
}

/// Load manifests from `paths` into a desired state, reusing the parses kept in `cache`
/// (watch keeps one) for files that did not change.
pub async fn load(
    home: &Home,
    paths: &[PathBuf],
    resolver: &dyn BundleResolver,
    penv: &ParamEnv<'_>,
    cache: Option<&crate::input::manifest::Cache>,
) -> Desired {
    let lr = crate::input::manifest::load_cached(paths, cache);
    let mut out = Desired {
        diagnostics: lr.diagnostics,
        files: lr.files,
        ..Desired::default()
    };
    out.bad_files = lr
        .bad_files
        .iter()
        .map(|f| crate::input::manifest::file_key(f))
        .collect();
    for f in &lr.bad_files {
        match crate::input::manifest::read_bounded(f, crate::input::manifest::MAX_MANIFEST_BYTES) {
            Ok(bytes) => {
                let text = String::from_utf8_lossy(bytes.as_deref().unwrap_or_default());
                for n in crate::input::manifest::names_in_file_best_effort(&text) {
                    out.protected.insert(n.clone());
                    for i in 0..64 {
                        out.protected.insert(format!("{n}-{i}"));
                    }
                }
            }
            Err(_) => out.incomplete = true,
        }
    }
    if paths.iter().any(|p| !p.exists()) {
        out.incomplete = true;
    }
    let mut bundles: HashMap<ClawboxRef, Result<Arc<BundleDesired>, String>> = HashMap::new();
    for claw in &lr.claws {
        let b = match bundles.get(&claw.clawbox) {
            Some(b) => b.clone(),
            None => {
                let b = resolver
                    .resolve(home, &claw.clawbox)
                    .await
                    .map(Arc::new)
                    .map_err(|e| format!("{e:#}"));
                bundles.insert(claw.clawbox.clone(), b.clone());
                b
            }
        };
        let bundle = match b {
            Ok(b) => b,
            Err(e) => {
                out.diagnostics.push(Diagnostic {
                    loc: claw.clawbox_loc.clone(),
                    message: format!("cannot load clawbox: {e}"),
                });
                out.protected.extend(claw.instance_names());
                out.bad_files
                    .insert(crate::input::manifest::file_key(&claw.loc.file));
                continue;
            }
        };
        match instances_of(claw, bundle, penv) {
            Ok(v) => out.instances.extend(v.into_iter().map(Arc::new)),
            Err(ds) => {
                out.diagnostics.extend(ds);
                out.protected.extend(claw.instance_names());
                out.bad_files
                    .insert(crate::input::manifest::file_key(&claw.loc.file));
            }
        }
    }
    out.instances.sort_by(|a, b| a.name.cmp(&b.name));
    out.diagnostics.sort();
    out.diagnostics.dedup();
    out
}

/// Resolve one param value in order: manifest literal (non-secret only), manifest
/// reference, clawspec default (non-secret only), prompt.
fn resolve_param(
    claw: &Claw,
    instance: &str,
    p: &Param,
    required: bool,
    penv: &ParamEnv<'_>,
) -> Result<Option<String>, String> {
    match claw.params.get(&p.key) {
        Some(ParamSource::Literal(_)) if p.secret => Err(format!(
            "param {} is secret: a literal value is refused in a manifest (these folders \
             live in git); use {{env: NAME}} or {{file: PATH}}",
            p.key
        )),
        Some(ParamSource::Literal(v)) => Ok(Some(v.clone())),
        Some(ParamSource::Given(v)) => Ok(Some(v.expose().to_string())),
        Some(ParamSource::Env(name)) => match (penv.env)(name) {
            Some(v) => Ok(Some(v)),
            None if required => Err(format!(
                "param {}: environment variable {name} is not set",
                p.key
            )),
            None => Ok(None),
        },
        Some(ParamSource::File(path)) => match std::fs::read_to_string(path) {
            Ok(mut v) => {
                if v.ends_with('\n') {
                    v.pop();
                    if v.ends_with('\r') {
                        v.pop();
                    }
                }
                Ok(Some(v))
            }
            Err(e) => Err(format!(
                "param {}: cannot read {}: {e}",
                p.key,
                path.display()
            )),
        },
        None => {
            if let (Some(d), false) = (&p.default, p.secret) {
                return Ok(Some(d.clone()));
            }
            if let Some(pr) = penv.prompter
                && let Some(v) = pr.prompt(instance, p, required)
            {
                return Ok(Some(v));
            }
            if required && penv.command_line {
                Err(format!(
                    "required param {} ({}) is not set: pass --param {}=… or a --param-file \
                     line {}=…, or run in a terminal to be asked",
                    p.key, p.label, p.key, p.key
                ))
            } else if required {
                Err(format!(
                    "required param {} ({}) is not set: add `{}: {}` under spec.params",
                    p.key,
                    p.label,
                    p.key,
                    if p.secret {
                        format!("{{env: {}}}", p.key)
                    } else {
                        "<value>".to_string()
                    }
                ))
            } else {
                Ok(None)
            }
        }
    }
}

/// Expand one manifest document into its instances, resolving params against the
/// bundle's clawspec. All problems of the document are returned together.
pub fn instances_of(
    claw: &Claw,
    bundle: Arc<BundleDesired>,
    penv: &ParamEnv<'_>,
) -> Result<Vec<DesiredInstance>, Vec<Diagnostic>> {
    let spec = &bundle.clawspec;
    let mut diags = Vec::new();
    let diag = |key: Option<&str>, message: String| Diagnostic {
        loc: key
            .and_then(|k| claw.param_locs.get(k))
            .cloned()
            .unwrap_or_else(|| claw.loc.clone()),
        message,
    };
    for k in claw.params.keys() {
        if spec.param(k).is_none() {
            diags.push(diag(
                Some(k),
                format!("param {k} is not defined by clawspec {:?}", spec.name),
            ));
        }
    }
    let mut out = Vec::new();
    for name in claw.instance_names() {
        let mut params = Vec::new();
        for (p, required) in spec.params() {
            match resolve_param(claw, &name, p, required, penv) {
                Ok(Some(v)) => {
                    if let Some(val) = &p.validator
                        && let Err(why) = val.check(&v)
                    {
                        diags.push(diag(Some(&p.key), format!("param {}: {why}", p.key)));
                        continue;
                    }
                    params.push(ResolvedParam {
                        key: p.key.clone(),
                        digest: keyed_digest(penv.key, &p.key, &v),
                        value: Secret::new(v),
                        secret: p.secret,
                    });
                }
                Ok(None) => {}
                Err(m) => diags.push(diag(Some(&p.key), m)),
            }
        }
        let resources = Resources {
            cpus: claw.cpus,
            memory_mib: claw.memory_mib,
            ports: if claw.replicas > 1 {
                // Replicas cannot share host ports; refuse rather than guess.
                if !claw.ports.is_empty() {
                    diags.push(diag(
                        None,
                        "spec.ports cannot be used with replicas > 1 (host ports would clash)"
                            .into(),
                    ));
                }
                Vec::new()
            } else {
                claw.ports.clone()
            },
            network: claw.network.clone(),
        };
        out.push(DesiredInstance {
            clawid: clawid_for(&name),
            name,
            loc: claw.loc.clone(),
            state: claw.state,
            build: BuildSpec {
                bundle: bundle.digest.clone(),
                params: params
                    .iter()
                    .map(|p| (p.key.clone(), p.digest.clone()))
                    .collect(),
                volumes: claw.volumes.clone(),
            },
            bundle: bundle.clone(),
            resources,
            params,
            volumes: claw.volumes.clone(),
        });
    }
    if diags.is_empty() {
        Ok(out)
    } else {
        diags.sort();
        diags.dedup();
        Err(diags)
    }
}

/// The port whose answer is part of readiness and that `ps` shows as GATEWAY: the one
/// named `gateway`, else the one whose guest port is OpenClaw's 18789, else none.
pub fn gateway_port(r: &Resources) -> Option<&Port> {
    r.ports
        .iter()
        .find(|p| p.name.as_deref() == Some("gateway"))
        .or_else(|| r.ports.iter().find(|p| p.guest == 18789))
}
