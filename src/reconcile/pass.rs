//! One reconcile pass: observe → check ports → plan → execute. This is the one place a
//! pass is built; `plan`, `apply`, `run` and `watch` all go through [`prepare`], and all
//! but `plan` then call [`Prepared::execute`]. Returns data (kube-runtime style): the
//! plan, the report, and when to look again.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;
use std::time::Duration;

use crate::desired::{Desired, DesiredInstance};
use crate::driver::Driver;
use crate::home::Home;
use crate::input::manifest::Diagnostic;
use crate::observe::{Observed, observe};
use crate::plan::{Plan, PlanOptions, plan};
use crate::reconcile::exec::{ExecContext, ExecOptions, Report, execute};
use crate::state::events::EventSink;
use crate::state::record::{Origin, RecordError};

/// A pass that has observed and planned, ready to execute (or to show, for `plan`).
#[derive(Debug)]
pub struct Prepared {
    /// The desired state, with port problems added to its diagnostics (and the instances
    /// concerned removed and protected).
    pub desired: Desired,
    /// The one observation the plan was made from.
    pub observed: Vec<Observed>,
    /// Records that could not be read (their instances are left alone).
    pub record_errors: Vec<RecordError>,
    /// The plan.
    pub plan: Plan,
    /// `--prune` was asked for but refused, because some input could not be read.
    pub prune_refused: bool,
}

/// What a pass did.
#[derive(Debug)]
pub struct PassOutcome {
    /// The plan that was executed.
    pub plan: Plan,
    /// What happened.
    pub report: Report,
    /// Problems of the input (manifests, ports); their instances were left alone.
    pub diagnostics: Vec<Diagnostic>,
    /// Records that could not be read (their instances were left alone).
    pub record_errors: Vec<RecordError>,
    /// When to reconcile again even without a file event (`None` = wait for events/resync).
    pub requeue_after: Option<Duration>,
}

impl PassOutcome {
    /// True when every action succeeded, the input had no problem and every record could
    /// be read.
    pub fn ok(&self) -> bool {
        self.report.ok() && self.diagnostics.is_empty() && self.record_errors.is_empty()
    }
}

/// Observe, check host ports, and plan; changes nothing. With `prune`, instances whose
/// manifest is gone are deleted, unless some input could not be read at all.
pub fn prepare(home: &Home, driver: &dyn Driver, mut desired: Desired, prune: bool) -> Prepared {
    let (observed, record_errors) = observe(home, driver);
    check_ports(&mut desired, &observed);
    protect_from_bad_files(&mut desired, &observed);
    let opts = PlanOptions {
        prune: prune && !desired.incomplete,
        protected: desired.protected.clone(),
    };
    let plan = plan_observed(&desired.instances, &observed, &record_errors, &opts);
    Prepared {
        prune_refused: prune && desired.incomplete,
        desired,
        observed,
        record_errors,
        plan,
    }
}

impl Prepared {
    /// Execute the plan: ready nodes run concurrently up to the parallelism; a failure
    /// skips what depends on it and nothing else.
    pub async fn execute(
        self,
        home: &Home,
        driver: Arc<dyn Driver>,
        origin: Origin,
        events: EventSink,
        opts: ExecOptions,
    ) -> PassOutcome {
        let ctx = ExecContext {
            home: home.clone(),
            desired: self
                .desired
                .instances
                .iter()
                .map(|d| (d.clawid.clone(), d.clone()))
                .collect(),
            records: self
                .observed
                .into_iter()
                .map(|o| (o.record.clawid.clone(), o.record))
                .collect(),
            origin,
            events,
        };
        let report = execute(&self.plan, ctx, driver, opts).await;
        let requeue_after = (!report.ok()).then_some(Duration::from_secs(10));
        PassOutcome {
            plan: self.plan,
            report,
            diagnostics: self.desired.diagnostics,
            record_errors: self.record_errors,
            requeue_after,
        }
    }
}

/// Every instance whose record names a manifest file that has a problem in this pass
/// (unreadable, unparsable, invalid, emptied) is protected: what a bad file says is never
/// read as "delete".
pub fn protect_from_bad_files(desired: &mut Desired, actual: &[Observed]) {
    for o in actual {
        if let Some(m) = &o.record.manifest
            && (desired.bad_files.contains(m)
                || desired
                    .bad_files
                    .contains(&crate::input::manifest::file_key(m)))
        {
            desired.protected.insert(o.record.name.clone());
        }
    }
}

/// Plan against an observation already made. Desired instances whose record is
/// unreadable are dropped from the plan (and their names protected), so a corrupt record
/// never leads to a second VM for the same instance.
pub fn plan_observed(
    desired: &[Arc<DesiredInstance>],
    actual: &[Observed],
    errors: &[RecordError],
    opts: &PlanOptions,
) -> Plan {
    let bad_ids: BTreeSet<String> = errors.iter().filter_map(RecordError::clawid).collect();
    let mut opts = opts.clone();
    let desired: Vec<Arc<DesiredInstance>> = desired
        .iter()
        .filter(|d| {
            let bad = bad_ids.contains(&d.clawid);
            if bad {
                opts.protected.insert(d.name.clone());
            }
            !bad
        })
        .cloned()
        .collect();
    plan(&desired, actual, &opts)
}

/// Host-port problems, found at plan time: a port claimed by two instances (naming both),
/// or taken on 127.0.0.1 by a process that is not one of our running instances.
/// Instances with a problem are removed from `desired` and protected.
pub fn check_ports(desired: &mut Desired, actual: &[Observed]) {
    let mut owner: BTreeMap<u16, &DesiredInstance> = BTreeMap::new();
    let mut bad: BTreeSet<String> = BTreeSet::new();
    let mut diags = Vec::new();
    for d in &desired.instances {
        for p in &d.resources.ports {
            if let Some(o) = owner.get(&p.host) {
                diags.push(Diagnostic {
                    loc: d.loc.clone(),
                    message: format!(
                        "host port {} of {} is also claimed by {} ({})",
                        p.host, d.name, o.name, o.loc
                    ),
                });
                bad.insert(d.name.clone());
            } else {
                owner.insert(p.host, d);
            }
        }
    }
    // Ports held by our own running VMs are expected to be busy.
    let ours: BTreeSet<u16> = actual
        .iter()
        .filter(|o| o.is_running())
        .flat_map(|o| o.record.resources.ports.iter().map(|p| p.host))
        .collect();
    for (port, d) in &owner {
        if ours.contains(port) || bad.contains(&d.name) {
            continue;
        }
        if let Err(e) = std::net::TcpListener::bind(("127.0.0.1", *port)) {
            diags.push(Diagnostic {
                loc: d.loc.clone(),
                message: format!(
                    "host port {port} of {} is already in use on 127.0.0.1 ({e})",
                    d.name
                ),
            });
            bad.insert(d.name.clone());
        }
    }
    if !bad.is_empty() {
        desired.instances.retain(|d| !bad.contains(&d.name));
        desired.protected.extend(bad);
    }
    desired.diagnostics.extend(diags);
    desired.diagnostics.sort();
}

/// Remove temp files left in instance folders by writers that died mid-write. Each folder
/// is swept only under its instance lock (skipped when busy), so a live writer's temp file
/// is never touched. Returns how many files were removed.
pub fn sweep_temp_files(home: &Home) -> usize {
    let Ok(rd) = std::fs::read_dir(home.claws_dir()) else {
        return 0;
    };
    let mut n = 0;
    for e in rd.flatten() {
        let id = e.file_name().to_string_lossy().into_owned();
        if let Ok(_l) = crate::state::lock_instance(home, &id, Some(Duration::ZERO)) {
            n += crate::util::fsutil::clean_temp_files(&e.path()).unwrap_or(0);
        }
    }
    n
}
