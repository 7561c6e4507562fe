//! The `clawfarm` binary on the fake driver (`CLAWFARM_DRIVER=fake`): exit codes, bad input
//! changes nothing, concurrent applies, `kill -9` mid-apply, and secrets never leak.

use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::time::Duration;

const SECRET: &str = "sk-test-SECRET-4c1f9e";

struct Env {
    _t: tempfile::TempDir,
    home: PathBuf,
    dir: PathBuf,
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
                "required": [{"key": "OPENAI_API_KEY", "label": "OpenAI key", "secret": true,
                              "validator": {"kind": "non_empty"}}],
                "optional": [{"key": "MODEL", "label": "Model", "secret": false,
                              "default": "gpt-4o"}]
            }
        }
    })
    .to_string()
}

fn manifest(name: &str, extra: &str) -> String {
    format!(
        "apiVersion: clawfarm/v1\nkind: Claw\nmetadata:\n  name: {name}\nspec:\n  clawbox: ../demo.clawbox\n  params:\n    OPENAI_API_KEY: {{env: TEST_OPENAI_KEY}}\n{extra}"
    )
}

fn env() -> Env {
    let t = tempfile::tempdir().unwrap();
    let home = t.path().join("home");
    let dir = t.path().join("agents");
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::write(t.path().join("demo.clawbox"), clawspec_json()).unwrap();
    for n in ["alpha", "beta"] {
        std::fs::write(dir.join(format!("{n}.yaml")), manifest(n, "")).unwrap();
    }
    Env { _t: t, home, dir }
}

impl Env {
    fn cmd(&self, args: &[&str]) -> Command {
        let mut c = Command::new(env!("CARGO_BIN_EXE_clawfarm"));
        c.args(args)
            .env("CLAWFARM_HOME", &self.home)
            .env("CLAWFARM_DRIVER", "fake")
            .env("TEST_OPENAI_KEY", SECRET)
            .env_remove("CLAWFARM_FAKE_FAIL")
            .env_remove("CLAWFARM_FAKE_DELAY_MS")
            .stdin(Stdio::null());
        c
    }
    fn run(&self, args: &[&str]) -> Output {
        self.cmd(args).output().unwrap()
    }
    fn dir(&self) -> &str {
        self.dir.to_str().unwrap()
    }
    fn claws(&self) -> Vec<String> {
        let mut v: Vec<String> = std::fs::read_dir(self.home.join("claws"))
            .map(|rd| {
                rd.flatten()
                    .map(|e| e.file_name().to_string_lossy().into_owned())
                    .collect()
            })
            .unwrap_or_default();
        v.sort();
        v
    }
}

fn text(o: &Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    )
}

fn code(o: &Output) -> i32 {
    o.status.code().unwrap_or(-1)
}

/// Every file under `dir`, except the seeds (which must carry param values into the guest).
fn grep_tree(dir: &Path, needle: &str) -> Vec<PathBuf> {
    let mut hits = Vec::new();
    let Ok(rd) = std::fs::read_dir(dir) else {
        return hits;
    };
    for e in rd.flatten() {
        let p = e.path();
        if p.is_dir() {
            hits.extend(grep_tree(&p, needle));
        } else if p.file_name().is_some_and(|n| n != "seed.img") {
            let b = std::fs::read(&p).unwrap_or_default();
            if b.windows(needle.len()).any(|w| w == needle.as_bytes()) {
                hits.push(p);
            }
        }
    }
    hits
}

#[test]
fn plan_apply_plan_exit_codes() {
    let e = env();
    let v = e.run(&["validate", "-f", e.dir()]);
    assert_eq!(code(&v), 0, "{}", text(&v));
    let p = e.run(&["plan", "-f", e.dir()]);
    assert_eq!(code(&p), 2, "{}", text(&p));
    assert!(
        text(&p).contains("Plan: 2 to create, 0 unchanged."),
        "{}",
        text(&p)
    );
    let a = e.run(&["apply", "-f", e.dir()]);
    assert_eq!(code(&a), 0, "{}", text(&a));
    assert!(
        String::from_utf8_lossy(&a.stdout).contains("2 created, 0 replaced, 0 deleted, 0 failed")
    );
    let p = e.run(&["plan", "-f", e.dir()]);
    assert_eq!(code(&p), 0, "{}", text(&p));
    let ps = e.run(&["ps", "-o", "json"]);
    let rows: serde_json::Value = serde_json::from_slice(&ps.stdout).unwrap();
    assert_eq!(rows.as_array().unwrap().len(), 2);
    assert!(
        rows.as_array()
            .unwrap()
            .iter()
            .all(|r| r["status"] == "ready")
    );
}

#[test]
fn bad_edit_reports_location_and_keeps_instances() {
    let e = env();
    assert_eq!(code(&e.run(&["apply", "-f", e.dir()])), 0);
    let before = e.claws();
    // Break one manifest (unknown field) and remove nothing else.
    std::fs::write(e.dir.join("beta.yaml"), manifest("beta", "  cpuz: 2\n")).unwrap();
    for prune in [false, true] {
        let mut args = vec!["apply", "-f", e.dir()];
        if prune {
            args.push("--prune");
        }
        let a = e.run(&args);
        assert_eq!(code(&a), 1, "{}", text(&a));
        let t = text(&a);
        assert!(t.contains("beta.yaml:9:"), "error names file and line: {t}");
        assert_eq!(
            e.claws(),
            before,
            "a bad manifest removed something (prune={prune})"
        );
    }
    // Deleting the manifest with --prune does delete (the bad file is gone, not broken).
    std::fs::remove_file(e.dir.join("beta.yaml")).unwrap();
    let a = e.run(&["apply", "--prune", "-f", e.dir()]);
    assert_eq!(code(&a), 0, "{}", text(&a));
    assert_eq!(e.claws().len(), 1);
}

#[test]
fn secret_literal_is_refused_and_nothing_changes() {
    let e = env();
    std::fs::write(
        e.dir.join("alpha.yaml"),
        "apiVersion: clawfarm/v1\nkind: Claw\nmetadata:\n  name: alpha\nspec:\n  clawbox: ../demo.clawbox\n  params:\n    OPENAI_API_KEY: sk-literal-value\n",
    )
    .unwrap();
    let a = e.run(&["apply", "-f", e.dir()]);
    assert_eq!(code(&a), 1);
    let t = text(&a);
    assert!(t.contains("alpha.yaml:8:"), "{t}");
    assert!(t.contains("secret"), "{t}");
    assert!(
        !t.contains("sk-literal-value"),
        "the refused value is echoed: {t}"
    );
    // beta was fine and was created; alpha was not.
    assert_eq!(e.claws().len(), 1);
}

#[test]
fn missing_required_param_lists_how_to_supply_it() {
    let e = env();
    let o = e
        .cmd(&["plan", "-f", e.dir()])
        .env_remove("TEST_OPENAI_KEY")
        .output()
        .unwrap();
    assert_eq!(code(&o), 1);
    let t = text(&o);
    assert!(t.contains("TEST_OPENAI_KEY is not set"), "{t}");
}

#[test]
fn secrets_never_leak_after_apply_failed_apply_and_watch() {
    let e = env();
    let mut outputs = Vec::new();
    outputs.push(e.run(&["apply", "-f", e.dir()]));
    // Change the secret: plan says which param changed, not the value.
    let p = e
        .cmd(&["plan", "-f", e.dir()])
        .env("TEST_OPENAI_KEY", format!("{SECRET}-rotated"))
        .output()
        .unwrap();
    assert!(
        text(&p).contains("param OPENAI_API_KEY changed (sensitive value)"),
        "{}",
        text(&p)
    );
    outputs.push(p);
    // A failed apply (injected driver failure) with the rotated secret.
    outputs.push(
        e.cmd(&["apply", "-f", e.dir(), "-o", "json"])
            .env("TEST_OPENAI_KEY", format!("{SECRET}-rotated"))
            .env("CLAWFARM_FAKE_FAIL", "write-seed:alpha")
            .output()
            .unwrap(),
    );
    outputs.push(e.run(&["ps"]));
    outputs.push(e.run(&["ps", "-o", "json"]));
    outputs.push(e.run(&["plan", "-f", e.dir(), "-o", "json"]));
    outputs.push(e.run(&["events"]));
    // A watch cycle, stopped with SIGTERM.
    let w = e
        .cmd(&[
            "watch",
            e.dir(),
            "--resync",
            "200ms",
            "--log-format",
            "json",
        ])
        .env("CLAWFARM_LOG", "debug")
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    std::thread::sleep(Duration::from_millis(1500));
    unsafe { libc::kill(w.id() as i32, libc::SIGTERM) };
    let wo = w.wait_with_output().unwrap();
    assert_eq!(code(&wo), 0, "watch exits 0 on SIGTERM: {}", text(&wo));
    outputs.push(wo);
    for o in &outputs {
        assert!(!text(o).contains(SECRET), "secret in output: {}", text(o));
    }
    let hits = grep_tree(&e.home, SECRET);
    assert!(hits.is_empty(), "secret found in {hits:?}");
}

#[test]
fn two_concurrent_applies_create_each_instance_once() {
    let e = env();
    let spawn = || {
        e.cmd(&["apply", "-f", e.dir()])
            .env("CLAWFARM_FAKE_DELAY_MS", "50")
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap()
    };
    let (a, b) = (spawn(), spawn());
    let (a, b) = (a.wait_with_output().unwrap(), b.wait_with_output().unwrap());
    assert_eq!(code(&a), 0, "{}", text(&a));
    assert_eq!(code(&b), 0, "{}", text(&b));
    // At most one waited (when they overlapped, which load can prevent).
    let waited = [&a, &b]
        .iter()
        .filter(|o| text(o).contains("waiting for the apply lock held by pid"))
        .count();
    assert!(waited <= 1, "{}\n---\n{}", text(&a), text(&b));
    let ev = std::fs::read_to_string(e.home.join("events.jsonl")).unwrap();
    let creates = ev
        .lines()
        .filter(|l| l.contains("\"create-disk\"") && l.contains("\"ok\""))
        .count();
    assert_eq!(creates, 2, "each instance created exactly once");
    assert_eq!(e.claws().len(), 2);
}

#[test]
fn lock_timeout_zero_fails_fast_naming_the_holder() {
    let e = env();
    let mut slow = e
        .cmd(&["apply", "-f", e.dir()])
        .env("CLAWFARM_FAKE_DELAY_MS", "300")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    std::thread::sleep(Duration::from_millis(400));
    let o = e.run(&["apply", "-f", e.dir(), "--lock-timeout", "0"]);
    slow.wait().unwrap();
    assert_eq!(code(&o), 1);
    let t = text(&o);
    assert!(
        t.contains("is held by pid") && t.contains("clawfarm"),
        "{t}"
    );
}

#[test]
fn kill_9_mid_apply_then_rerun_converges() {
    let mut interrupted = 0;
    for (i, delay_ms) in [60u64, 170, 290, 410, 530, 650].into_iter().enumerate() {
        let e = env();
        for n in ["gamma", "delta"] {
            std::fs::write(
                e.dir.join(format!("{n}.yaml")),
                manifest(n, "  state: stopped\n"),
            )
            .unwrap();
        }
        let mut c = e
            .cmd(&["apply", "-f", e.dir(), "--parallelism", "2"])
            .env("CLAWFARM_FAKE_DELAY_MS", "40")
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        std::thread::sleep(Duration::from_millis(delay_ms));
        c.kill().unwrap(); // SIGKILL
        c.wait().unwrap();
        if code(&e.run(&["plan", "-f", e.dir()])) == 2 {
            interrupted += 1;
        }
        let a = e.run(&["apply", "-f", e.dir()]);
        assert_eq!(code(&a), 0, "run {i}: {}", text(&a));
        let p = e.run(&["plan", "-f", e.dir()]);
        assert_eq!(code(&p), 0, "run {i}: not converged: {}", text(&p));
        assert_eq!(e.claws().len(), 4, "run {i}: {:?}", e.claws());
        // No temp files from torn writes are left where records live.
        for id in e.claws() {
            let d = e.home.join("claws").join(&id);
            for f in std::fs::read_dir(&d).unwrap().flatten() {
                let n = f.file_name().to_string_lossy().into_owned();
                assert!(!n.contains(".tmp."), "run {i}: leftover {n} in {id}");
            }
        }
    }
    assert!(
        interrupted >= 3,
        "only {interrupted} of 6 kills interrupted an apply"
    );
}

#[test]
fn schema_and_completions_print() {
    let e = env();
    let s = e.run(&["schema"]);
    assert_eq!(code(&s), 0);
    let v: serde_json::Value = serde_json::from_slice(&s.stdout).unwrap();
    assert!(v.to_string().contains("clawbox"));
    let c = e.run(&["completions", "bash"]);
    assert_eq!(code(&c), 0);
    assert!(String::from_utf8_lossy(&c.stdout).contains("clawfarm"));
}

#[test]
fn mistyped_path_with_prune_deletes_nothing() {
    let e = env();
    assert_eq!(code(&e.run(&["apply", "-f", e.dir()])), 0);
    let before = e.claws();
    let typo = format!("{}-typo", e.dir());
    let a = e.run(&["apply", "--prune", "-f", &typo]);
    assert_eq!(code(&a), 1, "{}", text(&a));
    assert!(text(&a).contains("not pruning"), "{}", text(&a));
    assert_eq!(e.claws(), before);
    // With one good path and one bad one, still nothing is pruned.
    let a = e.run(&["apply", "--prune", "-f", e.dir(), "-f", &typo]);
    assert_eq!(code(&a), 1);
    assert_eq!(e.claws(), before);
}

#[test]
fn apply_waits_for_the_lock_naming_the_holder() {
    let e = env();
    std::fs::create_dir_all(&e.home).unwrap();
    let held =
        clawfarm::util::lock::lock(&e.home.join("apply.lock"), "test", None, |_| {}).unwrap();
    let child = e
        .cmd(&["apply", "-f", e.dir()])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    std::thread::sleep(Duration::from_millis(700));
    assert!(e.claws().is_empty(), "apply ran while the lock was held");
    drop(held);
    let o = child.wait_with_output().unwrap();
    assert_eq!(code(&o), 0, "{}", text(&o));
    let t = text(&o);
    assert!(
        t.contains(&format!(
            "waiting for the apply lock held by pid {}",
            std::process::id()
        )),
        "{t}"
    );
    assert_eq!(e.claws().len(), 2);
}

#[test]
fn run_twice_gives_two_instances_through_the_engine() {
    let e = env();
    let bx = e.dir.parent().unwrap().join("demo.clawbox");
    let pf = e.dir.parent().unwrap().join("params.env");
    std::fs::write(
        &pf,
        format!("# secrets\nOPENAI_API_KEY='{SECRET}'\nMODEL=gpt-4o-mini\n"),
    )
    .unwrap();
    let mut ids = Vec::new();
    for _ in 0..2 {
        let o = e.run(&[
            "run",
            bx.to_str().unwrap(),
            "--name",
            "adhoc",
            "--param-file",
            pf.to_str().unwrap(),
        ]);
        assert_eq!(code(&o), 0, "{}", text(&o));
        let id = String::from_utf8_lossy(&o.stdout).trim().to_string();
        assert!(
            id.starts_with("adhoc-") && id.len() == "adhoc-".len() + 6,
            "{id}"
        );
        ids.push(id);
    }
    assert_ne!(ids[0], ids[1]);
    let ps = e.run(&["ps", "-o", "json"]);
    let rows: serde_json::Value = serde_json::from_slice(&ps.stdout).unwrap();
    let names: Vec<&str> = rows
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r["name"].as_str().unwrap())
        .collect();
    assert_eq!(names, vec!["adhoc", "adhoc"]);
    // An apply with --prune of the manifest folder leaves run instances alone.
    let a = e.run(&["apply", "--prune", "-f", e.dir()]);
    assert_eq!(code(&a), 0, "{}", text(&a));
    for id in &ids {
        assert!(e.claws().contains(id));
    }
    assert!(grep_tree(&e.home, SECRET).is_empty());
    assert!(!text(&ps).contains(SECRET));
}

#[test]
fn run_without_required_param_fails_before_any_vm_listing_how() {
    let e = env();
    let bx = e.dir.parent().unwrap().join("demo.clawbox");
    let o = e.run(&["run", bx.to_str().unwrap(), "--name", "adhoc"]);
    assert_eq!(code(&o), 1);
    let t = text(&o);
    assert!(t.contains("OPENAI_API_KEY") && t.contains("--param"), "{t}");
    assert!(e.claws().is_empty(), "a VM was created");
    let o = e.run(&[
        "run",
        bx.to_str().unwrap(),
        "--name",
        "Bad_Name",
        "--param",
        "OPENAI_API_KEY=x",
    ]);
    assert_eq!(code(&o), 1);
    assert!(text(&o).contains("--name"), "{}", text(&o));
}

#[test]
fn import_images_gc_with_a_tar_bundle() {
    let e = env();
    let root = e.dir.parent().unwrap().to_path_buf();
    // A tar.gz bundle built with the real tar and gzip: clawspec.json + claw/ payload.
    let src = root.join("src");
    std::fs::create_dir_all(src.join("claw")).unwrap();
    std::fs::write(src.join("clawspec.json"), clawspec_json()).unwrap();
    std::fs::write(src.join("claw/hello.txt"), "hi").unwrap();
    let bx = root.join("tar.clawbox");
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
    let o = e.run(&["import", bx.to_str().unwrap()]);
    assert_eq!(code(&o), 0, "{}", text(&o));
    let out = String::from_utf8_lossy(&o.stdout).to_string();
    assert!(out.contains("demo (imported)"), "{out}");
    let digest = out.split_whitespace().next().unwrap().to_string();
    let o = e.run(&["import", bx.to_str().unwrap()]);
    assert!(
        String::from_utf8_lossy(&o.stdout).contains("already imported"),
        "{}",
        text(&o)
    );
    // An instance of it; images says who uses it.
    std::fs::write(
        e.dir.join("alpha.yaml"),
        manifest("alpha", "").replace("../demo.clawbox", "../tar.clawbox"),
    )
    .unwrap();
    assert_eq!(code(&e.run(&["apply", "-f", e.dir()])), 0);
    let im = e.run(&["images", "-o", "json"]);
    let rows: serde_json::Value = serde_json::from_slice(&im.stdout).unwrap();
    let tar_row = rows
        .as_array()
        .unwrap()
        .iter()
        .find(|r| r["kind"] == "bundle" && r["digest"] == digest.as_str())
        .unwrap_or_else(|| panic!("{rows:#}"));
    let used: Vec<&str> = tar_row["used_by"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v.as_str().unwrap())
        .collect();
    assert_eq!(used.len(), 1);
    assert!(used[0].starts_with("alpha-"), "{used:?}");
    // gc keeps what is used…
    let g = e.run(&["gc"]);
    assert_eq!(code(&g), 0, "{}", text(&g));
    assert!(e.home.join("bundles").join(&digest).exists());
    // …and removes it once the instance is gone (dry run first changes nothing).
    assert_eq!(code(&e.run(&["rm", "-f", "alpha"])), 0);
    let g = e.run(&["gc", "--dry-run"]);
    assert!(
        text(&g).contains(&format!("would remove bundle {digest}")),
        "{}",
        text(&g)
    );
    assert!(e.home.join("bundles").join(&digest).exists());
    let g = e.run(&["gc"]);
    assert_eq!(code(&g), 0, "{}", text(&g));
    assert!(!e.home.join("bundles").join(&digest).exists());
}

#[test]
fn second_watch_on_the_same_home_refuses_naming_the_first() {
    let e = env();
    let first = e
        .cmd(&["watch", e.dir(), "--resync", "1s"])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    // Wait until the first watch has done its initial pass (it holds the lock by then).
    let t = std::time::Instant::now();
    while e.claws().len() < 2 {
        assert!(
            t.elapsed() < Duration::from_secs(20),
            "first watch made no progress"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    let second = e.run(&["watch", e.dir()]);
    unsafe { libc::kill(first.id() as i32, libc::SIGTERM) };
    let out = first.wait_with_output().unwrap();
    assert_eq!(code(&out), 0);
    assert_eq!(code(&second), 1);
    let t = text(&second);
    assert!(
        t.contains("another clawfarm apply or watch is running"),
        "{t}"
    );
    assert!(t.contains("clawfarm watch"), "names the holder: {t}");
}

/// Output into a closed pipe (`clawfarm events | head -1`) ends the verb as `ls | head`
/// does: killed by SIGPIPE, nothing on stderr, never a panic (exit 101).
#[test]
fn output_into_a_closed_pipe_ends_quietly() {
    use std::os::unix::process::ExitStatusExt;
    let e = env();
    assert!(e.run(&["apply", "-f", e.dir()]).status.success());
    for args in [
        vec!["events"],
        vec!["ps"],
        vec!["ps", "-o", "json"],
        vec!["plan", "-f", e.dir()],
        vec!["images"],
        vec!["schema"],
        vec!["completions", "bash"],
    ] {
        let mut child = e
            .cmd(&args)
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        drop(child.stdout.take()); // the reader is gone before anything is written
        let out = child.wait_with_output().unwrap();
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(
            out.status.signal(),
            Some(libc::SIGPIPE),
            "{args:?}: {:?} {stderr}",
            out.status
        );
        assert!(stderr.is_empty(), "{args:?} printed: {stderr}");
    }
}

/// A hand-edited record with non-ASCII ids and digests is shown, planned and listed without a
/// panic (ids are clipped by characters, never by bytes).
#[test]
fn hand_edited_non_ascii_record_never_panics() {
    let e = env();
    assert!(e.run(&["apply", "-f", e.dir()]).status.success());
    let alpha = e
        .claws()
        .into_iter()
        .find(|c| c.starts_with("alpha"))
        .unwrap();
    let path = e.home.join("claws").join(&alpha).join("record.json");
    let mut r: serde_json::Value = serde_json::from_slice(&std::fs::read(&path).unwrap()).unwrap();
    r["build"]["bundle"] = serde_json::json!("é".repeat(40));
    r["name"] = serde_json::json!("alphaé");
    std::fs::write(&path, serde_json::to_vec(&r).unwrap()).unwrap();
    // A second, foreign record whose folder and id are non-ASCII.
    let odd = e.home.join("claws").join("éééééé-ééé");
    std::fs::create_dir_all(&odd).unwrap();
    r["clawid"] = serde_json::json!("éééééé-ééé");
    r["name"] = serde_json::json!("éééééé");
    std::fs::write(odd.join("record.json"), serde_json::to_vec(&r).unwrap()).unwrap();
    for args in [
        vec!["ps"],
        vec!["ps", "-o", "json"],
        vec!["plan", "-f", e.dir()],
        vec!["plan", "-f", e.dir(), "--prune"],
        vec!["images"],
        vec!["events"],
        vec!["logs", "éééééé"],
        vec!["stop", "éééééé"],
    ] {
        let o = e.run(&args);
        let t = text(&o);
        assert_ne!(code(&o), 101, "{args:?} panicked: {t}");
        assert!(!t.contains("panicked"), "{args:?}: {t}");
    }
    let ps = text(&e.run(&["ps"]));
    assert!(ps.contains("éééééé-ééé") && ps.contains("alphaé"), "{ps}");
}

/// Each way a careless edit or a crashed editor breaks a manifest. None of them may read as
/// "delete": only removing the file does.
fn bad_edit_shapes() -> Vec<(&'static str, Vec<u8>)> {
    let json_ok = r#"{"apiVersion":"clawfarm/v1","kind":"Claw","metadata":{"name":"alpha"},"spec":{"clawbox":"../demo.clawbox","params":{"OPENAI_API_KEY":{"env":"TEST_OPENAI_KEY"}}}}"#;
    vec![
        ("json without its final brace", json_ok.as_bytes()[..json_ok.len() - 1].to_vec()),
        ("json missing one comma", json_ok.replacen(",\"kind\"", " \"kind\"", 1).into_bytes()),
        (
            "name through an alias, with a bad field",
            b"apiVersion: clawfarm/v1\nkind: Claw\nx: &n alpha\nmetadata:\n  name: *n\nspec:\n  clawbox: ../demo.clawbox\n  cpuz: 1\n".to_vec(),
        ),
        (
            "quoted keys, with a bad field",
            b"\"apiVersion\": clawfarm/v1\n\"kind\": Claw\n\"metadata\": {\"name\": \"alpha\"}\n\"spec\": {\"clawbox\": ../demo.clawbox, \"cpuz\": 1}\n".to_vec(),
        ),
        (
            "folded scalar name",
            b"apiVersion: clawfarm/v1\nkind: Claw\nmetadata:\n  name: >-\n    alpha\nspec:\n  clawbox: ../demo.clawbox\n  cpus: many\n".to_vec(),
        ),
        ("emptied (zero bytes)", Vec::new()),
        ("only a comment", b"# TODO\n".to_vec()),
        ("only a document marker", b"---\n".to_vec()),
        ("truncated mid-line", manifest("alpha", "").as_bytes()[..40].to_vec()),
        ("invalid UTF-8", b"apiVersion: clawfarm/v1\nkind: \xff\xfe\n".to_vec()),
        ("a missing secret env var", manifest("alpha", "").replace("TEST_OPENAI_KEY", "NOT_SET_ANYWHERE").into_bytes()),
    ]
}

#[test]
fn every_bad_edit_shape_keeps_the_vm_under_apply_prune() {
    for (shape, bytes) in bad_edit_shapes() {
        let e = env();
        std::fs::remove_file(e.dir.join("alpha.yaml")).unwrap();
        let file = e.dir.join("alpha.json");
        let good = manifest("alpha", "");
        std::fs::write(&file, &good).unwrap();
        assert_eq!(
            code(&e.run(&["apply", "--prune", "-f", e.dir()])),
            0,
            "{shape}"
        );
        let before = e.claws();
        assert_eq!(before.len(), 2, "{shape}");
        std::fs::write(&file, &bytes).unwrap();
        let plan = e.run(&["plan", "--prune", "-f", e.dir()]);
        assert!(
            !text(&plan).contains("manifest removed"),
            "{shape}: {}",
            text(&plan)
        );
        // The plan says the instance is left alone, and why; never "all up to date".
        let out = String::from_utf8_lossy(&plan.stdout);
        assert!(
            out.contains("No changes. 1 instance up to date. 1 left alone: alpha (manifest file invalid or unreadable)."),
            "{shape}: {out}"
        );
        let a = e.run(&["apply", "--prune", "-f", e.dir()]);
        assert_ne!(code(&a), 0, "{shape}: a bad file is an error: {}", text(&a));
        assert!(
            text(&a).contains("alpha.json"),
            "{shape}: names the file: {}",
            text(&a)
        );
        assert_eq!(e.claws(), before, "{shape}: {}", text(&a));
        let ps = text(&e.run(&["ps"]));
        assert!(
            ps.lines()
                .any(|l| l.contains("alpha") && l.contains("ready")),
            "{shape}: {ps}"
        );
    }
    // A FIFO in place of the file (an editor's socket, a hostile swap) does not hang, is an
    // error, and protects too.
    let e = env();
    assert_eq!(code(&e.run(&["apply", "--prune", "-f", e.dir()])), 0);
    let before = e.claws();
    std::fs::remove_file(e.dir.join("alpha.yaml")).unwrap();
    let fifo = std::ffi::CString::new(e.dir.join("alpha.yaml").to_str().unwrap()).unwrap();
    assert_eq!(unsafe { libc::mkfifo(fifo.as_ptr(), 0o644) }, 0);
    let a = e.run(&["apply", "--prune", "-f", e.dir()]);
    assert_ne!(code(&a), 0, "{}", text(&a));
    assert!(text(&a).contains("not a regular file"), "{}", text(&a));
    assert_eq!(e.claws(), before);
    // Deleting the file is the one way to say "delete".
    std::fs::remove_file(e.dir.join("alpha.yaml")).unwrap();
    assert_eq!(code(&e.run(&["apply", "--prune", "-f", e.dir()])), 0);
    assert_eq!(e.claws().len(), 1);
}

#[test]
fn every_bad_edit_shape_keeps_the_vm_under_watch_prune() {
    let e = env();
    let mut w = e
        .cmd(&[
            "watch",
            e.dir(),
            "--prune",
            "--debounce",
            "50ms",
            "--resync",
            "500ms",
        ])
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(e.dir.with_file_name("watch.log")).unwrap())
        .spawn()
        .unwrap();
    let wait_for = |want: usize| {
        for _ in 0..100 {
            if e.claws().len() == want {
                return true;
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        false
    };
    assert!(wait_for(2), "watch created both: {:?}", e.claws());
    let before = e.claws();
    for (shape, bytes) in bad_edit_shapes() {
        std::fs::write(e.dir.join("alpha.yaml"), &bytes).unwrap();
        std::thread::sleep(Duration::from_millis(1500)); // several passes
        assert_eq!(e.claws(), before, "{shape}");
    }
    std::fs::remove_file(e.dir.join("alpha.yaml")).unwrap();
    let gone = wait_for(1);
    let _ = w.kill();
    let _ = w.wait();
    assert!(
        gone,
        "deleting the file prunes under watch: {:?}",
        e.claws()
    );
    // The log is a file, not a terminal: it names the bad file and holds no colour codes.
    let log = std::fs::read_to_string(e.dir.with_file_name("watch.log")).unwrap();
    assert!(log.contains("alpha.yaml"), "{log}");
    assert!(
        !log.contains('\x1b'),
        "colour codes in a non-terminal log: {log}"
    );
}

/// A truncated record and a record from a future version: the instance stays visible
/// (`unknown`), plan/apply leave it alone and say so (exit 1, no second VM), and `stop` and
/// `rm -f` still act on it, found by its folder.
#[test]
fn unreadable_records_are_visible_left_alone_and_still_stoppable() {
    let e = env();
    assert_eq!(code(&e.run(&["apply", "-f", e.dir()])), 0);
    let claws = e.claws();
    let rec = |c: &str| e.home.join("claws").join(c).join("record.json");
    let alpha = claws
        .iter()
        .find(|c| c.starts_with("alpha"))
        .unwrap()
        .clone();
    let beta = claws
        .iter()
        .find(|c| c.starts_with("beta"))
        .unwrap()
        .clone();
    let a = std::fs::read(rec(&alpha)).unwrap();
    std::fs::write(rec(&alpha), &a[..a.len() / 2]).unwrap();
    let mut b: serde_json::Value =
        serde_json::from_slice(&std::fs::read(rec(&beta)).unwrap()).unwrap();
    b["version"] = serde_json::json!(99);
    std::fs::write(rec(&beta), serde_json::to_vec(&b).unwrap()).unwrap();

    let ps = text(&e.run(&["ps"]));
    for c in [&alpha, &beta] {
        assert!(
            ps.lines()
                .any(|l| l.starts_with(c.as_str()) && l.contains("unknown")),
            "{ps}"
        );
    }
    let json: serde_json::Value =
        serde_json::from_slice(&e.run(&["ps", "-o", "json"]).stdout).unwrap();
    assert_eq!(json.as_array().unwrap().len(), 2, "{json}");
    for args in [
        vec!["plan", "-f", e.dir(), "--prune"],
        vec!["apply", "-f", e.dir(), "--prune"],
    ] {
        let o = e.run(&args);
        assert_eq!(code(&o), 1, "{args:?}: {}", text(&o));
        assert!(
            text(&o).contains(&format!("instance {alpha} is left alone")),
            "{}",
            text(&o)
        );
        assert_eq!(e.claws(), claws, "no second VM, nothing removed");
    }
    // The bytes of the unreadable records are never overwritten.
    assert_eq!(std::fs::read(rec(&alpha)).unwrap(), &a[..a.len() / 2]);

    let o = e.run(&["start", "alpha"]);
    assert_ne!(code(&o), 0);
    assert!(text(&o).contains("left alone"), "{}", text(&o));
    let o = e.run(&["stop", "alpha"]);
    assert_eq!(code(&o), 0, "{}", text(&o));
    assert!(
        !text(&o).contains("not running"),
        "the VM was running: {}",
        text(&o)
    );
    let o = e.run(&["stop", "alpha"]);
    assert!(text(&o).contains("not running"), "{}", text(&o));
    assert_eq!(std::fs::read(rec(&alpha)).unwrap(), &a[..a.len() / 2]);
    let o = e.run(&["rm", "beta"]);
    assert_ne!(code(&o), 0, "rm without -f refuses: {}", text(&o));
    let o = e.run(&["rm", "-f", "beta"]);
    assert_eq!(code(&o), 0, "{}", text(&o));
    assert_eq!(e.claws(), vec![alpha.clone()]);
    let o = e.run(&["logs", "alpha"]);
    assert_ne!(code(&o), 101, "{}", text(&o));
}

/// Host hygiene: a shared or foreign `--home` is refused, never chmodded; read-only verbs
/// create nothing; a rejected `--param` never echoes its value; `run --cpus` has the
/// manifest's bounds.
#[test]
fn home_params_and_bounds_are_checked_without_side_effects() {
    use std::os::unix::fs::PermissionsExt;
    let e = env();
    // A world-writable sticky folder (like /tmp) as the home: refused, mode unchanged.
    let shared = e.dir.parent().unwrap().join("shared");
    std::fs::create_dir(&shared).unwrap();
    std::fs::set_permissions(&shared, std::fs::Permissions::from_mode(0o1777)).unwrap();
    let o = e
        .cmd(&["apply", "-f", e.dir()])
        .env("CLAWFARM_HOME", &shared)
        .output()
        .unwrap();
    assert_ne!(code(&o), 0, "{}", text(&o));
    assert!(
        text(&o).contains("writable by group or others"),
        "{}",
        text(&o)
    );
    let mode = std::fs::metadata(&shared).unwrap().permissions().mode() & 0o7777;
    assert_eq!(mode, 0o1777, "the shared folder was chmodded");
    assert_eq!(std::fs::read_dir(&shared).unwrap().count(), 0);

    // validate and plan on a home that does not exist leave it absent.
    assert!(!e.home.exists());
    for args in [vec!["validate", e.dir()], vec!["plan", "-f", e.dir()]] {
        let o = e.run(&args);
        assert_ne!(code(&o), 1, "{args:?}: {}", text(&o));
        assert!(!e.home.exists(), "{args:?} created the home");
    }

    // clap never sees the value of --param, so its errors cannot echo it.
    for bad in [
        format!("bad key={SECRET}"),
        SECRET.to_string(),
        format!("1X={SECRET}"),
    ] {
        let o = e.run(&["run", "../demo.clawbox", "--name", "x", "--param", &bad]);
        assert_ne!(code(&o), 0);
        assert!(text(&o).contains("--param number 1"), "{}", text(&o));
        assert!(
            !text(&o).contains(SECRET),
            "echoed the secret: {}",
            text(&o)
        );
    }
    for cpus in ["0", "65", "4294967295"] {
        let o = e.run(&["run", "../demo.clawbox", "--name", "x", "--cpus", cpus]);
        assert_eq!(code(&o), 2, "--cpus {cpus}: {}", text(&o));
    }
    assert!(!e.home.exists(), "a refused run created the home");
}

/// Checkpoint, list, restore and suspend/resume on the fake driver: what each verb prints,
/// what `ps` says, and that bad input (bad or existing tag, unknown tag, stopped VM)
/// changes nothing.
#[test]
fn checkpoint_restore_suspend_verbs() {
    let e = env();
    let a = e.run(&["apply", "-f", e.dir()]);
    assert_eq!(code(&a), 0, "{}", text(&a));
    let c = e.run(&["checkpoint", "alpha", "--tag", "good"]);
    assert_eq!(code(&c), 0, "{}", text(&c));
    assert!(text(&c).contains("checkpoint good saved"), "{}", text(&c));
    // A default tag is the time.
    let c = e.run(&["checkpoint", "alpha"]);
    assert_eq!(code(&c), 0, "{}", text(&c));
    let list = e.run(&["checkpoints", "alpha", "--json"]);
    let v: serde_json::Value = serde_json::from_slice(&list.stdout).unwrap();
    assert_eq!(v.as_array().unwrap().len(), 2, "{v}");
    assert_eq!(v[0]["tag"], "good");
    let table = text(&e.run(&["checkpoints", "alpha"]));
    assert!(table.contains("TAG") && table.contains("good"), "{table}");

    for (args, want) in [
        (
            vec!["checkpoint", "alpha", "--tag", "good"],
            "already has a checkpoint good",
        ),
        (
            vec!["checkpoint", "alpha", "--tag", "a/b"],
            "must be 1-64 characters",
        ),
        (
            vec!["checkpoint", "alpha", "--tag", ""],
            "must be 1-64 characters",
        ),
        (
            vec!["checkpoint", "alpha", "--tag", "clawfarm-x"],
            "reserved",
        ),
        (vec!["checkpoint", "alpha", "--tag", "123"], "all digits"),
        (
            vec!["restore", "alpha", "nope"],
            "has no checkpoint \"nope\"",
        ),
        (vec!["restore", "nobody", "good"], "nobody"),
        (
            vec!["volume", "export", "alpha", "data", "/tmp/x"],
            "no volume \"data\"",
        ),
    ] {
        let o = e.run(&args);
        assert_eq!(code(&o), 1, "{args:?}: {}", text(&o));
        assert!(text(&o).contains(want), "{args:?}: {}", text(&o));
    }
    let v2: serde_json::Value =
        serde_json::from_slice(&e.run(&["checkpoints", "alpha", "--json"]).stdout).unwrap();
    assert_eq!(v2, v, "bad input changed the checkpoints");

    let r = e.run(&["restore", "alpha", "good"]);
    assert_eq!(code(&r), 0, "{}", text(&r));
    assert!(
        text(&r).contains("restored to good and ready"),
        "{}",
        text(&r)
    );

    let s = e.run(&["suspend", "alpha"]);
    assert_eq!(code(&s), 0, "{}", text(&s));
    assert!(text(&s).contains("suspended"), "{}", text(&s));
    let ps: serde_json::Value =
        serde_json::from_slice(&e.run(&["ps", "-o", "json"]).stdout).unwrap();
    let row = |name: &str| {
        ps.as_array()
            .unwrap()
            .iter()
            .find(|r| r["name"] == name)
            .cloned()
            .unwrap()
    };
    assert_eq!(row("alpha")["status"], "suspended");
    assert_eq!(row("beta")["status"], "ready");
    // Suspending again is fine; a checkpoint of a suspended VM is refused.
    assert_eq!(code(&e.run(&["suspend", "alpha"])), 0);
    let c = e.run(&["checkpoint", "alpha", "--tag", "later"]);
    assert_eq!(code(&c), 1);
    assert!(text(&c).contains("not running"), "{}", text(&c));
    // start resumes; the reconcile would too.
    let st = e.run(&["start", "alpha"]);
    assert_eq!(code(&st), 0, "{}", text(&st));
    assert_all_ready(&e);
    let log = std::fs::read_to_string(
        std::fs::read_dir(e.home.join("claws"))
            .unwrap()
            .flatten()
            .find(|d| d.file_name().to_string_lossy().starts_with("alpha"))
            .unwrap()
            .path()
            .join("fake-serial.log"),
    )
    .unwrap();
    assert!(log.contains("resumed"), "{log}");
    let ev = std::fs::read_to_string(e.home.join("events.jsonl")).unwrap_or_default();
    for verb in ["checkpoint", "restore", "suspend"] {
        assert!(ev.contains(verb), "no {verb} event in {ev}");
    }
}

/// A suspended instance whose manifest says running is resumed by apply.
#[test]
fn apply_resumes_a_suspended_instance() {
    let e = env();
    assert_eq!(code(&e.run(&["apply", "-f", e.dir()])), 0);
    assert_eq!(code(&e.run(&["suspend", "beta"])), 0);
    let a = e.run(&["apply", "-f", e.dir()]);
    assert_eq!(code(&a), 0, "{}", text(&a));
    assert_all_ready(&e);
}

/// `state: suspended` in a manifest: apply boots, waits and suspends; a second apply has
/// nothing to do; `running` resumes it; back to `suspended` suspends it again; `plan` says
/// so at each step.
#[test]
fn manifest_state_suspended_converges() {
    let e = env();
    let status = |name: &str| -> String {
        let ps: serde_json::Value =
            serde_json::from_slice(&e.run(&["ps", "-o", "json"]).stdout).unwrap();
        ps.as_array()
            .unwrap()
            .iter()
            .find(|i| i["name"] == name)
            .map(|i| i["status"].as_str().unwrap_or_default().to_string())
            .unwrap_or_default()
    };
    let write = |state: &str| {
        std::fs::write(
            e.dir.join("beta.yaml"),
            manifest("beta", &format!("  state: {state}\n")),
        )
        .unwrap()
    };
    write("suspended");
    let a = e.run(&["apply", "-f", e.dir()]);
    assert_eq!(code(&a), 0, "{}", text(&a));
    assert_eq!(status("beta"), "suspended");
    assert_eq!(status("alpha"), "ready");
    let p = e.run(&["plan", "-f", e.dir()]);
    assert_eq!(code(&p), 0, "steady: {}", text(&p));

    write("running");
    let p = e.run(&["plan", "-f", e.dir()]);
    assert!(
        text(&p).contains("suspended: start resumes it"),
        "{}",
        text(&p)
    );
    assert_eq!(code(&e.run(&["apply", "-f", e.dir()])), 0);
    assert_eq!(status("beta"), "ready");

    write("suspended");
    let p = e.run(&["plan", "-f", e.dir()]);
    assert!(text(&p).contains("desired state suspended"), "{}", text(&p));
    assert_eq!(code(&e.run(&["apply", "-f", e.dir()])), 0);
    assert_eq!(status("beta"), "suspended");

    // A bad value is refused at its line, and the instance stays as it is.
    write("paused");
    let a = e.run(&["apply", "-f", e.dir()]);
    assert_eq!(code(&a), 1, "{}", text(&a));
    assert!(
        text(&a).contains(r#"spec.state: must be "running", "stopped" or "suspended""#),
        "{}",
        text(&a)
    );
    assert_eq!(status("beta"), "suspended");
}

/// `suspend --all` (host shutdown): every running instance is suspended, a second run has
/// nothing to do, and the next apply resumes them all.
#[test]
fn suspend_all_then_apply_resumes_everything() {
    let e = env();
    assert_eq!(code(&e.run(&["apply", "-f", e.dir()])), 0);
    let o = e.run(&["suspend", "--all"]);
    assert_eq!(code(&o), 0, "{}", text(&o));
    let out = String::from_utf8_lossy(&o.stdout);
    assert_eq!(out.matches("suspended in").count(), 2, "{out}");
    let ps: serde_json::Value =
        serde_json::from_slice(&e.run(&["ps", "-o", "json"]).stdout).unwrap();
    assert!(
        ps.as_array()
            .unwrap()
            .iter()
            .all(|r| r["status"] == "suspended"),
        "{ps}"
    );
    let o = e.run(&["suspend", "--all"]);
    assert_eq!(code(&o), 0, "{}", text(&o));
    assert!(text(&o).contains("no running instance"), "{}", text(&o));
    // An id and --all together, or neither, is a usage error.
    assert_eq!(code(&e.run(&["suspend", "--all", "alpha"])), 2);
    assert_eq!(code(&e.run(&["suspend"])), 2);
    let a = e.run(&["apply", "-f", e.dir()]);
    assert_eq!(code(&a), 0, "{}", text(&a));
    assert_all_ready(&e);
}

/// Every instance in `ps` is ready.
fn assert_all_ready(e: &Env) {
    let ps: serde_json::Value =
        serde_json::from_slice(&e.run(&["ps", "-o", "json"]).stdout).unwrap();
    let rows = ps.as_array().unwrap();
    assert!(
        !rows.is_empty() && rows.iter().all(|r| r["status"] == "ready"),
        "{ps}"
    );
}

/// Every file and folder under `dir` with its modification time and size.
fn tree_stamp(dir: &Path) -> Vec<(PathBuf, std::time::SystemTime, u64)> {
    let mut out = Vec::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        let Ok(rd) = std::fs::read_dir(&d) else {
            continue;
        };
        for e in rd.flatten() {
            let m = e.metadata().unwrap();
            out.push((e.path(), m.modified().unwrap(), m.len()));
            if m.is_dir() {
                stack.push(e.path());
            }
        }
    }
    out.sort();
    out
}

#[test]
fn read_only_verbs_write_nothing_into_an_existing_home() {
    let e = env();
    assert_eq!(code(&e.run(&["apply", "-f", e.dir()])), 0);
    // The bundle changes on disk (a rebuild, a touch): a read-only verb re-reads it but must
    // not refresh the home's caches with what it learnt.
    let bx = e.dir.parent().unwrap().join("demo.clawbox");
    let later = std::time::SystemTime::now() + Duration::from_secs(5);
    std::fs::File::options()
        .write(true)
        .open(&bx)
        .unwrap()
        .set_modified(later)
        .unwrap();
    let before = tree_stamp(&e.home);
    for args in [
        vec!["validate", "-f", e.dir()],
        vec!["plan", "-f", e.dir()],
        vec!["plan", "--prune", "-o", "json", "-f", e.dir()],
        vec!["ps"],
        vec!["ps", "-o", "json"],
        vec!["images"],
        vec!["events"],
        vec!["checkpoints", "alpha"],
    ] {
        let o = e.run(&args);
        assert_ne!(code(&o), 101, "{args:?}: {}", text(&o));
        assert_eq!(tree_stamp(&e.home), before, "{args:?} wrote into the home");
    }
}

/// `validate` and `plan` of a manifest whose bundle is a URL: the bundle is fetched to be
/// checked, but into a scratch folder removed at exit, never into the home (a fresh home is
/// not even created).
#[test]
fn checking_a_url_bundle_writes_nothing_into_the_home() {
    let e = env();
    let bx = e.dir.parent().unwrap().join("demo.clawbox");
    let sum = clawfarm::util::digest::sha256_hex(&std::fs::read(&bx).unwrap());
    let m = manifest("alpha", "").replace(
        "clawbox: ../demo.clawbox",
        &format!(
            "clawbox: {{url: \"file://{}\", sha256: {sum}}}",
            bx.display()
        ),
    );
    std::fs::write(e.dir.join("alpha.yaml"), m).unwrap();
    let tmp = e.dir.with_file_name("tmp");
    std::fs::create_dir(&tmp).unwrap();
    for args in [vec!["validate", "-f", e.dir()], vec!["plan", "-f", e.dir()]] {
        let o = e.cmd(&args).env("TMPDIR", &tmp).output().unwrap();
        assert_ne!(code(&o), 1, "{args:?}: {}", text(&o));
        assert!(!e.home.exists(), "{args:?} created the home");
        let left: Vec<_> = std::fs::read_dir(&tmp).unwrap().flatten().collect();
        assert!(left.is_empty(), "{args:?} left scratch files: {left:?}");
    }
    // apply stores it in the home, as before.
    assert_eq!(code(&e.run(&["apply", "-f", e.dir()])), 0);
    assert!(e.home.join("blobs").join(&sum).is_file());
}
