//! `/metrics` in the Prometheus text exposition format (version 0.0.4): instances by
//! status, restarts, reconcile pass durations and the last pass time (from the `reconcile`
//! lines `watch` writes to the event log), and the bytes of the blob and bundle store.
//! Labels carry CLAWIDs, names and status words only, never a param value.

use std::fmt::Write as _;
use std::time::SystemTime;

use crate::state::events::Event;
use crate::store::bundle::{StoredItem, StoredKind};

use super::views::InstanceView;

/// Every status word, so that a status with no instance still reports 0.
pub const STATUSES: [&str; 7] = [
    "booting",
    "ready",
    "unhealthy",
    "stopped",
    "exited",
    "creating",
    "failed",
];

/// Upper bounds (seconds) of the reconcile duration histogram.
pub const BUCKETS: [f64; 10] = [0.1, 0.5, 1.0, 5.0, 10.0, 30.0, 60.0, 120.0, 300.0, 600.0];

/// Escape a label value (`\`, `"`, newline).
fn label(v: &str) -> String {
    v.replace('\\', "\\\\")
        .replace('"', "\\\"")
        .replace('\n', "\\n")
}

fn unix(t: SystemTime) -> f64 {
    t.duration_since(SystemTime::UNIX_EPOCH)
        .unwrap_or_default()
        .as_secs_f64()
}

/// A reconcile pass read back from the event log.
#[derive(Debug, Clone, PartialEq)]
pub struct PassLine {
    /// When it ended.
    pub time: SystemTime,
    /// How long it took.
    pub seconds: f64,
    /// Whether it succeeded.
    pub ok: bool,
}

/// The `reconcile` lines of the event log.
pub fn passes(events: &[Event]) -> Vec<PassLine> {
    events
        .iter()
        .filter(|e| e.instance == "-" && e.action == "reconcile")
        .filter_map(|e| {
            let secs = e
                .message
                .split_whitespace()
                .find_map(|kv| kv.strip_prefix("seconds="))?
                .parse::<f64>()
                .ok()
                .filter(|s| s.is_finite() && *s >= 0.0)?;
            Some(PassLine {
                time: e.time,
                seconds: secs,
                ok: e.result == "ok",
            })
        })
        .collect()
}

/// Render the metrics.
pub fn render(instances: &[InstanceView], items: &[StoredItem], events: &[Event]) -> String {
    let mut o = String::new();
    let w = &mut o;
    let _ = writeln!(w, "# HELP clawfarm_instances Instances by status.");
    let _ = writeln!(w, "# TYPE clawfarm_instances gauge");
    for s in STATUSES {
        let n = instances.iter().filter(|i| i.row.status == s).count();
        let _ = writeln!(w, "clawfarm_instances{{status=\"{s}\"}} {n}");
    }
    let _ = writeln!(
        w,
        "# HELP clawfarm_instance_up Whether the instance's status is ready (1) or not (0)."
    );
    let _ = writeln!(w, "# TYPE clawfarm_instance_up gauge");
    for i in instances {
        let _ = writeln!(
            w,
            "clawfarm_instance_up{{clawid=\"{}\",name=\"{}\",status=\"{}\"}} {}",
            label(&i.row.clawid),
            label(&i.row.name),
            label(&i.row.status),
            u8::from(i.row.status == "ready")
        );
    }
    let _ = writeln!(
        w,
        "# HELP clawfarm_instance_restarts_total Restarts after unexpected exits."
    );
    let _ = writeln!(w, "# TYPE clawfarm_instance_restarts_total counter");
    for i in instances {
        let _ = writeln!(
            w,
            "clawfarm_instance_restarts_total{{clawid=\"{}\",name=\"{}\"}} {}",
            label(&i.row.clawid),
            label(&i.row.name),
            i.row.restarts
        );
    }
    let _ = writeln!(
        w,
        "# HELP clawfarm_instance_memory_bytes Resident memory of the instance's QEMU."
    );
    let _ = writeln!(w, "# TYPE clawfarm_instance_memory_bytes gauge");
    for i in instances {
        if let Some(m) = i.memory_bytes {
            let _ = writeln!(
                w,
                "clawfarm_instance_memory_bytes{{clawid=\"{}\",name=\"{}\"}} {m}",
                label(&i.row.clawid),
                label(&i.row.name)
            );
        }
    }
    let ps = passes(events);
    let _ = writeln!(
        w,
        "# HELP clawfarm_reconcile_duration_seconds Duration of watch reconcile passes."
    );
    let _ = writeln!(w, "# TYPE clawfarm_reconcile_duration_seconds histogram");
    for b in BUCKETS {
        let n = ps.iter().filter(|p| p.seconds <= b).count();
        let _ = writeln!(
            w,
            "clawfarm_reconcile_duration_seconds_bucket{{le=\"{b}\"}} {n}"
        );
    }
    let _ = writeln!(
        w,
        "clawfarm_reconcile_duration_seconds_bucket{{le=\"+Inf\"}} {}",
        ps.len()
    );
    let _ = writeln!(
        w,
        "clawfarm_reconcile_duration_seconds_sum {}",
        ps.iter().map(|p| p.seconds).sum::<f64>()
    );
    let _ = writeln!(w, "clawfarm_reconcile_duration_seconds_count {}", ps.len());
    let _ = writeln!(
        w,
        "# HELP clawfarm_reconcile_failures_total Watch reconcile passes that did not fully succeed."
    );
    let _ = writeln!(w, "# TYPE clawfarm_reconcile_failures_total counter");
    let _ = writeln!(
        w,
        "clawfarm_reconcile_failures_total {}",
        ps.iter().filter(|p| !p.ok).count()
    );
    if let Some(last) = ps.last() {
        let _ = writeln!(
            w,
            "# HELP clawfarm_last_reconcile_timestamp_seconds When the last watch pass ended (Unix time)."
        );
        let _ = writeln!(w, "# TYPE clawfarm_last_reconcile_timestamp_seconds gauge");
        let _ = writeln!(
            w,
            "clawfarm_last_reconcile_timestamp_seconds {:.3}",
            unix(last.time)
        );
    }
    let _ = writeln!(
        w,
        "# HELP clawfarm_store_bytes Bytes on disk in the store, by kind (blob, bundle)."
    );
    let _ = writeln!(w, "# TYPE clawfarm_store_bytes gauge");
    for (kind, word) in [(StoredKind::Blob, "blob"), (StoredKind::Bundle, "bundle")] {
        let n: u64 = items
            .iter()
            .filter(|i| i.kind == kind)
            .map(|i| i.size)
            .sum();
        let _ = writeln!(w, "clawfarm_store_bytes{{kind=\"{word}\"}} {n}");
    }
    let _ = writeln!(
        w,
        "# HELP clawfarm_store_items Items in the store, by kind."
    );
    let _ = writeln!(w, "# TYPE clawfarm_store_items gauge");
    for (kind, word) in [(StoredKind::Blob, "blob"), (StoredKind::Bundle, "bundle")] {
        let n = items.iter().filter(|i| i.kind == kind).count();
        let _ = writeln!(w, "clawfarm_store_items{{kind=\"{word}\"}} {n}");
    }
    o
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn passes_are_read_from_reconcile_lines() {
        let ev = |a: &str, r: &str, m: &str| Event::new("-", a, r, m.into());
        let evs = vec![
            ev("reconcile", "ok", "trigger=initial seconds=1.250 changes=2"),
            ev(
                "reconcile",
                "failed",
                "trigger=files seconds=0.010 changes=0",
            ),
            ev("reconcile", "ok", "trigger=files seconds=NaN"),
            ev("reconcile", "ok", "garbage"),
            ev("validate", "failed", "seconds=3"),
        ];
        let p = passes(&evs);
        assert_eq!(p.len(), 2);
        assert_eq!(p[0].seconds, 1.25);
        assert!(!p[1].ok);
        assert_eq!(label("a\"b\\c\nd"), "a\\\"b\\\\c\\nd");
    }
}
