//! Steady-state planning at 1,000 and 10,000 instances: observe (read every record, probe
//! every VM) + plan, with nothing to do. Targets: ≤ 50 ms and ≤ 500 ms on 2 cores.
//! The end-to-end `clawfarm plan -f DIR` timing (manifest parsing included) is in
//! `scripts/bench-plan.sh`.

use std::sync::Arc;

use clawfarm::desired::{
    BuildSpec, BundleDesired, BundleKind, Desired, DesiredInstance, Resources, clawid_for,
};
use clawfarm::driver::Driver;
use clawfarm::driver::fake::FakeDriver;
use clawfarm::home::Home;
use clawfarm::input::clawspec::{Bootstrap, ClawSpec, Image, Params};
use clawfarm::input::manifest::{DesiredState, SourceLoc};
use clawfarm::plan::{PlanOptions, plan};
use clawfarm::reconcile::exec::{ExecContext, ExecOptions, execute};
use clawfarm::reconcile::pass::prepare;
use clawfarm::state::events::EventSink;
use clawfarm::state::record::Origin;
use criterion::{Criterion, criterion_group, criterion_main};

fn wanted(d: &[Arc<DesiredInstance>]) -> Desired {
    Desired {
        instances: d.to_vec(),
        ..Desired::default()
    }
}

fn desired(n: usize) -> Vec<Arc<DesiredInstance>> {
    let spec = Arc::new(ClawSpec {
        schema_version: 3,
        name: "bench".into(),
        image: vec![Image {
            name: "base".into(),
            reference: "file:///dev/null".into(),
            sha256: "a".repeat(64),
        }],
        bootstrap: Bootstrap {
            id: "openclaw".into(),
            display_name: None,
            install_script: "true".into(),
            start_script: "true".into(),
            params: Params {
                required: vec![],
                optional: vec![],
            },
        },
        provision: vec![],
    });
    let bundle = Arc::new(BundleDesired {
        digest: "b".repeat(64),
        source: "/dev/null".into(),
        kind: BundleKind::Json,
        clawspec: spec,
        imported: true,
    });
    (0..n)
        .map(|i| {
            let name = format!("agent-{i:05}");
            Arc::new(DesiredInstance {
                clawid: clawid_for(&name),
                loc: SourceLoc {
                    file: format!("/m/{name}.yaml").into(),
                    line: 1,
                    col: 1,
                },
                name,
                state: DesiredState::Running,
                bundle: bundle.clone(),
                build: BuildSpec {
                    bundle: bundle.digest.clone(),
                    params: Default::default(),
                    volumes: vec![],
                },
                resources: Resources {
                    cpus: 1,
                    memory_mib: 1024,
                    ports: vec![],
                    network: Default::default(),
                },
                params: vec![],
                volumes: vec![],
            })
        })
        .collect()
}

fn bench(c: &mut Criterion) {
    let rt = tokio::runtime::Runtime::new().unwrap();
    for n in [1_000usize, 10_000] {
        let t = tempfile::tempdir().unwrap();
        let home = Home::new(t.path());
        home.ensure().unwrap();
        let drv = Arc::new(FakeDriver::new(home.clone()));
        let d = desired(n);
        // Bring the home to the steady state once.
        let pp = prepare(&home, &*drv, wanted(&d), false);
        let (p, actual) = (pp.plan, pp.observed);
        let ctx = ExecContext {
            home: home.clone(),
            desired: d.iter().map(|x| (x.clawid.clone(), x.clone())).collect(),
            records: actual
                .into_iter()
                .map(|o| (o.record.clawid.clone(), o.record))
                .collect(),
            origin: Origin::Manifest,
            events: EventSink::none(),
        };
        let opts = ExecOptions {
            parallelism: 16,
            ..ExecOptions::default()
        };
        let r = rt.block_on(execute(&p, ctx, drv.clone() as Arc<dyn Driver>, opts));
        assert!(r.ok());
        let pp = prepare(&home, &*drv, wanted(&d), false);
        let (p, actual) = (pp.plan, pp.observed);
        assert!(p.is_empty(), "not steady");

        let mut g = c.benchmark_group(format!("steady-{n}"));
        g.sample_size(10);
        g.bench_function("observe+plan", |b| {
            b.iter(|| prepare(&home, &*drv, wanted(&d), false))
        });
        g.bench_function("plan-only", |b| {
            b.iter(|| plan(&d, &actual, &PlanOptions::default()))
        });
        g.finish();
    }
}

criterion_group!(benches, bench);
criterion_main!(benches);
