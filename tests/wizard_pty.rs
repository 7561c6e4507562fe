//! `clawfarm new` under a real pseudo-terminal (tmux), and its `--non-interactive` form:
//! every field validated as typed, the output accepted by `ClawSpec::parse` and the
//! manifest by `clawfarm validate`, the flags giving the same files, Ctrl-C writing nothing.

mod tty;

use std::path::Path;
use std::process::{Command, Output, Stdio};

use clawfarm::input::clawspec::{ClawSpec, Validator};
use tty::{Tty, bin};

const BASE_REF: &str = "https://example.com/base.qcow2";

fn sha() -> String {
    "ab".repeat(32)
}

/// A folder with the script files the sessions read.
fn workdir() -> tempfile::TempDir {
    let t = tempfile::tempdir().unwrap();
    std::fs::write(t.path().join("inst.sh"), "#!/bin/bash\necho install\n").unwrap();
    std::fs::write(t.path().join("start.sh"), "echo start\n").unwrap();
    std::fs::write(t.path().join("setup.sh"), "echo setup done\n").unwrap();
    t
}

fn new_tty(dir: &Path, args: &[&str]) -> Tty {
    let b = bin();
    let mut argv = vec![b.to_str().unwrap(), "new"];
    argv.extend_from_slice(args);
    Tty::start(dir, &[("CLAWFARM_HOME", Some("/nonexistent"))], &argv)
}

/// At the prompt `label` (already waited for): type `bad`, check that `message` shows
/// under the line and that Enter is refused, then clear the line.
fn refused(t: &mut Tty, label: &str, bad: &str, message: &str) {
    t.type_text(bad);
    let line = format!("{} {bad}", label.trim_end());
    let s = t.wait_cursor_line(&line);
    assert!(
        s.contains(&format!("! {message}")),
        "no live message {message:?} for {bad:?}:\n{s}"
    );
    t.keys(&["Enter"]);
    let s = t.wait_cursor_line(&line);
    assert!(s.contains(&format!("! {message}")), "{s}");
    t.keys(&["C-u"]);
    t.wait_cursor_line(label);
}

/// The interactive session whose answers the flags of `flags_equivalent` repeat.
fn session(t: &mut Tty) {
    t.prompt("Bootstrap type [openclaw]:");
    refused(
        t,
        "Bootstrap type [openclaw]:",
        "hermes",
        "must be one of: openclaw",
    );
    t.keys(&["Enter"]); // the default
    t.answer("Bundle name:", "demo");
    t.prompt("Display name (optional):");
    t.keys(&["Escape"]);
    t.prompt("Base image ref:");
    refused(t, "Base image ref:", "ftp://x/y", "unsupported scheme");
    refused(t, "Base image ref:", "ubuntu", "expected a URL");
    t.reply(BASE_REF);
    t.prompt("Base image sha256:");
    refused(t, "Base image sha256:", "ABC", "must be lowercase hex");
    refused(
        t,
        "Base image sha256:",
        "abc",
        "must be 64 lowercase hex characters (3 so far)",
    );
    t.reply(&sha());
    t.answer("Add a run image? (y/n) [n]:", "");
    t.prompt("Install script [@-]:");
    refused(
        t,
        "Install script [@-]:",
        "@nope.sh",
        "cannot read nope.sh: no such file",
    );
    t.reply("@inst.sh");
    // Several lines typed inline.
    t.answer("Start script [@-]:", "<<");
    t.prompt("  |");
    refused(t, "  |", ".", "the script is empty so far");
    t.type_text("echo start");
    t.keys(&["Enter"]);
    t.answer("  |", ".");

    t.prompt("Required param #1 key:");
    refused(
        t,
        "Required param #1 key:",
        "1BAD",
        "must match [A-Za-z_][A-Za-z0-9_]*",
    );
    t.reply("API_KEY");
    t.answer("  Label:", "API key");
    t.answer("  Description (optional):", "Provider key");
    t.answer("  Secret? (y/n) [y]:", ""); // guessed from the key
    t.prompt("  Validator [none]:");
    refused(
        t,
        "  Validator [none]:",
        "length",
        "must be one of: none, non_empty, regex, enum",
    );
    t.reply("non_empty");
    t.prompt("Required param #2 key:");
    refused(
        t,
        "Required param #2 key:",
        "API_KEY",
        "API_KEY is already defined",
    );
    t.reply("");

    t.answer("Optional param #1 key:", "MODEL");
    t.answer("  Label:", "Model");
    t.answer("  Description (optional):", "");
    t.answer("  Secret? (y/n) [n]:", "");
    t.answer("  Validator [none]:", "enum");
    t.prompt("  Values:");
    refused(t, "  Values:", "a,,b", "empty value in the list");
    t.reply("gpt-4o, o3");
    t.prompt("  Default (optional):");
    refused(
        t,
        "  Default (optional):",
        "gpt-5",
        "must be one of: gpt-4o, o3",
    );
    t.reply("gpt-4o");
    t.answer("Optional param #2 key:", "PORT");
    t.answer("  Label:", "Port");
    t.answer("  Description (optional):", "");
    t.answer("  Secret? (y/n) [n]:", "");
    t.answer("  Validator [none]:", "regex");
    t.prompt("  Pattern:");
    refused(t, "  Pattern:", "[0-9", "invalid regular expression");
    t.reply("[0-9]+");
    t.answer("  Default (optional):", "8080");
    t.answer("Optional param #3 key:", "");

    t.answer("Provision step #1 name:", "setup");
    t.answer("  Shell (optional):", "");
    t.answer("  Script:", "@setup.sh");
    t.answer("Provision step #2 name:", "");

    t.answer("Write the clawspec to [demo.clawbox]:", "");
    t.prompt("Manifest instance name (optional):");
    refused(
        t,
        "Manifest instance name (optional):",
        "Demo_A",
        "must be a DNS label",
    );
    t.reply("demo-a");
}

fn flags(out: &str) -> Vec<String> {
    [
        "new",
        "--non-interactive",
        "--name",
        "demo",
        "--base-ref",
        BASE_REF,
        "--base-sha256",
        &sha(),
        "--install-script",
        "inst.sh",
        "--start-script",
        "start.sh",
        "--param",
        "API_KEY:API key:secret:non_empty",
        "--description",
        "API_KEY=Provider key",
        "--optional-param",
        "MODEL:Model:plain:enum=gpt-4o,o3",
        "--default",
        "MODEL=gpt-4o",
        "--optional-param",
        "PORT:Port:plain:regex=[0-9]+",
        "--default",
        "PORT=8080",
        "--provision",
        "setup=setup.sh",
        "-o",
        out,
        "--manifest",
        "demo-a",
    ]
    .iter()
    .map(|s| s.to_string())
    .collect()
}

fn run_in(dir: &Path, args: &[String]) -> Output {
    Command::new(bin())
        .args(args)
        .current_dir(dir)
        .env("CLAWFARM_HOME", dir.join("home"))
        .stdin(Stdio::null())
        .output()
        .unwrap()
}

fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

#[test]
fn wizard_end_to_end_writes_a_valid_clawspec_and_manifest() {
    let w = workdir();
    let mut t = new_tty(w.path(), &[]);
    session(&mut t);
    assert_eq!(t.wait_exit(), 0, "{}", t.scrollback());
    let all = t.scrollback();
    assert!(all.contains("wrote demo.clawbox"), "{all}");
    assert!(all.contains("wrote demo-a.yaml"), "{all}");
    assert!(
        all.contains("before clawfarm apply, set in the environment: API_KEY"),
        "{all}"
    );
    t.assert_terminal_restored();

    let bytes = std::fs::read(w.path().join("demo.clawbox")).unwrap();
    let spec = ClawSpec::parse(&bytes).expect("the wizard's clawspec parses");
    assert_eq!(spec.name, "demo");
    assert_eq!(spec.base().reference, BASE_REF);
    assert_eq!(spec.base().sha256, sha());
    assert!(spec.run().is_none());
    assert_eq!(spec.bootstrap.id, "openclaw");
    assert_eq!(spec.bootstrap.display_name, None);
    assert_eq!(spec.bootstrap.install_script, "#!/bin/bash\necho install\n");
    assert_eq!(spec.bootstrap.start_script, "echo start\n");
    let keys: Vec<(&str, bool)> = spec.params().map(|(p, r)| (p.key.as_str(), r)).collect();
    assert_eq!(keys, [("API_KEY", true), ("MODEL", false), ("PORT", false)]);
    let api = spec.param("API_KEY").unwrap();
    assert!(api.secret);
    assert_eq!(api.description.as_deref(), Some("Provider key"));
    assert_eq!(api.validator, Some(Validator::NonEmpty));
    let model = spec.param("MODEL").unwrap();
    assert!(!model.secret);
    assert_eq!(model.default.as_deref(), Some("gpt-4o"));
    assert_eq!(
        model.validator,
        Some(Validator::Enum {
            values: vec!["gpt-4o".into(), "o3".into()]
        })
    );
    assert_eq!(spec.provision.len(), 1);
    assert_eq!(spec.provision[0].name.as_deref(), Some("setup"));
    assert_eq!(spec.provision[0].shell, None);
    assert_eq!(spec.provision[0].script, "echo setup done\n");

    // The manifest: the secret as an env reference, the others with their defaults.
    let m = std::fs::read_to_string(w.path().join("demo-a.yaml")).unwrap();
    assert!(m.contains("clawbox: ./demo.clawbox"), "{m}");
    assert!(m.contains("API_KEY: {env: API_KEY}"), "{m}");
    assert!(m.contains("MODEL: gpt-4o"), "{m}");
    assert!(
        m.contains("PORT: \"8080\"") || m.contains("PORT: 8080"),
        "{m}"
    );
    let v = Command::new(bin())
        .args(["validate", "-f", "demo-a.yaml"])
        .current_dir(w.path())
        .env("CLAWFARM_HOME", w.path().join("home"))
        .env("API_KEY", "sk-from-env")
        .stdin(Stdio::null())
        .output()
        .unwrap();
    assert_eq!(v.status.code(), Some(0), "{}", stderr(&v));
    assert!(
        stderr(&v).contains("1 manifest file(s), 1 instance(s): valid"),
        "{}",
        stderr(&v)
    );
}

#[test]
fn flags_write_the_same_files_as_the_equivalent_session() {
    let w = workdir();
    let mut t = new_tty(w.path(), &[]);
    session(&mut t);
    assert_eq!(t.wait_exit(), 0, "{}", t.scrollback());

    // The same answers as flags, in a copy of the folder.
    let f = workdir();
    let o = run_in(f.path(), &flags("demo.clawbox"));
    assert_eq!(o.status.code(), Some(0), "{}", stderr(&o));
    assert!(o.stdout.is_empty(), "stdout: {:?}", o.stdout);
    for file in ["demo.clawbox", "demo-a.yaml"] {
        let a = std::fs::read_to_string(w.path().join(file)).unwrap();
        let b = std::fs::read_to_string(f.path().join(file)).unwrap();
        assert_eq!(a, b, "{file} differs between the wizard and the flags");
    }
    ClawSpec::parse(&std::fs::read(f.path().join("demo.clawbox")).unwrap()).unwrap();

    // Written files are not overwritten without --force.
    let again = run_in(f.path(), &flags("demo.clawbox"));
    assert_eq!(again.status.code(), Some(1));
    assert!(
        stderr(&again)
            .contains("--out: demo.clawbox exists (choose another name, or run with --force)"),
        "{}",
        stderr(&again)
    );
    let mut forced = flags("demo.clawbox");
    forced.push("--force".into());
    assert_eq!(run_in(f.path(), &forced).status.code(), Some(0));
}

#[test]
fn ctrl_c_in_the_wizard_restores_the_terminal_and_writes_nothing() {
    let w = workdir();
    let mut t = new_tty(w.path(), &["-o", "out.clawbox", "--manifest", "demo-a"]);
    t.answer("Bootstrap type [openclaw]:", "");
    t.answer("Bundle name:", "demo");
    t.prompt("Display name (optional):");
    t.keys(&["Escape"]);
    t.prompt("Base image ref:");
    t.type_text("https://exa");
    t.wait_cursor_line("Base image ref: https://exa");
    t.keys(&["C-c"]);
    assert_eq!(t.wait_exit(), 1);
    let all = t.scrollback();
    assert!(
        all.contains("error: interrupted; nothing was written"),
        "{all}"
    );
    t.assert_terminal_restored();
    assert!(!w.path().join("out.clawbox").exists());
    assert!(!w.path().join("demo-a.yaml").exists());
}

#[test]
fn non_interactive_to_stdout_is_a_valid_clawspec() {
    let w = workdir();
    let o = run_in(
        w.path(),
        &[
            "new",
            "--non-interactive",
            "--name",
            "tiny",
            "--base-ref",
            "ubuntu:24.04",
            "--base-sha256",
            &sha(),
            "--run-ref",
            "clawbox:///run.qcow2",
            "--run-sha256",
            &"cd".repeat(32),
            "--install-script",
            "@-",
            "--start-script",
            "@-",
            "--display-name",
            "OpenClaw",
            "--provision",
            "py:python3=setup.sh",
            "-o",
            "-",
        ]
        .map(String::from),
    );
    assert_eq!(o.status.code(), Some(0), "{}", stderr(&o));
    let spec = ClawSpec::parse(&o.stdout).expect("stdout is the clawspec");
    assert_eq!(spec.run().unwrap().reference, "clawbox:///run.qcow2");
    assert!(spec.bootstrap.install_script.contains("openclaw"));
    assert!(spec.bootstrap.params.required.is_empty());
    assert_eq!(spec.provision[0].shell.as_deref(), Some("python3"));
    assert_eq!(spec.bootstrap.display_name.as_deref(), Some("OpenClaw"));
}

#[test]
fn bad_flag_values_give_errors_naming_the_flag() {
    let w = workdir();
    let base = |extra: &[&str], drop: &[&str]| -> Vec<String> {
        let mut v: Vec<String> = vec![
            "new".into(),
            "--non-interactive".into(),
            "-o".into(),
            "-".into(),
        ];
        let defaults = [
            ("--name", "demo".to_string()),
            ("--base-ref", BASE_REF.to_string()),
            ("--base-sha256", sha()),
            ("--install-script", "inst.sh".to_string()),
            ("--start-script", "start.sh".to_string()),
        ];
        for (flag, value) in defaults {
            if !drop.contains(&flag) && !extra.contains(&flag) {
                v.push(flag.into());
                v.push(value);
            }
        }
        v.extend(extra.iter().map(|s| s.to_string()));
        v
    };
    let secret_default = "sk-do-not-print-me";
    let default_arg = format!("API_KEY={secret_default}");
    let cases: Vec<(Vec<String>, &str)> = vec![
        (
            base(&["--base-sha256", "ABCDEF"], &[]),
            "--base-sha256 <HEX>': must be lowercase hex",
        ),
        (
            base(&["--base-sha256", "abc"], &[]),
            "--base-sha256 <HEX>': must be 64 lowercase hex characters (3 so far)",
        ),
        (
            base(&["--base-ref", "ftp://x/y"], &[]),
            "--base-ref <REF>': unsupported scheme",
        ),
        (
            base(&["--run-ref", "clawbox://x"], &[]),
            "--run-ref <REF>': clawbox:///NAME names a top-level file of the bundle",
        ),
        (
            base(&["--run-ref", "clawbox:///run.qcow2"], &[]),
            "--run-ref needs --run-sha256",
        ),
        (
            base(&[], &["--name"]),
            "--name is required with --non-interactive",
        ),
        (
            base(&[], &["--base-sha256"]),
            "--base-sha256 is required with --non-interactive",
        ),
        (
            base(&["--install-script", "nope.sh"], &[]),
            "--install-script <FILE>': cannot read nope.sh: no such file",
        ),
        (
            base(&["--param", "api-key:Key:secret"], &[]),
            "--param <SPEC>': key: must match [A-Za-z_][A-Za-z0-9_]*",
        ),
        (
            base(&["--param", "K:Key:maybe"], &[]),
            "--param <SPEC>': SECRET must be secret or plain",
        ),
        (
            base(&["--param", "K:Key:plain:regex=(a"], &[]),
            "--param <SPEC>': validator: invalid regular expression",
        ),
        (
            base(&["--param", "K:Key:plain:enum=a,,b"], &[]),
            "--param <SPEC>': validator: empty value in the list",
        ),
        (
            base(
                &[
                    "--param",
                    "K:Key:plain",
                    "--optional-param",
                    "K:Again:plain",
                ],
                &[],
            ),
            "--optional-param K: key K is defined twice",
        ),
        (
            base(
                &["--param", "K:Key:plain:enum=a,b", "--default", "K=c"],
                &[],
            ),
            "--default K: the default must be one of: a, b",
        ),
        (
            base(
                &["--param", "API_KEY:Key:secret", "--default", &default_arg],
                &[],
            ),
            "--default API_KEY: API_KEY is secret, and a secret param has no default",
        ),
        (
            base(&["--default", "NOPE=x"], &[]),
            "--default NOPE: no --param or --optional-param defines NOPE",
        ),
        (
            base(&["--description", "NOPE"], &[]),
            "--description: expected KEY=TEXT",
        ),
        (
            base(&["--provision", "setup"], &[]),
            "--provision <NAME[:SHELL]=FILE>': expected NAME=FILE or NAME:SHELL=FILE",
        ),
        (
            base(&["--manifest", "Bad_Name"], &[]),
            "--manifest <NAME>': must be a DNS label",
        ),
        (
            base(&["--manifest", "ok"], &[]),
            "--manifest needs the clawspec in a file (not -o -)",
        ),
    ];
    for (args, want) in cases {
        let o = run_in(w.path(), &args);
        let err = stderr(&o);
        assert_ne!(o.status.code(), Some(0), "{args:?} succeeded");
        assert!(err.contains(want), "{args:?}\nwant {want:?}\ngot {err}");
        assert!(o.stdout.is_empty(), "{args:?} wrote to stdout");
        assert!(
            !err.contains(secret_default),
            "a default value was printed: {err}"
        );
    }
    // Content flags are refused without --non-interactive (no prompt is opened).
    let o = run_in(w.path(), &["new".into(), "--name".into(), "demo".into()]);
    assert_eq!(o.status.code(), Some(2));
    assert!(stderr(&o).contains("--non-interactive"), "{}", stderr(&o));
}

#[test]
fn new_without_a_terminal_points_to_the_flags() {
    let w = workdir();
    let o = run_in(w.path(), &["new".into()]);
    assert_eq!(o.status.code(), Some(1));
    assert!(
        stderr(&o).contains("use --non-interactive with flags"),
        "{}",
        stderr(&o)
    );
}
