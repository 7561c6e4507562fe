//! `clawfarm run BOX --name NAME`: one ad-hoc instance through the same pass as `apply`.

use std::path::PathBuf;

use anyhow::{Context, bail};
use clap::Args;

use super::{Ctx, Output, param_env_lookup, progress_sink, runtime};
use crate::desired::run::{RunRequest, desired_instance, parse_param_arg, read_param_file};
use crate::desired::{self, Desired, ParamEnv};
use crate::input::manifest::Port;
use crate::reconcile::exec::ExecOptions;
use crate::reconcile::pass;
use crate::state::record::Origin;

/// Arguments of `clawfarm run`.
#[derive(Debug, Args, Clone)]
pub struct RunArgs {
    /// The `.clawbox` bundle.
    pub bundle: PathBuf,
    /// Name prefix of the CLAWID.
    #[arg(long)]
    pub name: String,
    /// A param value, KEY=VALUE (repeatable). Prefer --param-file or the prompt for
    /// secrets: the command line is visible in shell history and `ps`.
    /// Checked after parsing, never by clap, whose errors repeat the rejected value (a
    /// secret, here).
    #[arg(long = "param", value_name = "KEY=VALUE")]
    pub params: Vec<String>,
    /// A file of KEY=VALUE lines (repeatable; later values win).
    #[arg(long = "param-file", value_name = "FILE")]
    pub param_files: Vec<PathBuf>,
    /// vCPUs (1-64, as in manifests).
    #[arg(long, default_value_t = crate::input::manifest::DEFAULT_CPUS,
          value_parser = clap::value_parser!(u32).range(
              i64::from(*crate::input::manifest::CPUS_RANGE.start())
                  ..=i64::from(*crate::input::manifest::CPUS_RANGE.end())))]
    pub cpus: u32,
    /// Memory (e.g. 2048, 2GiB, 512MiB).
    #[arg(long, default_value = "1024", value_parser = crate::input::manifest::parse_memory)]
    pub memory: u64,
    /// Host port forward HOST:GUEST on 127.0.0.1 (repeatable).
    #[arg(long = "port", value_name = "HOST:GUEST", value_parser = parse_port)]
    pub ports: Vec<Port>,
    /// Network egress policy: none (default), allow (with --allow) or open.
    #[arg(long, default_value = "none", value_parser = parse_egress)]
    pub egress: crate::input::network::Egress,
    /// A destination the guest may reach in `--egress allow` mode: host, host:port,
    /// *.suffix or 127.0.0.1:PORT (repeatable).
    #[arg(long = "allow", value_name = "HOST[:PORT]", value_parser = crate::input::network::AllowEntry::parse)]
    pub allow: Vec<crate::input::network::AllowEntry>,
    /// Do not wait for the guest to become ready.
    #[arg(long)]
    pub no_wait: bool,
    /// Output format.
    #[arg(short = 'o', long, value_enum, default_value_t)]
    pub output: Output,
}

fn parse_port(s: &str) -> Result<Port, String> {
    let (h, g) = s.split_once(':').ok_or("expected HOST:GUEST")?;
    let host: u16 = h.parse().map_err(|_| format!("bad host port {h:?}"))?;
    let guest: u16 = g.parse().map_err(|_| format!("bad guest port {g:?}"))?;
    if host < 1024 || guest == 0 {
        return Err("host port must be 1024-65535, guest port 1-65535".into());
    }
    Ok(Port {
        host,
        guest,
        name: None,
    })
}

fn parse_egress(s: &str) -> Result<crate::input::network::Egress, String> {
    crate::input::network::Egress::parse(s)
        .ok_or_else(|| format!("unknown policy {s:?}: use none, allow or open"))
}

/// `clawfarm run`.
pub fn run(ctx: &Ctx, args: RunArgs) -> anyhow::Result<u8> {
    let mut params = Vec::new();
    for f in &args.param_files {
        params.extend(read_param_file(f)?);
    }
    for (i, p) in args.params.iter().enumerate() {
        params.push(
            parse_param_arg(p).map_err(|e| anyhow::anyhow!("--param number {}: {e}", i + 1))?,
        );
    }
    let req = RunRequest {
        bundle: args.bundle,
        name: args.name,
        params,
        cpus: args.cpus,
        memory_mib: args.memory,
        ports: args.ports,
        volumes: Vec::new(),
        network: {
            use crate::input::network::{Egress, Network};
            if args.egress == Egress::Allow && args.allow.is_empty() {
                anyhow::bail!("--egress allow needs at least one --allow HOST[:PORT]");
            }
            if args.egress == Egress::None && !args.allow.is_empty() {
                anyhow::bail!("--allow needs --egress allow or open");
            }
            Network {
                egress: args.egress,
                allow: args.allow,
            }
        },
    };
    ctx.ensure_home()?;
    let driver = ctx.driver()?;
    let rt = runtime()?;
    let key = ctx
        .home
        .secret_key()
        .context("cannot read the param digest key")?;
    let tty = crate::tui::prompt::TtyPrompter::new();
    let penv = ParamEnv {
        key: &key,
        env: &param_env_lookup,
        prompter: crate::tui::prompt::is_interactive().then_some(&tty as &dyn desired::Prompter),
        command_line: true,
    };
    let inst = rt.block_on(desired_instance(
        &ctx.home,
        &req,
        &crate::desired::resolve::StoreResolver,
        &penv,
    ));
    if let Some(at) = tty.interrupted() {
        bail!("interrupted at the prompt for {at}; nothing was changed");
    }
    let inst = inst?;
    let d = Desired {
        instances: vec![inst.clone()],
        ..Desired::default()
    };
    // No apply lock: a run creates a CLAWID nobody else can plan; its nodes take the
    // instance lock like every mutation. Never pruning.
    let p = pass::prepare(&ctx.home, &*driver, d, false);
    if let Some(dg) = p.desired.diagnostics.first() {
        bail!("{}", dg.message);
    }
    eprintln!("{}: creating from {}", inst.clawid, req.bundle.display());
    let exec = ExecOptions {
        wait: !args.no_wait,
        ..ExecOptions::default()
    };
    let out = rt.block_on(p.execute(
        &ctx.home,
        driver,
        Origin::Run,
        progress_sink(&ctx.home),
        exec,
    ));
    let ok = out.report.ok();
    match args.output {
        Output::Json => outln!(
            "{}",
            serde_json::to_string_pretty(&serde_json::json!({
                "ok": ok,
                "clawid": inst.clawid,
                "name": inst.name,
                "nodes": out.report.nodes,
            }))?
        )?,
        Output::Text => {
            for (action, err) in out.report.root_failures() {
                eprintln!("failed: {action}: {err}");
            }
            outln!("{}", inst.clawid)?;
        }
    }
    Ok(if ok { 0 } else { 1 })
}
