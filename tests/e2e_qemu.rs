//! End to end: real guests under TCG through the real driver and the real executor.
//!
//! Runs only with `CLAWFARM_E2E=1` (otherwise it prints why it was skipped and passes):
//!
//! ```text
//! CLAWFARM_E2E=1 cargo test --test e2e_qemu -- --nocapture
//! ```
//!
//! Needs `qemu-system-x86_64`, `qemu-img`, `ssh` and `tar`, and the guest image:
//! `$CLAWFARM_GUEST_IMAGE`, else `scripts/build-guest-image.sh` (cached; built when missing,
//! which needs root and a few minutes). `CLAWFARM_E2E_ACCEL` (default `tcg`) picks the accelerator; `auto` exercises the
//! KVM probe and watchdog.
//!
//! One test, sequential, to keep the 2-core CI machine from running four VMs at once:
//!
//! 1. a `.clawbox` made with the real `tar` (clawspec + payload, no run layer) whose base
//!    image is served over HTTP by this test (a real download into the blob store);
//! 2. apply `alpha` (gateway port, params, a volume) → ready; measured;
//!    checks: user `claw` + `sudo -n true`, params file content and mode, install → start
//!    → provision order, payload and volume shares, the gateway answers on 127.0.0.1;
//! 3. apply `alpha` + `beta` (same bundle; a param makes provision step 1 fail): two VMs
//!    side by side; beta is `unhealthy` with phase and exit code in `ps -o json`;
//! 4. `kill -9` of beta's QEMU → `exited` in `ps`;
//! 5. `clawfarm stop alpha` → the guest powers off after QMP `system_powerdown`;
//! 6. a bare `qemu-system-x86_64` boot of the same image and seed (fresh overlay), timed to
//!    the same `done` status line, for comparison with apply → ready;
//! 7. `clawfarm start alpha` → ready again (second boot: install/provision not rerun);
//!    `clawfarm rm -f` keeps volumes, `rm --purge` deletes them.

use std::io::Write;
use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use clawfarm::desired;
use clawfarm::driver::qemu::accel::AccelMode;
use clawfarm::driver::qemu::cmdline::QemuSpec;
use clawfarm::driver::qemu::disks;
use clawfarm::driver::qemu::layout::{InstanceFiles, volume_disk, volumes_dir};
use clawfarm::driver::qemu::{QemuConfig, QemuDriver, free_port, http_answers};
use clawfarm::home::Home;
use clawfarm::state::record::Record;

mod net_support;
use net_support::{log_as, read_request, t0, work_dir};

const API_KEY: &str = "sk-e2e-Secret'Value";

fn log(msg: impl AsRef<str>) {
    log_as("e2e", msg.as_ref());
}

fn need(tool: &str) {
    let ok = Command::new("sh")
        .args(["-c", &format!("command -v {tool}")])
        .stdout(Stdio::null())
        .status()
        .is_ok_and(|s| s.success());
    assert!(ok, "{tool} is needed for the e2e test");
}

fn repo() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

/// The guest image: `$CLAWFARM_GUEST_IMAGE` (set by `scripts/test.sh`), else the cached one
/// from `scripts/build-guest-image.sh` (built when missing).
/// The image of the cloud-kernel variant (no 9p: `CLAWFARM_GUEST_KERNEL=cloud
/// scripts/build-guest-image.sh`), from `CLAWFARM_GUEST_IMAGE_CLOUD` (scripts/test.sh builds
/// and sets it); else the default image, and the no-9p assertions are skipped (said in the
/// log).
fn cloud_guest_image() -> PathBuf {
    match std::env::var_os("CLAWFARM_GUEST_IMAGE_CLOUD").filter(|p| !p.is_empty()) {
        Some(p) => PathBuf::from(p),
        None => {
            log("CLAWFARM_GUEST_IMAGE_CLOUD not set: the default image, no-9p checks skipped");
            guest_image()
        }
    }
}

fn guest_image() -> PathBuf {
    if let Some(p) = std::env::var_os("CLAWFARM_GUEST_IMAGE").filter(|p| !p.is_empty()) {
        return PathBuf::from(p);
    }
    let out = Command::new("bash")
        .arg(repo().join("scripts/build-guest-image.sh"))
        .stderr(Stdio::inherit())
        .output()
        .expect("run scripts/build-guest-image.sh");
    assert!(out.status.success(), "build-guest-image.sh failed");
    let s = String::from_utf8(out.stdout).unwrap();
    PathBuf::from(s.lines().last().expect("image path").trim())
}

/// A tiny HTTP/1.0 file server on 127.0.0.1 serving `file` at `/NAME`; counts requests.
fn serve(file: PathBuf) -> (u16, Arc<AtomicUsize>) {
    let l = TcpListener::bind(("127.0.0.1", 0)).unwrap();
    let port = l.local_addr().unwrap().port();
    let hits = Arc::new(AtomicUsize::new(0));
    let h2 = hits.clone();
    std::thread::spawn(move || {
        for c in l.incoming() {
            let Ok(mut c) = c else { continue };
            let file = file.clone();
            let hits = h2.clone();
            std::thread::spawn(move || {
                let first = read_request(&c);
                hits.fetch_add(1, Ordering::SeqCst);
                let name = file.file_name().unwrap().to_string_lossy().to_string();
                if !first.starts_with(&format!("GET /{name} ")) {
                    let _ = c.write_all(b"HTTP/1.0 404 Not Found\r\nContent-Length: 0\r\n\r\n");
                    return;
                }
                let mut f = std::fs::File::open(&file).unwrap();
                let len = f.metadata().unwrap().len();
                let _ = write!(
                    c,
                    "HTTP/1.0 200 OK\r\nContent-Length: {len}\r\nContent-Type: application/octet-stream\r\n\r\n"
                );
                let _ = std::io::copy(&mut f, &mut c);
            });
        }
    });
    (port, hits)
}

/// SHA-256 of a file: `sha256sum` when present (this test binary is unoptimised), else ours.
fn sha256(p: &Path) -> String {
    if let Ok(o) = Command::new("sha256sum").arg(p).output()
        && o.status.success()
        && let Some(h) = String::from_utf8_lossy(&o.stdout).split_whitespace().next()
    {
        return h.to_string();
    }
    clawfarm::util::digest::sha256_file(p).unwrap()
}

fn clawspec_json(url: &str, sha: &str) -> serde_json::Value {
    serde_json::json!({
        "schema_version": 3,
        "name": "e2e-demo",
        "image": [{"name": "base", "ref": url, "sha256": sha}],
        "bootstrap": {
            "id": "openclaw",
            "display_name": "e2e stand-in agent",
            "install_script": "#!/bin/bash\nset -e\necho install >> /var/lib/claw-order\ncp /opt/claw/hello.txt /root/payload-copy\n",
            "start_script": "#!/bin/bash\nset -e\necho start >> /var/lib/claw-order\nmkdir -p /srv/www\necho \"gateway of $(hostname)\" > /srv/www/index.html\ncd /srv/www\nnohup python3 -m http.server 8080 > /var/log/clawfarm/http.log 2>&1 &\n",
            "params": {
                "required": [
                    {"key": "API_KEY", "label": "API key", "secret": true}
                ],
                "optional": [
                    {"key": "GREETING", "label": "Greeting", "secret": false, "default": "hello"},
                    {"key": "FAIL_AT", "label": "Step that fails (tests)", "secret": false, "default": "none"}
                ]
            }
        },
        "provision": [
            {"name": "first", "script": "echo provision0 >> /var/lib/claw-order\nif [ -d /srv/data ]; then echo \"written by $(hostname)\" > /srv/data/from-guest; fi\n"},
            {"name": "setup", "script": "echo provision1 >> /var/lib/claw-order\nif [ \"$FAIL_AT\" = setup ]; then echo 'setup: failing on purpose' >&2; exit 3; fi\n"}
        ]
    })
}

/// Build `demo.clawbox` with the real `tar`: clawspec.json + claw/ payload, no run layer.
fn make_bundle(dir: &Path, url: &str, sha: &str) -> PathBuf {
    let src = dir.join("bundle-src");
    std::fs::create_dir_all(src.join("claw")).unwrap();
    std::fs::write(
        src.join("clawspec.json"),
        serde_json::to_vec_pretty(&clawspec_json(url, sha)).unwrap(),
    )
    .unwrap();
    std::fs::write(src.join("claw/hello.txt"), "payload from the bundle\n").unwrap();
    let out = dir.join("demo.clawbox");
    let st = Command::new("tar")
        .arg("-czf")
        .arg(&out)
        .arg("-C")
        .arg(&src)
        .args(["clawspec.json", "claw"])
        .status()
        .unwrap();
    assert!(st.success(), "tar failed");
    out
}

/// Write the manifest of one instance into `dir`.
fn manifest(dir: &Path, name: &str, bundle: &Path, extra: &str) {
    std::fs::create_dir_all(dir).unwrap();
    let y = format!(
        "apiVersion: clawfarm/v1\nkind: Claw\nmetadata:\n  name: {name}\nspec:\n  clawbox: {}\n  \
         memory: 1GiB\n  volumes: [{{name: data, guestPath: /srv/data}}]\n{extra}",
        bundle.display()
    );
    std::fs::write(dir.join(format!("{name}.yaml")), y).unwrap();
}

struct Env {
    home: Home,
    bin: PathBuf,
}

/// Kills the VMs of the test home when the test ends, passed or not (QEMU outlives its
/// starter by design).
struct KillVms(Home);

impl Drop for KillVms {
    fn drop(&mut self) {
        let drv = QemuDriver::with_config(self.0.clone(), QemuConfig::default());
        let (recs, _) = Record::read_all(&self.0);
        for r in recs {
            if let Some(p) = drv.running(&r.clawid, Some(&r)) {
                let _ = Command::new("kill")
                    .args(["-KILL", &p.pid.to_string()])
                    .status();
            }
        }
    }
}

impl Env {
    fn cli(&self, args: &[&str]) -> std::process::Output {
        Command::new(&self.bin)
            .arg("--home")
            .arg(self.home.root())
            .args(args)
            .env_remove("CLAWFARM_DRIVER")
            .stdin(Stdio::null())
            .output()
            .unwrap()
    }
    fn cli_ok(&self, args: &[&str]) -> String {
        let o = self.cli(args);
        assert!(
            o.status.success(),
            "clawfarm {args:?} failed: {}\n{}",
            o.status,
            String::from_utf8_lossy(&o.stderr)
        );
        String::from_utf8(o.stdout).unwrap()
    }
    fn ssh(&self, name: &str, cmd: &str) -> (bool, String) {
        let o = self.cli(&["ssh", name, "--", cmd]);
        (
            o.status.success(),
            String::from_utf8_lossy(&o.stdout).trim().to_string(),
        )
    }
    fn ssh_ok(&self, name: &str, cmd: &str) -> String {
        let o = self.cli(&["ssh", name, "--", cmd]);
        assert!(
            o.status.success(),
            "ssh {name} {cmd:?}: {}\n{}",
            o.status,
            String::from_utf8_lossy(&o.stderr)
        );
        String::from_utf8_lossy(&o.stdout).trim().to_string()
    }
    fn ps(&self) -> Vec<serde_json::Value> {
        serde_json::from_str(&self.cli_ok(&["ps", "-o", "json"])).unwrap()
    }
    fn ps_row(&self, name: &str) -> serde_json::Value {
        self.ps()
            .into_iter()
            .find(|r| r["name"] == name)
            .unwrap_or_else(|| panic!("{name} not in ps"))
    }
}

/// `clawfarm apply -f DIR -o json`: (success, JSON report, seconds).
fn apply(env: &Env, dir: &Path) -> (bool, serde_json::Value, f64) {
    let t = Instant::now();
    let o = Command::new(&env.bin)
        .arg("--home")
        .arg(env.home.root())
        .args(["apply", "-o", "json", "-f"])
        .arg(dir)
        .env("E2E_API_KEY", API_KEY)
        .env_remove("CLAWFARM_DRIVER")
        .stdin(Stdio::null())
        .stderr(Stdio::inherit())
        .output()
        .unwrap();
    let secs = t.elapsed().as_secs_f64();
    let v: serde_json::Value = serde_json::from_slice(&o.stdout)
        .unwrap_or_else(|e| panic!("apply output is not JSON ({e}): {:?}", o.stdout));
    (o.status.success(), v, secs)
}

/// Seconds spent in the nodes of `verb` (optionally of one instance).
fn node_secs(report: &serde_json::Value, verb: &str, clawid: Option<&str>) -> f64 {
    report["nodes"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|n| {
            let a = &n["action"];
            a["action"] == verb && clawid.is_none_or(|c| a["clawid"] == c)
        })
        .map(|n| n["millis"].as_f64().unwrap_or(0.0))
        .sum::<f64>()
        / 1000.0
}

/// The 1-minute load average (the host is shared; timings depend on it).
fn load() -> String {
    std::fs::read_to_string("/proc/loadavg")
        .unwrap_or_default()
        .split_whitespace()
        .next()
        .unwrap_or("?")
        .to_string()
}

fn pid_alive(pid: u64) -> bool {
    Path::new(&format!("/proc/{pid}")).exists()
        && !std::fs::read_to_string(format!("/proc/{pid}/stat"))
            .unwrap_or_default()
            .contains(") Z ")
}

/// Boot the same image and seed with a bare QEMU (no clawfarm) and time it to `done`.
fn bare_boot(dir: &Path, blob: &Path, seed: &Path, payload: &Path, vol: &Path) -> f64 {
    let files = InstanceFiles::at(dir);
    std::fs::create_dir_all(dir).unwrap();
    // The same payload and volume disks the driver makes.
    let payload_img = dir.join("payload.img");
    disks::ensure_payload_image(payload, &payload_img, &dir.join("payload.id"), "bare").unwrap();
    disks::ensure_volume(Path::new("qemu-img"), vol, "data", None).unwrap();
    let st = Command::new("qemu-img")
        .args(["create", "-q", "-f", "qcow2", "-F", "qcow2", "-b"])
        .arg(blob)
        .arg(files.disk())
        .status()
        .unwrap();
    assert!(st.success());
    std::fs::copy(seed, files.seed()).unwrap();
    let nonce = clawfarm::driver::qemu::guest::new_nonce();
    let spec = QemuSpec {
        clawid: "bare".into(),
        files: files.clone(),
        accel: clawfarm::driver::qemu::accel::Accel::Tcg,
        cpus: 1,
        memory_mib: 1024,
        ssh_port: free_port().unwrap(),
        ports: vec![],
        nonce: nonce.clone(),
        payload: Some(payload_img),
        volumes: vec![("claw-vol0".into(), vol.to_owned())],
        loadvm: None,
        restrict_net: true,
    };
    let t = Instant::now();
    let mut child = Command::new("qemu-system-x86_64")
        .args(spec.args())
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(files.qemu_log()).unwrap())
        .spawn()
        .unwrap();
    let secs = loop {
        let s = clawfarm::driver::qemu::guest::read_status(&files.status_log(), &nonce).unwrap();
        if s.done {
            break t.elapsed().as_secs_f64();
        }
        assert!(s.failed.is_none(), "bare boot failed: {}", s.summary());
        assert!(
            child.try_wait().unwrap().is_none(),
            "bare QEMU exited: {}",
            std::fs::read_to_string(files.qemu_log()).unwrap_or_default()
        );
        assert!(
            t.elapsed() < Duration::from_secs(900),
            "bare boot timed out"
        );
        std::thread::sleep(Duration::from_millis(250));
    };
    let _ = child.kill();
    let _ = child.wait();
    secs
}

/// The e2e tests of this file run one after the other (one VM at a time on a small host).
static ONE_AT_A_TIME: std::sync::Mutex<()> = std::sync::Mutex::new(());

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn e2e_real_guests() {
    if std::env::var("CLAWFARM_E2E").as_deref() != Ok("1") {
        eprintln!("skipped: set CLAWFARM_E2E=1 to boot real guests (several minutes)");
        return;
    }
    let _one = ONE_AT_A_TIME.lock().unwrap_or_else(|e| e.into_inner());
    t0();
    for t in ["qemu-system-x86_64", "qemu-img", "ssh", "tar"] {
        need(t);
    }
    let image = guest_image();
    log(format!("guest image {}", image.display()));
    let work = work_dir("cf-e2e");
    let home = Home::new(work.path().join("h"));
    home.ensure().unwrap();
    let _cleanup = KillVms(home.clone());
    let env = Env {
        home: home.clone(),
        bin: PathBuf::from(env!("CARGO_BIN_EXE_clawfarm")),
    };

    // ---- 1. bundle with an HTTP base image -----------------------------------------------
    let t = Instant::now();
    let sha = sha256(&image);
    log(format!(
        "image sha256 {sha} ({:.1}s)",
        t.elapsed().as_secs_f64()
    ));
    let (http_port, hits) = serve(image.clone());
    let file_name = image.file_name().unwrap().to_string_lossy().to_string();
    let url = format!("http://127.0.0.1:{http_port}/{file_name}");
    let bundle_path = make_bundle(work.path(), &url, &sha);
    let bundle_digest = sha256(&bundle_path);

    let accel = std::env::var("CLAWFARM_E2E_ACCEL")
        .ok()
        .and_then(|s| AccelMode::parse(&s))
        .unwrap_or(AccelMode::Tcg);
    // Every clawfarm process of this test (apply, ps, stop, start, logs) uses it.
    // SAFETY: set before this test starts any thread that reads the environment.
    unsafe { std::env::set_var("CLAWFARM_ACCEL", format!("{accel:?}").to_ascii_lowercase()) };
    let driver = QemuDriver::with_config(home.clone(), QemuConfig::from_env().unwrap());
    let alpha_id = desired::clawid_for("alpha");
    let beta_id = desired::clawid_for("beta");
    let gw_port = free_port().unwrap();
    let mdir = work.path().join("manifests");
    manifest(
        &mdir,
        "alpha",
        &bundle_path,
        &format!(
            "  ports: [{{host: {gw_port}, guest: 8080, name: gateway}}]\n  params:\n    \
             API_KEY: {{env: E2E_API_KEY}}\n    GREETING: \"hi 'there' $HOME\"\n"
        ),
    );

    // ---- 2. apply alpha → ready --------------------------------------------------------
    log("clawfarm apply (alpha: download, import, disk, seed, boot)");
    let (ok, report, apply_secs) = apply(&env, &mdir);
    assert!(ok, "apply alpha failed: {report:#}");
    let alpha_wait = node_secs(&report, "wait_ready", Some(&alpha_id));
    let load_apply = load();
    log(format!(
        "alpha ready (load {load_apply}): apply {apply_secs:.1}s (fetch-blob {:.1}s, import {:.1}s, disk {:.2}s, \
         seed {:.2}s, start {:.1}s, wait-ready {alpha_wait:.1}s)",
        node_secs(&report, "fetch_blob", None),
        node_secs(&report, "import_bundle", None),
        node_secs(&report, "create_disk", None),
        node_secs(&report, "write_seed", None),
        node_secs(&report, "start", None),
    ));
    assert!(
        hits.load(Ordering::SeqCst) >= 1,
        "the base image was not downloaded"
    );
    // The apply process is gone; its VM runs on (QEMU outlives clawfarm).
    let rec_a = Record::read(&Record::path(&home, &alpha_id)).unwrap();
    let rt_a = rec_a.runtime.clone();
    log(format!("alpha runtime: {rt_a:?}"));
    assert!(
        rt_a.accel
            .as_deref()
            .is_some_and(|a| a.starts_with("tcg") || a.starts_with("kvm")),
        "{rt_a:?}"
    );
    let files_a = driver.files(&alpha_id);
    let disk_size = std::fs::metadata(files_a.disk()).unwrap().len();
    log(format!(
        "alpha disk overlay after first boot: {} KiB",
        disk_size / 1024
    ));
    // No param value in the record, the events, or any clawfarm log.
    for p in [
        Record::path(&home, &alpha_id),
        home.events_log(),
        files_a.qemu_log(),
        files_a.runtime(),
    ] {
        let s = std::fs::read_to_string(&p).unwrap_or_default();
        assert!(!s.contains(API_KEY), "{} contains the secret", p.display());
    }

    // (1) user claw and passwordless sudo.
    assert_eq!(env.ssh_ok("alpha", "id -un"), "claw");
    assert_eq!(
        env.ssh_ok("alpha", "sudo -n true && echo sudo-ok"),
        "sudo-ok"
    );
    // (2) params in the root-only env file.
    let params = env.ssh_ok("alpha", "sudo cat /etc/clawfarm/params.env");
    assert!(
        params.contains("API_KEY='sk-e2e-Secret'\\''Value'"),
        "{params}"
    );
    assert!(
        params.contains("GREETING='hi '\\''there'\\'' $HOME'"),
        "{params}"
    );
    assert!(params.contains("FAIL_AT='none'"), "{params}");
    assert_eq!(
        env.ssh_ok("alpha", "sudo stat -c '%a %U' /etc/clawfarm/params.env"),
        "600 root"
    );
    let (readable, _) = env.ssh("alpha", "cat /etc/clawfarm/params.env");
    assert!(!readable, "user claw can read params.env");
    // (3) install, start, provision in order.
    assert_eq!(
        env.ssh_ok("alpha", "tr '\\n' ' ' < /var/lib/claw-order"),
        "install start provision0 provision1"
    );
    // Payload (read-only) and volume shares.
    assert_eq!(
        env.ssh_ok("alpha", "sudo cat /root/payload-copy"),
        "payload from the bundle"
    );
    assert_eq!(
        env.ssh_ok("alpha", "cat /srv/data/from-guest"),
        "written by alpha"
    );
    let vol_a = volume_disk(&home, &alpha_id, "data");
    // (5) the gateway answers on 127.0.0.1 (and ps shows it).
    assert!(http_answers(gw_port, Duration::from_secs(5)));
    let row = env.ps_row("alpha");
    assert_eq!(row["status"], "ready", "{row}");
    assert_eq!(row["gateway"], format!("127.0.0.1:{gw_port}"), "{row}");
    let boot = env.cli_ok(&["logs", "alpha", "--bootstrap"]);
    assert!(
        boot.contains("done") && boot.contains("provision[1] setup"),
        "{boot}"
    );
    let summary = env.cli_ok(&["logs", "alpha"]);
    log(format!("clawfarm logs alpha:\n{summary}"));
    assert!(
        summary.contains("status: ready") && summary.contains("accel:"),
        "{summary}"
    );

    // ---- 3. alpha + beta side by side; beta's provision step fails ----------------------
    log("clawfarm apply (alpha + beta; beta's provision[1] fails)");
    manifest(
        &mdir,
        "beta",
        &bundle_path,
        "  params:\n    API_KEY: {env: E2E_API_KEY}\n    FAIL_AT: setup\n",
    );
    let (ok, report, secs) = apply(&env, &mdir);
    log(format!("apply 2 took {secs:.1}s: {}", report["summary"]));
    assert!(!ok);
    let failed: Vec<&serde_json::Value> = report["nodes"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|n| n["status"] == "failed")
        .collect();
    assert_eq!(failed.len(), 1, "{report:#}");
    let err = failed[0]["error"].as_str().unwrap();
    assert!(
        err.contains("provision[1] setup failed with exit code 3")
            && err.contains("failing on purpose"),
        "{err}"
    );
    // alpha was left alone (same process).
    assert!(
        report["nodes"]
            .as_array()
            .unwrap()
            .iter()
            .all(|n| n["action"]["clawid"] != alpha_id.as_str()),
        "{report:#}"
    );
    let rec_b = Record::read(&Record::path(&home, &beta_id)).unwrap();
    let pid_a = rt_a.process.as_ref().unwrap().pid as u64;
    let pid_b = rec_b.runtime.process.as_ref().unwrap().pid as u64;
    // (8) two instances of one bundle side by side.
    assert!(pid_a != pid_b && pid_alive(pid_a) && pid_alive(pid_b));
    assert_ne!(rec_b.runtime.ssh_port, rt_a.ssh_port);
    assert_eq!(env.ssh_ok("beta", "hostname"), "beta");
    assert_eq!(env.ssh_ok("alpha", "hostname"), "alpha");
    assert!(http_answers(gw_port, Duration::from_secs(5)));
    // (4) unhealthy with phase and exit code.
    let row = env.ps_row("beta");
    assert_eq!(row["status"], "unhealthy", "{row}");
    let err = row["last_error"].as_str().unwrap_or_default();
    assert!(
        err.contains("provision[1] setup") && err.contains("exit 3"),
        "{row}"
    );
    let boot = env.cli_ok(&["logs", "beta", "--bootstrap"]);
    assert!(
        boot.contains("FAILED (exit 3)") && boot.contains("failing on purpose"),
        "{boot}"
    );
    assert_eq!(env.ps_row("alpha")["status"], "ready");

    // ---- 3b. a bad edit with --prune never touches the running guest ------------------------
    log("bad edit of alpha.yaml (unclosed JSON) + apply --prune");
    let alpha_yaml = mdir.join("alpha.yaml");
    let good = std::fs::read_to_string(&alpha_yaml).unwrap();
    std::fs::write(
        &alpha_yaml,
        r#"{"apiVersion":"clawfarm/v1","kind":"Claw","metadata":{"name":"alpha"},"spec":{"clawbox":"x"}"#,
    )
    .unwrap();
    let o = env.cli(&["apply", "--prune", "-f", mdir.to_str().unwrap()]);
    let out = String::from_utf8_lossy(&o.stderr).into_owned() + &String::from_utf8_lossy(&o.stdout);
    assert!(!o.status.success(), "{out}");
    assert!(out.contains("alpha.yaml"), "{out}");
    assert!(pid_alive(pid_a), "the bad edit stopped alpha: {out}");
    assert_eq!(env.ps_row("alpha")["status"], "ready");
    std::fs::write(&alpha_yaml, good).unwrap();

    // ---- 4. kill -9 of beta's QEMU → exited ---------------------------------------------
    let st = Command::new("kill")
        .args(["-KILL", &pid_b.to_string()])
        .status()
        .unwrap();
    assert!(st.success());
    let t = Instant::now();
    while pid_alive(pid_b) && t.elapsed() < Duration::from_secs(10) {
        std::thread::sleep(Duration::from_millis(100));
    }
    let row = env.ps_row("beta");
    assert_eq!(row["status"], "exited", "{row}");
    assert!(row["pid"].is_null(), "{row}");

    // ---- 5. graceful stop of alpha --------------------------------------------------------
    log("clawfarm stop alpha");
    let t = Instant::now();
    let out = env.cli_ok(&["stop", "alpha"]);
    log(format!(
        "stop took {:.1}s: {}",
        t.elapsed().as_secs_f64(),
        out.trim()
    ));
    assert!(
        out.contains("guest powered off after system_powerdown"),
        "not a graceful stop: {out}"
    );
    assert!(!pid_alive(pid_a));
    let qlog = std::fs::read_to_string(files_a.qemu_log()).unwrap();
    assert!(
        qlog.contains("clawfarm: stopped: guest powered off"),
        "{qlog}"
    );
    assert!(!qlog.contains("SIGKILL"), "{qlog}");
    let serial = std::fs::read_to_string(files_a.serial_log()).unwrap();
    assert!(
        serial.contains("reboot: Power down"),
        "serial does not show the power-off"
    );
    assert_eq!(env.ps_row("alpha")["status"], "stopped");

    // ---- 6. bare QEMU boot of the same image and seed ------------------------------------
    log("bare qemu-system-x86_64 boot of the same image + seed");
    let bare = bare_boot(
        &work.path().join("bare"),
        &std::path::absolute(home.blob(&sha)).unwrap(),
        &files_a.seed(),
        &std::path::absolute(home.bundle_dir(&bundle_digest).join("claw")).unwrap(),
        &work.path().join("bare-vol.qcow2"),
    );
    log(format!(
        "MEASURE apply→ready {apply_secs:.1}s (of which wait-ready {alpha_wait:.1}s; load \
         {load_apply}) vs bare boot→done {bare:.1}s (load {})",
        load()
    ));

    // ---- 7. restart through the CLI, then rm ----------------------------------------------
    log("clawfarm start alpha");
    let t = Instant::now();
    let out = env.cli_ok(&["start", "alpha"]);
    log(format!(
        "start → ready {:.1}s: {}",
        t.elapsed().as_secs_f64(),
        out.trim()
    ));
    assert!(out.contains("ready"));
    let rec_a2 = Record::read(&Record::path(&home, &alpha_id)).unwrap();
    assert_ne!(rec_a2.runtime.boot_nonce, rt_a.boot_nonce);
    // Second boot: start runs again, install and provision do not.
    assert_eq!(
        env.ssh_ok("alpha", "tr '\\n' ' ' < /var/lib/claw-order"),
        "install start provision0 provision1 start"
    );
    assert!(http_answers(gw_port, Duration::from_secs(5)));
    // start of a running instance adopts it.
    let again = env.cli_ok(&["start", "alpha", "--no-wait"]);
    assert!(again.contains("started"));
    let rec_a3 = Record::read(&Record::path(&home, &alpha_id)).unwrap();
    assert_eq!(rec_a3.runtime.process, rec_a2.runtime.process);

    let out = env.cli_ok(&["rm", "-f", "alpha"]);
    assert!(out.contains("removed"));
    assert!(!files_a.dir.exists());
    // rm without --purge keeps the volume disk; the host reads it without a VM.
    let out_dir = work.path().join("vol-a-export");
    disks::export_volume(Path::new("qemu-img"), &vol_a, &out_dir).unwrap();
    assert_eq!(
        std::fs::read_to_string(out_dir.join("from-guest"))
            .unwrap()
            .trim(),
        "written by alpha",
        "rm without --purge keeps volumes"
    );
    env.cli_ok(&["rm", "--purge", "beta"]);
    assert!(!volumes_dir(&home, &beta_id).exists());
    assert!(env.ps().is_empty());
    log("all e2e checks passed");
}

/// Seconds until `ps` says `name` is ready (its gateway check has a 0.5 s timeout, which a
/// TCG guest on a loaded host may miss right after a restore); fails after `max` seconds.
fn ready_within(env: &Env, name: &str, max: f64) -> f64 {
    let t = Instant::now();
    loop {
        let st = env.ps_row(name)["status"].clone();
        if st == "ready" {
            return t.elapsed().as_secs_f64();
        }
        assert!(t.elapsed().as_secs_f64() < max, "{name} is {st}, not ready");
        std::thread::sleep(Duration::from_millis(250));
    }
}

/// The QEMU pid of instance `clawid` (from its record), if that process lives.
fn vm_pid(home: &Home, clawid: &str) -> Option<u64> {
    let r = Record::read(&Record::path(home, clawid)).ok()?;
    let drv = QemuDriver::with_config(home.clone(), QemuConfig::default());
    drv.running(clawid, Some(&r)).map(|p| u64::from(p.pid))
}

/// Checkpoints, restore and suspend on a real guest (`rfc/011-checkpoints.md`), with the
/// payload and a volume as disks (so it passes on a kernel without 9p, e.g. the image of
/// `CLAWFARM_GUEST_KERNEL=cloud scripts/build-guest-image.sh`):
///
/// 1. apply `ck` → ready; the payload is at /opt/claw (ext4), the volume at /srv/data;
/// 2. marker, `checkpoint --tag good`, delete the marker and write another, `restore` → the
///    first marker is back, the second gone, the volume too, the gateway answers, `ps` says
///    ready at once, the guest clock is the host's;
/// 3. `suspend` → no QEMU; `start` → ready with a guest process from before still running;
/// 4. bad input (existing tag, bad tag, unknown tag) → clear error, nothing changed;
/// 5. `kill -9` of clawfarm mid-checkpoint and mid-suspend, and of QEMU mid-restore and
///    mid-suspend → the next start/apply converges to ready;
/// 5b. `state: suspended` in the manifest → apply suspends; `running` → apply resumes (a
///    guest process from before still runs);
/// 6. `rm` without `--purge` keeps the volume; the host reads it.
///
/// Prints `MEASURE` lines (cold boot, checkpoint, restore, suspend, resume; sizes).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn e2e_checkpoints() {
    if std::env::var("CLAWFARM_E2E").as_deref() != Ok("1") {
        eprintln!("skipped: set CLAWFARM_E2E=1 to boot real guests (several minutes)");
        return;
    }
    let _one = ONE_AT_A_TIME.lock().unwrap_or_else(|e| e.into_inner());
    t0();
    for t in [
        "qemu-system-x86_64",
        "qemu-img",
        "ssh",
        "tar",
        "mkfs.ext4",
        "debugfs",
    ] {
        need(t);
    }
    let image = cloud_guest_image();
    log(format!("guest image {}", image.display()));
    let work = work_dir("cf-ck");
    let home = Home::new(work.path().join("h"));
    home.ensure().unwrap();
    let _cleanup = KillVms(home.clone());
    let env = Env {
        home: home.clone(),
        bin: PathBuf::from(env!("CARGO_BIN_EXE_clawfarm")),
    };
    let sha = sha256(&image);
    let (http_port, _hits) = serve(image.clone());
    let file_name = image.file_name().unwrap().to_string_lossy().to_string();
    let url = format!("http://127.0.0.1:{http_port}/{file_name}");
    let bundle_path = make_bundle(work.path(), &url, &sha);
    // SAFETY: set before this test starts any thread that reads the environment.
    unsafe { std::env::set_var("CLAWFARM_ACCEL", "tcg") };
    let id = desired::clawid_for("ck");
    let gw = free_port().unwrap();
    let mdir = work.path().join("manifests");
    manifest(
        &mdir,
        "ck",
        &bundle_path,
        &format!(
            "  ports: [{{host: {gw}, guest: 8080, name: gateway}}]\n  params:\n    \
             API_KEY: {{env: E2E_API_KEY}}\n"
        ),
    );
    let mem_gib = 1.0f64;

    // ---- 1. cold boot ----------------------------------------------------------------------
    let (ok, report, apply_secs) = apply(&env, &mdir);
    assert!(ok, "apply failed: {report:#}");
    let cold = node_secs(&report, "start", None) + node_secs(&report, "wait_ready", None);
    log(format!(
        "ck ready: apply {apply_secs:.1}s, start→ready {cold:.1}s"
    ));
    let kernel = env.ssh_ok("ck", "uname -r");
    let has_9p = env.ssh_ok("ck", "grep -c 9p /proc/filesystems || true");
    log(format!(
        "guest kernel {kernel}; 9p in /proc/filesystems: {has_9p}"
    ));
    if image.to_string_lossy().contains("-cloud") {
        assert!(kernel.contains("cloud"), "{kernel}");
        assert_eq!(has_9p, "0", "the cloud kernel has no 9p");
    }
    assert_eq!(
        env.ssh_ok("ck", "cat /opt/claw/hello.txt"),
        "payload from the bundle"
    );
    assert_eq!(
        env.ssh_ok("ck", "findmnt -n -o FSTYPE,OPTIONS /opt/claw")
            .split_whitespace()
            .next(),
        Some("ext4")
    );
    let (w, _) = env.ssh("ck", "touch /opt/claw/x 2>/dev/null");
    assert!(!w, "the payload is writable");
    assert_eq!(
        env.ssh_ok("ck", "cat /srv/data/from-guest"),
        "written by ck"
    );

    // ---- 2. checkpoint, change, restore --------------------------------------------------
    env.ssh_ok(
        "ck",
        "sudo sh -c 'echo one > /var/lib/marker1; echo v-one > /srv/data/vmark; sync'",
    );
    let sleeper = env.ssh_ok(
        "ck",
        "sudo sh -c 'setsid sleep 1000000 </dev/null >/dev/null 2>&1 & echo $!'",
    );
    log(format!("guest sleeper pid {sleeper}"));
    let t = Instant::now();
    let out = env.cli_ok(&["checkpoint", "ck", "--tag", "good"]);
    let ckpt_secs = t.elapsed().as_secs_f64();
    log(format!("checkpoint {ckpt_secs:.1}s: {}", out.trim()));
    let list: Vec<serde_json::Value> =
        serde_json::from_str(&env.cli_ok(&["checkpoints", "ck", "--json"])).unwrap();
    assert_eq!(list.len(), 1, "{list:?}");
    assert_eq!(list[0]["tag"], "good");
    assert_eq!(list[0]["volumes"], serde_json::json!(["data"]));
    let vm_state = list[0]["vm_state_bytes"].as_u64().unwrap();
    assert!(vm_state > 1 << 20, "{vm_state}");
    assert!(env.cli_ok(&["checkpoints", "ck"]).contains("good"));

    // Bad input: nothing changes.
    for (args, want) in [
        (
            vec!["checkpoint", "ck", "--tag", "good"],
            "already has a checkpoint good",
        ),
        (
            vec!["checkpoint", "ck", "--tag", "../x"],
            "must be 1-64 characters",
        ),
        (
            vec!["checkpoint", "ck", "--tag", "clawfarm-suspend"],
            "reserved",
        ),
        (
            vec!["restore", "ck", "nope"],
            "has no checkpoint \"nope\" (it has: good)",
        ),
    ] {
        let o = env.cli(&args);
        let err = String::from_utf8_lossy(&o.stderr);
        assert!(!o.status.success() && err.contains(want), "{args:?}: {err}");
    }
    assert_eq!(
        serde_json::from_str::<Vec<serde_json::Value>>(&env.cli_ok(&[
            "checkpoints",
            "ck",
            "--json"
        ]))
        .unwrap()
        .len(),
        1
    );

    env.ssh_ok(
        "ck",
        "sudo sh -c 'rm /var/lib/marker1; echo two > /var/lib/marker2; echo v-two > /srv/data/vmark; sync'",
    );
    let t = Instant::now();
    let out = env.cli_ok(&["restore", "ck", "good"]);
    let restore_secs = t.elapsed().as_secs_f64();
    log(format!(
        "restore → ready {restore_secs:.1}s: {}",
        out.trim()
    ));
    assert!(out.contains("ready"), "{out}");
    let secs = ready_within(&env, "ck", 15.0);
    log(format!(
        "ps says ready {secs:.1}s after the restore returned"
    ));
    assert!(
        http_answers(gw, Duration::from_secs(5)),
        "gateway after restore"
    );
    assert_eq!(
        env.ssh_ok(
            "ck",
            "cat /var/lib/marker1; ls /var/lib/marker2 2>&1 >/dev/null | wc -l; cat /srv/data/vmark"
        ),
        "one\n1\nv-one"
    );
    // The clock fix runs in the background right after the restore.
    std::thread::sleep(Duration::from_secs(5));
    let guest_now: i64 = env.ssh_ok("ck", "date +%s").parse().unwrap();
    let host_now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs() as i64;
    log(format!(
        "guest clock - host clock after restore: {}s",
        guest_now - host_now
    ));
    assert!(
        (guest_now - host_now).abs() <= 5,
        "guest clock off by {}s",
        guest_now - host_now
    );

    // ---- 3. suspend, resume ------------------------------------------------------------
    let pid = vm_pid(&home, &id).expect("running");
    let t = Instant::now();
    let out = env.cli_ok(&["suspend", "ck"]);
    let suspend_secs = t.elapsed().as_secs_f64();
    log(format!("suspend {suspend_secs:.1}s: {}", out.trim()));
    assert!(!pid_alive(pid), "QEMU still runs after suspend");
    assert_eq!(env.ps_row("ck")["status"], "suspended");
    let t = Instant::now();
    let out = env.cli_ok(&["start", "ck"]);
    let resume_secs = t.elapsed().as_secs_f64();
    log(format!("resume → ready {resume_secs:.1}s: {}", out.trim()));
    ready_within(&env, "ck", 15.0);
    assert!(http_answers(gw, Duration::from_secs(5)));
    env.ssh_ok("ck", &format!("sudo kill -0 {sleeper}"));
    assert_eq!(env.ssh_ok("ck", "cat /var/lib/marker1"), "one");
    let qlog = std::fs::read_to_string(InstanceFiles::new(&home, &id).qemu_log()).unwrap();
    assert!(qlog.contains("resumed the suspended VM"), "{qlog}");
    assert!(!InstanceFiles::new(&home, &id).suspend().exists());

    // ---- 5. kill -9 at each step ----------------------------------------------------------
    let spawn = |args: &[&str]| {
        Command::new(&env.bin)
            .arg("--home")
            .arg(home.root())
            .args(args)
            .env_remove("CLAWFARM_DRIVER")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap()
    };
    // clawfarm killed mid-checkpoint: the VM runs on, a later checkpoint works.
    let mut c = spawn(&["checkpoint", "ck", "--tag", "k1"]);
    std::thread::sleep(Duration::from_millis(1500));
    let _ = c.kill();
    let _ = c.wait();
    std::thread::sleep(Duration::from_secs(5));
    assert!(
        vm_pid(&home, &id).is_some(),
        "VM gone after a killed checkpoint"
    );
    env.cli_ok(&["checkpoint", "ck", "--tag", "k2"]);
    assert_eq!(
        env.cli_ok(&["start", "ck"]).lines().last().unwrap_or(""),
        "ck ready".replace("ck", &id)
    );
    // clawfarm killed mid-suspend: start converges (continues or resumes), the guest
    // process survives either way.
    let mut c = spawn(&["suspend", "ck"]);
    std::thread::sleep(Duration::from_millis(1500));
    let _ = c.kill();
    let _ = c.wait();
    let out = env.cli_ok(&["start", "ck"]);
    log(format!("start after a killed suspend: {}", out.trim()));
    assert_eq!(env.ps_row("ck")["status"], "ready");
    env.ssh_ok("ck", &format!("sudo kill -0 {sleeper}"));
    // QEMU killed mid-restore: the next apply converges to ready (a cold boot).
    let pid = vm_pid(&home, &id).expect("running");
    let mut c = spawn(&["restore", "ck", "good"]);
    std::thread::sleep(Duration::from_millis(1000));
    let _ = Command::new("kill")
        .args(["-KILL", &pid.to_string()])
        .status();
    let _ = c.wait();
    let t = Instant::now();
    let (ok, report, _) = apply(&env, &mdir);
    assert!(ok, "apply after a killed restore failed: {report:#}");
    let cold2 = t.elapsed().as_secs_f64();
    log(format!(
        "apply after QEMU was killed mid-restore → ready {cold2:.1}s"
    ));
    assert_eq!(env.ps_row("ck")["status"], "ready");
    assert_eq!(
        env.ssh_ok("ck", "cat /opt/claw/hello.txt"),
        "payload from the bundle"
    );

    // QEMU killed mid-suspend: the next apply converges to ready (a cold boot: the save
    // never completed, so there is no usable saved state).
    let pid = vm_pid(&home, &id).expect("running");
    let mut c = spawn(&["suspend", "ck"]);
    std::thread::sleep(Duration::from_millis(1500));
    let _ = Command::new("kill")
        .args(["-KILL", &pid.to_string()])
        .status();
    let _ = c.wait();
    let (ok, report, _) = apply(&env, &mdir);
    assert!(
        ok,
        "apply after QEMU was killed mid-suspend failed: {report:#}"
    );
    assert_eq!(env.ps_row("ck")["status"], "ready");
    assert_eq!(
        env.ssh_ok("ck", "cat /opt/claw/hello.txt"),
        "payload from the bundle"
    );

    // ---- 5b. `state: suspended` in the manifest: apply suspends; `running` resumes ---------
    let ck_manifest = |state: &str| {
        manifest(
            &mdir,
            "ck",
            &bundle_path,
            &format!(
                "  state: {state}\n  ports: [{{host: {gw}, guest: 8080, name: gateway}}]\n  \
                 params:\n    API_KEY: {{env: E2E_API_KEY}}\n"
            ),
        )
    };
    let pid = vm_pid(&home, &id).expect("running");
    let marker = env.ssh_ok(
        "ck",
        "sudo sh -c 'setsid sleep 1000000 </dev/null >/dev/null 2>&1 & echo $!'",
    );
    ck_manifest("suspended");
    let (ok, report, _) = apply(&env, &mdir);
    assert!(ok, "apply of state: suspended failed: {report:#}");
    assert!(!pid_alive(pid), "QEMU still runs under state: suspended");
    assert_eq!(env.ps_row("ck")["status"], "suspended");
    let (ok, report, _) = apply(&env, &mdir);
    assert!(ok, "second apply: {report:#}");
    assert_eq!(env.ps_row("ck")["status"], "suspended", "steady state");
    ck_manifest("running");
    let t = Instant::now();
    let (ok, report, _) = apply(&env, &mdir);
    assert!(ok, "apply of state: running failed: {report:#}");
    log(format!(
        "manifest suspended → running: ready in {:.1}s",
        t.elapsed().as_secs_f64()
    ));
    assert_eq!(env.ps_row("ck")["status"], "ready");
    env.ssh_ok("ck", &format!("sudo kill -0 {}", marker.trim()));

    // ---- 6. rm keeps the volume --------------------------------------------------------
    env.cli_ok(&["rm", "-f", "ck"]);
    let out_dir = work.path().join("vol-export");
    disks::export_volume(
        Path::new("qemu-img"),
        &volume_disk(&home, &id, "data"),
        &out_dir,
    )
    .unwrap();
    let vmark = std::fs::read_to_string(out_dir.join("vmark")).unwrap_or_default();
    assert!(
        vmark.trim() == "v-one" || vmark.trim() == "v-two",
        "{vmark:?}"
    );
    assert!(volume_disk(&home, &id, "data").is_file());

    let gib = vm_state as f64 / (1u64 << 30) as f64;
    log(format!(
        "MEASURE guest RAM {mem_gib} GiB: cold start→ready {cold:.1}s; checkpoint {ckpt_secs:.1}s \
         ({:.1}s per GiB of RAM), VM state {:.0} MiB ({:.2} of RAM); restore→ready {restore_secs:.1}s; \
         suspend {suspend_secs:.1}s; resume→ready {resume_secs:.1}s; cold again {cold2:.1}s (load {})",
        ckpt_secs / mem_gib,
        vm_state as f64 / (1u64 << 20) as f64,
        gib / mem_gib,
        load()
    ));
}
