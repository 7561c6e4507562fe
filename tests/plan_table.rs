//! Table tests of the pure planner: desired × actual → plan text.

mod common;

use std::collections::BTreeSet;

use clawfarm::plan::{PlanOptions, plan};
use common::*;

/// One row: desired, actual, options → the change lines and the action lines of the plan.
struct Case {
    name: &'static str,
    desired: Vec<D>,
    actual: Vec<clawfarm::observe::Observed>,
    prune: bool,
    protected: &'static [&'static str],
    /// `kind name (reasons)` per changed instance, in name order.
    changes: &'static [&'static str],
    /// Actions in topological order, `verb target`, with `<id>` for the instance's CLAWID.
    actions: &'static [&'static str],
}

fn line(c: &clawfarm::plan::Change) -> String {
    if c.reasons.is_empty() {
        format!("{} {}", c.kind.as_str(), c.name)
    } else {
        format!("{} {} ({})", c.kind.as_str(), c.name, c.reasons.join("; "))
    }
}

fn run(case: Case) {
    let desired: Vec<_> = case.desired.iter().map(D::build).collect();
    let opts = PlanOptions {
        prune: case.prune,
        protected: case.protected.iter().map(|s| s.to_string()).collect(),
    };
    let p = plan(&desired, &case.actual, &opts);
    let got: Vec<String> = p
        .changes
        .iter()
        .filter(|c| c.kind != clawfarm::plan::ChangeKind::Noop)
        .map(line)
        .collect();
    assert_eq!(got, case.changes, "case {}: changes", case.name);
    let mut ids: Vec<(String, String)> = desired
        .iter()
        .map(|d| (d.clawid.clone(), d.name.clone()))
        .collect();
    ids.extend(
        case.actual
            .iter()
            .map(|o| (o.record.clawid.clone(), o.record.name.clone())),
    );
    let acts: Vec<String> = p
        .topo_order()
        .into_iter()
        .map(|n| {
            let mut s = p.graph[n].to_string();
            for (id, name) in &ids {
                s = s.replace(id.as_str(), &format!("<{name}>"));
            }
            s
        })
        .collect();
    assert_eq!(acts, case.actions, "case {}: actions", case.name);
    // Determinism: the same input in another order gives the same text.
    let mut rev = desired.clone();
    rev.reverse();
    let mut ract = case.actual.clone();
    ract.reverse();
    assert_eq!(
        plan(&rev, &ract, &opts).render(),
        p.render(),
        "case {}: order dependence",
        case.name
    );
}

#[test]
fn planner_table() {
    let b2 = bundle('2', true, true);
    let b_new = bundle('3', false, true);
    let b_norun = bundle('4', false, false);
    let cases = vec![
        Case {
            name: "empty",
            desired: vec![],
            actual: vec![],
            prune: false,
            protected: &[],
            changes: &[],
            actions: &[],
        },
        Case {
            name: "create with imported bundle",
            desired: vec![d("a")],
            actual: vec![],
            prune: false,
            protected: &[],
            changes: &["create a"],
            actions: &[
                "fetch-blob bbbbbbbbbbbb (https://example.invalid/base.qcow2)",
                "create-disk <a>",
                "write-seed <a>",
                "start <a>",
                "wait-ready <a>",
            ],
        },
        Case {
            name: "two instances share one import node",
            desired: vec![d("a").bundle(b_new.clone()), d("b").bundle(b_new.clone())],
            actual: vec![],
            prune: false,
            protected: &[],
            changes: &["create a", "create b"],
            actions: &[
                "import-bundle 333333333333",
                "fetch-blob bbbbbbbbbbbb (https://example.invalid/base.qcow2)",
                "create-disk <a>",
                "write-seed <a>",
                "start <a>",
                "wait-ready <a>",
                "create-disk <b>",
                "write-seed <b>",
                "start <b>",
                "wait-ready <b>",
            ],
        },
        Case {
            name: "bundle without run layer fetches its base once",
            desired: vec![
                d("a").bundle(b_norun.clone()),
                d("b").bundle(b_norun.clone()),
            ],
            actual: vec![],
            prune: false,
            protected: &[],
            changes: &["create a", "create b"],
            actions: &[
                "import-bundle 444444444444",
                "fetch-blob bbbbbbbbbbbb (https://example.invalid/base.qcow2)",
                "create-disk <a>",
                "write-seed <a>",
                "start <a>",
                "wait-ready <a>",
                "create-disk <b>",
                "write-seed <b>",
                "start <b>",
                "wait-ready <b>",
            ],
        },
        Case {
            name: "create stopped",
            desired: vec![d("a").stopped()],
            actual: vec![],
            prune: false,
            protected: &[],
            changes: &["create a"],
            actions: &[
                "fetch-blob bbbbbbbbbbbb (https://example.invalid/base.qcow2)",
                "create-disk <a>",
                "write-seed <a>",
            ],
        },
        Case {
            name: "create suspended: booted once, then saved",
            desired: vec![d("a").suspended()],
            actual: vec![],
            prune: false,
            protected: &[],
            changes: &["create a"],
            actions: &[
                "fetch-blob bbbbbbbbbbbb (https://example.invalid/base.qcow2)",
                "create-disk <a>",
                "write-seed <a>",
                "start <a>",
                "wait-ready <a>",
                "suspend <a>",
            ],
        },
        Case {
            name: "running, desired suspended",
            desired: vec![d("a").suspended()],
            actual: vec![d("a").running()],
            prune: false,
            protected: &[],
            changes: &["suspend a (desired state suspended)"],
            actions: &["suspend <a>"],
        },
        Case {
            name: "suspended and desired suspended: steady",
            desired: vec![d("a").suspended()],
            actual: vec![d("a").suspended().suspended_obs()],
            prune: true,
            protected: &[],
            changes: &[],
            actions: &[],
        },
        Case {
            name: "cold stopped, desired suspended: boot, then suspend",
            desired: vec![d("a").suspended()],
            actual: vec![d("a").suspended().stopped_obs()],
            prune: false,
            protected: &[],
            changes: &["suspend a (no saved state: boot, then suspend)"],
            actions: &["start <a>", "wait-ready <a>", "suspend <a>"],
        },
        Case {
            name: "suspended, desired running: resumed",
            desired: vec![d("a")],
            actual: vec![d("a").suspended_obs()],
            prune: false,
            protected: &[],
            changes: &["start a (suspended: start resumes it)"],
            actions: &["start <a>", "wait-ready <a>"],
        },
        Case {
            name: "suspended, desired stopped: left as it is",
            desired: vec![d("a").stopped()],
            actual: vec![d("a").stopped().suspended_obs()],
            prune: false,
            protected: &[],
            changes: &[],
            actions: &[],
        },
        Case {
            name: "resources of a suspended VM: record only (the resume cold-boots, saying why)",
            desired: vec![d("a").cpus(2).suspended()],
            actual: vec![d("a").suspended().suspended_obs()],
            prune: false,
            protected: &[],
            changes: &["update a (cpus 1 → 2)"],
            actions: &[],
        },
        Case {
            name: "resources of a running VM desired suspended: restart, then suspend",
            desired: vec![d("a").cpus(2).suspended()],
            actual: vec![d("a").running()],
            prune: false,
            protected: &[],
            changes: &["restart a (cpus 1 → 2)"],
            actions: &["stop <a>", "start <a>", "wait-ready <a>", "suspend <a>"],
        },
        Case {
            name: "steady state",
            desired: vec![d("a"), d("b").stopped()],
            actual: vec![d("a").running(), d("b").stopped().stopped_obs()],
            prune: true,
            protected: &[],
            changes: &[],
            actions: &[],
        },
        Case {
            name: "exited VM is started",
            desired: vec![d("a")],
            actual: vec![d("a").exited()],
            prune: false,
            protected: &[],
            changes: &["start a (exited unexpectedly)"],
            actions: &["start <a>", "wait-ready <a>"],
        },
        Case {
            name: "stop",
            desired: vec![d("a").stopped()],
            actual: vec![d("a").running()],
            prune: false,
            protected: &[],
            changes: &["stop a (desired state stopped)"],
            actions: &["stop <a>"],
        },
        Case {
            name: "restart on cpus",
            desired: vec![d("a").cpus(2)],
            actual: vec![d("a").running()],
            prune: false,
            protected: &[],
            changes: &["restart a (cpus 1 → 2)"],
            actions: &["stop <a>", "start <a>", "wait-ready <a>"],
        },
        Case {
            name: "resources of a stopped VM: record only",
            desired: vec![d("a").cpus(4).stopped()],
            actual: vec![d("a").stopped().stopped_obs()],
            prune: false,
            protected: &[],
            changes: &["update a (cpus 1 → 4)"],
            actions: &[],
        },
        Case {
            name: "replace on secret param, value not shown",
            desired: vec![d("a").key("secret-2")],
            actual: vec![d("a").running()],
            prune: false,
            protected: &[],
            changes: &["replace a (param API_KEY changed (sensitive value))"],
            actions: &[
                "stop <a>",
                "remove <a>",
                "fetch-blob bbbbbbbbbbbb (https://example.invalid/base.qcow2)",
                "create-disk <a>",
                "write-seed <a>",
                "start <a>",
                "wait-ready <a>",
            ],
        },
        Case {
            name: "replace on bundle and plain param; resources ride along",
            desired: vec![d("a").bundle(b2.clone()).model("m2").cpus(3)],
            actual: vec![d("a").exited()],
            prune: false,
            protected: &[],
            changes: &["replace a (bundle 111111111111 → 222222222222; param MODEL changed)"],
            actions: &[
                "remove <a>",
                "fetch-blob bbbbbbbbbbbb (https://example.invalid/base.qcow2)",
                "create-disk <a>",
                "write-seed <a>",
                "start <a>",
                "wait-ready <a>",
            ],
        },
        Case {
            name: "interrupted create resumes",
            desired: vec![d("a")],
            actual: vec![d("a").creating()],
            prune: false,
            protected: &[],
            changes: &["create a (previous apply did not finish)"],
            actions: &[
                "fetch-blob bbbbbbbbbbbb (https://example.invalid/base.qcow2)",
                "create-disk <a>",
                "write-seed <a>",
                "start <a>",
                "wait-ready <a>",
            ],
        },
        Case {
            name: "orphan kept without prune",
            desired: vec![],
            actual: vec![d("gone").running()],
            prune: false,
            protected: &[],
            changes: &[],
            actions: &[],
        },
        Case {
            name: "orphan deleted with prune",
            desired: vec![],
            actual: vec![d("gone").running(), d("idle").stopped_obs()],
            prune: true,
            protected: &[],
            changes: &[
                "delete gone (manifest removed)",
                "delete idle (manifest removed)",
            ],
            actions: &["stop <gone>", "remove <gone>", "remove <idle>"],
        },
        Case {
            name: "protected (broken manifest) never deleted",
            desired: vec![],
            actual: vec![d("broken").running()],
            prune: true,
            protected: &["broken"],
            changes: &[],
            actions: &[],
        },
        Case {
            name: "port handed over: new VM starts after old one stops",
            desired: vec![d("new").port(18789)],
            actual: vec![d("old").port(18789).running()],
            prune: true,
            protected: &[],
            changes: &["create new", "delete old (manifest removed)"],
            actions: &[
                "fetch-blob bbbbbbbbbbbb (https://example.invalid/base.qcow2)",
                "create-disk <new>",
                "write-seed <new>",
                "stop <old>",
                "start <new>",
                "wait-ready <new>",
                "remove <old>",
            ],
        },
    ];
    let mut failed = 0;
    for c in cases {
        if std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| run(c))).is_err() {
            failed += 1;
        }
    }
    assert_eq!(failed, 0, "{failed} planner cases failed");
}

#[test]
fn run_instances_are_never_pruned() {
    let mut o = d("adhoc-1a2b3c").running();
    o.record.origin = clawfarm::state::record::Origin::Run;
    let p = plan(
        &[],
        &[o],
        &PlanOptions {
            prune: true,
            protected: BTreeSet::new(),
        },
    );
    assert!(p.is_empty(), "{}", p.render());
}

#[test]
fn render_and_json_agree_and_hide_secrets() {
    let desired = vec![d("a").key("hunter2-new").build(), d("b").build()];
    let actual = vec![d("a").key("hunter2").running()];
    let p = plan(&desired, &actual, &PlanOptions::default());
    let text = p.render();
    let json = p.to_json().to_string();
    for s in [&text, &json] {
        assert!(!s.contains("hunter2"), "secret leaked: {s}");
    }
    assert!(
        text.contains("Plan: 1 to create, 1 to replace, 0 unchanged."),
        "{text}"
    );
    assert_eq!(p.to_json()["counts"]["create"], 1);
    assert_eq!(p.to_json()["empty"], false);
    assert!(!p.is_empty());
}

#[test]
fn port_handover_is_an_edge() {
    use clawfarm::plan::Action;
    let desired = vec![d("new").port(18789).build()];
    let actual = vec![d("old").port(18789).running()];
    let p = plan(
        &desired,
        &actual,
        &PlanOptions {
            prune: true,
            ..PlanOptions::default()
        },
    );
    let find = |want: &dyn Fn(&Action) -> bool| {
        p.graph.node_indices().find(|n| want(&p.graph[*n])).unwrap()
    };
    let stop_old = find(&|a| matches!(a, Action::Stop { clawid } if clawid.starts_with("old-")));
    let start_new = find(&|a| matches!(a, Action::Start { clawid } if clawid.starts_with("new-")));
    assert!(p.graph.find_edge(stop_old, start_new).is_some());
}
