//! The imperative lifecycle verbs (`stop`, `start`, `rm`) as library calls, so the CLI and
//! any other front end do the same thing: find the instance, take its lock, re-read its
//! record under the lock, call the driver, move the record through its state machine,
//! write it atomically and log an event.

use std::sync::Arc;

use anyhow::{Context, bail};

use crate::driver::{Checkpoint, Driver, Liveness, StopOutcome};
use crate::home::Home;
use crate::observe::{LookupError, find_record};
use crate::state::events::{Event, EventSink};
use crate::state::record::{Phase, Record};
use crate::util::lock::{self, FileLock};
use crate::util::text::error_chain;

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
    /// The record as it is now (a [`Record::placeholder`] when it cannot be read).
    pub record: Record,
    /// Why the record cannot be read, if it cannot: only `stop` and `rm -f` act on such an
    /// instance, and they never write its record.
    pub unreadable: Option<String>,
}

impl Locked {
    /// Refuse an instance whose record cannot be read, naming what still works.
    pub fn readable(self) -> anyhow::Result<Locked> {
        match &self.unreadable {
            None => Ok(self),
            Some(why) => bail!(
                "instance {} is left alone: its record cannot be read ({why}); \
                 clawfarm stop and clawfarm rm -f still work",
                self.record.clawid
            ),
        }
    }
}

/// Find `id` (CLAWID, name or unique prefix), take its lock and re-read its record: another
/// command may have changed it while we waited. An instance whose record cannot be read is
/// found by its folder and returned as a placeholder (see [`Locked::unreadable`]).
pub fn lock_record(home: &Home, id: &str, on_wait: &dyn Fn(&str, &str)) -> anyhow::Result<Locked> {
    let (clawid, unreadable) = match find_record(home, id) {
        Ok(r) => (r.clawid, false),
        Err(LookupError::Unreadable { clawid, .. }) => (clawid, true),
        Err(e) => return Err(e.into()),
    };
    let l = lock::lock(
        &home.instance_lock(&clawid),
        &format!("the lock of instance {clawid}"),
        None,
        |h| on_wait(&clawid, h),
    )?;
    match Record::read(&Record::path(home, &clawid)) {
        Ok(record) => Ok(Locked {
            _lock: l,
            record,
            unreadable: None,
        }),
        Err(e) if unreadable => Ok(Locked {
            _lock: l,
            record: Record::placeholder(&clawid),
            unreadable: Some(error_chain(&e)),
        }),
        Err(e) => Err(e.into()),
    }
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
        unreadable,
    } = locked(home, id, on_wait).await?;
    let outcome = driver.stop(&r).await?;
    if unreadable.is_none() {
        r.mark_stopped(by);
        r.write(home)?;
    }
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
        ..
    } = locked(home, id, on_wait).await?.readable()?;
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
        ..
    } = locked(home, &rec.clawid, quiet()).await?.readable()?;
    if r.runtime.boot_nonce != rec.runtime.boot_nonce {
        bail!(
            "instance {} was restarted by another command while we waited",
            r.clawid
        );
    }
    let events = EventSink::to_file(home.events_log());
    match result {
        Ok(()) => {
            r.mark_ready();
            r.write(home)?;
            events.emit(Event::new(
                &r.clawid,
                "wait-ready",
                "ok",
                "guest ready".into(),
            ));
            Ok(r)
        }
        Err(e) => {
            r.mark_unhealthy("wait-ready", format!("wait-ready: {e:#}"));
            r.write(home)?;
            events.emit(Event::new(
                &r.clawid,
                "wait-ready",
                "failed",
                format!("wait-ready: {e:#}"),
            ));
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
    let Locked {
        _lock,
        record: r,
        unreadable,
    } = locked(home, id, on_wait).await?;
    if let Some(why) = &unreadable
        && !force
    {
        bail!(
            "the record of instance {} cannot be read ({why}); rm -f removes it anyway",
            r.clawid
        );
    }
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
    let Locked {
        _lock, record: r, ..
    } = locked(home, id, on_wait).await?.readable()?;
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
        ..
    } = locked(home, id, on_wait).await?.readable()?;
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
        ..
    } = locked(home, id, on_wait).await?.readable()?;
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
    let Locked {
        _lock, record: r, ..
    } = locked(home, id, on_wait).await?.readable()?;
    driver.export_volume(&r, volume, dest).await?;
    Ok(r)
}
