//! End to end, the sandbox (`rfc/012-sandbox.md`) from inside real guests under TCG.
//!
//! Runs only with `CLAWFARM_E2E=1`. Two instances of one bundle boot side by side:
//!
//! * `quiet`: network policy `none` (the default), gateway forwarded to the host;
//! * `egress`: policy `allow` with `deb.debian.org` and one host loopback port
//!   (`127.0.0.1:<allowed>`), gateway forwarded too.
//!
//! The test starts two HTTP services on the host's 127.0.0.1: a "secret" one nobody may
//! reach and an "allowed" one `egress` names. From inside the guests it then tries every
//! escape in the table of `rfc/012-sandbox.md` (the host's loopback through the gateway
//! address, directly and through the proxy; the other instance's forwarded gateway; a
//! registry IP directly; a registry not on the list; a forged proxy token) and checks the
//! verdicts, the events and the `ps -o json` counts. It also checks what the host sees:
//! QEMU's uid is not 0, `Seccomp: 2` and `NoNewPrivs: 1`, the cgroup limits, the owner and
//! modes of the instance folder, and that a setuid file and a device node made by root in
//! the guest stay inside the volume's disk image (a file of the QEMU user, 0600) and come out
//! of `clawfarm volume export` as plain files of the exporting user without setuid bit (the
//! device node is not copied).
//!
//! Only addresses on this machine and the Debian package mirror are ever contacted.

mod net_support;

use std::net::{TcpListener, ToSocketAddrs};
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};

use net_support::{image, log_as, pack_bundle, service, sha256, t0, work_dir};

fn log(m: impl AsRef<str>) {
    log_as("sandbox", m.as_ref());
}

fn free_port() -> u16 {
    TcpListener::bind(("127.0.0.1", 0))
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

struct Env {
    home: PathBuf,
}

impl Env {
    fn run(&self, args: &[&str]) -> Output {
        Command::new(env!("CARGO_BIN_EXE_clawfarm"))
            .args(args)
            .env("CLAWFARM_HOME", &self.home)
            .env("CLAWFARM_ACCEL", "tcg")
            .env_remove("CLAWFARM_DRIVER")
            .stdin(Stdio::null())
            .output()
            .unwrap()
    }
    /// Run `cmd` in guest `name` over SSH: (exit code, stdout).
    fn ssh(&self, name: &str, cmd: &str) -> (i32, String) {
        let o = self.run(&["ssh", name, "--", cmd]);
        (
            o.status.code().unwrap_or(-1),
            String::from_utf8_lossy(&o.stdout).trim().to_string(),
        )
    }
    fn ps(&self, name: &str) -> serde_json::Value {
        let o = self.run(&["ps", "-o", "json"]);
        let v: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
        v.as_array()
            .unwrap()
            .iter()
            .find(|r| r["name"] == name)
            .cloned()
            .unwrap_or_else(|| panic!("{name} not in ps"))
    }
}

/// Kill the QEMUs of the test home at the end (passed or not).
struct Cleanup(Vec<u32>);
impl Drop for Cleanup {
    fn drop(&mut self) {
        for pid in &self.0 {
            let _ = Command::new("kill")
                .args(["-KILL", &pid.to_string()])
                .status();
        }
    }
}

fn status_field(pid: u32, key: &str) -> String {
    let s = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    s.lines()
        .find_map(|l| l.strip_prefix(&format!("{key}:")))
        .unwrap_or_default()
        .trim()
        .to_string()
}

/// `curl` in the guest: `<HTTP status> <proxy CONNECT status>` (`000` when nothing
/// answered), body in /tmp/body.
/// Whether clawfarm made its cgroup parent (cgroup v1 `cpu` or v2).
fn cgroups_writable() -> bool {
    Path::new("/sys/fs/cgroup/cpu/clawfarm").is_dir()
        || Path::new("/sys/fs/cgroup/clawfarm").is_dir()
}

const CURL: &str = "rm -f /tmp/body; curl -s -m 8 -o /tmp/body -w '%{http_code} %{http_connect}'";

#[test]
fn sandbox_from_inside_real_guests() {
    if std::env::var("CLAWFARM_E2E").as_deref() != Ok("1") {
        eprintln!("skipped: set CLAWFARM_E2E=1 to boot real guests (several minutes)");
        return;
    }
    t0();
    let img = image();
    let work = work_dir("cf-sbx");
    let env = Env {
        home: work.path().join("h"),
    };
    let mut cleanup = Cleanup(Vec::new());

    let secret_port = service("host-secret\n", false);
    let allowed_port = service("allowed-host-service\n", false);
    let gw_quiet = free_port();
    let gw_egress = free_port();

    // Bundle: a gateway (python http.server) on guest port 8080; a volume.
    let src = work.path().join("bundle");
    std::fs::create_dir_all(src.join("claw")).unwrap();
    std::fs::write(src.join("claw/hello.txt"), "payload\n").unwrap();
    let spec = serde_json::json!({
        "schema_version": 3,
        "name": "sandbox-e2e",
        "image": [{"name": "base", "ref": format!("file://{}", img.display()), "sha256": sha256(&img)}],
        "bootstrap": {
            "id": "openclaw",
            "display_name": "sandbox e2e",
            "install_script": "#!/bin/bash\ntrue\n",
            "start_script": "#!/bin/bash\nmkdir -p /srv/www\necho \"gateway of $(hostname)\" > /srv/www/index.html\ncd /srv/www\nnohup python3 -m http.server 8080 > /var/log/clawfarm/http.log 2>&1 &\n",
            "params": {"required": [], "optional": []}
        },
        "provision": []
    });
    std::fs::write(
        src.join("clawspec.json"),
        serde_json::to_vec_pretty(&spec).unwrap(),
    )
    .unwrap();
    let bundle = work.path().join("sbx.clawbox");
    pack_bundle(&src, &bundle);

    let mdir = work.path().join("m");
    std::fs::create_dir_all(&mdir).unwrap();
    let doc = |name: &str, gw: u16, extra: &str| {
        format!(
            "apiVersion: clawfarm/v1\nkind: Claw\nmetadata:\n  name: {name}\nspec:\n  clawbox: {}\n  \
             ports: [{{host: {gw}, guest: 8080, name: gateway}}]\n  \
             volumes: [{{name: data, guestPath: /srv/data}}]\n{extra}",
            bundle.display()
        )
    };
    std::fs::write(mdir.join("quiet.yaml"), doc("quiet", gw_quiet, "")).unwrap();
    std::fs::write(
        mdir.join("egress.yaml"),
        doc(
            "egress",
            gw_egress,
            &format!(
                "  network:\n    egress: allow\n    allow: [deb.debian.org, \"127.0.0.1:{allowed_port}\"]\n"
            ),
        ),
    )
    .unwrap();

    // Bad input first: nothing may change.
    let bad = work.path().join("bad");
    std::fs::create_dir_all(&bad).unwrap();
    std::fs::write(
        bad.join("b.yaml"),
        doc(
            "bad",
            gw_quiet,
            "  network:\n    egress: allow\n    allow: [10.0.0.0/8]\n",
        ),
    )
    .unwrap();
    let o = env.run(&["apply", "-f", bad.to_str().unwrap()]);
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(!o.status.success());
    assert!(
        err.contains("b.yaml:11:") && err.contains("spec.network.allow[0]"),
        "{err}"
    );
    assert!(
        !env.home.join("claws").exists()
            || std::fs::read_dir(env.home.join("claws"))
                .unwrap()
                .next()
                .is_none()
    );

    // Hosts (CI containers) where nftables cannot be used: an `allow` instance must refuse
    // to start with an error that says why, and nothing else can be checked here.
    let nft_ok = Command::new("nft")
        .args(["list", "tables"])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success());
    if !nft_ok {
        let one = work.path().join("one");
        std::fs::create_dir_all(&one).unwrap();
        std::fs::copy(mdir.join("egress.yaml"), one.join("egress.yaml")).unwrap();
        let o = env.run(&["apply", "-f", one.to_str().unwrap()]);
        let err = String::from_utf8_lossy(&o.stderr);
        assert!(!o.status.success());
        assert!(err.contains("nft"), "{err}");
        log(format!(
            "nftables unusable on this host: the allow instance is refused ({}); the rest is skipped",
            err.lines().last().unwrap_or("")
        ));
        let _ = env.run(&["rm", "-f", "--purge", "egress"]);
        return;
    }

    log("apply quiet (none) + egress (allow)");
    let o = Command::new(env!("CARGO_BIN_EXE_clawfarm"))
        .args(["apply", "-f", mdir.to_str().unwrap()])
        .env("CLAWFARM_HOME", &env.home)
        .env("CLAWFARM_ACCEL", "tcg")
        .env_remove("CLAWFARM_DRIVER")
        .stdin(Stdio::null())
        .stderr(Stdio::inherit())
        .output()
        .unwrap();
    let q = env.ps("quiet");
    let e = env.ps("egress");
    for r in [&q, &e] {
        if let Some(p) = r["pid"].as_u64() {
            cleanup.0.push(p as u32);
        }
    }
    assert!(o.status.success(), "apply failed: {q:#} {e:#}");
    log("both ready");
    assert_eq!(q["network"], "none");
    assert_eq!(e["network"], "allow");

    // ---- QEMU is confined ---------------------------------------------------------------
    let qemu_uid = {
        let mut uid = None;
        for r in [&q, &e] {
            let pid = r["pid"].as_u64().unwrap() as u32;
            let uids = status_field(pid, "Uid");
            let real: u32 = uids.split_whitespace().next().unwrap().parse().unwrap();
            assert!(
                uids.split_whitespace().all(|u| u != "0"),
                "QEMU {pid} Uid: {uids}"
            );
            assert_eq!(status_field(pid, "Seccomp"), "2", "QEMU {pid}");
            assert_eq!(status_field(pid, "NoNewPrivs"), "1", "QEMU {pid}");
            let cg = std::fs::read_to_string(format!("/proc/{pid}/cgroup")).unwrap();
            let id = r["clawid"].as_str().unwrap();
            // A host whose cgroup tree clawfarm cannot write starts VMs unbounded (qemu.log).
            if cgroups_writable() {
                assert!(cg.contains(&format!("clawfarm/{id}")), "{cg}");
            }
            log(format!(
                "QEMU {pid}: Uid {uids}, Seccomp 2, NoNewPrivs 1, cgroup clawfarm/{id}"
            ));
            uid = Some(real);
        }
        uid.unwrap()
    };
    let qid = q["clawid"].as_str().unwrap().to_string();
    let eid = e["clawid"].as_str().unwrap().to_string();
    if Path::new("/sys/fs/cgroup/cpu/clawfarm").is_dir() {
        let quota = std::fs::read_to_string(format!(
            "/sys/fs/cgroup/cpu/clawfarm/{qid}/cpu.cfs_quota_us"
        ))
        .unwrap();
        assert_eq!(quota.trim(), "150000");
        let mem = std::fs::read_to_string(format!(
            "/sys/fs/cgroup/memory/clawfarm/{qid}/memory.limit_in_bytes"
        ))
        .unwrap();
        assert_eq!(mem.trim(), ((1024u64 + 1024) << 20).to_string());
        let usage: u64 = std::fs::read_to_string(format!(
            "/sys/fs/cgroup/memory/clawfarm/{qid}/memory.usage_in_bytes"
        ))
        .unwrap()
        .trim()
        .parse()
        .unwrap();
        log(format!(
            "quiet: cpu quota 1.5 cpu, memory limit 2048 MiB, usage {} MiB",
            usage >> 20
        ));
    }
    let dir = env.home.join("claws").join(&qid);
    let md = std::fs::metadata(&dir).unwrap();
    assert_eq!((md.uid(), md.mode() & 0o777), (qemu_uid, 0o700));
    for f in ["disk.qcow2", "seed.img"] {
        let m = std::fs::metadata(dir.join(f)).unwrap();
        assert_eq!((m.uid(), m.mode() & 0o777), (qemu_uid, 0o600), "{f}");
    }
    for f in ["id_ed25519", "egress.token", "runtime.json"] {
        let m = std::fs::metadata(dir.join(f)).unwrap();
        assert_eq!((m.uid(), m.mode() & 0o777), (0, 0o600), "{f}");
    }

    // ---- Volume: root in the guest makes a setuid file and a device node ------------------
    let (rc, _) = env.ssh(
        "quiet",
        "sudo sh -c 'cp /bin/true /srv/data/suid && chown root:root /srv/data/suid && chmod 4755 /srv/data/suid && mknod /srv/data/null c 1 3 && stat -c %a:%u /srv/data/suid'",
    );
    assert_eq!(rc, 0, "guest could not write the volume");
    let (_, inside) = env.ssh(
        "quiet",
        "sudo sh -c 'echo x > /srv/data/other && chown 4242:4242 /srv/data/other && sync' && stat -c '%a:%u:%F' /srv/data/suid /srv/data/null /srv/data/other",
    );
    log(format!("inside the guest: {inside}"));
    // On the host the volume is one disk image of the QEMU user, in a folder of root's.
    let vdir = env.home.join("volumes").join(&qid);
    let m = std::fs::metadata(&vdir).unwrap();
    assert_eq!(m.uid(), 0, "volume folder owner");
    let m = std::fs::symlink_metadata(vdir.join("data.qcow2")).unwrap();
    assert!(m.file_type().is_file());
    assert_eq!(
        (m.uid(), m.mode() & 0o7777),
        (qemu_uid, 0o600),
        "volume disk"
    );
    let m = std::fs::metadata(dir.join("payload.img")).unwrap();
    assert_eq!(
        (m.uid(), m.mode() & 0o7777),
        (qemu_uid, 0o600),
        "payload disk"
    );
    log(format!(
        "host: volume disk uid {qemu_uid} mode 600 in a root folder"
    ));

    // ---- Escapes from the allow-mode guest -----------------------------------------------
    let deb_ip = ("deb.debian.org", 80)
        .to_socket_addrs()
        .unwrap()
        .find(|a| a.is_ipv4())
        .unwrap()
        .ip();
    let px = "-x \"$http_proxy\" --noproxy ''";
    let cases: Vec<(&str, &str, String, &str)> = vec![
        // (guest, what, command, expected status)
        (
            "egress",
            "host 127.0.0.1 service via 10.0.2.2 (direct)",
            format!("{CURL} --noproxy '*' http://10.0.2.2:{secret_port}/"),
            "000 000",
        ),
        (
            "egress",
            "host 127.0.0.1 service via the proxy",
            format!("{CURL} {px} http://127.0.0.1:{secret_port}/"),
            "403 000",
        ),
        (
            "egress",
            "host service via the proxy as localhost",
            format!("{CURL} {px} http://localhost:{secret_port}/"),
            "403 000",
        ),
        (
            "egress",
            "other instance's gateway via 10.0.2.2 (direct)",
            format!("{CURL} --noproxy '*' http://10.0.2.2:{gw_quiet}/"),
            "000 000",
        ),
        (
            "egress",
            "other instance's gateway via the proxy",
            format!("{CURL} {px} http://127.0.0.1:{gw_quiet}/"),
            "403 000",
        ),
        (
            "egress",
            "its own forwarded gateway via the proxy",
            format!("{CURL} {px} http://127.0.0.1:{gw_egress}/"),
            "403 000",
        ),
        (
            "egress",
            "registry IP directly, bypassing the proxy",
            format!("{CURL} --noproxy '*' http://{deb_ip}/debian/"),
            "000 000",
        ),
        (
            "egress",
            "registry not on the list (pypi.org, https)",
            format!("{CURL} {px} https://pypi.org/simple/"),
            "000 403",
        ),
        (
            "egress",
            "allowed registry over http",
            format!("{CURL} {px} http://deb.debian.org/debian/dists/bookworm/Release"),
            "200 000",
        ),
        // -k: this machine's package mirror presents a certificate of its own CA, which the
        // host trusts and the guest image does not; the tunnel and the TLS exchange are real.
        (
            "egress",
            "allowed registry over https (CONNECT)",
            format!("{CURL} -k {px} https://deb.debian.org/debian/dists/bookworm/Release"),
            "200 200",
        ),
        (
            "egress",
            "host port the manifest names",
            format!("{CURL} {px} http://127.0.0.1:{allowed_port}/"),
            "200 000",
        ),
        (
            "egress",
            "the proxy with a forged token",
            format!(
                "{CURL} -x http://{eid}:00000000000000000000000000000000@10.0.2.2:18780 --noproxy '' http://deb.debian.org/"
            ),
            "407 000",
        ),
        (
            "egress",
            "the proxy as the other instance (its id, wrong token)",
            format!(
                "{CURL} -x http://{qid}:00000000000000000000000000000000@10.0.2.2:18780 --noproxy '' http://deb.debian.org/"
            ),
            "407 000",
        ),
        (
            "quiet",
            "host 127.0.0.1 service via 10.0.2.2 (direct)",
            format!("{CURL} --noproxy '*' http://10.0.2.2:{secret_port}/"),
            "000 000",
        ),
        (
            "quiet",
            "other instance's gateway via 10.0.2.2",
            format!("{CURL} --noproxy '*' http://10.0.2.2:{gw_egress}/"),
            "000 000",
        ),
        (
            "quiet",
            "registry through the proxy (policy none)",
            format!("{CURL} {px} http://deb.debian.org/debian/"),
            "000 000",
        ),
        (
            "quiet",
            "registry IP directly",
            format!("{CURL} --noproxy '*' http://{deb_ip}/debian/"),
            "000 000",
        ),
        (
            "quiet",
            "allowed host port of the other instance's policy",
            format!("{CURL} {px} http://127.0.0.1:{allowed_port}/"),
            "000 000",
        ),
    ];
    let mut table = String::new();
    for (guest, what, cmd, want) in &cases {
        let (_, code) = env.ssh(
            guest,
            &format!("{cmd}; echo; head -c 200 /tmp/body 2>/dev/null | tr -d '\\n'"),
        );
        let mut lines = code.lines();
        let status = lines.next().unwrap_or("").trim().to_string();
        let body = lines.next().unwrap_or("").to_string();
        log(format!("{guest}: {what}: {status} {body}"));
        table.push_str(&format!("| {guest} | {what} | {status} |\n"));
        assert_eq!(&status, want, "{guest}: {what}: body {body:?}");
        if !want.starts_with("200") {
            assert!(
                !body.contains("host-secret") && !body.contains("gateway of"),
                "{what}: {body}"
            );
        }
    }
    eprintln!("{table}");
    let (_, b) = env.ssh(
        "egress",
        &format!("curl -s -m 8 {px} http://127.0.0.1:{allowed_port}/"),
    );
    assert_eq!(b, "allowed-host-service");

    // The host can still reach both guests through their forwards.
    for (gw, name) in [(gw_quiet, "quiet"), (gw_egress, "egress")] {
        let out = Command::new("curl")
            .args(["-s", "-m", "10", &format!("http://127.0.0.1:{gw}/")])
            .output()
            .unwrap();
        assert_eq!(
            String::from_utf8_lossy(&out.stdout).trim(),
            format!("gateway of {name}")
        );
    }

    // ---- Events and counts ---------------------------------------------------------------
    let events = std::fs::read_to_string(env.home.join("events.jsonl")).unwrap();
    let egress: Vec<serde_json::Value> = events
        .lines()
        .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
        .filter(|v| v["action"] == "egress")
        .collect();
    for v in &egress {
        log(format!(
            "event {} {} {}",
            v["instance"], v["result"], v["message"]
        ));
    }
    let has = |result: &str, needle: &str| {
        egress.iter().any(|v| {
            v["instance"] == eid
                && v["result"] == result
                && v["message"].as_str().unwrap().contains(needle)
        })
    };
    assert!(has(
        "refused",
        &format!("127.0.0.1:{secret_port}: the host's loopback")
    ));
    assert!(has("refused", &format!("127.0.0.1:{gw_quiet}")));
    assert!(has("refused", "pypi.org:443: not in the allow list"));
    assert!(has("allowed", "deb.debian.org:80"));
    assert!(has("allowed", "deb.debian.org:443"));
    assert!(has("allowed", &format!("127.0.0.1:{allowed_port}")));
    assert!(egress.iter().all(|v| v["instance"] != qid.as_str()));
    let e = env.ps("egress");
    let refused = egress
        .iter()
        .filter(|v| v["instance"] == eid && v["result"] == "refused")
        .count();
    let allowed = egress
        .iter()
        .filter(|v| v["instance"] == eid && v["result"] == "allowed")
        .count();
    assert_eq!(e["egress"]["refused"].as_u64(), Some(refused as u64));
    assert_eq!(e["egress"]["allowed"].as_u64(), Some(allowed as u64));
    assert!(
        refused >= 5 && allowed >= 3,
        "{refused} refused, {allowed} allowed"
    );
    let o = env.run(&["events", "egress"]);
    let text = String::from_utf8_lossy(&o.stdout);
    assert!(text.contains("pypi.org:443"), "{text}");

    // ---- Stop: registration and cgroup go away; start again works ----------------------------
    let o = env.run(&["stop", "egress"]);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    assert!(!Path::new(&format!("/run/clawfarm/egress/{eid}.json")).exists());
    // The volume copied out: plain files of the exporting user, no setuid, no device.
    let o = env.run(&["stop", "quiet"]);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let out = work.path().join("vol-out");
    let o = env.run(&["volume", "export", "quiet", "data", out.to_str().unwrap()]);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let me = rustix::process::geteuid().as_raw();
    for f in ["suid", "other"] {
        let m = std::fs::symlink_metadata(out.join(f)).unwrap();
        assert!(m.file_type().is_file(), "{f} is not a plain file");
        assert_eq!(m.uid(), me, "{f} owner");
        assert_eq!(m.mode() & 0o7000, 0, "{f} mode {:o}", m.mode());
        log(format!("exported: {f} uid {} mode {:o}", m.uid(), m.mode()));
    }
    assert!(
        std::fs::symlink_metadata(out.join("null")).is_err(),
        "the device node was exported"
    );
    log("exported: null (device node) not copied");
    let o = env.run(&["rm", "-f", "--purge", "quiet"]);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let o = env.run(&["rm", "-f", "--purge", "egress"]);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    assert!(!Path::new(&format!("/sys/fs/cgroup/cpu/clawfarm/{qid}")).exists());
    log("done");
}
