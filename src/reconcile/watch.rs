//! Watch mode: reconcile a GitOps folder continuously.
//!
//! Triggers: file events in the folder (debounced; the folder itself is watched, so saves
//! by rename and `git checkout` swapping many files are seen), a periodic resync (drift no
//! event reports: a dead VM, a record changed by another command), the exit of a running VM
//! (a pidfd per QEMU process: the kernel says when it exits, no polling), and the end of an
//! instance's restart backoff. SIGINT/SIGTERM abandon the pass in progress (every action is
//! crash-safe) and exit 0 with the VMs left running.
//!
//! A VM that exits unexpectedly is restarted with exponential backoff plus jitter, capped;
//! an instance in backoff is left out of passes, so it never starves the others.

use std::collections::{BTreeMap, BTreeSet};
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use tokio::sync::mpsc;
use tokio::time::Instant;

use crate::desired::{Desired, DesiredInstance};
use crate::driver::{Driver, Liveness};
use crate::home::Home;
use crate::input::manifest::DesiredState;
use crate::observe::Observed;
use crate::reconcile::exec::ExecOptions;
use crate::reconcile::pass;
use crate::state::events::{Event, EventSink};
use crate::state::record::{Origin, Phase, Record};

/// Restart backoff policy.
#[derive(Debug, Clone, Copy)]
pub struct Backoff {
    /// Delay after the first unexpected exit.
    pub base: Duration,
    /// Upper bound of the delay.
    pub cap: Duration,
    /// A VM that ran this long without exiting resets its crash streak.
    pub stable_after: Duration,
}

impl Default for Backoff {
    fn default() -> Self {
        Backoff {
            base: Duration::from_secs(2),
            cap: Duration::from_secs(300),
            stable_after: Duration::from_secs(600),
        }
    }
}

impl Backoff {
    /// Delay before restart number `streak` (1-based), with ±20 % jitter.
    pub fn delay(&self, streak: u32, jitter: f64) -> Duration {
        let exp = self
            .base
            .saturating_mul(1u32 << streak.saturating_sub(1).min(20));
        let d = exp.min(self.cap);
        d.mul_f64(1.0 + 0.2 * jitter.clamp(-1.0, 1.0))
    }
}

/// Watch configuration.
#[derive(Debug, Clone)]
pub struct WatchConfig {
    /// Manifest folder.
    pub dir: PathBuf,
    /// Periodic resync.
    pub resync: Duration,
    /// Quiet time after the last file event before reconciling.
    pub debounce: Duration,
    /// Longest a steady stream of events can postpone a reconcile.
    pub max_delay: Duration,
    /// Delete instances whose manifest is gone (default off: deleting a file does not
    /// delete a VM unless asked; volumes are kept either way).
    pub prune: bool,
    /// Executor parallelism.
    pub parallelism: usize,
    /// Wait for ready in passes (false: passes return after start; watch notices later).
    pub wait: bool,
    /// Restart backoff.
    pub backoff: Backoff,
}

impl WatchConfig {
    /// Defaults for `dir`.
    pub fn new(dir: PathBuf) -> Self {
        WatchConfig {
            dir,
            resync: Duration::from_secs(30),
            debounce: Duration::from_millis(300),
            max_delay: Duration::from_secs(5),
            prune: false,
            parallelism: 4,
            wait: false,
            backoff: Backoff::default(),
        }
    }
}

/// Why a pass runs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Trigger {
    /// First pass.
    Initial,
    /// Manifest files changed.
    Files,
    /// Periodic resync.
    Resync,
    /// A VM exited.
    VmExit(String),
    /// A requeue deadline (backoff expiry, failed pass retry).
    Requeue,
    /// Stop watching.
    Shutdown,
}

/// The debouncer: turns a stream of raw file events into few triggers. Separate from I/O
/// so it can be tested under tokio's paused clock.
#[derive(Debug)]
pub struct Debouncer {
    rx: mpsc::UnboundedReceiver<()>,
    debounce: Duration,
    max_delay: Duration,
}

impl Debouncer {
    /// Debounce events from `rx`.
    pub fn new(rx: mpsc::UnboundedReceiver<()>, debounce: Duration, max_delay: Duration) -> Self {
        Debouncer {
            rx,
            debounce,
            max_delay,
        }
    }

    /// Wait for the next burst of events to settle: returns once `debounce` has passed
    /// without an event (or `max_delay` after the first). `None` when the sender is gone.
    pub async fn next(&mut self) -> Option<()> {
        self.rx.recv().await?;
        let first = Instant::now();
        loop {
            let quiet = tokio::time::sleep(self.debounce);
            let cap = tokio::time::sleep_until(first + self.max_delay);
            tokio::select! {
                ev = self.rx.recv() => {
                    ev?;
                }
                _ = quiet => return Some(()),
                _ = cap => {
                    // Drain what is queued: it is covered by this pass.
                    while self.rx.try_recv().is_ok() {}
                    return Some(());
                }
            }
        }
    }
}

/// Start a recursive watch of `dir`, sending `()` for every relevant event. The returned
/// watcher must be kept alive.
pub fn watch_folder(
    dir: &std::path::Path,
    tx: mpsc::UnboundedSender<()>,
) -> notify::Result<notify::RecommendedWatcher> {
    use notify::{EventKind, RecursiveMode, Watcher};
    let root = dir.to_path_buf();
    let mut w = notify::recommended_watcher(move |res: notify::Result<notify::Event>| {
        if let Ok(ev) = res {
            let relevant = !matches!(ev.kind, EventKind::Access(_))
                && ev.paths.iter().any(|p| {
                    // Ignore hidden files and folders below the watched folder (.git
                    // internals, editor temp files) and backup files.
                    let rel = p.strip_prefix(&root).unwrap_or(p);
                    !rel.components()
                        .any(|c| c.as_os_str().to_string_lossy().starts_with('.'))
                        && !p.to_string_lossy().ends_with('~')
                });
            if relevant {
                let _ = tx.send(());
            }
        }
    })?;
    w.watch(dir, RecursiveMode::Recursive)?;
    Ok(w)
}

/// What one watch pass needs from the outside world (real: manifests + driver; tests:
/// stubs under a paused clock).
#[async_trait::async_trait]
pub trait PassRunner: Send {
    /// Load the desired state.
    async fn desired(&mut self) -> Desired;
}

/// Counters of a watch run (for tests and the final log line).
#[derive(Debug, Default, Clone)]
pub struct WatchStats {
    /// Passes run, by trigger name.
    pub passes: BTreeMap<String, usize>,
    /// Restarts scheduled after unexpected exits.
    pub restarts: usize,
}

impl WatchStats {
    /// Total passes.
    pub fn total(&self) -> usize {
        self.passes.values().sum()
    }
}

fn trigger_name(t: &Trigger) -> &'static str {
    match t {
        Trigger::Initial => "initial",
        Trigger::Files => "files",
        Trigger::Resync => "resync",
        Trigger::VmExit(_) => "vm-exit",
        Trigger::Requeue => "requeue",
        Trigger::Shutdown => "shutdown",
    }
}

/// A VM that should run but does not, after having run (or failed to start): a crash.
fn crashed(o: &Observed, d: &DesiredInstance) -> bool {
    d.state == DesiredState::Running
        && match o.live {
            Liveness::Exited => true,
            Liveness::NotStarted => o.record.phase == Phase::Failed,
            Liveness::Running(_) => false,
        }
}

/// Apply the backoff policy before a pass: instances whose backoff has not expired are
/// left out (and protected); those allowed to restart get their counters bumped. Returns
/// the earliest backoff expiry, for a requeue.
fn backoff_gate(
    home: &Home,
    driver: &dyn Driver,
    desired: &mut Desired,
    cfg: &WatchConfig,
    events: &EventSink,
    stats: &mut WatchStats,
) -> Option<SystemTime> {
    let (actual, _) = crate::observe::observe(home, driver);
    let by_id: BTreeMap<&str, &Observed> = actual
        .iter()
        .map(|o| (o.record.clawid.as_str(), o))
        .collect();
    let now = SystemTime::now();
    let mut hold: BTreeSet<String> = BTreeSet::new();
    let mut earliest: Option<SystemTime> = None;
    for d in &desired.instances {
        let Some(o) = by_id.get(d.clawid.as_str()) else {
            continue;
        };
        let r = &o.record;
        // A VM that has been up long enough forgets its crash streak.
        if let (Liveness::Running(_), Some(start)) = (&o.live, r.runtime.started_at) {
            if r.crash_streak > 0
                && now.duration_since(start).unwrap_or_default() >= cfg.backoff.stable_after
            {
                update_record(home, &r.clawid, |r| {
                    r.crash_streak = 0;
                    r.backoff_until = None;
                });
            }
            continue;
        }
        if !crashed(o, d) {
            continue;
        }
        match r.backoff_until {
            Some(until) if until > now => {
                hold.insert(d.name.clone());
                earliest = Some(earliest.map_or(until, |e| e.min(until)));
            }
            _ => {
                let streak = r.crash_streak + 1;
                let jitter = rand::random::<f64>() * 2.0 - 1.0;
                let delay = cfg.backoff.delay(streak, jitter);
                let until = now + delay;
                update_record(home, &r.clawid, |r| {
                    r.restart_count += 1;
                    r.crash_streak = streak;
                    r.backoff_until = Some(until);
                });
                stats.restarts += 1;
                events.emit(Event::new(
                    &r.clawid,
                    "restart",
                    "scheduled",
                    format!(
                        "{}; restart {} now, backoff {} ms before the next one",
                        if o.live == Liveness::Exited {
                            "exited unexpectedly"
                        } else {
                            "last start failed"
                        },
                        r.restart_count + 1,
                        delay.as_millis()
                    ),
                ));
            }
        }
    }
    if !hold.is_empty() {
        desired.instances.retain(|d| !hold.contains(&d.name));
        desired.protected.extend(hold);
    }
    earliest
}

fn update_record(home: &Home, clawid: &str, f: impl FnOnce(&mut Record)) {
    let Ok(_l) = crate::state::lock_instance(home, clawid, Some(Duration::from_secs(5))) else {
        return;
    };
    if let Ok(mut r) = Record::read(&Record::path(home, clawid)) {
        f(&mut r);
        r.touch();
        if let Err(e) = r.write(home) {
            tracing::warn!("{e}");
        }
    }
}

/// Refresh the records of booting VMs from what their guests report (youki-style: records
/// refreshed against live processes). Returns true while some VM is still booting.
pub fn refresh_phases(home: &Home, driver: &dyn Driver, events: &EventSink) -> bool {
    use crate::driver::GuestHealth;
    let (actual, _) = crate::observe::observe(home, driver);
    let mut booting = false;
    for o in actual {
        if o.record.phase != Phase::Booting || !matches!(o.live, Liveness::Running(_)) {
            continue;
        }
        match driver.guest_health(&o.record) {
            GuestHealth::Ready => {
                update_record(home, &o.record.clawid, |r| r.mark_ready());
                events.emit(Event::new(
                    &o.record.clawid,
                    "ready",
                    "ok",
                    "guest ready".into(),
                ));
            }
            GuestHealth::Unhealthy { phase, code, .. } => {
                let msg = format!("guest phase {phase} failed with exit code {code}");
                update_record(home, &o.record.clawid, |r| {
                    r.mark_unhealthy("PhaseFailed", msg.clone())
                });
                events.emit(Event::new(&o.record.clawid, "ready", "failed", msg));
            }
            GuestHealth::Booting { .. } => booting = true,
        }
    }
    booting
}

/// Futures that resolve when running VMs exit (pidfd: the kernel wakes us, no polling).
fn exit_watchers(
    home: &Home,
    driver: &dyn Driver,
    tx: &mpsc::UnboundedSender<String>,
    watching: &mut BTreeMap<String, (u32, tokio::task::JoinHandle<()>)>,
) {
    let (actual, _) = crate::observe::observe(home, driver);
    let live: BTreeMap<String, u32> = actual
        .iter()
        .filter_map(|o| match &o.live {
            Liveness::Running(p) if p.pid > 0 => Some((o.record.clawid.clone(), p.pid)),
            _ => None,
        })
        .collect();
    watching.retain(|id, (pid, h)| {
        let keep = live.get(id) == Some(pid) && !h.is_finished();
        if !keep {
            h.abort();
        }
        keep
    });
    for (id, pid) in live {
        if watching.contains_key(&id) {
            continue;
        }
        let tx = tx.clone();
        let id2 = id.clone();
        let h = tokio::spawn(async move {
            if wait_pid_exit(pid).await.is_ok() {
                let _ = tx.send(id2);
            }
        });
        watching.insert(id, (pid, h));
    }
}

/// Resolve when process `pid` exits (pidfd readable).
pub async fn wait_pid_exit(pid: u32) -> std::io::Result<()> {
    use rustix::process::{Pid, PidfdFlags, pidfd_open};
    use tokio::io::unix::AsyncFd;
    let pid = Pid::from_raw(pid as i32).ok_or_else(|| std::io::Error::other("pid 0"))?;
    let fd = pidfd_open(pid, PidfdFlags::NONBLOCK)?;
    // SAFETY: the AsyncFd owns the pidfd (an OwnedFd), so the fd stays open for as long
    // as it is registered and is closed only after deregistration on drop.
    let afd = unsafe { AsyncFd::register_with_interest(fd, tokio::io::Interest::READABLE) }
        .map_err(|e| e.into_parts().1)?;
    let _guard = afd.readable().await?;
    Ok(())
}

/// Run watch until `shutdown` resolves. The caller holds the apply lock.
pub async fn run<R: PassRunner>(
    home: &Home,
    driver: Arc<dyn Driver>,
    cfg: &WatchConfig,
    runner: &mut R,
    mut files: Debouncer,
    events: EventSink,
    shutdown: impl std::future::Future<Output = ()>,
) -> WatchStats {
    tokio::pin!(shutdown);
    let mut stats = WatchStats::default();
    let (exit_tx, mut exit_rx) = mpsc::unbounded_channel::<String>();
    let mut watching = BTreeMap::new();
    let mut trigger = Trigger::Initial;
    let mut next_resync = Instant::now() + cfg.resync;
    let mut requeue: Option<Instant>;
    loop {
        *stats
            .passes
            .entry(trigger_name(&trigger).to_string())
            .or_insert(0) += 1;
        tracing::info!(trigger = trigger_name(&trigger), "reconciling");
        let pass_started = Instant::now();
        let trigger_word = trigger_name(&trigger);
        let pass = async {
            let mut desired = runner.desired().await;
            // The backoff gate writes records, so the one observation this pass plans from
            // is taken after it.
            let earliest = backoff_gate(home, &*driver, &mut desired, cfg, &events, &mut stats);
            let prepared = pass::prepare(home, &*driver, desired, cfg.prune);
            for dg in &prepared.desired.diagnostics {
                tracing::warn!("{dg}");
                events.emit(Event::new("-", "validate", "failed", dg.to_string()));
            }
            let exec = ExecOptions {
                parallelism: cfg.parallelism,
                wait: cfg.wait,
                stop_after: None,
                lock_timeout: Some(Duration::from_secs(30)),
            };
            let out = prepared
                .execute(home, driver.clone(), Origin::Manifest, events.clone(), exec)
                .await;
            if !out.plan.is_empty() {
                tracing::info!("{}", out.report.summary());
            }
            // One line per pass: the dashboard's /metrics reads durations from here.
            events.emit(Event::new(
                "-",
                "reconcile",
                if out.ok() { "ok" } else { "failed" },
                format!(
                    "trigger={trigger_word} seconds={:.3} changes={}",
                    pass_started.elapsed().as_secs_f64(),
                    out.report.changes.len()
                ),
            ));
            (out.requeue_after, earliest)
        };
        tokio::select! {
            (requeue_after, earliest) = pass => {
                let now_sys = SystemTime::now();
                let backoff_in = earliest.map(|t| t.duration_since(now_sys).unwrap_or_default());
                requeue = match (requeue_after, backoff_in) {
                    (Some(a), Some(b)) => Some(Instant::now() + a.min(b)),
                    (Some(a), None) | (None, Some(a)) => Some(Instant::now() + a),
                    (None, None) => None,
                };
            }
            _ = &mut shutdown => {
                tracing::info!("shutdown requested during a pass; abandoning it (actions are crash-safe)");
                break;
            }
        }
        exit_watchers(home, &*driver, &exit_tx, &mut watching);

        // Wait for the next trigger. While a guest boots, its record is refreshed from its
        // own reports every 2 s (cheap: records only, no pass over the manifests).
        trigger = loop {
            let booting = refresh_phases(home, &*driver, &events);
            let refresh_sleep = async {
                if booting {
                    tokio::time::sleep(Duration::from_secs(2).min(cfg.resync)).await
                } else {
                    std::future::pending().await
                }
            };
            let requeue_sleep = async {
                match requeue {
                    Some(t) => tokio::time::sleep_until(t).await,
                    None => std::future::pending().await,
                }
            };
            tokio::select! {
                _ = &mut shutdown => break Trigger::Shutdown,
                f = files.next() => match f {
                    Some(()) => break Trigger::Files,
                    None => break Trigger::Shutdown,
                },
                _ = tokio::time::sleep_until(next_resync) => break Trigger::Resync,
                Some(id) = exit_rx.recv() => {
                    events.emit(Event::new(&id, "exited", "observed", "QEMU process exited".into()));
                    break Trigger::VmExit(id);
                }
                _ = requeue_sleep => break Trigger::Requeue,
                _ = refresh_sleep => continue,
            }
        };
        if trigger == Trigger::Shutdown {
            break;
        }
        if trigger == Trigger::Resync {
            next_resync = Instant::now() + cfg.resync;
        }
    }
    for (_, (_, h)) in watching {
        h.abort();
    }
    stats
}
