//! `clawfarm validate`, `plan` and `apply`: the manifest-driven verbs.

use std::path::PathBuf;
use std::time::Duration;

use clap::Args;

use super::{Ctx, Output, apply_lock, error_chain, load_desired, progress_sink, runtime};
use crate::desired::Desired;
use crate::reconcile::exec::ExecOptions;
use crate::reconcile::pass::{self, Prepared};
use crate::state::record::Origin;

/// Arguments of `clawfarm validate`.
#[derive(Debug, Args, Clone)]
pub struct ValidateArgs {
    /// Manifest files or folders.
    #[arg(short = 'f', long = "filename", required = true, value_name = "PATH")]
    pub files: Vec<PathBuf>,
}

/// Manifest inputs and plan options shared by `plan` and `apply`.
#[derive(Debug, Args, Clone)]
pub struct PlanArgs {
    /// Manifest files or folders (searched recursively for .yaml, .yml, .json).
    #[arg(short = 'f', long = "filename", required = true, value_name = "PATH")]
    pub files: Vec<PathBuf>,
    /// Delete instances created by apply whose manifest is gone.
    #[arg(long)]
    pub prune: bool,
    /// Output format.
    #[arg(short = 'o', long, value_enum, default_value_t)]
    pub output: Output,
}

/// Arguments of `clawfarm apply`.
#[derive(Debug, Args, Clone)]
pub struct ApplyArgs {
    /// Inputs and plan options.
    #[command(flatten)]
    pub plan: PlanArgs,
    /// Actions run at once.
    #[arg(long, default_value_t = 4, value_parser = clap::value_parser!(u16).range(1..=64))]
    pub parallelism: u16,
    /// Do not wait for guests to become ready.
    #[arg(long)]
    pub no_wait: bool,
    /// How long to wait for another apply's lock (e.g. 0, 30s; default: forever).
    #[arg(long, value_parser = humantime::parse_duration, value_name = "DURATION")]
    pub lock_timeout: Option<Duration>,
}

fn print_diagnostics(d: &Desired) {
    for x in &d.diagnostics {
        eprintln!("{x}");
    }
}

/// Say what a prepared pass found besides its plan: input problems, unreadable records,
/// a refused `--prune`.
fn report_preparation(p: &Prepared) {
    print_diagnostics(&p.desired);
    for e in &p.record_errors {
        let who = e.clawid().unwrap_or_default();
        eprintln!(
            "error: instance {who} is left alone: {} (clawfarm stop and rm -f still work)",
            error_chain(e)
        );
    }
    if p.prune_refused {
        eprintln!("warning: not pruning: some input could not be read (see the errors above)");
    }
}

/// `clawfarm validate`.
pub fn validate(ctx: &Ctx, args: &ValidateArgs) -> anyhow::Result<u8> {
    let d = runtime()?.block_on(load_desired(ctx, &args.files, false, None, true))?;
    print_diagnostics(&d);
    if d.diagnostics.is_empty() {
        eprintln!(
            "{} manifest file(s), {} instance(s): valid",
            d.files.len(),
            d.instances.len()
        );
        Ok(0)
    } else {
        eprintln!("{} problem(s) found", d.diagnostics.len());
        Ok(1)
    }
}

/// `clawfarm plan`.
pub fn plan(ctx: &Ctx, args: &PlanArgs) -> anyhow::Result<u8> {
    let driver = ctx.driver()?;
    let d = runtime()?.block_on(load_desired(ctx, &args.files, true, None, true))?;
    let p = pass::prepare(&ctx.home, &*driver, d, args.prune);
    report_preparation(&p);
    match args.output {
        Output::Text => out!("{}", p.plan.render())?,
        Output::Json => {
            let mut v = p.plan.to_json();
            v["diagnostics"] = serde_json::to_value(&p.desired.diagnostics)?;
            outln!("{}", serde_json::to_string_pretty(&v)?)?;
        }
    }
    Ok(
        if !p.desired.diagnostics.is_empty() || !p.record_errors.is_empty() {
            1
        } else if p.plan.is_empty() {
            0
        } else {
            2
        },
    )
}

/// `clawfarm apply`.
pub fn apply(ctx: &Ctx, args: &ApplyArgs) -> anyhow::Result<u8> {
    ctx.ensure_home()?;
    let driver = ctx.driver()?;
    let _lock = apply_lock(&ctx.home, args.lock_timeout)?;
    pass::sweep_temp_files(&ctx.home);
    let rt = runtime()?;
    let d = rt.block_on(load_desired(ctx, &args.plan.files, true, None, false))?;
    let p = pass::prepare(&ctx.home, &*driver, d, args.plan.prune);
    report_preparation(&p);
    let exec = ExecOptions {
        parallelism: args.parallelism.into(),
        wait: !args.no_wait,
        stop_after: None,
        lock_timeout: None,
    };
    let out = rt.block_on(p.execute(
        &ctx.home,
        driver,
        Origin::Manifest,
        progress_sink(&ctx.home),
        exec,
    ));
    let ok = out.ok();
    match args.plan.output {
        Output::Text => {
            if out.plan.is_empty() {
                eprint!("{}", out.plan.render());
            }
            for (action, err) in out.report.root_failures() {
                eprintln!("failed: {action}: {err}");
            }
            outln!("{}", out.report.summary())?;
        }
        Output::Json => {
            let v = serde_json::json!({
                "ok": ok,
                "summary": out.report.summary(),
                "changes": out.report.changes,
                "nodes": out.report.nodes,
                "diagnostics": out.diagnostics,
            });
            outln!("{}", serde_json::to_string_pretty(&v)?)?;
        }
    }
    Ok(if ok { 0 } else { 1 })
}
