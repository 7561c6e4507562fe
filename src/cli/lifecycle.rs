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
