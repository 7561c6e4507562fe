//! Param prompts under a real pseudo-terminal (tmux): `clawfarm plan/apply` ask for params
//! nothing resolves, masked and validated as typed; Ctrl-C restores the terminal; without
//! a terminal, every missing key is reported instead.

mod tty;

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use tty::{Tty, bin};

const SECRET: &str = "sk-Zq8xSECRETvalue42";

struct Env {
    t: tempfile::TempDir,
}

fn clawspec() -> serde_json::Value {
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
                "required": [{"key": "OPENAI_API_KEY", "label": "OpenAI key",
                              "description": "Used by the OpenClaw provider",
                              "secret": true,
                              "validator": {"kind": "regex", "pattern": "sk-[A-Za-z0-9]+"}}],
                "optional": [{"key": "MODE", "label": "Mode", "secret": false,
                              "description": "How hard it thinks",
                              "validator": {"kind": "enum", "values": ["fast", "slow"]}},
                             {"key": "MODEL", "label": "Model", "secret": false,
                              "default": "gpt-4o"}]
            }
        }
    })
}

/// A folder `agents/` with one manifest `alpha` that sets no params, and `demo.clawbox`.
fn env_with(spec: serde_json::Value) -> Env {
    let t = tempfile::tempdir().unwrap();
    std::fs::create_dir_all(t.path().join("agents")).unwrap();
    std::fs::write(t.path().join("demo.clawbox"), spec.to_string()).unwrap();
    std::fs::write(
        t.path().join("agents/alpha.yaml"),
        "apiVersion: clawfarm/v1\nkind: Claw\nmetadata:\n  name: alpha\nspec:\n  clawbox: ../demo.clawbox\n",
    )
    .unwrap();
    Env { t }
}

impl Env {
    fn path(&self) -> &Path {
        self.t.path()
    }
    fn home(&self) -> PathBuf {
        self.path().join("home")
    }
    fn agents(&self) -> String {
        self.path().join("agents").to_str().unwrap().to_owned()
    }
    fn tty(&self, args: &[&str]) -> Tty {
        let b = bin();
        let mut argv = vec![b.to_str().unwrap()];
        argv.extend_from_slice(args);
        Tty::start(
            self.path(),
            &[
                ("CLAWFARM_HOME", Some(self.home().to_str().unwrap())),
                ("CLAWFARM_DRIVER", Some("fake")),
                ("CLAWFARM_FAKE_FAIL", None),
                ("CLAWFARM_FAKE_DELAY_MS", None),
                ("OPENAI_API_KEY", None),
            ],
            &argv,
        )
    }
    fn claws(&self) -> usize {
        std::fs::read_dir(self.home().join("claws"))
            .map(|rd| rd.count())
            .unwrap_or(0)
    }
}

#[test]
fn plan_prompts_masked_validated_required_before_optional() {
    let e = env_with(clawspec());
    let mut t = e.tty(&["plan", "-f", &e.agents()]);

    // The required secret param: label, key and description are shown.
    let screen = t.prompt("OpenAI key (OPENAI_API_KEY):");
    assert!(
        screen.contains("alpha needs values for its params"),
        "{screen}"
    );
    assert!(screen.contains("Used by the OpenClaw provider"), "{screen}");
    assert!(
        screen.contains("required; secret: typed characters show as *"),
        "{screen}"
    );

    // A value that does not match: masked, the validation message is live, Enter refused.
    t.type_text("nope-");
    let s = t.wait_cursor_line("OpenAI key (OPENAI_API_KEY): *****");
    assert!(
        s.contains("! must match the pattern sk-[A-Za-z0-9]+"),
        "{s}"
    );
    t.keys(&["Enter"]);
    // Still the same prompt (refused), message still there.
    let s = t.wait_cursor_line("OpenAI key (OPENAI_API_KEY): *****");
    assert!(s.contains("! must match the pattern"), "{s}");
    assert!(!s.contains("Mode (MODE)"), "Enter was not refused:\n{s}");

    // Backspace works on the masked line; then the real secret: one * per character.
    t.keys(&["BSpace", "BSpace", "BSpace", "BSpace", "BSpace"]);
    t.wait_cursor_line("OpenAI key (OPENAI_API_KEY):");
    t.type_text(SECRET);
    let stars = "*".repeat(SECRET.len());
    let s = t.wait_cursor_line(&format!("OpenAI key (OPENAI_API_KEY): {stars}"));
    assert!(
        !s.contains("! must match"),
        "valid value still flagged:\n{s}"
    );
    t.keys(&["Enter"]);

    // Then the optional enum param (after the required one): choices shown, mismatch
    // refused, then fixed. MODEL has a default, so it is not asked.
    let s = t.prompt("Mode (MODE):");
    assert!(s.contains("How hard it thinks"), "{s}");
    assert!(
        s.contains("optional: Esc or an empty Enter skips it; one of: fast, slow"),
        "{s}"
    );
    t.type_text("medium");
    let s = t.wait_cursor_line("Mode (MODE): medium");
    assert!(s.contains("! must be one of: fast, slow"), "{s}");
    t.keys(&["Enter"]);
    t.wait_cursor_line("Mode (MODE): medium");
    t.keys(&["C-u"]);
    t.type_text("fast");
    t.wait_cursor_line("Mode (MODE): fast");
    t.keys(&["Enter"]);

    // The plan proceeds with the values.
    assert_eq!(t.wait_exit(), 2);
    let all = t.scrollback();
    assert!(all.contains("Plan: 1 to create, 0 unchanged."), "{all}");
    assert!(
        !all.contains("Model (MODEL)"),
        "a param with a default was asked:\n{all}"
    );
    let req = all.find("OpenAI key (OPENAI_API_KEY)").unwrap();
    let opt = all.find("Mode (MODE)").unwrap();
    assert!(req < opt, "required must come before optional:\n{all}");
    // The secret never reached the terminal, scrollback included.
    assert!(!all.contains(SECRET), "secret on screen:\n{all}");
    assert!(
        !all.contains("Zq8x"),
        "part of the secret on screen:\n{all}"
    );
    t.assert_terminal_restored();
}

#[test]
fn optional_param_skipped_with_escape_and_json_stdout_stays_clean() {
    let e = env_with(clawspec());
    let out = e.path().join("plan.json");
    // stdout to a file (as with `-o json | jq`), stdin and stderr on the terminal.
    let b = bin();
    let script = format!(
        "{} plan -o json -f {} > {}",
        tty::sh_quote(b.to_str().unwrap()),
        tty::sh_quote(&e.agents()),
        tty::sh_quote(out.to_str().unwrap())
    );
    let mut t = Tty::start(
        e.path(),
        &[
            ("CLAWFARM_HOME", Some(e.home().to_str().unwrap())),
            ("CLAWFARM_DRIVER", Some("fake")),
        ],
        &["sh", "-c", &script],
    );
    t.answer("OpenAI key (OPENAI_API_KEY):", SECRET);
    t.prompt("Mode (MODE):");
    t.keys(&["Escape"]);
    assert_eq!(t.wait_exit(), 2);
    let all = t.scrollback();
    assert!(all.contains("Mode (MODE): (skipped)"), "{all}");
    let json: serde_json::Value =
        serde_json::from_slice(&std::fs::read(&out).unwrap()).expect("stdout is pure JSON");
    assert!(json.get("diagnostics").is_some(), "{json}");
    let text = std::fs::read_to_string(&out).unwrap();
    assert!(
        !text.contains("OpenAI key") && !text.contains(SECRET),
        "{text}"
    );
}

#[test]
fn ctrl_c_at_a_param_prompt_restores_the_terminal_and_changes_nothing() {
    let e = env_with(clawspec());
    let mut t = e.tty(&["apply", "-f", &e.agents()]);
    t.prompt("OpenAI key (OPENAI_API_KEY):");
    t.type_text("sk-partial");
    t.wait_cursor_line("OpenAI key (OPENAI_API_KEY): **********");
    t.keys(&["C-c"]);
    assert_eq!(t.wait_exit(), 1);
    let all = t.scrollback();
    assert!(
        all.contains(
            "error: interrupted at the prompt for param OPENAI_API_KEY of alpha; nothing was changed"
        ),
        "{all}"
    );
    assert!(!all.contains("sk-partial"), "{all}");
    assert_eq!(e.claws(), 0, "an instance was created after Ctrl-C");
    t.assert_terminal_restored();
}

#[test]
fn run_prompts_for_params_not_given_on_the_command_line() {
    let e = env_with(clawspec());
    let bundle = e.path().join("demo.clawbox");
    let mut t = e.tty(&[
        "run",
        bundle.to_str().unwrap(),
        "--name",
        "adhoc",
        "--param",
        "MODE=slow",
    ]);
    let s = t.prompt("OpenAI key (OPENAI_API_KEY):");
    assert!(s.contains("Used by the OpenClaw provider"), "{s}");
    t.reply(SECRET);
    assert_eq!(t.wait_exit(), 0, "{}", t.scrollback());
    let all = t.scrollback();
    // MODE came from --param and MODEL from its default: only the key was asked.
    assert!(
        !all.contains("Mode (MODE)") && !all.contains("Model (MODEL)"),
        "{all}"
    );
    assert!(!all.contains(SECRET), "{all}");
    assert_eq!(e.claws(), 1);
    t.assert_terminal_restored();
}

#[test]
fn validate_never_prompts_even_on_a_terminal() {
    let e = env_with(clawspec());
    let t = e.tty(&["validate", "-f", &e.agents()]);
    assert_eq!(t.wait_exit(), 1);
    let all = t.scrollback();
    assert!(
        all.contains("required param OPENAI_API_KEY (OpenAI key) is not set"),
        "{all}"
    );
}

#[test]
fn without_a_terminal_every_missing_key_is_listed_with_how_to_set_it() {
    let mut spec = clawspec();
    spec["bootstrap"]["params"]["required"]
        .as_array_mut()
        .unwrap()
        .push(serde_json::json!({"key": "REGION", "label": "Region", "secret": false}));
    let e = env_with(spec);
    for verb in ["plan", "apply"] {
        let o = Command::new(bin())
            .args([verb, "-f", &e.agents()])
            .env("CLAWFARM_HOME", e.home())
            .env("CLAWFARM_DRIVER", "fake")
            .env_remove("OPENAI_API_KEY")
            .stdin(Stdio::null())
            .output()
            .unwrap();
        let err = String::from_utf8_lossy(&o.stderr);
        assert_eq!(o.status.code(), Some(1), "{verb}: {err}");
        assert!(
            err.contains(
                "alpha.yaml:1:1: required param OPENAI_API_KEY (OpenAI key) is not set: add \
                 `OPENAI_API_KEY: {env: OPENAI_API_KEY}` under spec.params"
            ),
            "{verb}: {err}"
        );
        assert!(
            err.contains(
                "alpha.yaml:1:1: required param REGION (Region) is not set: add `REGION: <value>`"
            ),
            "{verb}: {err}"
        );
        assert!(!err.contains("Mode (MODE)"), "{verb} prompted: {err}");
    }
    assert_eq!(e.claws(), 0);
}

/// `prompt::read_line` itself on a terminal: this test binary runs itself in tmux with
/// `PROMPT_HELPER` set (see `helper`), and the helper writes what `read_line` returned.
fn run_helper(mode: &str, steps: impl FnOnce(&mut Tty)) -> (Tty, String) {
    let dir = tempfile::tempdir().unwrap();
    let result = dir.path().join("result.txt");
    let exe = std::env::current_exe().unwrap();
    let mut t = Tty::start(
        dir.path(),
        &[
            ("PROMPT_HELPER", Some(mode)),
            ("PROMPT_HELPER_OUT", Some(result.to_str().unwrap())),
            ("RUST_BACKTRACE", Some("0")),
        ],
        &[
            exe.to_str().unwrap(),
            "--exact",
            "helper",
            "--ignored",
            "--nocapture",
            "--test-threads=1",
        ],
    );
    steps(&mut t);
    t.wait_exit();
    let r = std::fs::read_to_string(&result).unwrap_or_default();
    (t, r)
}

#[test]
#[ignore = "run by the pty tests, in a terminal"]
fn helper() {
    let Ok(mode) = std::env::var("PROMPT_HELPER") else {
        return;
    };
    let out = std::env::var("PROMPT_HELPER_OUT").unwrap();
    let digits = |s: &str| {
        if s.is_empty() || s.chars().all(|c| c.is_ascii_digit()) {
            Ok(())
        } else {
            Err("digits only".to_owned())
        }
    };
    let r = match mode.as_str() {
        "default" => clawfarm::tui::prompt::read_line("Count", None, false, digits, Some("3")),
        "skip" => clawfarm::tui::prompt::read_line("Count", None, false, digits, None),
        "panic" => clawfarm::tui::prompt::read_line(
            "Boom",
            None,
            false,
            |s: &str| {
                if s == "!" {
                    panic!("validator panicked");
                }
                Ok(())
            },
            None,
        ),
        _ => unreachable!(),
    };
    std::fs::write(out, format!("{r:?}")).unwrap();
}

#[test]
fn read_line_enter_takes_the_default_and_esc_skips() {
    let (t, r) = run_helper("default", |t| {
        t.prompt("Count [3]:");
        t.keys(&["Enter"]);
    });
    assert_eq!(r, "Ok(Some(\"3\"))");
    assert!(t.scrollback().contains("Count [3]: 3"));
    let (_, r) = run_helper("skip", |t| {
        t.prompt("Count:");
        t.type_text("12");
        t.wait_cursor_line("Count: 12");
        t.keys(&["Escape"]); // clears the line
        t.wait_cursor_line("Count:");
        t.keys(&["Escape"]); // skips
    });
    assert_eq!(r, "Ok(None)");
}

#[test]
fn a_panic_inside_a_prompt_still_restores_the_terminal() {
    let (t, r) = run_helper("panic", |t| {
        t.prompt("Boom:");
        t.type_text("!");
    });
    assert_eq!(r, "", "read_line returned after a panic?");
    assert!(t.scrollback().contains("validator panicked"));
    t.assert_terminal_restored();
}
