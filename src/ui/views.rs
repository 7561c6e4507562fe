//! What the dashboard shows, as data: built from the same library calls as the CLI verbs
//! (`observe::rows`, the driver's boot report and logs, `store::bundle::list`,
//! `reconcile::pass::prepare`), serialized as the JSON API and rendered by the pages.
//! Nothing here holds a secret value: rows and records carry digests only, and the
//! manifest text is shown with its param values hidden.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::time::{Duration, Instant, SystemTime};

use serde::Serialize;

use crate::driver::boot::StepState;
use crate::driver::{Driver, Liveness, LogKind};
use crate::home::Home;
use crate::observe::{self, InstanceRow, Observed};
use crate::state::events::Event;
use crate::state::record::Record;

/// One instance in the instances table: the `ps -o json` row plus what only the dashboard
/// shows (phase, uptime, CPU and memory of its QEMU).
#[derive(Debug, Clone, Serialize)]
pub struct InstanceView {
    /// The `ps -o json` row (its fields are flattened in the JSON).
    #[serde(flatten)]
    pub row: InstanceRow,
    /// The record's phase (`creating`, `booting`, `ready`, …).
    pub phase: String,
    /// Seconds since its QEMU started, when running.
    pub uptime_secs: Option<u64>,
    /// CPU use of its QEMU since the previous sample, in percent of one core.
    pub cpu_percent: Option<f64>,
    /// Resident memory of its QEMU, in bytes.
    pub memory_bytes: Option<u64>,
}

/// CPU time samples of QEMU processes, to turn cumulative ticks into a percentage.
#[derive(Debug, Default)]
pub struct CpuSampler {
    last: Mutex<HashMap<u32, (u64, Instant)>>,
}

impl CpuSampler {
    /// CPU use of `pid` since the previous call for it (`None` on the first call).
    pub fn sample(&self, pid: u32) -> Option<f64> {
        let ticks = proc_cpu_ticks(pid)?;
        let now = Instant::now();
        let mut last = self.last.lock().expect("cpu sampler lock");
        let prev = last.insert(pid, (ticks, now));
        let (t0, i0) = prev?;
        let dt = now.duration_since(i0).as_secs_f64();
        if dt < 0.05 || ticks < t0 {
            return None;
        }
        // SAFETY: sysconf has no preconditions.
        let hz = unsafe { libc::sysconf(libc::_SC_CLK_TCK) }.max(1) as f64;
        Some(((ticks - t0) as f64 / hz / dt * 100.0 * 10.0).round() / 10.0)
    }
}

/// utime + stime of a process, in clock ticks.
fn proc_cpu_ticks(pid: u32) -> Option<u64> {
    let s = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // The command name may hold spaces and parentheses; fields follow the last ')'.
    let rest = &s[s.rfind(')')? + 2..];
    let f: Vec<&str> = rest.split_whitespace().collect();
    // After the name: state is field 3, so utime (14) and stime (15) are at 11 and 12.
    Some(f.get(11)?.parse::<u64>().ok()? + f.get(12)?.parse::<u64>().ok()?)
}

/// Resident memory of a process, in bytes.
fn proc_rss(pid: u32) -> Option<u64> {
    let s = std::fs::read_to_string(format!("/proc/{pid}/statm")).ok()?;
    let pages: u64 = s.split_whitespace().nth(1)?.parse().ok()?;
    // SAFETY: sysconf has no preconditions.
    let page = unsafe { libc::sysconf(libc::_SC_PAGESIZE) }.max(1) as u64;
    Some(pages * page)
}

fn phase_word(r: &Record) -> String {
    serde_json::to_value(r.phase)
        .ok()
        .and_then(|v| v.as_str().map(String::from))
        .unwrap_or_else(|| format!("{:?}", r.phase).to_lowercase())
}

/// The view of one observed instance.
pub fn instance_view(driver: &dyn Driver, o: &Observed, cpu: &CpuSampler) -> InstanceView {
    let row = observe::row(driver, o);
    let pid = row.pid;
    let running = matches!(o.live, Liveness::Running(_));
    let started = driver
        .live_runtime(&o.record)
        .and_then(|r| r.started_at)
        .or(o.record.runtime.started_at);
    InstanceView {
        phase: phase_word(&o.record),
        uptime_secs: started.filter(|_| running).map(|t| {
            SystemTime::now()
                .duration_since(t)
                .unwrap_or_default()
                .as_secs()
        }),
        cpu_percent: pid.and_then(|p| cpu.sample(p)),
        memory_bytes: pid.and_then(proc_rss),
        row,
    }
}

/// Every instance, plus the records that could not be read (as messages).
pub fn instances(
    home: &Home,
    driver: &dyn Driver,
    cpu: &CpuSampler,
) -> (Vec<InstanceView>, Vec<String>) {
    let (actual, errors) = observe::observe(home, driver);
    (
        actual
            .iter()
            .map(|o| instance_view(driver, o, cpu))
            .collect(),
        errors.iter().map(|e| chain(e)).collect(),
    )
}

/// One bar of the boot timeline: a phase, when it started and how long it took, in
/// seconds from the QEMU start.
#[derive(Debug, Clone, Serialize)]
pub struct PhaseBar {
    /// The phase as displayed (`boot`, `cloud-init`, `install`, `provision[0] setup`, …).
    pub phase: String,
    /// `started` (still running), `ok` or `failed`.
    pub state: String,
    /// Seconds from the QEMU start to the phase start.
    pub start: f64,
    /// How long it took (so far, when still running).
    pub seconds: f64,
}

/// One earlier boot, from the event log: started, and how long until ready (or failed).
#[derive(Debug, Clone, Serialize)]
pub struct PastBoot {
    /// When it started.
    #[serde(with = "crate::state::record::rfc3339")]
    pub started: SystemTime,
    /// Seconds from start to ready/failed; `None` when it never got there.
    pub seconds: Option<f64>,
    /// `ok`, `failed`, or `unknown`.
    pub result: String,
}

/// One status line of the current boot.
#[derive(Debug, Clone, Serialize)]
pub struct BootLine {
    /// Guest timestamp.
    pub ts: Option<String>,
    /// Phase.
    pub phase: String,
    /// `started`, `ok`, `failed`.
    pub state: String,
    /// Exit code.
    pub code: Option<i32>,
    /// Log tail of a failed phase.
    pub tail: Option<String>,
}

/// The current boot of an instance.
#[derive(Debug, Clone, Serialize, Default)]
pub struct BootView {
    /// Its nonce (first 8 characters).
    pub boot: Option<String>,
    /// `done`, `failed: install (exit 3)`, `start: started`, `waiting for guest`.
    pub summary: String,
    /// The timeline.
    pub phases: Vec<PhaseBar>,
    /// The status lines.
    pub lines: Vec<BootLine>,
}

fn state_word(s: StepState) -> &'static str {
    match s {
        StepState::Started => "started",
        StepState::Ok => "ok",
        StepState::Failed => "failed",
        StepState::Skipped => "skipped",
    }
}

fn secs_between(a: SystemTime, b: SystemTime) -> f64 {
    b.duration_since(a).unwrap_or_default().as_secs_f64()
}

/// The current boot's report and timeline.
pub fn boot_view(driver: &dyn Driver, rec: &Record) -> BootView {
    let rt = driver
        .live_runtime(rec)
        .unwrap_or_else(|| rec.runtime.clone());
    let Some(nonce) = rt.boot_nonce.clone() else {
        return BootView {
            summary: "never started".into(),
            ..Default::default()
        };
    };
    let st = driver.boot_report(&rec.clawid, &nonce).unwrap_or_default();
    let now = SystemTime::now();
    let parse = |ts: &Option<String>| {
        ts.as_deref()
            .and_then(|t| humantime::parse_rfc3339_weak(t.trim_end_matches('Z')).ok())
    };
    let origin = rt
        .started_at
        .or_else(|| st.events.iter().find_map(|e| parse(&e.ts)))
        .unwrap_or(now);
    let mut phases: Vec<PhaseBar> = Vec::new();
    let mut open: HashMap<String, usize> = HashMap::new();
    if let Some(first) = st.events.iter().find_map(|e| parse(&e.ts)) {
        phases.push(PhaseBar {
            phase: "boot".into(),
            state: "ok".into(),
            start: 0.0,
            seconds: secs_between(origin, first),
        });
    } else if rt.started_at.is_some()
        && driver.live_runtime(rec).is_some()
        && !st.done
        && st.failed.is_none()
    {
        phases.push(PhaseBar {
            phase: "boot".into(),
            state: "started".into(),
            start: 0.0,
            seconds: secs_between(origin, now),
        });
    }
    for e in &st.events {
        let name = e.phase.to_string();
        let Some(t) = parse(&e.ts) else { continue };
        match e.state {
            StepState::Started => {
                open.insert(name.clone(), phases.len());
                phases.push(PhaseBar {
                    phase: name,
                    state: "started".into(),
                    start: secs_between(origin, t),
                    seconds: secs_between(t, now),
                });
            }
            s => match open.remove(&name) {
                Some(i) => {
                    let b = &mut phases[i];
                    b.state = state_word(s).into();
                    b.seconds = (secs_between(origin, t) - b.start).max(0.0);
                }
                None => phases.push(PhaseBar {
                    phase: name,
                    state: state_word(s).into(),
                    start: secs_between(origin, t),
                    seconds: 0.0,
                }),
            },
        }
    }
    // A phase still `started` after the boot ended (or failed) did not keep running.
    if st.done || st.failed.is_some() || driver.live_runtime(rec).is_none() {
        for b in &mut phases {
            if b.state == "started" && b.phase != "boot" {
                b.state = "unknown".into();
                b.seconds = 0.0;
            }
        }
    }
    BootView {
        boot: Some(crate::util::text::prefix(&nonce, 8).to_string()),
        summary: st.summary(),
        lines: st
            .events
            .iter()
            .map(|e| BootLine {
                ts: e.ts.clone(),
                phase: e.phase.to_string(),
                state: state_word(e.state).into(),
                code: e.code,
                tail: e.tail.clone(),
            })
            .collect(),
        phases,
    }
}

/// Earlier boots of `clawid` from the event log (oldest first, at most `max`).
pub fn past_boots(events: &[Event], clawid: &str, max: usize) -> Vec<PastBoot> {
    let mut out: Vec<PastBoot> = Vec::new();
    let mut open: Option<SystemTime> = None;
    for e in events.iter().filter(|e| e.instance == clawid) {
        match (e.action.as_str(), e.result.as_str()) {
            ("start", "ok") => {
                if let Some(s) = open.take() {
                    out.push(PastBoot {
                        started: s,
                        seconds: None,
                        result: "unknown".into(),
                    });
                }
                open = Some(e.time);
            }
            ("wait-ready" | "ready", r @ ("ok" | "failed")) => {
                if let Some(s) = open.take() {
                    out.push(PastBoot {
                        started: s,
                        seconds: Some(secs_between(s, e.time)),
                        result: r.into(),
                    });
                }
            }
            _ => {}
        }
    }
    if let Some(s) = open {
        // The boot in progress (or one whose end no event recorded): the timeline above
        // shows it.
        out.push(PastBoot {
            started: s,
            seconds: None,
            result: "current".into(),
        });
    }
    let from = out.len().saturating_sub(max);
    out.split_off(from)
}

/// The manifest file of an instance, with every literal param value hidden (a manifest
/// refuses literal secrets, but a file may have been edited since it was applied).
pub fn manifest_text(path: &Path) -> Option<String> {
    let text = std::fs::read_to_string(path).ok()?;
    Some(hide_param_values(&text))
}

/// Replace the values under every `params:` mapping by `(hidden)`, keeping `{env: …}` and
/// `{file: …}` references (they name where a value comes from, never the value).
pub fn hide_param_values(text: &str) -> String {
    let indent = |l: &str| l.len() - l.trim_start().len();
    let mut out = String::new();
    let mut params_at: Option<usize> = None;
    for line in text.lines() {
        let t = line.trim_start();
        if let Some(p) = params_at
            && !t.is_empty()
            && (indent(line) <= p && !t.starts_with('#'))
        {
            params_at = None;
        }
        if params_at.is_some() && !t.starts_with('#') {
            if let Some((k, v)) = line.split_once(':') {
                let v = v.trim();
                let keep = v.is_empty()
                    || v.starts_with("{env:")
                    || v.starts_with("{file:")
                    || v.starts_with("{ env:")
                    || v.starts_with("{ file:")
                    || (matches!(k.trim(), "env" | "file") && !v.starts_with('{'));
                if !keep {
                    out.push_str(k);
                    out.push_str(": (hidden)\n");
                    continue;
                }
            } else if !t.is_empty() {
                out.push_str(&line[..indent(line)]);
                out.push_str("(hidden)\n");
                continue;
            }
        }
        if t.split_once(':')
            .is_some_and(|(k, v)| k.trim() == "params" && v.trim().is_empty())
        {
            params_at = Some(indent(line));
        } else if let Some((k, v)) = t.split_once(':')
            && k.trim() == "params"
            && !v.trim().is_empty()
        {
            // Flow style on one line: hide it all.
            out.push_str(&line[..indent(line)]);
            out.push_str("params: (hidden)\n");
            continue;
        }
        out.push_str(line);
        out.push('\n');
    }
    out
}

/// Everything the instance page shows.
#[derive(Debug, Clone, Serialize)]
pub struct InstanceDetail {
    /// The table row.
    pub instance: InstanceView,
    /// The manifest file it came from.
    pub manifest_path: Option<PathBuf>,
    /// Its text, param values hidden.
    pub manifest: Option<String>,
    /// The current boot.
    pub boot: BootView,
    /// Earlier boots.
    pub boots: Vec<PastBoot>,
    /// Its last events.
    pub events: Vec<Event>,
    /// Its conditions.
    pub conditions: Vec<crate::state::record::Condition>,
    /// Its checkpoints, oldest first (rfc/011); empty when they cannot be listed.
    pub checkpoints: Vec<crate::driver::Checkpoint>,
}

/// The detail of one instance, looked up like the CLI does (CLAWID, name or prefix).
/// `previous` is the detail computed last time for the same viewer (the live stream): its
/// checkpoints are reused while the instance's last event is the same (every checkpoint,
/// restore or removal goes through an action that writes an event), so a poll does not
/// list the disk's snapshots each time.
pub fn instance_detail(
    home: &Home,
    driver: &dyn Driver,
    id: &str,
    cpu: &CpuSampler,
    previous: Option<&InstanceDetail>,
) -> Result<InstanceDetail, observe::LookupError> {
    let rec = observe::find_record(home, id)?;
    let o = Observed::of(driver, rec.clone());
    let all = crate::state::events::read(&home.events_log()).unwrap_or_default();
    let mine: Vec<Event> = all
        .iter()
        .filter(|e| e.instance == rec.clawid)
        .cloned()
        .collect();
    let from = mine.len().saturating_sub(50);
    let checkpoints = match previous {
        Some(p) if p.instance.row.clawid == rec.clawid && p.events.last() == mine.last() => {
            p.checkpoints.clone()
        }
        _ => checkpoints_of(driver, &rec),
    };
    Ok(InstanceDetail {
        instance: instance_view(driver, &o, cpu),
        manifest: rec.manifest.as_deref().and_then(manifest_text),
        manifest_path: rec.manifest.clone(),
        boot: boot_view(driver, &rec),
        boots: past_boots(&all, &rec.clawid, 10),
        events: mine[from..].to_vec(),
        conditions: rec.conditions.clone(),
        checkpoints,
    })
}

/// The checkpoints of `rec`, listed through the driver. Must run off the async threads
/// (the routes call [`instance_detail`] inside `blocking`); outside a runtime, or on an
/// error, none.
fn checkpoints_of(
    driver: &dyn Driver,
    rec: &crate::state::record::Record,
) -> Vec<crate::driver::Checkpoint> {
    match tokio::runtime::Handle::try_current() {
        Ok(h) => h.block_on(driver.checkpoints(rec)).unwrap_or_default(),
        Err(_) => Vec::new(),
    }
}

/// Read `path` from `offset` (at most `max` bytes, from the end when more); returns the
/// text and the new offset. A file shorter than `offset` (a new boot truncated it) is read
/// from the start.
pub fn read_from(path: &Path, offset: u64, max: u64) -> (String, u64, bool) {
    use std::io::{Read, Seek, SeekFrom};
    let len = std::fs::metadata(path).map(|m| m.len()).unwrap_or(0);
    let (offset, reset) = if len < offset {
        (0, true)
    } else {
        (offset, false)
    };
    let from = offset.max(len.saturating_sub(max));
    let mut buf = Vec::new();
    if len > from
        && let Ok(mut f) = std::fs::File::open(path)
        && f.seek(SeekFrom::Start(from)).is_ok()
    {
        let _ = f.take(len - from).read_to_end(&mut buf);
    }
    (String::from_utf8_lossy(&buf).into_owned(), len, reset)
}

/// Which log of an instance.
pub fn log_kind(name: &str) -> Option<LogKind> {
    match name {
        "serial" => Some(LogKind::Serial),
        "qemu" => Some(LogKind::Vmm),
        _ => None,
    }
}

/// The watched folder: the pending plan and the input problems.
#[derive(Debug, Clone, Serialize)]
pub struct FolderView {
    /// The folder.
    pub dir: PathBuf,
    /// The plan as `plan -o json` (with `diagnostics`).
    pub plan: serde_json::Value,
    /// The plan as text.
    pub text: String,
    /// `FILE:LINE:COL: message` of every problem.
    pub diagnostics: Vec<String>,
    /// Records that could not be read.
    pub record_errors: Vec<String>,
}

/// Load `dir` as `clawfarm plan -f DIR` would (never prompting) and plan against the host.
pub async fn folder(home: &Home, driver: &dyn Driver, dir: &Path) -> anyhow::Result<FolderView> {
    let key = home.secret_key()?;
    let env = |n: &str| std::env::var(n).ok();
    let penv = crate::desired::ParamEnv {
        key: &key,
        env: &env,
        prompter: None,
        command_line: false,
    };
    let d = crate::desired::load(
        home,
        &[dir.to_path_buf()],
        &crate::desired::resolve::StoreResolver,
        &penv,
        None,
    )
    .await;
    let p = crate::reconcile::pass::prepare(home, driver, d, false);
    let mut plan = p.plan.to_json();
    plan["diagnostics"] = serde_json::to_value(&p.desired.diagnostics)?;
    Ok(FolderView {
        dir: dir.to_path_buf(),
        plan,
        text: p.plan.render(),
        diagnostics: p
            .desired
            .diagnostics
            .iter()
            .map(|d| d.to_string())
            .collect(),
        record_errors: p.record_errors.iter().map(|e| chain(e)).collect(),
    })
}

/// `outer: inner: cause`.
fn chain(e: &(dyn std::error::Error + 'static)) -> String {
    let mut parts = vec![e.to_string()];
    let mut cur = e.source();
    while let Some(s) = cur {
        parts.push(s.to_string());
        cur = s.source();
    }
    parts.join(": ")
}

/// Human uptime: `42s`, `5m`, `3h 12m`, `2d 4h`.
pub fn human_duration(s: u64) -> String {
    match s {
        0..=59 => format!("{s}s"),
        60..=3599 => format!("{}m {}s", s / 60, s % 60),
        3600..=86399 => format!("{}h {}m", s / 3600, (s % 3600) / 60),
        _ => format!("{}d {}h", s / 86400, (s % 86400) / 3600),
    }
}

/// How often the live views poll the home.
pub const POLL: Duration = Duration::from_millis(700);

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn param_values_are_hidden() {
        let m = "apiVersion: clawfarm/v1\nkind: Claw\nmetadata:\n  name: a\nspec:\n  clawbox: x\n  params:\n    KEY: {env: K}\n    MODEL: gpt-4o\n    TOKEN: 'sk-live-123'\n    # a comment\n    FILE:\n      file: /run/k\n  cpus: 2\n";
        let h = hide_param_values(m);
        assert!(!h.contains("gpt-4o"), "{h}");
        assert!(!h.contains("sk-live-123"), "{h}");
        assert!(h.contains("KEY: {env: K}"), "{h}");
        assert!(h.contains("file: /run/k"), "{h}");
        assert!(h.contains("  cpus: 2"), "{h}");
        assert!(h.contains("clawbox: x"), "{h}");
        let flow = "spec:\n  params: {A: secret-1}\n";
        assert!(!hide_param_values(flow).contains("secret-1"));
        let block = "spec:\n  params:\n    A: |\n      secret-2\n";
        assert!(!hide_param_values(block).contains("secret-2"));
    }

    #[test]
    fn boots_pair_start_with_ready() {
        let t = SystemTime::UNIX_EPOCH + Duration::from_secs(1000);
        let ev = |s: u64, a: &str, r: &str| Event {
            time: t + Duration::from_secs(s),
            instance: "c1".into(),
            action: a.into(),
            result: r.into(),
            message: String::new(),
        };
        let evs = vec![
            ev(0, "start", "ok"),
            ev(70, "wait-ready", "ok"),
            ev(100, "start", "ok"),
            ev(200, "start", "ok"),
            ev(230, "ready", "failed"),
            ev(300, "start", "ok"),
        ];
        let b = past_boots(&evs, "c1", 10);
        assert_eq!(b.len(), 4);
        assert_eq!(b[0].seconds, Some(70.0));
        assert_eq!(b[1].result, "unknown");
        assert_eq!(b[2].result, "failed");
        assert_eq!(b[3].result, "current");
        assert_eq!(past_boots(&evs, "c1", 2).len(), 2);
        assert!(past_boots(&evs, "c2", 2).is_empty());
    }
}
