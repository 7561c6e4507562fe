//! `clawfarm checkpoint`, `checkpoints`, `restore`, `suspend` and `volume export`, through
//! [`crate::reconcile::ops`] (instance lock, record state machine, events). See
//! `rfc/011-checkpoints.md`.

use std::path::PathBuf;

use clap::{Args, Subcommand};

use super::{Ctx, runtime, say_waiting};
use crate::reconcile::ops;
use crate::util::text::human_bytes;

/// Arguments of `clawfarm checkpoint`.
#[derive(Debug, Args, Clone)]
pub struct CheckpointArgs {
    /// CLAWID, name, or unique CLAWID prefix.
    pub id: String,
    /// Tag of the checkpoint (default: the UTC time, YYYYmmdd-HHMMSS).
    #[arg(long)]
    pub tag: Option<String>,
}

/// Arguments of `clawfarm checkpoints`.
#[derive(Debug, Args, Clone)]
pub struct CheckpointsArgs {
    /// CLAWID, name, or unique CLAWID prefix.
    pub id: String,
    /// Print JSON.
    #[arg(long)]
    pub json: bool,
}

/// Arguments of `clawfarm restore`.
#[derive(Debug, Args, Clone)]
pub struct RestoreArgs {
    /// CLAWID, name, or unique CLAWID prefix.
    pub id: String,
    /// The checkpoint tag.
    pub tag: String,
    /// Do not wait for the guest to become ready.
    #[arg(long)]
    pub no_wait: bool,
}

/// Arguments of `clawfarm suspend`.
#[derive(Debug, Args, Clone)]
pub struct SuspendArgs {
    /// CLAWID, name, or unique CLAWID prefix.
    #[arg(required_unless_present = "all", conflicts_with = "all")]
    pub id: Option<String>,
    /// Suspend every running instance, one after the other (host shutdown: see
    /// examples/systemd/clawfarm-suspend.service); exit 1 if any could not be suspended.
    #[arg(long)]
    pub all: bool,
}

/// `clawfarm volume …`.
#[derive(Debug, Subcommand, Clone)]
pub enum VolumeCommand {
    /// Copy the files of a volume of a stopped instance into a host folder.
    Export {
        /// CLAWID, name, or unique CLAWID prefix.
        id: String,
        /// The volume name.
        volume: String,
        /// Destination folder (created; must be empty or absent).
        dest: PathBuf,
    },
}

/// `clawfarm checkpoint`.
pub fn checkpoint(ctx: &Ctx, args: &CheckpointArgs) -> anyhow::Result<u8> {
    let driver = ctx.driver()?;
    let tag = args.tag.clone().unwrap_or_else(crate::driver::default_tag);
    let t0 = std::time::Instant::now();
    let (r, c) = runtime()?.block_on(ops::checkpoint(
        &ctx.home,
        &*driver,
        &args.id,
        &tag,
        "clawfarm checkpoint",
        say_waiting(),
    ))?;
    outln!(
        "{} checkpoint {} saved in {:.1}s ({} of VM state{})",
        r.clawid,
        c.tag,
        t0.elapsed().as_secs_f64(),
        human_bytes(c.vm_state_bytes),
        if c.volumes.is_empty() {
            String::new()
        } else {
            format!("; volumes {}", c.volumes.join(", "))
        }
    )?;
    Ok(0)
}

/// `clawfarm checkpoints`.
pub fn checkpoints(ctx: &Ctx, args: &CheckpointsArgs) -> anyhow::Result<u8> {
    let driver = ctx.driver()?;
    let (_, list) = runtime()?.block_on(ops::checkpoints(&ctx.home, &*driver, &args.id))?;
    if args.json {
        outln!("{}", serde_json::to_string_pretty(&list)?)?;
        return Ok(0);
    }
    outln!(
        "{:<24} {:<20} {:>10}  VOLUMES",
        "TAG",
        "TAKEN (UTC)",
        "VM STATE"
    )?;
    for c in &list {
        outln!(
            "{:<24} {:<20} {:>10}  {}",
            c.tag,
            humantime::format_rfc3339_seconds(c.created_at)
                .to_string()
                .replace('T', " ")
                .trim_end_matches('Z'),
            human_bytes(c.vm_state_bytes),
            if c.volumes.is_empty() {
                "-".to_string()
            } else {
                c.volumes.join(",")
            }
        )?;
    }
    Ok(0)
}

/// `clawfarm restore`.
pub fn restore(ctx: &Ctx, args: &RestoreArgs) -> anyhow::Result<u8> {
    let driver = ctx.driver()?;
    let rt = runtime()?;
    let t0 = std::time::Instant::now();
    let r = rt.block_on(ops::restore(
        &ctx.home,
        &*driver,
        &args.id,
        &args.tag,
        "clawfarm restore",
        say_waiting(),
    ))?;
    if args.no_wait {
        outln!("{} restored to {}", r.clawid, args.tag)?;
        return Ok(0);
    }
    let r = rt.block_on(ops::wait_ready(&ctx.home, &*driver, &r))?;
    outln!(
        "{} restored to {} and ready in {:.1}s",
        r.clawid,
        args.tag,
        t0.elapsed().as_secs_f64()
    )?;
    Ok(0)
}

/// `clawfarm suspend`.
pub fn suspend(ctx: &Ctx, args: &SuspendArgs) -> anyhow::Result<u8> {
    let driver = ctx.driver()?;
    let rt = runtime()?;
    let ids: Vec<String> = match &args.id {
        Some(id) => vec![id.clone()],
        None => {
            let (observed, _) = crate::observe::observe(&ctx.home, &*driver);
            let mut ids: Vec<String> = observed
                .into_iter()
                .filter(|o| o.is_running())
                .map(|o| o.record.clawid)
                .collect();
            ids.sort();
            ids
        }
    };
    let by = if args.all {
        "clawfarm suspend --all"
    } else {
        "clawfarm suspend"
    };
    let mut failed = 0;
    for id in &ids {
        match rt.block_on(ops::suspend(&ctx.home, &*driver, id, by, say_waiting())) {
            Ok((r, took)) => outln!(
                "{} suspended in {:.1}s (start resumes it)",
                r.clawid,
                took.as_secs_f64()
            )?,
            // One instance that cannot be saved does not keep the others running.
            Err(e) if args.all => {
                eprintln!("error: {id}: {e:#}");
                failed += 1;
            }
            Err(e) => return Err(e),
        }
    }
    if args.all && ids.is_empty() {
        outln!("no running instance")?;
    }
    Ok(u8::from(failed > 0))
}

/// `clawfarm volume …`.
pub fn volume(ctx: &Ctx, cmd: &VolumeCommand) -> anyhow::Result<u8> {
    let driver = ctx.driver()?;
    match cmd {
        VolumeCommand::Export { id, volume, dest } => {
            let r = runtime()?.block_on(ops::export_volume(
                &ctx.home,
                &*driver,
                id,
                volume,
                dest,
                say_waiting(),
            ))?;
            outln!(
                "volume {volume} of {} copied to {}",
                r.clawid,
                dest.display()
            )?;
        }
    }
    Ok(0)
}
