//! Rough speed figure for the planner's budget (10,000 manifests):
//! `cargo test --release --test manifest_speed -- --ignored --nocapture`

use std::path::Path;
use std::time::Instant;

const TYPICAL: &str = "\
apiVersion: clawfarm/v1
kind: Claw
metadata:
  name: NAME              # DNS label
spec:
  clawbox: ./demo.clawbox   # relative to this file
  state: running
  replicas: 1
  cpus: 2
  memory: 2GiB
  ports: [{host: 18789, guest: 18789, name: gateway}]
  params:
    MODEL: gpt-4o
    OPENAI_API_KEY: {env: OPENAI_API_KEY}
    OTHER: {file: ./secrets/other.txt}
  volumes: [{name: state, guestPath: /root/.openclaw}]
";

/// CPU time of this thread (the machine may be shared: wall time alone misleads).
fn thread_cpu() -> std::time::Duration {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: clock_gettime writes into the timespec we own.
    unsafe { libc::clock_gettime(libc::CLOCK_THREAD_CPUTIME_ID, &mut ts) };
    std::time::Duration::new(ts.tv_sec as u64, ts.tv_nsec as u32)
}

#[test]
#[ignore = "timing; run in release by hand"]
fn ten_thousand_manifests() {
    let n = 10_000;
    // pure parse + validate, one thread
    let texts: Vec<String> = (0..n)
        .map(|i| TYPICAL.replace("NAME", &format!("c{i}")))
        .collect();
    let t = Instant::now();
    let cpu = thread_cpu();
    for text in &texts {
        let claws = clawfarm::input::manifest::parse_str(Path::new("/m/x.yaml"), text).unwrap();
        assert_eq!(claws.len(), 1);
    }
    let (parse, cpu) = (t.elapsed(), thread_cpu() - cpu);
    println!(
        "parse_str: {n} manifests in {parse:?} wall, {cpu:?} CPU ({:?} CPU each, one thread, {} bytes each)",
        cpu / n,
        TYPICAL.len()
    );

    // load: walk + read + parse (threads) + name checks, warm page cache
    let dir = tempfile::tempdir().unwrap();
    for (i, text) in texts.iter().enumerate() {
        let sub = dir.path().join(format!("d{}", i % 100));
        std::fs::create_dir_all(&sub).unwrap();
        std::fs::write(sub.join(format!("c{i}.yaml")), text).unwrap();
    }
    let _ = clawfarm::input::manifest::load(&[dir.path().to_path_buf()]);
    let t = Instant::now();
    let r = clawfarm::input::manifest::load(&[dir.path().to_path_buf()]);
    let load = t.elapsed();
    assert_eq!(r.claws.len(), n as usize);
    assert!(r.diagnostics.is_empty());
    println!("load: {n} files in {load:?} (walk + read + parse on all cores + name checks)");
}

#[test]
#[ignore = "profiling helper"]
fn parse_loop_for_profiling() {
    let text = TYPICAL.replace("NAME", "c1");
    for _ in 0..100_000 {
        let claws = clawfarm::input::manifest::parse_str(Path::new("/m/x.yaml"), &text).unwrap();
        assert_eq!(claws.len(), 1);
    }
}
