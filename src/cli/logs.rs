//! `clawfarm logs` and `clawfarm ssh`: operator access, through the driver (so they work
//! on every driver: the fake keeps a canned console and refuses `ssh` with a reason).

use std::io::{Read, Seek, SeekFrom, Write};
use std::path::Path;
use std::time::Duration;

use anyhow::{Context, bail};
use clap::Args;

use super::Ctx;
use crate::desired::gateway_port;
use crate::driver::boot::{GuestEvent, StepState};
use crate::driver::{Driver, Liveness, LogKind};
use crate::observe::{LookupError, Observed, find_record, status_of};
use crate::state::record::Record;
use crate::util::text::error_chain;
use crate::util::text::prefix;

/// Arguments of `clawfarm logs`.
#[derive(Debug, Args, Clone)]
pub struct LogsArgs {
    /// CLAWID, name, or unique CLAWID prefix.
    pub id: String,
    /// Keep printing new output until the VM stops (with --bootstrap: until the
    /// bootstrap ends).
    #[arg(short, long)]
    pub follow: bool,
    /// The serial console of the current boot.
    #[arg(long, group = "which")]
    pub serial: bool,
    /// The guest's bootstrap phases, with the log tail of a failed one.
    #[arg(long, group = "which")]
    pub bootstrap: bool,
    /// QEMU's own output and clawfarm's start/stop lines.
    #[arg(long, group = "which")]
    pub qemu: bool,
}

/// Arguments of `clawfarm ssh`.
#[derive(Debug, Args, Clone)]
pub struct SshArgs {
    /// CLAWID, name, or unique CLAWID prefix.
    pub id: String,
    /// Command to run instead of a login shell.
    #[arg(
        trailing_var_arg = true,
        allow_hyphen_values = true,
        value_name = "CMD"
    )]
    pub command: Vec<String>,
}

/// `clawfarm logs`.
pub fn logs(ctx: &Ctx, args: &LogsArgs) -> anyhow::Result<u8> {
    // Logs of an instance whose record cannot be read are still in its folder.
    let rec = match find_record(&ctx.home, &args.id) {
        Err(e @ LookupError::Unreadable { .. }) => {
            eprintln!("warning: {}", error_chain(&e));
            let LookupError::Unreadable { clawid, .. } = e else {
                unreachable!()
            };
            Record::placeholder(&clawid)
        }
        r => r?,
    };
    let drv = ctx.driver()?;
    let running = || drv.live_runtime(&rec).is_some();
    let mut out = std::io::stdout().lock();
    if args.serial || args.qemu {
        let kind = if args.serial {
            LogKind::Serial
        } else {
            LogKind::Vmm
        };
        let path = drv.log_path(&rec.clawid, kind);
        if !path.exists() && !args.follow {
            bail!("instance {} has no {} yet", rec.clawid, path.display());
        }
        follow_file(&path, 0, args.follow, &running, &mut out)?;
    } else if args.bootstrap {
        let nonce = boot_nonce(&*drv, &rec)?;
        let mut shown = 0;
        loop {
            let st = drv.boot_report(&rec.clawid, &nonce)?;
            for ev in &st.events[shown.min(st.events.len())..] {
                writeln!(out, "{}", format_event(ev))?;
            }
            shown = st.events.len();
            out.flush()?;
            if !args.follow || st.done || st.failed.is_some() || !running() {
                if st.events.is_empty() {
                    writeln!(
                        out,
                        "(no bootstrap report yet from boot {})",
                        prefix(&nonce, 8)
                    )?;
                }
                break;
            }
            std::thread::sleep(Duration::from_millis(500));
        }
    } else {
        summary(&*drv, &rec, &mut out)?;
        if args.follow {
            let serial = drv.log_path(&rec.clawid, LogKind::Serial);
            let len = std::fs::metadata(&serial).map(|m| m.len()).unwrap_or(0);
            follow_file(&serial, len, true, &running, &mut out)?;
        }
    }
    Ok(0)
}

/// State, bootstrap phases and the end of the serial console.
fn summary(drv: &dyn Driver, rec: &Record, out: &mut dyn Write) -> anyhow::Result<()> {
    let o = Observed::of(drv, rec.clone());
    let live = o.live.clone();
    let (status, last_error) = status_of(drv, &o);
    writeln!(out, "{} ({})  status: {status}", rec.clawid, rec.name)?;
    let rt = drv.live_runtime(rec).unwrap_or_else(|| rec.runtime.clone());
    if let Some(a) = &rt.accel {
        writeln!(out, "  accel:    {a}")?;
    }
    match &live {
        Liveness::Running(p) => writeln!(
            out,
            "  qemu:     pid {}{}{}",
            p.pid,
            rt.ssh_port
                .map(|p| format!(", ssh 127.0.0.1:{p}"))
                .unwrap_or_default(),
            rt.started_at
                .map(|t| format!(", started {}", humantime::format_rfc3339_seconds(t)))
                .unwrap_or_default()
        )?,
        Liveness::Exited => writeln!(out, "  qemu:     exited (see clawfarm logs --qemu)")?,
        Liveness::NotStarted => writeln!(out, "  qemu:     not running")?,
    }
    if let Some(p) = gateway_port(&rec.resources) {
        writeln!(out, "  gateway:  127.0.0.1:{} -> guest {}", p.host, p.guest)?;
    }
    if let Some(e) = &last_error {
        writeln!(out, "  error:    {}", e.replace('\n', "\n            "))?;
    }
    if let Some(nonce) = rt.boot_nonce.as_deref() {
        let st = drv.boot_report(&rec.clawid, nonce)?;
        writeln!(
            out,
            "bootstrap (boot {}): {}",
            prefix(nonce, 8),
            st.summary()
        )?;
        for ev in &st.events {
            writeln!(out, "  {}", format_event(ev).replace('\n', "\n  "))?;
        }
    }
    let serial = drv.log_path(&rec.clawid, LogKind::Serial);
    let tail = crate::driver::qemu::read_tail(&serial, 64 * 1024);
    let lines: Vec<&str> = tail.lines().collect();
    let from = lines.len().saturating_sub(20);
    writeln!(
        out,
        "serial console ({}, last {} lines):",
        serial.display(),
        lines.len() - from
    )?;
    for l in &lines[from..] {
        writeln!(out, "  {l}")?;
    }
    out.flush()?;
    Ok(())
}

fn boot_nonce(drv: &dyn Driver, rec: &Record) -> anyhow::Result<String> {
    drv.live_runtime(rec)
        .and_then(|r| r.boot_nonce)
        .or_else(|| rec.runtime.boot_nonce.clone())
        .ok_or_else(|| anyhow::anyhow!("instance {} was never started", rec.clawid))
}

/// One status line for people: `TS  PHASE  STATUS [(exit N)]`, then the tail of a failure.
fn format_event(ev: &GuestEvent) -> String {
    let state = match ev.state {
        StepState::Started => "started".to_string(),
        StepState::Ok => "ok".to_string(),
        StepState::Failed => format!("FAILED (exit {})", ev.code.unwrap_or(-1)),
        StepState::Skipped => "skipped (already installed on this disk)".to_string(),
    };
    let mut s = format!(
        "{:<20}  {:<24}  {state}",
        ev.ts.as_deref().unwrap_or("-"),
        ev.phase.to_string()
    );
    if let Some(t) = ev.tail.as_deref().filter(|t| !t.trim().is_empty()) {
        for l in t.lines() {
            s.push_str("\n    | ");
            s.push_str(l);
        }
    }
    s
}

/// Print `path` from `offset`; with `follow`, keep printing what is appended (starting
/// over when the file is truncated by a new boot) until `running` says the VM is gone.
fn follow_file(
    path: &Path,
    mut offset: u64,
    follow: bool,
    running: &dyn Fn() -> bool,
    out: &mut dyn Write,
) -> anyhow::Result<()> {
    loop {
        let len = std::fs::metadata(path).map(|m| m.len()).unwrap_or(0);
        if len < offset {
            offset = 0;
        }
        if len > offset {
            let mut f = std::fs::File::open(path)
                .with_context(|| format!("cannot read {}", path.display()))?;
            f.seek(SeekFrom::Start(offset))?;
            let mut buf = Vec::new();
            f.take(len - offset).read_to_end(&mut buf)?;
            out.write_all(&buf)?;
            out.flush()?;
            offset = len;
            continue;
        }
        if !follow || !running() {
            return Ok(());
        }
        std::thread::sleep(Duration::from_millis(300));
    }
}

/// `clawfarm ssh`.
pub fn ssh(ctx: &Ctx, args: &SshArgs) -> anyhow::Result<u8> {
    use std::os::unix::process::CommandExt;
    let rec = find_record(&ctx.home, &args.id)?;
    let drv = ctx.driver()?;
    let mut cmd = drv.ssh_command(&rec, &args.command)?;
    // exec only returns on failure.
    let e = cmd.exec();
    Err(e).context("cannot run ssh")
}
