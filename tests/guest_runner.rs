//! Runs the in-guest phase runner on the host, in a fake root, against the files the
//! user-data of a seed would make cloud-init write, and reads its reports with the host
//! parser. Needs `python3` (skipped with a message when it is missing).

use clawfarm::driver::boot::{GuestPhase, StepState};
use clawfarm::driver::qemu::guest;
use clawfarm::driver::qemu::seed::{self, ProvisionStep, SeedInput};
use clawfarm::util::secret::Secret;
use std::fs;
use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::process::Command;

fn b64_decode(s: &str) -> Vec<u8> {
    const A: &[u8] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let (mut out, mut acc, mut bits) = (Vec::new(), 0u32, 0);
    for c in s.bytes() {
        let Some(v) = A.iter().position(|&b| b == c) else {
            continue;
        };
        acc = (acc << 6) | v as u32;
        bits += 6;
        if bits >= 8 {
            bits -= 8;
            out.push((acc >> bits) as u8);
            acc &= (1 << bits) - 1;
        }
    }
    out
}

/// Do what cloud-init's write_files would do with the user-data, below `root`.
fn apply_write_files(root: &Path, user_data: &str) {
    let v: serde_json::Value = serde_saphyr::from_str(user_data).unwrap();
    for f in v["write_files"].as_array().unwrap() {
        let path = root.join(f["path"].as_str().unwrap().trim_start_matches('/'));
        fs::create_dir_all(path.parent().unwrap()).unwrap();
        assert_eq!(f["encoding"], "b64");
        fs::write(&path, b64_decode(f["content"].as_str().unwrap())).unwrap();
        let mode = u32::from_str_radix(f["permissions"].as_str().unwrap(), 8).unwrap();
        fs::set_permissions(&path, fs::Permissions::from_mode(mode)).unwrap();
    }
}

fn have_python() -> bool {
    Command::new("python3")
        .arg("-c")
        .arg("pass")
        .status()
        .is_ok_and(|s| s.success())
}

struct Guest {
    _dir: tempfile::TempDir,
    root: std::path::PathBuf,
}

impl Guest {
    fn new(input: &SeedInput, nonce: &str) -> Guest {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path().to_path_buf();
        apply_write_files(&root, &seed::render_user_data(input));
        let g = Guest { _dir: dir, root };
        g.set_nonce(nonce);
        fs::create_dir_all(g.root.join("dev/virtio-ports")).unwrap();
        fs::write(g.port(), b"").unwrap();
        g
    }
    fn set_nonce(&self, nonce: &str) {
        let n = self
            .root
            .join(guest::NONCE_SYSFS_PATH.trim_start_matches('/'));
        fs::create_dir_all(n.parent().unwrap()).unwrap();
        fs::write(n, nonce).unwrap();
    }
    fn port(&self) -> std::path::PathBuf {
        self.root.join("dev/virtio-ports/org.clawfarm.status")
    }
    /// One boot of the runner. Returns its exit code.
    fn boot(&self) -> i32 {
        Command::new("python3")
            .arg(self.root.join(seed::RUNNER_PATH.trim_start_matches('/')))
            .env("CLAWFARM_RUNNER_ROOT", &self.root)
            .env("CLAWFARM_CLOUD_INIT_STATUS", "true")
            .env("CLAWFARM_MOUNT", "true")
            .status()
            .unwrap()
            .code()
            .unwrap()
    }
    fn read(&self, rel: &str) -> String {
        fs::read_to_string(self.root.join(rel)).unwrap_or_default()
    }
}

fn input(root_marker: &str) -> SeedInput {
    let order = format!("{root_marker}/order");
    let mut s = SeedInput {
        instance_id: String::new(),
        hostname: "t1".into(),
        ssh_authorized_key: "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIClaw k".into(),
        host_key_private:
            "-----BEGIN OPENSSH PRIVATE KEY-----\nx\n-----END OPENSSH PRIVATE KEY-----\n".into(),
        host_key_public: "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIHost".into(),
        params: vec![("GREETING".into(), Secret::new("it's \"quoted\" $x"))],
        install_script: format!("echo \"install $GREETING\" >> {order}\n"),
        start_script: format!("echo start:$CLAWFARM_PHASE >> {order}\n"),
        provision: vec![
            ProvisionStep {
                name: Some("first".into()),
                shell: None,
                script: format!("echo provision0 >> {order}\n"),
            },
            ProvisionStep {
                name: None,
                shell: Some("/usr/bin/env python3".into()),
                script: format!(
                    "import os\nopen('{order}', 'a').write('provision1 ' + os.environ['CLAWFARM_STEP'] + '\\n')\n"
                ),
            },
        ],
        payload_serial: None,
        volumes: vec![],
        ..SeedInput::default()
    };
    s.instance_id = seed::instance_id_for(&s);
    s
}

#[test]
fn runner_runs_phases_once_and_reports() {
    if !have_python() {
        eprintln!("skipped: python3 not found");
        return;
    }
    // The scripts write to a file below the fake root; make the path first.
    let dir = tempfile::tempdir().unwrap();
    let marker = dir.path().display().to_string();
    let inp = input(&marker);
    let g = Guest::new(&inp, "nonce1");
    assert_eq!(g.boot(), 0);
    let st = guest::read_status(&g.port(), "nonce1").unwrap();
    assert!(st.done, "{st:?}");
    assert!(st.failed.is_none());
    let phases: Vec<String> = st
        .events
        .iter()
        .filter(|e| e.state == StepState::Ok)
        .map(|e| e.phase.to_string())
        .collect();
    assert_eq!(
        phases,
        [
            "cloud-init",
            "install",
            "start",
            "provision[0] first",
            "provision[1]",
            "done"
        ]
    );
    let order = fs::read_to_string(dir.path().join("order")).unwrap();
    assert_eq!(
        order,
        "install it's \"quoted\" $x\nstart:start\nprovision0\nprovision1 1\n"
    );
    // Logs per phase, root-only.
    let log = g.root.join("var/log/clawfarm/install.log");
    assert_eq!(
        fs::metadata(&log).unwrap().permissions().mode() & 0o777,
        0o600
    );

    // Second boot (new nonce): only start runs again.
    g.set_nonce("nonce2");
    assert_eq!(g.boot(), 0);
    let st = guest::read_status(&g.port(), "nonce2").unwrap();
    assert!(st.done);
    let started: Vec<String> = st
        .events
        .iter()
        .filter(|e| e.state == StepState::Started)
        .map(|e| e.phase.to_string())
        .collect();
    assert_eq!(started, ["start"]);
    let order = fs::read_to_string(dir.path().join("order")).unwrap();
    assert!(order.ends_with("provision1 1\nstart:start\n"), "{order}");
    // The first boot's lines are still in the file but do not count for nonce2.
    assert!(st.ignored >= 6);
}

#[test]
fn failing_provision_step_reports_code_and_tail_and_retries() {
    if !have_python() {
        eprintln!("skipped: python3 not found");
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let flag = dir.path().join("fixed");
    let mut inp = input(&dir.path().display().to_string());
    inp.provision.push(ProvisionStep {
        name: Some("flaky".into()),
        shell: None,
        script: format!(
            "echo trying step $CLAWFARM_STEP_NAME\nif [ -e {} ]; then exit 0; fi\necho it broke >&2\nexit 7\n",
            flag.display()
        ),
    });
    inp.instance_id = seed::instance_id_for(&inp);
    let g = Guest::new(&inp, "b1");
    assert_eq!(g.boot(), 1);
    let st = guest::read_status(&g.port(), "b1").unwrap();
    assert!(!st.done);
    let f = st.failed.clone().unwrap();
    assert_eq!(f.phase, "provision[2] flaky");
    assert_eq!(f.code, 7);
    assert!(f.tail.contains("trying step flaky"), "{}", f.tail);
    assert!(f.tail.contains("it broke"), "{}", f.tail);
    assert_eq!(f.tail, "trying step flaky\nit broke");
    assert_eq!(st.events.last().unwrap().state, StepState::Failed);

    // Next boot: the succeeded steps are not rerun, the failed one is retried.
    fs::write(&flag, "").unwrap();
    g.set_nonce("b2");
    assert_eq!(g.boot(), 0);
    let st = guest::read_status(&g.port(), "b2").unwrap();
    assert!(st.done);
    let started: Vec<GuestPhase> = st
        .events
        .iter()
        .filter(|e| e.state == StepState::Started)
        .map(|e| e.phase.clone())
        .collect();
    assert_eq!(
        started,
        [
            GuestPhase::Start,
            GuestPhase::Provision {
                step: 2,
                name: Some("flaky".into())
            }
        ]
    );
    // Echoed on the "serial console" too, with the prefix.
    let serial = g.read("dev/ttyS0");
    assert!(serial.contains("CLAWFARM-STATUS {\"boot\": \"b2\""));
    assert!(guest::parse_status(serial.as_bytes(), "b2").done);
}

#[test]
fn failing_install_stops_the_sequence() {
    if !have_python() {
        eprintln!("skipped: python3 not found");
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let mut inp = input(&dir.path().display().to_string());
    inp.install_script = "exit 3".into();
    inp.instance_id = seed::instance_id_for(&inp);
    let g = Guest::new(&inp, "n");
    assert_eq!(g.boot(), 1);
    let st = guest::read_status(&g.port(), "n").unwrap();
    let f = st.failed.unwrap();
    assert_eq!((f.phase.as_str(), f.code), ("install", 3));
    assert!(!st.events.iter().any(|e| e.phase == GuestPhase::Start));
    assert!(!dir.path().join("order").exists());
}

#[test]
fn background_daemon_does_not_hold_the_runner() {
    if !have_python() {
        eprintln!("skipped: python3 not found");
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let pidfile = dir.path().join("daemon.pid");
    let mut inp = input(&dir.path().display().to_string());
    inp.start_script = format!("sleep 30 &\necho $! > {}\n", pidfile.display());
    inp.instance_id = seed::instance_id_for(&inp);
    let g = Guest::new(&inp, "n");
    let t = std::time::Instant::now();
    assert_eq!(g.boot(), 0);
    assert!(t.elapsed().as_secs() < 20, "runner waited for the daemon");
    let pid: i32 = fs::read_to_string(&pidfile)
        .unwrap()
        .trim()
        .parse()
        .unwrap();
    // Still running after the runner exited.
    assert_eq!(unsafe { libc::kill(pid, 0) }, 0);
    unsafe { libc::kill(pid, libc::SIGTERM) };
}

#[test]
fn install_already_on_the_disk_is_skipped_for_a_new_instance() {
    if !have_python() {
        eprintln!("skipped: python3 not found");
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let marker = dir.path().display().to_string();
    let inp = input(&marker);
    let g = Guest::new(&inp, "boot1");
    assert_eq!(g.boot(), 0);
    // An exported disk booted as another instance: new seed (another param value, so
    // another instance id), same install script.
    let mut other = inp.clone();
    other
        .params
        .push(("EXTRA".into(), clawfarm::util::secret::Secret::new("x")));
    other.instance_id = seed::instance_id_for(&other);
    assert_ne!(other.instance_id, inp.instance_id);
    apply_write_files(&g.root, &seed::render_user_data(&other));
    g.set_nonce("boot2");
    assert_eq!(g.boot(), 0);
    let st = guest::read_status(&g.port(), "boot2").unwrap();
    assert!(st.done, "{st:?}");
    let install: Vec<StepState> = st
        .events
        .iter()
        .filter(|e| e.phase.to_string() == "install")
        .map(|e| e.state)
        .collect();
    assert_eq!(install, [StepState::Skipped]);
    let order = fs::read_to_string(dir.path().join("order")).unwrap();
    assert_eq!(order.matches("install").count(), 1, "{order}");
    // Provision steps run for the new instance.
    assert_eq!(order.matches("provision0").count(), 2, "{order}");
    // A changed install script runs.
    let mut third = other.clone();
    third.install_script.push_str("\necho changed\n");
    third.instance_id = seed::instance_id_for(&third);
    apply_write_files(&g.root, &seed::render_user_data(&third));
    g.set_nonce("boot3");
    assert_eq!(g.boot(), 0);
    let order = fs::read_to_string(dir.path().join("order")).unwrap();
    assert_eq!(order.matches("install").count(), 2, "{order}");
}
