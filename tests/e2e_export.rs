//! `clawfarm export` end to end with real guests under TCG. Runs only with
//! `CLAWFARM_E2E=1`, as `scripts/test.sh` sets (otherwise it prints why it was skipped and
//! passes); the guest image is `$CLAWFARM_GUEST_IMAGE`, else the cached
//! `scripts/build-guest-image.sh` one.
//!
//! 1. `run` an instance of a tar.gz box (base over `file://`, a secret param that the
//!    install copies into `~/.openclaw/.env` and `credentials/`, as an agent would) → ready;
//! 2. `export` it while it runs → a `.clawbox`; the instance runs again afterwards;
//! 3. this test (not clawfarm) decompresses the box's `run.qcow2` to raw bytes with
//!    `qemu-img` and searches them for the secret, plain and base64: none is found;
//!    the layer is much smaller than the base image;
//! 4. a fresh home `run`s the exported box with another secret → ready, with the install
//!    reported `skipped` and not run again (the guest's order file shows no second
//!    install), and the new instance's params file holds the new value;
//! 5. the first instance writes its secret into an unexpected file (`~/notes.txt`); a
//!    second export is refused naming the param, never the value; no file is left.

mod net_support;

use net_support::pack_bundle;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::time::Instant;

const SECRET: &str = "sk-e2e-export-S3cret-9f8e7d";
const SECRET2: &str = "sk-e2e-export-other-1a2b3c";

fn guest_image() -> PathBuf {
    if let Some(p) = std::env::var_os("CLAWFARM_GUEST_IMAGE").filter(|p| !p.is_empty()) {
        return PathBuf::from(p);
    }
    let out = Command::new("bash")
        .arg(PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("scripts/build-guest-image.sh"))
        .stderr(Stdio::inherit())
        .output()
        .expect("run scripts/build-guest-image.sh");
    assert!(out.status.success(), "build-guest-image.sh failed");
    let s = String::from_utf8(out.stdout).unwrap();
    PathBuf::from(s.lines().last().expect("image path").trim())
}

fn log(t0: Instant, msg: impl AsRef<str>) {
    eprintln!(
        "[e2e-export {:>7.1}s] {}",
        t0.elapsed().as_secs_f64(),
        msg.as_ref()
    );
}

struct Home(PathBuf);

impl Home {
    fn cli(&self, cwd: &Path, args: &[&str]) -> Output {
        Command::new(env!("CARGO_BIN_EXE_clawfarm"))
            .arg("--home")
            .arg(&self.0)
            .args(args)
            .current_dir(cwd)
            .env_remove("CLAWFARM_DRIVER")
            .env("CLAWFARM_ACCEL", "tcg")
            .stdin(Stdio::null())
            .output()
            .unwrap()
    }
    fn ok(&self, cwd: &Path, args: &[&str]) -> String {
        let o = self.cli(cwd, args);
        assert!(
            o.status.success(),
            "clawfarm {args:?} failed: {}\n{}{}",
            o.status,
            String::from_utf8_lossy(&o.stdout),
            String::from_utf8_lossy(&o.stderr)
        );
        String::from_utf8_lossy(&o.stdout).into_owned()
    }
    fn ssh(&self, cwd: &Path, name: &str, cmd: &str) -> String {
        self.ok(cwd, &["ssh", name, "--", cmd]).trim().to_string()
    }
}

/// Kill the QEMUs of a test home at the end (they outlive clawfarm by design).
struct KillVms(PathBuf);
impl Drop for KillVms {
    fn drop(&mut self) {
        let _ = Command::new("pkill")
            .arg("-KILL")
            .arg("-f")
            .arg(self.0.to_string_lossy().as_ref())
            .status();
    }
}

fn contains(hay: &[u8], needle: &[u8]) -> bool {
    hay.windows(needle.len()).any(|w| w == needle)
}

fn b64(data: &[u8]) -> String {
    clawfarm::driver::qemu::seed::base64_encode(data)
}

#[test]
fn e2e_export() {
    if std::env::var("CLAWFARM_E2E").as_deref() != Ok("1") {
        eprintln!("skipped: set CLAWFARM_E2E=1 to export a real guest (several minutes)");
        return;
    }
    let t0 = Instant::now();
    let img = guest_image();
    let sha = clawfarm::util::digest::sha256_file(&img).unwrap();
    let t = tempfile::tempdir().unwrap();
    // QEMU runs as clawfarm-qemu: the home must be reachable (rfc/012-sandbox.md).
    std::fs::set_permissions(
        t.path(),
        std::os::unix::fs::PermissionsExt::from_mode(0o711),
    )
    .unwrap();
    let dir = t.path();
    let src = dir.join("src");
    std::fs::create_dir_all(src.join("claw")).unwrap();
    std::fs::write(src.join("claw/hello.txt"), "payload\n").unwrap();
    let spec = serde_json::json!({
        "schema_version": 3,
        "name": "e2e-export",
        "image": [{"name": "base", "ref": format!("file://{}", img.display()), "sha256": sha}],
        "bootstrap": {
            "id": "openclaw",
            "install_script": "#!/bin/bash\nset -e\necho install >> /var/lib/claw-order\n\
                install -d -o claw -g claw /home/claw/.openclaw/credentials\n\
                printf 'OPENAI_API_KEY=%s\\n' \"$API_KEY\" > /home/claw/.openclaw/.env\n\
                printf '%s' \"$API_KEY\" > /home/claw/.openclaw/credentials/openai\n\
                echo 'installed tool' > /opt/tool.txt\n",
            "start_script": "#!/bin/bash\necho start >> /var/lib/claw-order\n",
            "params": {"required": [{"key": "API_KEY", "label": "API key", "secret": true}]}
        },
        "provision": [{"name": "p", "script": "echo provision >> /var/lib/claw-order\n"}]
    });
    std::fs::write(src.join("clawspec.json"), spec.to_string()).unwrap();
    pack_bundle(&src, &dir.join("box.clawbox"));

    let h1 = Home(dir.join("home1"));
    let _k1 = KillVms(h1.0.clone());
    let t = Instant::now();
    h1.ok(
        dir,
        &[
            "run",
            "--name",
            "one",
            "--param",
            &format!("API_KEY={SECRET}"),
            "box.clawbox",
        ],
    );
    let ready1 = t.elapsed().as_secs_f64();
    log(
        t0,
        format!("first instance ready in {ready1:.1}s (with install)"),
    );
    assert_eq!(
        h1.ssh(dir, "one", "sudo cat /var/lib/claw-order"),
        "install\nstart\nprovision"
    );

    // 2. Export while running.
    let t = Instant::now();
    let out = h1.ok(dir, &["export", "one", "-o", "one.clawbox"]);
    let export_secs = t.elapsed().as_secs_f64();
    log(t0, format!("export in {export_secs:.1}s: {}", out.trim()));
    assert!(out.contains("the instance was started again"), "{out}");
    let ps = h1.ok(dir, &["ps"]);
    assert!(ps.contains("one"), "{ps}");

    // 3. The layer, decompressed by this test.
    let x = dir.join("x");
    std::fs::create_dir_all(&x).unwrap();
    let st = Command::new("tar")
        .arg("-xzf")
        .arg(dir.join("one.clawbox"))
        .arg("-C")
        .arg(&x)
        .status()
        .unwrap();
    assert!(st.success());
    let spec2: serde_json::Value =
        serde_json::from_slice(&std::fs::read(x.join("clawspec.json")).unwrap()).unwrap();
    assert_eq!(spec2["image"][0]["sha256"], sha.as_str());
    assert_eq!(spec2["image"][1]["ref"], "clawbox:///run.qcow2");
    assert_eq!(spec2["bootstrap"], spec["bootstrap"]);
    let layer = x.join("run.qcow2");
    let info = Command::new("qemu-img")
        .args(["info", "--output=json"])
        .arg(&layer)
        .output()
        .unwrap();
    let info: serde_json::Value = serde_json::from_slice(&info.stdout).unwrap();
    assert!(info.get("backing-filename").is_none(), "{info}");
    let raw = x.join("layer.raw");
    let st = Command::new("qemu-img")
        .args(["convert", "-f", "qcow2", "-O", "raw"])
        .arg(&layer)
        .arg(&raw)
        .status()
        .unwrap();
    assert!(st.success());
    let layer_bytes = std::fs::metadata(&layer).unwrap().len();
    let base_bytes = std::fs::metadata(&img).unwrap().len();
    log(
        t0,
        format!("layer {layer_bytes} bytes (compressed); base image {base_bytes} bytes"),
    );
    assert!(layer_bytes < base_bytes / 2);
    // Read the raw data in chunks (it is sparse and several GiB long).
    {
        use std::io::Read;
        let mut f = std::fs::File::open(&raw).unwrap();
        let needles: Vec<Vec<u8>> = {
            let mut v = vec![SECRET.as_bytes().to_vec()];
            for pad in ["", "a", "ab"] {
                let e = b64(format!("{pad}{SECRET}").as_bytes());
                let skip = pad.len() * 4 / 3 + usize::from(!pad.is_empty());
                v.push(e.as_bytes()[skip..e.len() - 4].to_vec());
            }
            v
        };
        let mut buf = vec![0u8; 16 << 20];
        let mut carry: Vec<u8> = Vec::new();
        loop {
            let n = f.read(&mut buf).unwrap();
            if n == 0 {
                break;
            }
            let mut chunk = std::mem::take(&mut carry);
            chunk.extend_from_slice(&buf[..n]);
            if chunk.iter().any(|&b| b != 0) {
                for nd in &needles {
                    assert!(!contains(&chunk, nd), "the layer holds the secret");
                }
            }
            carry = chunk[chunk.len().saturating_sub(128)..].to_vec();
        }
    }
    let _ = std::fs::remove_file(&raw);
    log(t0, "the layer's raw bytes hold no secret (plain, base64)");

    // 4. A fresh home runs the exported box; install is skipped.
    let h2 = Home(dir.join("home2"));
    let _k2 = KillVms(h2.0.clone());
    h2.ok(dir, &["import", "one.clawbox"]);
    let t = Instant::now();
    h2.ok(
        dir,
        &[
            "run",
            "--name",
            "two",
            "--param",
            &format!("API_KEY={SECRET2}"),
            "one.clawbox",
        ],
    );
    let ready2 = t.elapsed().as_secs_f64();
    log(
        t0,
        format!("instance from the exported box ready in {ready2:.1}s"),
    );
    assert_eq!(
        h2.ssh(dir, "two", "sudo cat /var/lib/claw-order"),
        "install\nstart\nprovision\nstart\nprovision",
        "install ran again"
    );
    assert_eq!(h2.ssh(dir, "two", "cat /opt/tool.txt"), "installed tool");
    assert!(
        h2.ssh(dir, "two", "sudo cat /etc/clawfarm/params.env")
            .contains(SECRET2)
    );
    let logs = h2.ok(dir, &["logs", "two"]);
    assert!(logs.contains("skipped"), "{logs}");

    // 5. A secret in an unexpected file: refused.
    h1.ssh(
        dir,
        "one",
        &format!("echo 'note: {SECRET}' > ~/notes.txt; sync"),
    );
    let o = h1.cli(dir, &["export", "one", "-o", "leak.clawbox"]);
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    );
    log(t0, format!("second export: {}", text.trim()));
    assert!(!o.status.success(), "{text}");
    assert!(text.contains("secret param API_KEY"), "{text}");
    assert!(!text.contains(SECRET));
    assert!(!dir.join("leak.clawbox").exists());
    log(
        t0,
        format!(
            "figures: ready with install {ready1:.1}s, from exported box {ready2:.1}s, export {export_secs:.1}s, layer {layer_bytes} B"
        ),
    );
}
