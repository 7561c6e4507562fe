//! End to end, watch mode with a real guest: `clawfarm watch DIR` brings a VM up; its QEMU is
//! killed with SIGKILL; watch notices (pidfd) and brings it back to `ready`; SIGTERM ends
//! watch with exit 0 and the VM still running.
//!
//! Runs only with `CLAWFARM_E2E=1` (as `scripts/test.sh` sets), like `tests/e2e_qemu.rs`.
//! The guest image: `$CLAWFARM_GUEST_IMAGE`, else `scripts/build-guest-image.sh` (cached).

mod net_support;

use net_support::{image, sha256};
use std::path::PathBuf;
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

struct Env {
    _t: tempfile::TempDir,
    home: PathBuf,
    dir: PathBuf,
}

impl Env {
    fn cmd(&self, args: &[&str]) -> Command {
        let mut c = Command::new(env!("CARGO_BIN_EXE_clawfarm"));
        c.args(args)
            .env("CLAWFARM_HOME", &self.home)
            .env("CLAWFARM_ACCEL", "tcg")
            .env("WATCH_E2E_KEY", "watch-e2e-secret")
            .env_remove("CLAWFARM_DRIVER")
            .stdin(Stdio::null());
        c
    }
    fn run(&self, args: &[&str]) -> Output {
        self.cmd(args).output().unwrap()
    }
    fn ps(&self) -> serde_json::Value {
        let o = self.run(&["ps", "-o", "json"]);
        serde_json::from_slice(&o.stdout).unwrap_or(serde_json::Value::Null)
    }
    /// Wait until the only instance has `status`; returns its ps row.
    fn wait_status(&self, status: &str, limit: Duration) -> serde_json::Value {
        let t = Instant::now();
        loop {
            let ps = self.ps();
            if let Some(r) = ps.as_array().and_then(|a| a.first())
                && r["status"] == status
            {
                return r.clone();
            }
            assert!(
                t.elapsed() < limit,
                "not {status} after {limit:?}: {ps:#}\n{}",
                String::from_utf8_lossy(&self.run(&["logs", "watch-a"]).stdout)
            );
            std::thread::sleep(Duration::from_secs(2));
        }
    }
}

/// True when `pid` is a live process (a zombie waiting to be reaped by PID 1 is not).
fn pid_alive(pid: i32) -> bool {
    std::fs::read_to_string(format!("/proc/{pid}/stat"))
        .ok()
        .and_then(|s| {
            s.rsplit_once(')')
                .map(|(_, rest)| rest.trim_start().to_string())
        })
        .is_some_and(|rest| !rest.starts_with('Z') && !rest.starts_with('X'))
}

struct KillOnDrop(Option<Child>);
impl Drop for KillOnDrop {
    fn drop(&mut self) {
        if let Some(c) = &mut self.0 {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

#[test]
fn watch_restarts_a_killed_vm_to_ready() {
    if std::env::var("CLAWFARM_E2E").as_deref() != Ok("1") {
        eprintln!("skipped: set CLAWFARM_E2E=1 to boot real guests (several minutes)");
        return;
    }
    let img = image();
    let t = tempfile::tempdir().unwrap();
    // QEMU runs as an unprivileged user, which must be able to traverse to the home.
    std::fs::set_permissions(
        t.path(),
        std::os::unix::fs::PermissionsExt::from_mode(0o711),
    )
    .unwrap();
    let e = Env {
        home: t.path().join("home"),
        dir: t.path().join("agents"),
        _t: t,
    };
    std::fs::create_dir_all(&e.dir).unwrap();
    let root = e.dir.parent().unwrap().to_path_buf();

    // A tar.gz bundle (real tar + gzip) whose base image is the cached guest image.
    let src = root.join("bundle");
    std::fs::create_dir_all(src.join("claw")).unwrap();
    std::fs::write(src.join("claw/hello.txt"), "hello from the payload\n").unwrap();
    let spec = serde_json::json!({
        "schema_version": 3,
        "name": "watch-e2e",
        "image": [{"name": "base", "ref": format!("file://{}", img.display()), "sha256": sha256(&img)}],
        "bootstrap": {
            "id": "openclaw",
            "install_script": "#!/bin/bash\necho installed > /root/installed\n",
            "start_script": "#!/bin/bash\nset -e\ncd /opt/claw\nnohup python3 -m http.server 18901 >/dev/null 2>&1 &\nfor i in $(seq 50); do (exec 3<>/dev/tcp/127.0.0.1/18901) 2>/dev/null && exit 0; sleep 0.2; done\nexit 1\n",
            "params": {"required": [{"key": "API_KEY", "label": "key", "secret": true}]}
        }
    });
    std::fs::write(src.join("clawspec.json"), spec.to_string()).unwrap();
    let bx = root.join("watch.clawbox");
    let st = Command::new("sh")
        .arg("-c")
        .arg(format!(
            "tar -C {} -cf - clawspec.json claw | gzip -n > {}",
            src.display(),
            bx.display()
        ))
        .status()
        .unwrap();
    assert!(st.success());
    let host_port = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        l.local_addr().unwrap().port()
    };
    std::fs::write(
        e.dir.join("watch-a.yaml"),
        format!(
            "apiVersion: clawfarm/v1\nkind: Claw\nmetadata:\n  name: watch-a\nspec:\n  clawbox: ../watch.clawbox\n  cpus: 2\n  memory: 1GiB\n  ports:\n    - {{host: {host_port}, guest: 18901, name: gateway}}\n  params:\n    API_KEY: {{env: WATCH_E2E_KEY}}\n"
        ),
    )
    .unwrap();

    let watch = e
        .cmd(&["watch", e.dir.to_str().unwrap(), "--resync", "10s"])
        .stdout(Stdio::null())
        .stderr(Stdio::inherit())
        .spawn()
        .unwrap();
    let mut guard = KillOnDrop(Some(watch));

    let t0 = Instant::now();
    let row = e.wait_status("ready", Duration::from_secs(900));
    eprintln!("watch: first boot to ready in {:.0?}", t0.elapsed());
    let pid1 = row["pid"].as_i64().expect("pid") as i32;
    // The gateway answers.
    assert!(std::net::TcpStream::connect(("127.0.0.1", host_port)).is_ok());

    // Kill QEMU the hard way; watch must notice and bring it back to ready.
    unsafe { libc::kill(pid1, libc::SIGKILL) };
    let t1 = Instant::now();
    let row = e.wait_status("ready", Duration::from_secs(900));
    let pid2 = row["pid"].as_i64().expect("pid") as i32;
    assert_ne!(pid1, pid2, "a new QEMU process");
    assert_eq!(row["restarts"], 1, "{row:#}");
    eprintln!("watch: killed VM back to ready in {:.0?}", t1.elapsed());
    let ev = String::from_utf8_lossy(&e.run(&["events"]).stdout).to_string();
    assert!(ev.contains("exited") && ev.contains("restart"), "{ev}");

    // SIGTERM: watch exits 0 and leaves the VM running.
    let mut w = guard.0.take().unwrap();
    unsafe { libc::kill(w.id() as i32, libc::SIGTERM) };
    let st = w.wait().unwrap();
    assert!(st.success(), "watch exit: {st:?}");
    assert!(pid_alive(pid2), "VM stopped with watch");

    // Clean up the VM.
    let o = e.run(&["rm", "-f", "--purge", "watch-a"]);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    assert!(!pid_alive(pid2));
}
