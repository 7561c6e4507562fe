//! `clawfarm run BOX --name NAME`: the roadmap's import-first run, as an ad-hoc manifest
//! through the same engine (same plan, locks and records). Each run gets its own CLAWID
//! (`NAME-<random 6 hex>`), so one bundle can be run many times.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use anyhow::{Context, bail};

use crate::desired::{BundleResolver, DesiredInstance, ParamEnv, instances_of};
use crate::home::Home;
use crate::input::manifest::{
    Claw, ClawboxRef, DesiredState, ParamSource, Port, SourceLoc, Volume,
};
use crate::util::secret::Secret;

/// What `run` was asked for.
#[derive(Debug, Clone)]
pub struct RunRequest {
    /// The `.clawbox` file.
    pub bundle: PathBuf,
    /// Name prefix of the CLAWID.
    pub name: String,
    /// `KEY=VALUE` params from the command line and param files, in order (later wins).
    pub params: Vec<(String, Secret)>,
    /// vCPUs.
    pub cpus: u32,
    /// Memory in MiB.
    pub memory_mib: u64,
    /// Host port forwards.
    pub ports: Vec<Port>,
    /// Volumes.
    pub volumes: Vec<Volume>,
    /// Network policy.
    pub network: crate::input::network::Network,
}

/// Parse a param file: `KEY=VALUE` lines; blank lines and `#` comments are skipped; a
/// value may be wrapped in single or double quotes. Errors name the file and line, never
/// the value.
pub fn read_param_file(path: &Path) -> anyhow::Result<Vec<(String, Secret)>> {
    let text =
        std::fs::read_to_string(path).with_context(|| format!("cannot read {}", path.display()))?;
    let mut out = Vec::new();
    for (i, line) in text.lines().enumerate() {
        let l = line.trim();
        if l.is_empty() || l.starts_with('#') {
            continue;
        }
        let l = l.strip_prefix("export ").unwrap_or(l);
        let Some((k, v)) = l.split_once('=') else {
            bail!("{}:{}: expected KEY=VALUE", path.display(), i + 1);
        };
        let k = k.trim();
        if !crate::input::clawspec::is_env_key(k) {
            bail!(
                "{}:{}: {k:?} is not a valid param key",
                path.display(),
                i + 1
            );
        }
        let v = v.trim();
        let v = ['"', '\'']
            .iter()
            .find_map(|q| v.strip_prefix(*q).and_then(|x| x.strip_suffix(*q)))
            .unwrap_or(v);
        out.push((k.to_string(), Secret::new(v)));
    }
    Ok(out)
}

/// Parse a `--param KEY=VALUE` argument.
pub fn parse_param_arg(s: &str) -> Result<(String, Secret), String> {
    // Errors never repeat the argument: it may hold a secret.
    let (k, v) = s
        .split_once('=')
        .ok_or_else(|| "expected KEY=VALUE (the argument is not shown)".to_string())?;
    if !crate::input::clawspec::is_env_key(k) {
        return Err(
            "the text before '=' is not a param key (letters, digits and _, not starting \
             with a digit; the argument is not shown)"
                .to_string(),
        );
    }
    Ok((k.to_string(), Secret::new(v)))
}

/// A random CLAWID for a run of `name`.
pub fn new_clawid(name: &str) -> String {
    format!("{name}-{:06x}", rand::random::<u32>() & 0xff_ffff)
}

/// Build the desired instance of a run: the bundle is identified, params are resolved
/// (given values, then clawspec defaults, then the prompt), every problem is reported.
pub async fn desired_instance(
    home: &Home,
    req: &RunRequest,
    resolver: &dyn BundleResolver,
    penv: &ParamEnv<'_>,
) -> anyhow::Result<Arc<DesiredInstance>> {
    if !crate::input::manifest::is_dns_label(&req.name, crate::input::manifest::MAX_NAME_LEN) {
        bail!(
            "--name {:?}: use lowercase letters, digits and '-', at most {} characters",
            req.name,
            crate::input::manifest::MAX_NAME_LEN
        );
    }
    let path = std::path::absolute(&req.bundle)
        .with_context(|| format!("bad path {}", req.bundle.display()))?;
    let bundle = resolver
        .resolve(home, &ClawboxRef::Path(path.clone()))
        .await
        .context("cannot load the clawbox")?; // the bundle error names the file
    let loc = SourceLoc {
        file: path.clone(),
        line: 0,
        col: 0,
    };
    let params: BTreeMap<String, ParamSource> = req
        .params
        .iter()
        .map(|(k, v)| (k.clone(), ParamSource::Given(v.clone())))
        .collect();
    let claw = Claw {
        loc: loc.clone(),
        name: req.name.clone(),
        clawbox: ClawboxRef::Path(path),
        clawbox_loc: loc.clone(),
        state: DesiredState::Running,
        replicas: 1,
        cpus: req.cpus,
        memory_mib: req.memory_mib,
        ports: req.ports.clone(),
        param_locs: params.keys().map(|k| (k.clone(), loc.clone())).collect(),
        params,
        volumes: req.volumes.clone(),
        network: req.network.clone(),
    };
    let mut inst = match instances_of(&claw, Arc::new(bundle), penv) {
        Ok(mut v) => v.remove(0),
        Err(diags) => {
            let msgs: Vec<String> = diags.iter().map(|d| d.message.clone()).collect();
            bail!("{}", msgs.join("\n"));
        }
    };
    inst.clawid = new_clawid(&req.name);
    Ok(Arc::new(inst))
}
