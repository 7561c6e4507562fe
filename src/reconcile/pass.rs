//! One reconcile pass: observe → plan → execute. Used by `apply`, `watch` and tests.
//! Returns data (kube-runtime style): the plan, the report, and when to look again.

use std::collections::BTreeSet;
use std::sync::Arc;
use std::time::Duration;

use crate::desired::DesiredInstance;
use crate::driver::Driver;
use crate::home::Home;
use crate::observe::observe;
use crate::plan::{Observed, Plan, PlanOptions, plan};
use crate::reconcile::exec::{ExecContext, ExecOptions, Report, execute};
use crate::state::events::EventSink;
use crate::state::record::{Origin, RecordError};

/// Options of one pass.
#[derive(Debug, Clone, Default)]
pub struct PassOptions {
    /// Planner options (prune, protected names).
    pub plan: PlanOptions,
    /// Executor options.
    pub exec: ExecOptions,
}

/// What a pass did.
#[derive(Debug)]
pub struct PassOutcome {
    /// The plan that was executed.
    pub plan: Plan,
    /// What happened.
    pub report: Report,
    /// Records that could not be read (their instances were left alone).
    pub record_errors: Vec<RecordError>,
    /// When to reconcile again even without a file event (`None` = wait for events/resync).
    pub requeue_after: Option<Duration>,
}

/// Observe and plan, without executing. Desired instances whose record is unreadable are
/// dropped from the plan (and their names protected), so a corrupt record never leads to
/// a second VM for the same instance.
pub fn plan_pass(
    home: &Home,
    driver: &dyn Driver,
    desired: &[Arc<DesiredInstance>],
    opts: &PlanOptions,
) -> (Plan, Vec<Observed>, Vec<RecordError>) {
    let (actual, errors) = observe(home, driver);
    let p = plan_observed(desired, &actual, &errors, opts);
    (p, actual, errors)
}

/// Plan against an observation already made (one observation per command).
pub fn plan_observed(
    desired: &[Arc<DesiredInstance>],
    actual: &[Observed],
    errors: &[RecordError],
    opts: &PlanOptions,
) -> Plan {
    let bad_ids: BTreeSet<String> = errors
        .iter()
        .filter_map(|e| match e {
            RecordError::Io { path, .. }
            | RecordError::Corrupt { path, .. }
            | RecordError::Version { path, .. } => path
                .parent()
                .and_then(|d| d.file_name())
                .map(|n| n.to_string_lossy().into_owned()),
        })
        .collect();
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

/// One full pass: plan against the current state and execute the plan.
pub async fn reconcile(
    home: &Home,
    driver: Arc<dyn Driver>,
    desired: &[Arc<DesiredInstance>],
    origin: Origin,
    events: EventSink,
    opts: &PassOptions,
) -> PassOutcome {
    let (actual, record_errors) = observe(home, &*driver);
    reconcile_observed(
        home,
        driver,
        desired,
        actual,
        record_errors,
        origin,
        events,
        opts,
    )
    .await
}

/// [`reconcile`] against an observation already made (one observation per command).
#[allow(clippy::too_many_arguments)]
pub async fn reconcile_observed(
    home: &Home,
    driver: Arc<dyn Driver>,
    desired: &[Arc<DesiredInstance>],
    actual: Vec<Observed>,
    record_errors: Vec<RecordError>,
    origin: Origin,
    events: EventSink,
    opts: &PassOptions,
) -> PassOutcome {
    let p = plan_observed(desired, &actual, &record_errors, &opts.plan);
    let ctx = ExecContext {
        home: home.clone(),
        desired: desired
            .iter()
            .map(|d| (d.clawid.clone(), d.clone()))
            .collect(),
        records: actual
            .into_iter()
            .map(|o| (o.record.clawid.clone(), o.record))
            .collect(),
        origin,
        events,
    };
    let report = execute(&p, ctx, driver, opts.exec.clone()).await;
    let requeue_after = if report.ok() {
        None
    } else {
        Some(Duration::from_secs(10))
    };
    PassOutcome {
        plan: p,
        report,
        record_errors,
        requeue_after,
    }
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
        if let Ok(_l) = crate::util::lock::lock_instance(home, &id, Some(Duration::ZERO)) {
            n += crate::util::fsutil::clean_temp_files(&e.path()).unwrap_or(0);
        }
    }
    n
}
