//! Watch mode on the fake driver: debouncing (paused clock), file events from a real
//! folder, drift resync, and crash-loop backoff.

mod common;

use std::sync::{Arc, Mutex};
use std::time::Duration;

use clawfarm::desired::{Desired, DesiredInstance};
use clawfarm::driver::Driver;
use clawfarm::driver::fake::FakeDriver;
use clawfarm::home::Home;
use clawfarm::reconcile::watch::{Backoff, Debouncer, PassRunner, WatchConfig, run, watch_folder};
use clawfarm::state::events::EventSink;
use clawfarm::state::record::Record;
use common::*;
use tokio::sync::mpsc;

#[tokio::test(start_paused = true)]
async fn one_edit_one_trigger_after_debounce() {
    let (tx, rx) = mpsc::unbounded_channel();
    let mut deb = Debouncer::new(rx, Duration::from_millis(300), Duration::from_secs(5));
    let t0 = tokio::time::Instant::now();
    tx.send(()).unwrap();
    deb.next().await.unwrap();
    let waited = t0.elapsed();
    assert!(
        waited >= Duration::from_millis(300) && waited < Duration::from_millis(350),
        "{waited:?}"
    );
    // Nothing else is pending: the next call waits (times out here).
    let more = tokio::time::timeout(Duration::from_secs(10), deb.next()).await;
    assert!(more.is_err(), "a second trigger without a second event");
}

#[tokio::test(start_paused = true)]
async fn burst_of_50_gives_one_or_two_triggers() {
    let (tx, rx) = mpsc::unbounded_channel();
    let mut deb = Debouncer::new(rx, Duration::from_millis(300), Duration::from_secs(5));
    let sender = tokio::spawn(async move {
        for _ in 0..50 {
            tx.send(()).unwrap();
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        tx
    });
    let mut triggers = 0;
    while tokio::time::timeout(Duration::from_secs(3), deb.next())
        .await
        .is_ok()
    {
        triggers += 1;
    }
    let _tx = sender.await.unwrap();
    assert!(
        (1..=2).contains(&triggers),
        "{triggers} triggers for 50 events"
    );
}

#[tokio::test(start_paused = true)]
async fn endless_stream_is_capped_by_max_delay() {
    let (tx, rx) = mpsc::unbounded_channel();
    let mut deb = Debouncer::new(rx, Duration::from_millis(300), Duration::from_secs(2));
    tokio::spawn(async move {
        loop {
            if tx.send(()).is_err() {
                break;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    });
    let t0 = tokio::time::Instant::now();
    deb.next().await.unwrap();
    assert!(
        t0.elapsed() <= Duration::from_millis(2100),
        "{:?}",
        t0.elapsed()
    );
}

/// A runner that returns a settable desired set and counts passes.
struct Stub {
    desired: Arc<Mutex<Vec<Arc<DesiredInstance>>>>,
    passes: Arc<Mutex<usize>>,
}

#[async_trait::async_trait]
impl PassRunner for Stub {
    async fn desired(&mut self) -> Desired {
        *self.passes.lock().unwrap() += 1;
        Desired {
            instances: self.desired.lock().unwrap().clone(),
            ..Desired::default()
        }
    }
}

fn setup() -> (tempfile::TempDir, Home, Arc<FakeDriver>) {
    let t = tempfile::tempdir().unwrap();
    let home = Home::new(t.path().join("home"));
    home.ensure().unwrap();
    let drv = Arc::new(FakeDriver::new(home.clone()));
    (t, home, drv)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn file_edit_triggers_exactly_one_pass_and_resync_heals_drift() {
    let (t, home, drv) = setup();
    let dir = t.path().join("manifests");
    std::fs::create_dir_all(&dir).unwrap();
    let desired = Arc::new(Mutex::new(vec![d("a").build()]));
    let passes = Arc::new(Mutex::new(0));
    let mut stub = Stub {
        desired: desired.clone(),
        passes: passes.clone(),
    };
    let (tx, rx) = mpsc::unbounded_channel();
    let _w = watch_folder(&dir, tx).unwrap();
    let mut cfg = WatchConfig::new(dir.clone());
    cfg.resync = Duration::from_millis(1500);
    cfg.debounce = Duration::from_millis(200);
    let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
    let home2 = home.clone();
    let drv2: Arc<dyn Driver> = drv.clone();
    let h = tokio::spawn(async move {
        run(
            &home2,
            drv2,
            &cfg,
            &mut stub,
            Debouncer::new(rx, Duration::from_millis(200), Duration::from_secs(5)),
            EventSink::to_file(home2.events_log()),
            async {
                let _ = stop_rx.await;
            },
        )
        .await
    });
    // Initial pass creates `a`.
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(*passes.lock().unwrap(), 1);
    let id_a = d("a").build().clawid.clone();
    assert!(Record::path(&home, &id_a).exists());

    // One edit (written by rename, as editors do) → exactly one more pass.
    desired.lock().unwrap().push(d("b").build());
    std::fs::write(dir.join(".b.yaml.tmp"), "x").unwrap();
    std::fs::rename(dir.join(".b.yaml.tmp"), dir.join("b.yaml")).unwrap();
    tokio::time::sleep(Duration::from_millis(700)).await;
    assert_eq!(*passes.lock().unwrap(), 2, "one edit, one pass");
    assert!(Record::path(&home, &d("b").build().clawid).exists());

    // Drift no event reports: the VM dies. The resync brings it back.
    FakeDriver::crash(&home, &id_a).unwrap();
    tokio::time::sleep(Duration::from_millis(1800)).await;
    let r = Record::read(&Record::path(&home, &id_a)).unwrap();
    assert_eq!(r.restart_count, 1, "restarted once after the crash");
    let vm = std::fs::read_to_string(home.claw_dir(&id_a).join("fake-vm.json")).unwrap();
    assert!(vm.contains("\"running\":true"), "{vm}");

    stop_tx.send(()).unwrap();
    let stats = h.await.unwrap();
    assert!(stats.passes.get("files") == Some(&1), "{stats:?}");
    // VMs are left running on shutdown.
    let vm = std::fs::read_to_string(home.claw_dir(&id_a).join("fake-vm.json")).unwrap();
    assert!(vm.contains("\"running\":true"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn crash_loop_backs_off_with_growing_delays_and_spares_others() {
    let (t, home, drv) = setup();
    let dir = t.path().join("m");
    std::fs::create_dir_all(&dir).unwrap();
    let bad = d("bad").build();
    let good = d("good").build();
    // `bad` is created fine, then every later start fails.
    let desired = Arc::new(Mutex::new(vec![bad.clone(), good.clone()]));
    let mut stub = Stub {
        desired: desired.clone(),
        passes: Arc::new(Mutex::new(0)),
    };
    let (_tx, rx) = mpsc::unbounded_channel();
    let mut cfg = WatchConfig::new(dir);
    cfg.resync = Duration::from_millis(50);
    cfg.backoff = Backoff {
        base: Duration::from_millis(100),
        cap: Duration::from_secs(10),
        stable_after: Duration::from_secs(600),
    };
    let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
    let home2 = home.clone();
    let drv2: Arc<dyn Driver> = drv.clone();
    let h = tokio::spawn(async move {
        run(
            &home2,
            drv2,
            &cfg,
            &mut stub,
            Debouncer::new(rx, Duration::from_millis(100), Duration::from_secs(1)),
            EventSink::to_file(home2.events_log()),
            async {
                let _ = stop_rx.await;
            },
        )
        .await
    });
    tokio::time::sleep(Duration::from_millis(300)).await;
    drv.fail_on("start", &bad.clawid);
    FakeDriver::crash(&home, &bad.clawid).unwrap();
    tokio::time::sleep(Duration::from_millis(3500)).await;
    stop_tx.send(()).unwrap();
    h.await.unwrap();

    let ev = clawfarm::state::events::read(&home.events_log()).unwrap();
    let starts: Vec<_> = ev
        .iter()
        .filter(|e| e.instance == bad.clawid && e.action == "start" && e.result == "failed")
        .map(|e| e.time)
        .collect();
    assert!(
        starts.len() >= 3,
        "expected several failed restarts, got {}",
        starts.len()
    );
    assert!(
        starts.len() <= 8,
        "no backoff: {} restarts in 3.5 s",
        starts.len()
    );
    // The scheduled backoff grows with every restart (100, 200, 400 … ms ± 20 % jitter:
    // doubling beats the jitter, so each delay is strictly larger).
    let delays: Vec<u64> = ev
        .iter()
        .filter(|e| e.instance == bad.clawid && e.action == "restart")
        .map(|e| {
            let m = e.message.split("backoff ").nth(1).unwrap();
            m.split(' ').next().unwrap().parse().unwrap()
        })
        .collect();
    assert!(delays.len() >= 3, "{delays:?}");
    assert!(
        delays.windows(2).all(|w| w[1] > w[0]),
        "not growing: {delays:?}"
    );
    assert!((80..=120).contains(&delays[0]), "{delays:?}");
    let r = Record::read(&Record::path(&home, &bad.clawid)).unwrap();
    assert!(r.crash_streak >= 3, "{r:?}");
    assert_eq!(r.restart_count, r.crash_streak);
    // The healthy instance was never disturbed.
    let g = Record::read(&Record::path(&home, &good.clawid)).unwrap();
    assert_eq!(g.restart_count, 0);
    assert_eq!(g.phase, clawfarm::state::record::Phase::Ready);
}

#[test]
fn backoff_delays_grow_and_cap() {
    let b = Backoff {
        base: Duration::from_secs(2),
        cap: Duration::from_secs(60),
        stable_after: Duration::from_secs(600),
    };
    let d: Vec<u64> = (1..=8).map(|n| b.delay(n, 0.0).as_secs()).collect();
    assert_eq!(d, vec![2, 4, 8, 16, 32, 60, 60, 60]);
    assert!(b.delay(3, 1.0) > b.delay(3, 0.0));
    assert!(b.delay(3, -1.0) < b.delay(3, 0.0));
    assert!(b.delay(50, 1.0) <= Duration::from_secs(72));
}
