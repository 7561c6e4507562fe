//! The executor: walks a [`Plan`]'s DAG on tokio, running ready nodes concurrently up to a
//! parallelism limit. A failed node skips its dependents and nothing else; the report
//! names each root failure once and attributes knock-on skips to it.
//!
//! The executor owns the records: every node runs under its instance's lock, and the
//! record is updated and written atomically after it.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime};

use petgraph::Direction;
use petgraph::graph::NodeIndex;
use serde::Serialize;
use tokio::task::JoinSet;

use crate::desired::{BundleDesired, DesiredInstance};
use crate::driver::{Driver, DriverError};
use crate::home::Home;
use crate::input::manifest::DesiredState;
use crate::plan::{Action, ChangeKind, Plan};
use crate::state::events::{Event, EventSink};
use crate::state::record::{Origin, Phase, RECORD_VERSION, Record, Runtime};

/// Everything the executor needs besides the plan.
#[derive(Clone)]
pub struct ExecContext {
    /// Runtime root.
    pub home: Home,
    /// Desired instances by CLAWID.
    pub desired: BTreeMap<String, Arc<DesiredInstance>>,
    /// Current records by CLAWID.
    pub records: BTreeMap<String, Record>,
    /// Who is applying (owner of instances it creates).
    pub origin: Origin,
    /// Where events go.
    pub events: EventSink,
}

/// Executor options.
#[derive(Debug, Clone)]
pub struct ExecOptions {
    /// Nodes running at once (≥ 1).
    pub parallelism: usize,
    /// Run `wait-ready` nodes (false = `--no-wait`: they are recorded as not waited).
    pub wait: bool,
    /// Test hook: stop launching nodes after this many have finished (simulates a crash
    /// between two actions).
    pub stop_after: Option<usize>,
    /// How long to wait for an instance lock held by another command.
    pub lock_timeout: Option<Duration>,
}

impl Default for ExecOptions {
    fn default() -> Self {
        ExecOptions {
            parallelism: 4,
            wait: true,
            stop_after: None,
            lock_timeout: None,
        }
    }
}

/// Outcome of one node.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(tag = "status", rename_all = "snake_case")]
pub enum NodeStatus {
    /// Succeeded.
    Done,
    /// `wait-ready` not run (`--no-wait`).
    NotWaited,
    /// Failed with this message (the error chain, printed once).
    Failed {
        /// The error chain.
        error: String,
    },
    /// Not run because a node it depends on failed.
    Skipped {
        /// The root failure (node id).
        because: usize,
    },
    /// Not run (the walk was stopped early).
    NotRun,
}

/// One node of the report.
#[derive(Debug, Clone, Serialize)]
pub struct NodeReport {
    /// Node id (index in the plan graph).
    pub id: usize,
    /// The action.
    pub action: Action,
    /// What happened.
    #[serde(flatten)]
    pub status: NodeStatus,
    /// How long it took.
    pub millis: u128,
}

/// Outcome of one instance's change.
#[derive(Debug, Clone, Serialize)]
pub struct ChangeReport {
    /// Instance name.
    pub name: String,
    /// CLAWID.
    pub clawid: String,
    /// Kind of change.
    pub kind: ChangeKind,
    /// True when every node of the change (and what it depends on) succeeded.
    pub ok: bool,
    /// The root error, when not ok.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
}

/// The result of a walk.
#[derive(Debug, Clone, Serialize)]
pub struct Report {
    /// Per node, in node order.
    pub nodes: Vec<NodeReport>,
    /// Per changed instance (no-ops left out).
    pub changes: Vec<ChangeReport>,
}

impl Report {
    /// True when every change succeeded.
    pub fn ok(&self) -> bool {
        self.changes.iter().all(|c| c.ok)
            && self
                .nodes
                .iter()
                .all(|n| matches!(n.status, NodeStatus::Done | NodeStatus::NotWaited))
    }

    /// `2 created, 1 replaced, 0 deleted, 1 failed`.
    pub fn summary(&self) -> String {
        let count = |k: ChangeKind| self.changes.iter().filter(|c| c.kind == k && c.ok).count();
        let failed = self.changes.iter().filter(|c| !c.ok).count();
        let mut parts = vec![
            format!("{} created", count(ChangeKind::Create)),
            format!("{} replaced", count(ChangeKind::Replace)),
        ];
        for (k, word) in [
            (ChangeKind::Restart, "restarted"),
            (ChangeKind::Start, "started"),
            (ChangeKind::Stop, "stopped"),
            (ChangeKind::Update, "updated"),
        ] {
            let n = count(k);
            if n > 0 {
                parts.push(format!("{n} {word}"));
            }
        }
        parts.push(format!("{} deleted", count(ChangeKind::Delete)));
        parts.push(format!("{failed} failed"));
        parts.join(", ")
    }

    /// The root failures: `(action, error)` once each, in node order.
    pub fn root_failures(&self) -> Vec<(&Action, &str)> {
        self.nodes
            .iter()
            .filter_map(|n| match &n.status {
                NodeStatus::Failed { error } => Some((&n.action, error.as_str())),
                _ => None,
            })
            .collect()
    }
}

struct Shared {
    ctx: ExecContext,
    driver: Arc<dyn Driver>,
    records: Mutex<BTreeMap<String, Record>>,
    opts: ExecOptions,
}

/// Walk the plan. Never panics on driver errors; every outcome is in the report.
pub async fn execute(
    plan: &Plan,
    ctx: ExecContext,
    driver: Arc<dyn Driver>,
    opts: ExecOptions,
) -> Report {
    let g = &plan.graph;
    let n = g.node_count();
    let records = Mutex::new(ctx.records.clone());
    let shared = Arc::new(Shared {
        ctx,
        driver,
        records,
        opts: opts.clone(),
    });

    // Record-only changes (no nodes) are committed up front.
    for c in &plan.changes {
        if c.nodes.is_empty() && c.kind == ChangeKind::Update {
            let s = shared.clone();
            let clawid = c.clawid.clone();
            let r = tokio::task::spawn_blocking(move || commit_update(&s, &clawid)).await;
            if let Ok(Err(e)) | Err(e) = r.map_err(anyhow::Error::from) {
                tracing::warn!("cannot update record of {}: {e:#}", c.clawid);
            }
        }
    }

    let mut indeg: Vec<usize> = g
        .node_indices()
        .map(|x| g.neighbors_directed(x, Direction::Incoming).count())
        .collect();
    let mut status: Vec<Option<NodeStatus>> = vec![None; n];
    let mut millis = vec![0u128; n];
    let mut ready: BTreeSet<NodeIndex> =
        g.node_indices().filter(|x| indeg[x.index()] == 0).collect();
    let mut running = JoinSet::new();
    let mut finished = 0usize;
    let parallelism = opts.parallelism.max(1);
    let mut stopped = false;

    loop {
        while !stopped && running.len() < parallelism {
            let Some(node) = ready.pop_first() else { break };
            let action = g[node].clone();
            let s = shared.clone();
            running.spawn(async move {
                let t = Instant::now();
                let r = run_node(&s, &action).await;
                (node, r, t.elapsed())
            });
        }
        let Some(joined) = running.join_next().await else {
            break;
        };
        let (node, result, took) = match joined {
            Ok(v) => v,
            Err(e) => {
                // A panicking node: find nothing to attribute it to but keep walking.
                tracing::error!("an action panicked: {e}");
                continue;
            }
        };
        finished += 1;
        millis[node.index()] = took.as_millis();
        match result {
            Ok(st) => {
                status[node.index()] = Some(st);
                for m in g.neighbors_directed(node, Direction::Outgoing) {
                    indeg[m.index()] -= 1;
                    if indeg[m.index()] == 0 && status[m.index()].is_none() {
                        ready.insert(m);
                    }
                }
            }
            Err(e) => {
                status[node.index()] = Some(NodeStatus::Failed {
                    error: format!("{e:#}"),
                });
                // Skip everything downstream, attributing it to this root.
                let mut stack: Vec<NodeIndex> =
                    g.neighbors_directed(node, Direction::Outgoing).collect();
                while let Some(m) = stack.pop() {
                    if status[m.index()].is_none() {
                        status[m.index()] = Some(NodeStatus::Skipped {
                            because: node.index(),
                        });
                        ready.remove(&m);
                        stack.extend(g.neighbors_directed(m, Direction::Outgoing));
                    }
                }
            }
        }
        if opts.stop_after.is_some_and(|k| finished >= k) {
            stopped = true;
        }
    }

    let nodes: Vec<NodeReport> = g
        .node_indices()
        .map(|x| NodeReport {
            id: x.index(),
            action: g[x].clone(),
            status: status[x.index()].clone().unwrap_or(NodeStatus::NotRun),
            millis: millis[x.index()],
        })
        .collect();

    // A change is ok when its own nodes and everything upstream of them succeeded.
    let changes = plan
        .changes
        .iter()
        .filter(|c| c.kind != ChangeKind::Noop)
        .map(|c| {
            let mut error = None;
            let mut upstream: Vec<NodeIndex> = c.nodes.clone();
            let mut seen = BTreeSet::new();
            while let Some(x) = upstream.pop() {
                if !seen.insert(x) {
                    continue;
                }
                match &nodes[x.index()].status {
                    NodeStatus::Failed { error: e } if error.is_none() => {
                        error = Some(format!("{}: {e}", nodes[x.index()].action));
                    }
                    NodeStatus::NotRun if error.is_none() => {
                        error = Some(format!("{}: not run", nodes[x.index()].action));
                    }
                    _ => {}
                }
                upstream.extend(g.neighbors_directed(x, Direction::Incoming));
            }
            ChangeReport {
                name: c.name.clone(),
                clawid: c.clawid.clone(),
                kind: c.kind,
                ok: error.is_none(),
                error,
            }
        })
        .collect();
    Report { nodes, changes }
}

fn now() -> SystemTime {
    SystemTime::now()
}

/// A fresh record for a desired instance.
fn new_record(ctx: &ExecContext, d: &DesiredInstance, old: Option<&Record>) -> Record {
    let t = now();
    Record {
        version: RECORD_VERSION,
        clawid: d.clawid.clone(),
        name: d.name.clone(),
        origin: old.map(|o| o.origin).unwrap_or(ctx.origin),
        manifest: match ctx.origin {
            Origin::Manifest => Some(crate::input::manifest::file_key(&d.loc.file)),
            _ => old.and_then(|o| o.manifest.clone()),
        },
        desired_state: d.state,
        build: d.build.clone(),
        resources: d.resources.clone(),
        phase: Phase::Creating,
        conditions: Vec::new(),
        runtime: Runtime::default(),
        restart_count: old.map(|o| o.restart_count).unwrap_or(0),
        crash_streak: 0,
        backoff_until: None,
        last_error: None,
        created_at: old.map(|o| o.created_at).unwrap_or(t),
        updated_at: t,
    }
}

/// Bring the record's desired fields in line with the desired instance.
fn adopt_desired(ctx: &ExecContext, r: &mut Record, d: &DesiredInstance) {
    r.name = d.name.clone();
    r.manifest = Some(d.loc.file.clone());
    r.desired_state = d.state;
    r.build = d.build.clone();
    r.resources = d.resources.clone();
    if ctx.origin == Origin::Manifest {
        r.origin = Origin::Manifest;
    }
}

fn commit_update(s: &Shared, clawid: &str) -> Result<(), DriverError> {
    let _l = crate::state::lock_instance(&s.ctx.home, clawid, s.opts.lock_timeout)?;
    let mut recs = s.records.lock().expect("records lock");
    let (Some(r), Some(d)) = (recs.get_mut(clawid), s.ctx.desired.get(clawid)) else {
        return Ok(());
    };
    adopt_desired(&s.ctx, r, d);
    if d.state == DesiredState::Stopped && r.phase != Phase::Creating {
        r.mark_stopped("its manifest (state: stopped)");
    }
    r.touch();
    r.write(&s.ctx.home)?;
    Ok(())
}

fn bundle_of<'a>(s: &'a Shared, digest: &str) -> Option<&'a Arc<BundleDesired>> {
    s.ctx
        .desired
        .values()
        .map(|d| &d.bundle)
        .find(|b| b.digest == digest)
}

async fn run_node(s: &Arc<Shared>, action: &Action) -> Result<NodeStatus, DriverError> {
    let ev = |result: &str, message: String| {
        s.ctx.events.emit(Event::new(
            action.clawid().unwrap_or("-"),
            action.verb(),
            result,
            message,
        ))
    };
    ev("started", action.to_string());
    let r = run_node_inner(s, action).await;
    match &r {
        Ok(NodeStatus::NotWaited) => ev("skipped", "not waited (--no-wait)".into()),
        Ok(_) => ev("ok", action.to_string()),
        Err(e) => ev("failed", format!("{e:#}")),
    }
    r
}

async fn run_node_inner(s: &Arc<Shared>, action: &Action) -> Result<NodeStatus, DriverError> {
    match action {
        Action::ImportBundle { digest } => {
            let b = bundle_of(s, digest)
                .ok_or_else(|| anyhow::anyhow!("no desired instance uses bundle {digest}"))?;
            s.driver.import_bundle(b).await?;
            return Ok(NodeStatus::Done);
        }
        Action::FetchBlob { sha256, .. } => {
            let img = s
                .ctx
                .desired
                .values()
                .flat_map(|d| d.bundle.clawspec.image.iter())
                .find(|i| &i.sha256 == sha256)
                .cloned()
                .ok_or_else(|| anyhow::anyhow!("no desired instance uses blob {sha256}"))?;
            s.driver.fetch_blob(&img).await?;
            return Ok(NodeStatus::Done);
        }
        _ => {}
    }
    if matches!(action, Action::WaitReady { .. }) && !s.opts.wait {
        return Ok(NodeStatus::NotWaited);
    }
    let clawid = action.clawid().expect("instance action").to_string();
    // The instance lock is a blocking flock; take it off the async threads.
    let home = s.ctx.home.clone();
    let timeout = s.opts.lock_timeout;
    let id2 = clawid.clone();
    let _lock =
        tokio::task::spawn_blocking(move || crate::state::lock_instance(&home, &id2, timeout))
            .await??;
    // Every writer of an instance folder holds this lock, so temp files found now were left
    // by a writer that died mid-write (kill -9): sweep them.
    if let Err(e) = crate::util::fsutil::clean_temp_files(&s.ctx.home.claw_dir(&clawid)) {
        tracing::warn!("cannot clean temp files of {clawid}: {e}");
    }

    let desired = s.ctx.desired.get(&clawid).cloned();
    let current = s
        .records
        .lock()
        .expect("records lock")
        .get(&clawid)
        .cloned();
    let result = instance_action(s, action, &clawid, desired.as_deref(), current).await;
    if let Err(e) = &result {
        record_failure(s, action, &clawid, e);
    }
    result
}

fn record_failure(s: &Shared, action: &Action, clawid: &str, e: &DriverError) {
    let mut recs = s.records.lock().expect("records lock");
    let Some(r) = recs.get_mut(clawid) else {
        return;
    };
    if !s.ctx.home.claw_dir(clawid).exists() {
        return;
    }
    let msg = format!("{action}: {e:#}");
    if matches!(action, Action::WaitReady { .. }) {
        r.mark_unhealthy(action.verb(), msg);
    } else {
        r.mark_failed(action.verb(), msg);
    }
    if let Err(e) = r.write(&s.ctx.home) {
        tracing::warn!("{e:#}");
    }
}

async fn instance_action(
    s: &Arc<Shared>,
    action: &Action,
    clawid: &str,
    desired: Option<&DesiredInstance>,
    current: Option<Record>,
) -> Result<NodeStatus, DriverError> {
    let need_desired =
        || desired.ok_or_else(|| anyhow::anyhow!("instance {clawid} is not in the desired set"));
    let need_record =
        |r: Option<Record>| r.ok_or_else(|| anyhow::anyhow!("instance {clawid} has no record"));
    let home = &s.ctx.home;
    let save = |r: Record| -> Result<(), DriverError> {
        r.write(home)?;
        s.records
            .lock()
            .expect("records lock")
            .insert(clawid.to_string(), r);
        Ok(())
    };
    match action {
        Action::Stop { .. } => {
            let mut r = need_record(current)?;
            s.driver.stop(&r).await?;
            if let Some(d) = desired.filter(|d| d.state == DesiredState::Stopped) {
                adopt_desired(&s.ctx, &mut r, d);
            }
            r.mark_stopped("clawfarm");
            save(r)?;
        }
        Action::Remove { .. } => {
            s.driver.remove(clawid, false).await?;
            // The driver removed the folder and the record in it; remember the old record
            // only for its creation time and restart count.
            if let Some(mut r) = current {
                r.phase = Phase::Creating;
                s.records
                    .lock()
                    .expect("records lock")
                    .insert(format!("removed:{clawid}"), r);
            }
            s.records.lock().expect("records lock").remove(clawid);
        }
        Action::CreateDisk { .. } => {
            let d = need_desired()?;
            // Write the record first (phase creating): a crash from here on leaves a
            // record that makes the next plan finish the create, not leak the folder.
            let old = current.or_else(|| {
                s.records
                    .lock()
                    .expect("records lock")
                    .get(&format!("removed:{clawid}"))
                    .cloned()
            });
            let rec = match old {
                Some(mut r) if r.phase == Phase::Creating && r.build == d.build => {
                    adopt_desired(&s.ctx, &mut r, d);
                    r
                }
                old => new_record(&s.ctx, d, old.as_ref()),
            };
            save(rec)?;
            s.driver.create_disk(d).await?;
        }
        Action::WriteSeed { .. } => {
            let d = need_desired()?;
            s.driver.write_seed(d).await?;
            let mut r = need_record(current)?;
            if d.state == DesiredState::Stopped {
                // End of a create chain for a stopped instance.
                adopt_desired(&s.ctx, &mut r, d);
                r.mark_stopped("its manifest (state: stopped)");
                save(r)?;
            }
        }
        Action::Start { .. } => {
            let mut r = need_record(current)?;
            if let Some(d) = desired {
                adopt_desired(&s.ctx, &mut r, d);
            }
            let rt = s.driver.start(&r).await?;
            r.mark_booting(rt);
            save(r)?;
        }
        Action::Suspend { .. } => {
            let mut r = need_record(current)?;
            if let Some(d) = desired {
                adopt_desired(&s.ctx, &mut r, d);
            }
            // Saved once ready (also under --no-wait), so a resume gives a ready guest.
            s.driver.wait_ready(&r).await?;
            s.driver.suspend(&r).await?;
            r.mark_suspended("its manifest (state: suspended)");
            save(r)?;
        }
        Action::WaitReady { .. } => {
            let r = need_record(current)?;
            s.driver.wait_ready(&r).await?;
            let mut r = r;
            r.mark_ready();
            save(r)?;
        }
        Action::ImportBundle { .. } | Action::FetchBlob { .. } => unreachable!("shared nodes"),
    }
    Ok(NodeStatus::Done)
}
