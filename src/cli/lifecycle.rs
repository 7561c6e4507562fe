//! `clawfarm stop`, `start` and `rm`: the imperative lifecycle, through
//! [`crate::reconcile::ops`] (instance lock, record state machine, events).

use clap::Args;

use super::{Ctx, runtime, say_waiting};
use crate::reconcile::ops;

/// Arguments of `clawfarm stop`.
#[derive(Debug, Args, Clone)]
pub struct StopArgs {
    /// CLAWID, name, or unique CLAWID prefix.
    pub id: String,
}

/// Arguments of `clawfarm start`.
#[derive(Debug, Args, Clone)]
pub struct StartArgs {
    /// CLAWID, name, or unique CLAWID prefix.
    pub id: String,
    /// Do not wait for the guest to become ready.
    #[arg(long)]
    pub no_wait: bool,
}

/// Arguments of `clawfarm export`.
#[derive(Debug, Args, Clone)]
pub struct ExportArgs {
    /// CLAWID, name, or unique CLAWID prefix.
    pub id: String,
    /// The .clawbox file to write.
    #[arg(short, long, value_name = "FILE")]
    pub output: std::path::PathBuf,
    /// Replace FILE when it exists (never overrides a secret found in the layer).
    #[arg(long)]
    pub force: bool,
}

/// Arguments of `clawfarm rm`.
#[derive(Debug, Args, Clone)]
pub struct RmArgs {
    /// Stop it first if it is running.
    #[arg(short, long)]
    pub force: bool,
    /// Also delete its volumes.
    #[arg(long)]
    pub purge: bool,
    /// CLAWID, name, or unique CLAWID prefix.
    pub id: String,
}

/// `clawfarm stop`.
pub fn stop(ctx: &Ctx, args: &StopArgs) -> anyhow::Result<u8> {
    let driver = ctx.driver()?;
    let (r, outcome) = runtime()?.block_on(ops::stop(
        &ctx.home,
        &*driver,
        &args.id,
        "clawfarm stop",
        say_waiting(),
    ))?;
    outln!("{} stopped ({outcome})", r.clawid)?;
    Ok(0)
}

/// `clawfarm start`.
pub fn start(ctx: &Ctx, args: &StartArgs) -> anyhow::Result<u8> {
    let driver = ctx.driver()?;
    let rt = runtime()?;
    let r = rt.block_on(ops::start(
        &ctx.home,
        &*driver,
        &args.id,
        "clawfarm start",
        say_waiting(),
    ))?;
    if args.no_wait {
        outln!("{} started", r.clawid)?;
        return Ok(0);
    }
    eprintln!(
        "{} started; waiting for the guest to become ready",
        r.clawid
    );
    let r = rt.block_on(ops::wait_ready(&ctx.home, &*driver, &r))?;
    outln!("{} ready", r.clawid)?;
    Ok(0)
}

/// `clawfarm export`.
pub fn export(ctx: &Ctx, args: &ExportArgs) -> anyhow::Result<u8> {
    let driver = ctx.driver()?;
    let r = runtime()?.block_on(crate::reconcile::export::export(
        &ctx.home,
        &*driver,
        &args.id,
        &args.output,
        args.force,
        say_waiting(),
    ))?;
    if !r.unscanned.is_empty() {
        eprintln!(
            "warning: secret params {} are shorter than {} characters and were not scanned for",
            r.unscanned.join(", "),
            crate::reconcile::export::MIN_SCAN_LEN
        );
    }
    use crate::util::text::human_bytes;
    outln!(
        "{} exported to {} ({}; layer {}, instance disk {}; scrub {:.1}s, layer {:.1}s, total {:.1}s; secret params scanned: {}){}",
        r.clawid,
        r.out.display(),
        human_bytes(r.bundle_bytes),
        human_bytes(r.layer_bytes),
        human_bytes(r.figures.disk_bytes),
        r.figures.scrub.as_secs_f64(),
        r.figures.flatten.as_secs_f64(),
        r.elapsed.as_secs_f64(),
        if r.scanned.is_empty() {
            "none".to_string()
        } else {
            r.scanned.join(", ")
        },
        if r.restarted {
            "; the instance was started again"
        } else {
            ""
        }
    )?;
    Ok(0)
}

/// `clawfarm rm`.
pub fn rm(ctx: &Ctx, args: &RmArgs) -> anyhow::Result<u8> {
    let driver = ctx.driver()?;
    let r = runtime()?.block_on(ops::remove(
        &ctx.home,
        &*driver,
        &args.id,
        args.force,
        args.purge,
        "clawfarm rm",
        say_waiting(),
    ))?;
    outln!("{} removed", r.clawid)?;
    Ok(0)
}
