//! Actual state: the records under `claws/`, each refreshed by a probe of the process it
//! names. A pid alone is never trusted: the driver checks the process really is this
//! instance's VM. Also the read-only views built on that observation: an instance's
//! status as `ps` shows it, lookup by CLAWID or name, and which instances use which
//! stored images.

use std::collections::BTreeMap;
use std::time::SystemTime;

use serde::Serialize;

use crate::desired::gateway_port;
use crate::driver::{Driver, GuestHealth, Liveness};
use crate::home::Home;
use crate::state::record::{Phase, Record, RecordError};
use crate::store::bundle::{StoredItem, StoredKind};

/// An actual instance: its record and what a probe of its process found.
#[derive(Debug, Clone)]
pub struct Observed {
    /// The record.
    pub record: Record,
    /// Liveness of the process it names.
    pub live: Liveness,
    /// A saved suspend state is there (the next start resumes it).
    pub suspended: bool,
}

impl Observed {
    /// Probe the process `record` names and whether a suspend state is saved.
    pub fn of(driver: &dyn Driver, record: Record) -> Observed {
        let (live, suspended) = probe(driver, &record);
        Observed {
            record,
            live,
            suspended,
        }
    }

    /// True when its QEMU is running.
    pub fn is_running(&self) -> bool {
        matches!(self.live, Liveness::Running(_))
    }
}

/// Read every record and probe its process. Corrupt records come back as errors; the
/// instances they describe are left alone by the planner (it never sees them).
pub fn observe(home: &Home, driver: &dyn Driver) -> (Vec<Observed>, Vec<RecordError>) {
    let (records, errors) = Record::read_all(home);
    let probed = crate::util::par::par_map(&records, |r| probe(driver, r));
    let observed = records
        .into_iter()
        .zip(probed)
        .map(|(record, (live, suspended))| Observed {
            record,
            live,
            suspended,
        })
        .collect();
    (observed, errors)
}

/// The liveness of the process `r` names, and whether a suspend state is saved.
fn probe(driver: &dyn Driver, r: &Record) -> (Liveness, bool) {
    let live = driver.probe(r);
    let suspended = !matches!(live, Liveness::Running(_)) && driver.suspended(&r.clawid);
    (live, suspended)
}

/// Status of one observed instance (`booting`, `ready`, `unhealthy`, `stopped`, `suspended`,
/// `exited`, `creating`, `failed`) and its last error, with the guest's own report when
/// it runs.
pub fn status_of(driver: &dyn Driver, o: &Observed) -> (String, Option<String>) {
    let r = &o.record;
    match &o.live {
        Liveness::Running(_) => match driver.guest_health(r) {
            GuestHealth::Ready => ("ready".into(), r.last_error.clone()),
            GuestHealth::Booting { .. } if r.phase == Phase::Unhealthy => {
                ("unhealthy".into(), r.last_error.clone())
            }
            GuestHealth::Booting { last } => {
                ("booting".into(), last.map(|l| format!("last phase: {l}")))
            }
            GuestHealth::Unhealthy { phase, code, tail } => (
                "unhealthy".into(),
                Some(format!("{phase} failed (exit {code}){}", last_line(&tail))),
            ),
        },
        Liveness::Exited => ("exited".into(), r.last_error.clone()),
        Liveness::NotStarted => (
            match r.phase {
                Phase::Creating => "creating",
                Phase::Failed => "failed",
                _ if driver.suspended(&r.clawid) => "suspended",
                _ => "stopped",
            }
            .into(),
            r.last_error.clone(),
        ),
    }
}

fn last_line(tail: &str) -> String {
    tail.lines()
        .rev()
        .find(|l| !l.trim().is_empty())
        .map(|l| format!(": {}", l.trim()))
        .unwrap_or_default()
}

/// One instance as `ps -o json` (and the dashboard) shows it.
#[derive(Debug, Clone, Serialize)]
pub struct InstanceRow {
    /// CLAWID.
    pub clawid: String,
    /// Instance name.
    pub name: String,
    /// booting | ready | unhealthy | stopped | exited | creating | failed.
    pub status: String,
    /// `127.0.0.1:PORT` of the gateway, if any.
    pub gateway: Option<String>,
    /// QEMU pid when running.
    pub pid: Option<u32>,
    /// Last record update.
    #[serde(with = "crate::state::record::rfc3339")]
    pub updated: SystemTime,
    /// Last error (failed phase, exit code, log tail for unhealthy guests).
    pub last_error: Option<String>,
    /// Accelerator.
    pub accel: Option<String>,
    /// Restarts after unexpected exits.
    pub restarts: u32,
    /// Network policy: `none`, `allow` or `open` (`rfc/012-sandbox.md`).
    pub network: String,
    /// Egress verdicts in the event log.
    pub egress: EgressCounts,
}

/// How many egress events an instance has (`rfc/012-sandbox.md`).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize)]
pub struct EgressCounts {
    /// Connections the proxy let through (logged in `allow` mode only).
    pub allowed: u64,
    /// Connections the proxy refused.
    pub refused: u64,
}

/// Count the egress events of each instance in `events`.
pub fn egress_counts(events: &[crate::state::events::Event]) -> BTreeMap<String, EgressCounts> {
    let mut m: BTreeMap<String, EgressCounts> = BTreeMap::new();
    for e in events.iter().filter(|e| e.action == "egress") {
        let c = m.entry(e.instance.clone()).or_default();
        match e.result.as_str() {
            "allowed" => c.allowed += 1,
            "refused" => c.refused += 1,
            _ => {}
        }
    }
    m
}

/// The row of one observed instance.
pub fn row(driver: &dyn Driver, o: &Observed) -> InstanceRow {
    let (status, last_error) = status_of(driver, o);
    let r = &o.record;
    InstanceRow {
        clawid: r.clawid.clone(),
        name: r.name.clone(),
        status,
        gateway: gateway_port(&r.resources).map(|p| format!("127.0.0.1:{}", p.host)),
        pid: match o.live {
            Liveness::Running(ref p) if p.pid != 0 => Some(p.pid),
            _ => None,
        },
        updated: r.updated_at,
        last_error,
        accel: r.runtime.accel.clone(),
        restarts: r.restart_count,
        network: r.resources.network.egress.to_string(),
        egress: EgressCounts::default(),
    }
}

/// The row of an instance whose record cannot be read: status `unknown`, the reason as
/// its last error, and its QEMU found by the instance folder.
pub fn unreadable_row(driver: &dyn Driver, e: &RecordError) -> Option<InstanceRow> {
    let clawid = e.clawid()?;
    let p = Record::placeholder(&clawid);
    Some(InstanceRow {
        pid: match driver.probe(&p) {
            Liveness::Running(ref p) if p.pid != 0 => Some(p.pid),
            _ => None,
        },
        clawid,
        name: p.name,
        status: "unknown".into(),
        gateway: None,
        updated: p.updated_at,
        last_error: Some(format!(
            "record unreadable, instance left alone (stop and rm -f still work): {}",
            crate::util::text::error_chain(e)
        )),
        accel: None,
        restarts: 0,
        network: "unknown".into(),
        egress: EgressCounts::default(),
    })
}

/// Every instance of `home` as a row (those whose record cannot be read as `unknown`),
/// plus the records that could not be read.
pub fn rows(home: &Home, driver: &dyn Driver) -> (Vec<InstanceRow>, Vec<RecordError>) {
    let (actual, errors) = observe(home, driver);
    let counts = egress_counts(&crate::state::events::read(&home.events_log()).unwrap_or_default());
    let mut rows: Vec<InstanceRow> = actual.iter().map(|o| row(driver, o)).collect();
    rows.extend(errors.iter().filter_map(|e| unreadable_row(driver, e)));
    for r in &mut rows {
        r.egress = counts.get(&r.clawid).copied().unwrap_or_default();
    }
    rows.sort_by(|a, b| a.clawid.cmp(&b.clawid));
    (rows, errors)
}

/// Errors looking an instance up.
#[derive(Debug, thiserror::Error)]
pub enum LookupError {
    /// Nothing matches.
    #[error("no instance {0:?} (see clawfarm ps)")]
    NotFound(String),
    /// The instance exists but its record cannot be read.
    #[error("the record of instance {clawid} cannot be read")]
    Unreadable {
        /// The instance folder's CLAWID.
        clawid: String,
        /// Why.
        #[source]
        source: RecordError,
    },
    /// A prefix matches several.
    #[error("{id:?} matches {} instances: {}", matches.len(), matches.join(", "))]
    Ambiguous {
        /// What was asked for.
        id: String,
        /// The CLAWIDs it matches.
        matches: Vec<String>,
    },
}

/// Find one record by CLAWID, name, or unique CLAWID prefix.
pub fn find_record(home: &Home, id: &str) -> Result<Record, LookupError> {
    let (recs, errors) = Record::read_all(home);
    if let Some(r) = recs.iter().find(|r| r.clawid == id) {
        return Ok(r.clone());
    }
    let by_name: Vec<&Record> = recs.iter().filter(|r| r.name == id).collect();
    if by_name.len() == 1 {
        return Ok(by_name[0].clone());
    }
    let by_prefix: Vec<&Record> = recs.iter().filter(|r| r.clawid.starts_with(id)).collect();
    match by_prefix.len() {
        1 => Ok(by_prefix[0].clone()),
        0 => {
            // An instance whose record cannot be read is still found by its folder.
            let bad: Vec<(String, RecordError)> = errors
                .into_iter()
                .filter_map(|e| e.clawid().map(|c| (c, e)))
                .filter(|(c, _)| c == id || Record::placeholder(c).name == id || c.starts_with(id))
                .collect();
            match <[_; 1]>::try_from(bad) {
                Ok([(clawid, source)]) => Err(LookupError::Unreadable { clawid, source }),
                Err(bad) if bad.is_empty() => Err(LookupError::NotFound(id.to_string())),
                Err(bad) => Err(LookupError::Ambiguous {
                    id: id.to_string(),
                    matches: bad.into_iter().map(|(c, _)| c).collect(),
                }),
            }
        }
        _ => Err(LookupError::Ambiguous {
            id: id.to_string(),
            matches: by_prefix.iter().map(|r| r.clawid.clone()).collect(),
        }),
    }
}

/// Every stored blob and bundle with its users (`used_by`) and, for a bundle, the blobs it
/// still misses (`missing`): the rows of `images -o json` and of the dashboard's
/// `/api/images`.
pub fn image_rows(home: &Home) -> Vec<serde_json::Value> {
    let items = crate::store::bundle::list(home);
    let (records, _) = Record::read_all(home);
    let users = image_users(&items, &records);
    items
        .iter()
        .map(|it| {
            let mut v = serde_json::to_value(it).expect("items serialize");
            v["used_by"] = serde_json::json!(users.get(&it.digest).cloned().unwrap_or_default());
            if it.kind == StoredKind::Bundle {
                v["missing"] = serde_json::json!(it.missing(home));
            }
            v
        })
        .collect()
}

/// Which instances use each stored item: a bundle by its digest, and through their
/// bundles, each blob. Sorted, without duplicates.
pub fn image_users(items: &[StoredItem], records: &[Record]) -> BTreeMap<String, Vec<String>> {
    let mut users: BTreeMap<String, Vec<String>> = BTreeMap::new();
    for r in records {
        users
            .entry(r.build.bundle.clone())
            .or_default()
            .push(r.clawid.clone());
    }
    for it in items {
        if it.kind == StoredKind::Bundle {
            let ids = users.get(&it.digest).cloned().unwrap_or_default();
            for b in &it.blobs {
                users
                    .entry(b.clone())
                    .or_default()
                    .extend(ids.iter().cloned());
            }
        }
    }
    for v in users.values_mut() {
        v.sort();
        v.dedup();
    }
    users
}
