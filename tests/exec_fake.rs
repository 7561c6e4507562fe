//! The executor on the fake driver: failures skip only their dependents, passes converge
//! (property test), and a crash after any action converges on rerun.

mod common;

use std::collections::BTreeSet;
use std::sync::Arc;

use clawfarm::desired::{Desired, DesiredInstance};
use clawfarm::driver::Driver;
use clawfarm::driver::fake::FakeDriver;
use clawfarm::home::Home;
use clawfarm::plan::ChangeKind;
use clawfarm::reconcile::exec::{ExecOptions, NodeStatus};
use clawfarm::reconcile::pass::prepare;
use clawfarm::state::events::EventSink;
use clawfarm::state::record::{Origin, Phase, Record};
use common::*;
use proptest::prelude::*;

fn rt() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap()
}

/// What one test pass is asked to do.
struct PassOptions {
    prune: bool,
    exec: ExecOptions,
}

fn opts(prune: bool) -> PassOptions {
    PassOptions {
        prune,
        exec: ExecOptions::default(),
    }
}

fn wanted(desired: &[Arc<DesiredInstance>]) -> Desired {
    Desired {
        instances: desired.to_vec(),
        ..Desired::default()
    }
}

fn pass(
    home: &Home,
    drv: &Arc<FakeDriver>,
    desired: &[Arc<DesiredInstance>],
    o: &PassOptions,
) -> clawfarm::reconcile::pass::PassOutcome {
    let prepared = prepare(home, &**drv, wanted(desired), o.prune);
    rt().block_on(prepared.execute(
        home,
        drv.clone() as Arc<dyn Driver>,
        Origin::Manifest,
        EventSink::to_file(home.events_log()),
        o.exec.clone(),
    ))
}

fn pending(home: &Home, drv: &FakeDriver, desired: &[Arc<DesiredInstance>], prune: bool) -> String {
    let p = prepare(home, drv, wanted(desired), prune).plan;
    if p.is_empty() {
        String::new()
    } else {
        p.render()
    }
}

/// Instance folders on disk.
fn dirs(home: &Home) -> BTreeSet<String> {
    std::fs::read_dir(home.claws_dir())
        .map(|rd| {
            rd.flatten()
                .map(|e| e.file_name().to_string_lossy().into_owned())
                .collect()
        })
        .unwrap_or_default()
}

fn setup() -> (tempfile::TempDir, Home, Arc<FakeDriver>) {
    let t = tempfile::tempdir().unwrap();
    let home = Home::new(t.path().join("home"));
    home.ensure().unwrap();
    let drv = Arc::new(FakeDriver::new(home.clone()));
    (t, home, drv)
}

#[test]
fn create_then_steady_state() {
    let (_t, home, drv) = setup();
    let desired = vec![d("a").build(), d("b").stopped().build()];
    let out = pass(&home, &drv, &desired, &opts(true));
    assert!(out.report.ok(), "{:?}", out.report);
    assert_eq!(
        out.report.summary(),
        "2 created, 0 replaced, 0 deleted, 0 failed"
    );
    assert_eq!(pending(&home, &drv, &desired, true), "");
    let ra = Record::read(&Record::path(&home, &desired[0].clawid)).unwrap();
    assert_eq!(ra.phase, Phase::Ready);
    let rb = Record::read(&Record::path(&home, &desired[1].clawid)).unwrap();
    assert_eq!(rb.phase, Phase::Stopped);
    // The record never holds a param value.
    let raw = std::fs::read_to_string(Record::path(&home, &desired[0].clawid)).unwrap();
    assert!(!raw.contains("secret-1"), "{raw}");
    // Events were logged for every action.
    let ev = clawfarm::state::events::read(&home.events_log()).unwrap();
    assert!(
        ev.iter()
            .any(|e| e.action == "wait-ready" && e.result == "ok")
    );
}

#[test]
fn failure_skips_only_dependents() {
    let (_t, home, drv) = setup();
    let shared = bundle('9', false, true);
    let desired = vec![
        d("a").bundle(shared.clone()).build(),
        d("b").bundle(shared.clone()).build(),
        d("c").build(),
    ];
    // a's seed fails: a's start/wait are skipped; b and c proceed.
    drv.fail_on("write-seed", &desired[0].clawid);
    let out = pass(&home, &drv, &desired, &opts(false));
    let r = &out.report;
    assert!(!r.ok());
    assert_eq!(r.summary(), "2 created, 0 replaced, 0 deleted, 1 failed");
    let roots = r.root_failures();
    assert_eq!(roots.len(), 1, "one root failure, not its knock-on skips");
    assert_eq!(roots[0].0.verb(), "write-seed");
    let skipped: Vec<String> = r
        .nodes
        .iter()
        .filter(|n| matches!(n.status, NodeStatus::Skipped { .. }))
        .map(|n| n.action.to_string())
        .collect();
    assert_eq!(
        skipped,
        vec![
            format!("start {}", desired[0].clawid),
            format!("wait-ready {}", desired[0].clawid)
        ]
    );
    let failed = r.changes.iter().find(|c| !c.ok).unwrap();
    assert_eq!(failed.name, "a");
    assert!(
        failed
            .error
            .as_deref()
            .unwrap()
            .contains("injected failure of write-seed")
    );
    // The failed instance's record says so; a rerun without the fault converges.
    let rec = Record::read(&Record::path(&home, &desired[0].clawid)).unwrap();
    assert!(rec.last_error.unwrap().contains("write-seed"));
    drv.clear_failures();
    let out = pass(&home, &drv, &desired, &opts(false));
    assert!(out.report.ok());
    assert_eq!(pending(&home, &drv, &desired, false), "");
}

#[test]
fn shared_import_failure_skips_both_users() {
    let (_t, home, drv) = setup();
    let shared = bundle('8', false, true);
    let desired = vec![
        d("a").bundle(shared.clone()).build(),
        d("b").bundle(shared.clone()).build(),
        d("c").build(),
    ];
    drv.fail_on("import-bundle", &shared.digest);
    let out = pass(&home, &drv, &desired, &opts(false));
    assert_eq!(
        out.report.summary(),
        "1 created, 0 replaced, 0 deleted, 2 failed"
    );
    assert_eq!(out.report.root_failures().len(), 1);
    // The import node ran once for two instances.
    let imports = drv
        .calls()
        .iter()
        .filter(|c| c.starts_with("import-bundle"))
        .count();
    assert_eq!(imports, 1);
}

#[test]
fn unhealthy_guest_is_failed_change_and_recorded() {
    let (_t, home, drv) = setup();
    let desired = vec![d("a").build()];
    drv.make_unhealthy(&desired[0].clawid);
    let out = pass(&home, &drv, &desired, &opts(false));
    assert!(!out.report.ok());
    let rec = Record::read(&Record::path(&home, &desired[0].clawid)).unwrap();
    assert_eq!(rec.phase, Phase::Unhealthy);
    assert!(rec.last_error.unwrap().contains("provision[0]"));
    // Running but unhealthy is not something a rerun can fix: nothing pending.
    assert_eq!(pending(&home, &drv, &desired, false), "");
}

#[test]
fn parallelism_one_still_completes() {
    let (_t, home, drv) = setup();
    let desired: Vec<_> = (0..6).map(|i| d(&format!("n{i}")).build()).collect();
    let mut o = opts(false);
    o.exec.parallelism = 1;
    let out = pass(&home, &drv, &desired, &o);
    assert!(out.report.ok());
    assert_eq!(pending(&home, &drv, &desired, false), "");
}

/// A spec for a generated desired instance.
#[derive(Debug, Clone)]
struct G {
    name: usize,
    bundle: usize,
    key: usize,
    cpus: u32,
    stopped: bool,
}

fn build(gs: &[G]) -> Vec<Arc<DesiredInstance>> {
    let mut seen = BTreeSet::new();
    gs.iter()
        .filter(|g| seen.insert(g.name))
        .map(|g| {
            let b = bundle(['1', '2', '3'][g.bundle], g.bundle != 2, g.bundle != 1);
            let x = d(&format!("i{}", g.name))
                .bundle(b)
                .key(&format!("k{}", g.key))
                .cpus(g.cpus);
            if g.stopped { x.stopped() } else { x }.build()
        })
        .collect()
}

fn gen_set() -> impl Strategy<Value = Vec<G>> {
    prop::collection::vec(
        (0usize..6, 0usize..3, 0usize..2, 1u32..3, any::<bool>()).prop_map(
            |(name, bundle, key, cpus, stopped)| G {
                name,
                bundle,
                key,
                cpus,
                stopped,
            },
        ),
        0..6,
    )
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 48, .. ProptestConfig::default() })]

    /// For generated (previous, next) desired sets and random VM crashes in between:
    /// plan → execute → plan again is empty, and no folder is leaked.
    #[test]
    fn converges(prev in gen_set(), next in gen_set(), crash in prop::collection::vec(0usize..6, 0..3), prune in any::<bool>()) {
        let (_t, home, drv) = setup();
        let a = build(&prev);
        pass(&home, &drv, &a, &opts(true));
        for c in crash {
            let _ = FakeDriver::crash(&home, &clawfarm::desired::clawid_for(&format!("i{c}")));
        }
        let b = build(&next);
        let out = pass(&home, &drv, &b, &opts(prune));
        prop_assert!(out.report.ok(), "{:?}", out.report.root_failures());
        prop_assert_eq!(pending(&home, &drv, &b, prune), "");
        let want: BTreeSet<String> = b.iter().map(|d| d.clawid.clone()).collect();
        let have = dirs(&home);
        if prune {
            prop_assert_eq!(have, want);
        } else {
            prop_assert!(want.is_subset(&have));
        }
    }
}

/// Crash safety: for every k, stop after k actions, also lose the record write of the
/// (k+1)-th action (the window between an effect and its record), then rerun: the result
/// converges with nothing duplicated or leaked.
#[test]
fn crash_after_every_action_converges() {
    let before = vec![d("keep").build(), d("swap").build(), d("gone").build()];
    let after = vec![
        d("keep").build(),
        d("swap").key("k-new").build(),
        d("new").port(18800).build(),
        d("new2").stopped().build(),
    ];
    // How many actions does the full transition take?
    let total = {
        let (_t, home, drv) = setup();
        pass(&home, &drv, &before, &opts(true));
        pass(&home, &drv, &after, &opts(true))
            .plan
            .graph
            .node_count()
    };
    assert!(
        total >= 10,
        "transition too small to be interesting: {total}"
    );
    for k in 0..=total {
        for lose_record in [false, true] {
            let (_t, home, drv) = setup();
            pass(&home, &drv, &before, &opts(true));
            let mut o = opts(true);
            o.exec.stop_after = Some(k);
            pass(&home, &drv, &after, &o);
            if lose_record {
                // Snapshot records, run exactly one more action, then put the records back:
                // the action's effect happened but its record write was lost.
                let snap: Vec<(std::path::PathBuf, Option<Vec<u8>>)> = dirs(&home)
                    .into_iter()
                    .map(|id| {
                        let p = Record::path(&home, &id);
                        let b = std::fs::read(&p).ok();
                        (p, b)
                    })
                    .collect();
                let mut one = opts(true);
                one.exec.stop_after = Some(1);
                pass(&home, &drv, &after, &one);
                for (p, b) in snap {
                    match b {
                        Some(b) if p.parent().unwrap().exists() => std::fs::write(&p, b).unwrap(),
                        _ => {}
                    }
                }
            }
            let out = pass(&home, &drv, &after, &opts(true));
            assert!(
                out.report.ok(),
                "k={k} lose={lose_record}: {:?}",
                out.report.root_failures()
            );
            assert_eq!(
                pending(&home, &drv, &after, true),
                "",
                "k={k} lose={lose_record}"
            );
            let want: BTreeSet<String> = after.iter().map(|d| d.clawid.clone()).collect();
            assert_eq!(
                dirs(&home),
                want,
                "k={k} lose={lose_record}: leaked or missing"
            );
            // Nothing duplicated: every running VM was booted once per start it needed.
            for id in &want {
                let vm = std::fs::read_to_string(home.claw_dir(id).join("fake-vm.json"))
                    .unwrap_or_default();
                assert!(
                    !vm.contains("\"boot\":3"),
                    "k={k}: {id} booted too often: {vm}"
                );
            }
            let kinds = pass(&home, &drv, &after, &opts(true)).plan.counts();
            assert_eq!(kinds.get(&ChangeKind::Noop), Some(&after.len()));
        }
    }
}

#[test]
fn sweep_removes_dead_writers_temp_files_but_not_under_a_held_lock() {
    let (_t, home, drv) = setup();
    let desired = vec![d("a").build(), d("b").build()];
    pass(&home, &drv, &desired, &opts(false));
    let (a, b) = (&desired[0].clawid, &desired[1].clawid);
    for id in [a, b] {
        std::fs::write(home.claw_dir(id).join(".record.json.tmp.999.1"), b"torn").unwrap();
    }
    let _held = clawfarm::state::lock_instance(&home, b, None).unwrap();
    assert_eq!(clawfarm::reconcile::pass::sweep_temp_files(&home), 1);
    assert!(!home.claw_dir(a).join(".record.json.tmp.999.1").exists());
    assert!(home.claw_dir(b).join(".record.json.tmp.999.1").exists());
}
