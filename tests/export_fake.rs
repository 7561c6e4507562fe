//! `clawfarm export` on the fake driver: the bundle it writes, bad input that changes
//! nothing, and the secret scan's refusal (which `--force` does not override). The real
//! scrub and layer are tested under TCG in `tests/e2e_qemu.rs` (`e2e_export`).

mod net_support;

use net_support::pack_bundle;
use std::io::Read;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};

const SECRET: &str = "sk-export-SECRET-77aa01";

struct Env {
    t: tempfile::TempDir,
    home: PathBuf,
}

fn clawspec_json() -> String {
    serde_json::json!({
        "schema_version": 3,
        "name": "demo",
        "image": [{"name": "base", "ref": "https://example.invalid/base.qcow2",
                   "sha256": "a".repeat(64)}],
        "bootstrap": {
            "id": "openclaw",
            "install_script": "true",
            "start_script": "true",
            "params": {
                "required": [{"key": "OPENAI_API_KEY", "label": "OpenAI key", "secret": true}],
                "optional": [{"key": "MODEL", "label": "Model", "secret": false,
                              "default": "gpt-4o"}]
            }
        }
    })
    .to_string()
}

fn env() -> Env {
    let t = tempfile::tempdir().unwrap();
    let home = t.path().join("home");
    let src = t.path().join("src");
    std::fs::create_dir_all(src.join("claw")).unwrap();
    std::fs::write(src.join("clawspec.json"), clawspec_json()).unwrap();
    std::fs::write(src.join("claw/hello.txt"), "payload\n").unwrap();
    pack_bundle(&src, &t.path().join("demo.clawbox"));
    Env { t, home }
}

impl Env {
    fn run(&self, args: &[&str]) -> Output {
        Command::new(env!("CARGO_BIN_EXE_clawfarm"))
            .args(args)
            .current_dir(self.t.path())
            .env("CLAWFARM_HOME", &self.home)
            .env("CLAWFARM_DRIVER", "fake")
            .env_remove("CLAWFARM_FAKE_FAIL")
            .env_remove("CLAWFARM_FAKE_DELAY_MS")
            .stdin(Stdio::null())
            .output()
            .unwrap()
    }
    fn ok(&self, args: &[&str]) -> String {
        let o = self.run(args);
        assert!(o.status.success(), "{args:?}: {}", text(&o));
        text(&o)
    }
    fn path(&self, name: &str) -> PathBuf {
        self.t.path().join(name)
    }
    fn claw_dir(&self, name: &str) -> PathBuf {
        std::fs::read_dir(self.home.join("claws"))
            .unwrap()
            .flatten()
            .map(|e| e.path())
            .find(|p| {
                p.file_name()
                    .unwrap()
                    .to_string_lossy()
                    .starts_with(&format!("{name}-"))
            })
            .unwrap()
    }
    fn start_one(&self, name: &str) {
        self.ok(&[
            "run",
            "--name",
            name,
            "--param",
            &format!("OPENAI_API_KEY={SECRET}"),
            "demo.clawbox",
        ]);
    }
}

fn text(o: &Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    )
}

/// The entries of a tar.gz: name → bytes.
fn entries(p: &Path) -> Vec<(String, Vec<u8>)> {
    let f = std::fs::File::open(p).unwrap();
    let mut a = tar::Archive::new(flate2::read::GzDecoder::new(f));
    let mut out = Vec::new();
    for e in a.entries().unwrap() {
        let mut e = e.unwrap();
        let name = e.path().unwrap().to_string_lossy().into_owned();
        let mut b = Vec::new();
        e.read_to_end(&mut b).unwrap();
        out.push((name, b));
    }
    out
}

fn leftovers(dir: &Path) -> Vec<String> {
    std::fs::read_dir(dir)
        .unwrap()
        .flatten()
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .filter(|n| n.contains(".tmp-") || n.ends_with(".clawbox") && n != "demo.clawbox")
        .collect()
}

#[test]
fn export_writes_a_box_with_the_same_clawspec_and_a_run_layer_and_keeps_it_running() {
    let e = env();
    e.start_one("a");
    let out = e.ok(&["export", "a", "-o", "a.clawbox"]);
    assert!(out.contains("exported to"), "{out}");
    assert!(
        out.contains("secret params scanned: OPENAI_API_KEY"),
        "{out}"
    );
    assert!(!out.contains(SECRET));
    let ents = entries(&e.path("a.clawbox"));
    let names: Vec<&str> = ents.iter().map(|(n, _)| n.as_str()).collect();
    assert_eq!(names[..2], ["clawspec.json", "run.qcow2"], "{names:?}");
    assert!(names.iter().any(|n| n.ends_with("hello.txt")), "{names:?}");
    let spec: serde_json::Value = serde_json::from_slice(&ents[0].1).unwrap();
    let orig: serde_json::Value = serde_json::from_str(&clawspec_json()).unwrap();
    assert_eq!(spec["bootstrap"], orig["bootstrap"]);
    assert_eq!(spec["image"][0], orig["image"][0]);
    assert_eq!(spec["image"][1]["name"], "run");
    assert_eq!(spec["image"][1]["ref"], "clawbox:///run.qcow2");
    assert_eq!(
        spec["image"][1]["sha256"],
        clawfarm::util::digest::sha256_hex(&ents[1].1)
    );
    for (n, b) in &ents {
        assert!(
            !b.windows(SECRET.len()).any(|w| w == SECRET.as_bytes()),
            "{n} holds the secret"
        );
    }
    // Running before, running after (it was stopped and started again).
    let ps = e.ok(&["ps"]);
    assert!(ps.contains("ready") || ps.contains("booting"), "{ps}");
    // The box imports again (on this host) and runs a new instance.
    e.ok(&["import", "a.clawbox"]);
    e.ok(&[
        "run",
        "--name",
        "b",
        "--param",
        "OPENAI_API_KEY=another-key-123",
        "a.clawbox",
    ]);
}

#[test]
fn export_refuses_bad_input_and_changes_nothing() {
    let e = env();
    let o = e.run(&["export", "nope", "-o", "x.clawbox"]);
    assert!(!o.status.success());
    assert!(text(&o).contains("nope"), "{}", text(&o));
    e.start_one("a");
    std::fs::write(e.path("exists.clawbox"), b"old").unwrap();
    let o = e.run(&["export", "a", "-o", "exists.clawbox"]);
    assert!(!o.status.success());
    assert!(text(&o).contains("already exists"), "{}", text(&o));
    assert_eq!(std::fs::read(e.path("exists.clawbox")).unwrap(), b"old");
    let o = e.run(&["export", "a", "-o", "no-such-dir/x.clawbox"]);
    assert!(text(&o).contains("does not exist"), "{}", text(&o));
    // --force replaces it.
    e.ok(&["export", "a", "-o", "exists.clawbox", "--force"]);
    assert_ne!(std::fs::read(e.path("exists.clawbox")).unwrap(), b"old");
    assert!(leftovers(e.t.path()).iter().all(|n| n == "exists.clawbox"));
}

#[test]
fn a_secret_left_in_the_layer_is_refused_naming_the_key_not_the_value() {
    let e = env();
    e.start_one("a");
    // The "guest" wrote the key into a file of its disk, base64-encoded.
    let disk = e.claw_dir("a").join("disk.fake");
    let mut d = std::fs::read(&disk).unwrap();
    d.extend_from_slice(b"\nconfig: ");
    d.extend_from_slice(clawfarm::driver::qemu::seed::base64_encode(SECRET.as_bytes()).as_bytes());
    std::fs::write(&disk, d).unwrap();
    for force in [false, true] {
        let mut args = vec!["export", "a", "-o", "leak.clawbox"];
        if force {
            args.push("--force");
        }
        let o = e.run(&args);
        let t = text(&o);
        assert!(!o.status.success(), "{t}");
        assert!(t.contains("secret param OPENAI_API_KEY"), "{t}");
        assert!(t.contains("base64"), "{t}");
        assert!(t.contains("nothing was written"), "{t}");
        assert!(!t.contains(SECRET), "{t}");
        assert!(!e.path("leak.clawbox").exists());
        assert!(
            leftovers(e.t.path()).is_empty(),
            "{:?}",
            leftovers(e.t.path())
        );
        assert!(
            std::fs::read_dir(e.home.join("tmp"))
                .map(|r| r.count())
                .unwrap_or(0)
                == 0,
            "work folder left behind"
        );
    }
    // The plain value too.
    std::fs::write(&disk, format!("x{SECRET}y")).unwrap();
    let t = text(&e.run(&["export", "a", "-o", "leak.clawbox"]));
    assert!(t.contains("secret param OPENAI_API_KEY (plain"), "{t}");
}
