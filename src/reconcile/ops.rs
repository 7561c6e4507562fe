//! The imperative lifecycle verbs (`stop`, `start`, `rm`) as library calls, so the CLI and
//! any other front end do the same thing: find the instance, take its lock, re-read its
//! record under the lock, call the driver, move the record through its state machine,
//! write it atomically and log an event.

use std::sync::Arc;

use anyhow::{Context, bail};

use crate::driver::{Checkpoint, Driver, Liveness, StopOutcome};
use crate::home::Home;
use crate::observe::find_record;
use crate::state::events::{Event, EventSink};
use crate::state::record::{Phase, Record};
use crate::util::lock::{self, FileLock};

/// Called once when an instance lock is busy, with the CLAWID and the holder.
pub type OnWait = Arc<dyn Fn(&str, &str) + Send + Sync>;

/// An [`OnWait`] that says nothing.
pub fn quiet() -> OnWait {
    Arc::new(|_, _| {})
}

/// An instance's record, read under its lock (held until this is dropped).
#[derive(Debug)]
pub struct Locked {
    _lock: FileLock,
    /// The record as it is now.
    pub record: Record,
}

/// Find `id` (CLAWID, name or unique prefix), take its lock and re-read its record: another
/// command may have changed it while we waited.
pub fn lock_record(home: &Home, id: &str, on_wait: &dyn Fn(&str, &str)) -> anyhow::Result<Locked> {
    let r = find_record(home, id)?;
    let l = lock::lock(
        &home.instance_lock(&r.clawid),
        &format!("the lock of instance {}", r.clawid),
        None,
        |h| on_wait(&r.clawid, h),
    )?;
    let record = Record::read(&Record::path(home, &r.clawid))?;
    Ok(Locked { _lock: l, record })
}

async fn locked(home: &Home, id: &str, on_wait: OnWait) -> anyhow::Result<Locked> {
    // The lock wait blocks; keep it off the async threads.
    let (home, id) = (home.clone(), id.to_string());
    tokio::task::spawn_blocking(move || lock_record(&home, &id, &*on_wait))
        .await
        .context("the lock task failed")?
}

/// Stop an instance (graceful, then forced) and record it stopped. `by` names who asked
/// (`clawfarm stop`), for the record and the event log.
pub async fn stop(
    home: &Home,
    driver: &dyn Driver,
    id: &str,
    by: &str,
    on_wait: OnWait,
) -> anyhow::Result<(Record, StopOutcome)> {
    let Locked {
        _lock,
        record: mut r,
    } = locked(home, id, on_wait).await?;
    let outcome = driver.stop(&r).await?;
    r.mark_stopped(by);
    r.write(home)?;
    EventSink::to_file(home.events_log()).emit(Event::new(
        &r.clawid,
        "stop",
        "ok",
        format!("{by} ({outcome})"),
    ));
    Ok((r, outcome))
}

/// Start a stopped instance; returns its record, booting. Use [`wait_ready`] to wait for
/// the guest.
pub async fn start(
    home: &Home,
    driver: &dyn Driver,
    id: &str,
    by: &str,
    on_wait: OnWait,
) -> anyhow::Result<Record> {
    let Locked {
        _lock,
        record: mut r,
    } = locked(home, id, on_wait).await?;
    if r.phase == Phase::Creating {
        bail!(
            "instance {} was never fully created; run clawfarm apply to finish it",
            r.clawid
        );
    }
    let rt = driver.start(&r).await?;
    r.mark_booting(rt);
    r.write(home)?;
    EventSink::to_file(home.events_log()).emit(Event::new(&r.clawid, "start", "ok", by.into()));
    Ok(r)
}

/// Wait until the guest of `rec` is ready, and record the outcome (ready, or unhealthy
/// with the reason). Takes the instance lock only to write the record.
pub async fn wait_ready(home: &Home, driver: &dyn Driver, rec: &Record) -> anyhow::Result<Record> {
    let result = driver.wait_ready(rec).await;
    let Locked {
        _lock,
        record: mut r,
    } = locked(home, &rec.clawid, quiet()).await?;
    if r.runtime.boot_nonce != rec.runtime.boot_nonce {
        bail!(
            "instance {} was restarted by another command while we waited",
            r.clawid
        );
    }
    match result {
        Ok(()) => {
            r.mark_ready();
            r.write(home)?;
            Ok(r)
        }
        Err(e) => {
            r.mark_unhealthy("wait-ready", format!("wait-ready: {e:#}"));
            r.write(home)?;
            Err(e.context(format!("{} did not become ready", r.clawid)))
        }
    }
}

/// Remove an instance: refused while it runs unless `force` (then it is stopped first).
/// Its volumes are kept unless `purge`.
pub async fn remove(
    home: &Home,
    driver: &dyn Driver,
    id: &str,
    force: bool,
    purge: bool,
    by: &str,
    on_wait: OnWait,
) -> anyhow::Result<Record> {
    let Locked { _lock, record: r } = locked(home, id, on_wait).await?;
    if let Liveness::Running(_) = driver.probe(&r) {
        if !force {
            bail!(
                "instance {} is running; stop it first or use rm -f",
                r.clawid
            );
        }
        driver.stop(&r).await?;
    }
    driver.remove(&r.clawid, purge).await?;
    EventSink::to_file(home.events_log()).emit(Event::new(
        &r.clawid,
        "remove",
        "ok",
        format!("{by}{}", if purge { " --purge" } else { "" }),
    ));
    Ok(r)
}

/// Take checkpoint `tag` of a running instance (under its lock).
pub async fn checkpoint(
    home: &Home,
    driver: &dyn Driver,
    id: &str,
    tag: &str,
    by: &str,
    on_wait: OnWait,
) -> anyhow::Result<(Record, Checkpoint)> {
    crate::driver::check_tag(tag)?;
    let Locked { _lock, record: r } = locked(home, id, on_wait).await?;
    let c = driver.checkpoint(&r, tag).await?;
    EventSink::to_file(home.events_log()).emit(Event::new(
        &r.clawid,
        "checkpoint",
        "ok",
        format!("{by}: {tag}"),
    ));
    Ok((r, c))
}

/// The checkpoints of an instance, oldest first.
pub async fn checkpoints(
    home: &Home,
    driver: &dyn Driver,
    id: &str,
) -> anyhow::Result<(Record, Vec<Checkpoint>)> {
    let r = find_record(home, id)?;
    let c = driver.checkpoints(&r).await?;
    Ok((r, c))
}

/// Put an instance back to checkpoint `tag`, running; the record says booting (use
/// [`wait_ready`]: a guest restored at a ready moment is ready at once).
pub async fn restore(
    home: &Home,
    driver: &dyn Driver,
    id: &str,
    tag: &str,
    by: &str,
    on_wait: OnWait,
) -> anyhow::Result<Record> {
    let Locked {
        _lock,
        record: mut r,
    } = locked(home, id, on_wait).await?;
    if r.phase == Phase::Creating {
        bail!(
            "instance {} was never fully created; run clawfarm apply to finish it",
            r.clawid
        );
    }
    let rt = driver.restore(&r, tag).await?;
    r.mark_booting(rt);
    r.write(home)?;
    EventSink::to_file(home.events_log()).emit(Event::new(
        &r.clawid,
        "restore",
        "ok",
        format!("{by}: {tag}"),
    ));
    Ok(r)
}

/// Save the running state of an instance and end its VM; `start` resumes it.
pub async fn suspend(
    home: &Home,
    driver: &dyn Driver,
    id: &str,
    by: &str,
    on_wait: OnWait,
) -> anyhow::Result<(Record, std::time::Duration)> {
    let Locked {
        _lock,
        record: mut r,
    } = locked(home, id, on_wait).await?;
    let took = driver.suspend(&r).await?;
    r.mark_suspended(by);
    r.write(home)?;
    EventSink::to_file(home.events_log()).emit(Event::new(
        &r.clawid,
        "suspend",
        "ok",
        format!("{by} ({:.1}s)", took.as_secs_f64()),
    ));
    Ok((r, took))
}

/// Copy the files of volume `volume` of a stopped instance into folder `dest`.
pub async fn export_volume(
    home: &Home,
    driver: &dyn Driver,
    id: &str,
    volume: &str,
    dest: &std::path::Path,
    on_wait: OnWait,
) -> anyhow::Result<Record> {
    let Locked { _lock, record: r } = locked(home, id, on_wait).await?;
    driver.export_volume(&r, volume, dest).await?;
    Ok(r)
}
