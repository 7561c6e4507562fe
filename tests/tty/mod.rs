//! Drive a program on a real pseudo-terminal with tmux: start it in a detached session,
//! type into it, and read the screen (and the scrollback) back.
//!
//! Every wait is a bounded poll of the pane (no fixed sleeps): [`Tty::prompt`] waits until
//! the line under the cursor is a given prompt, on a row below the previous prompt, so each
//! answer is typed only once the program is reading (in raw mode) for that very question.
#![allow(dead_code)]

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

/// How long any wait may take before the test fails with the screen in the message.
pub const TIMEOUT: Duration = Duration::from_secs(10);

/// The binary under test. `CLAWFARM_BIN` overrides it (useful when several checkouts share
/// one cargo target folder and overwrite each other's `target/debug/clawfarm`).
pub fn bin() -> PathBuf {
    std::env::var_os("CLAWFARM_BIN")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(env!("CARGO_BIN_EXE_clawfarm")))
}

/// Quote for `sh`.
pub fn sh_quote(s: &str) -> String {
    format!("'{}'", s.replace('\'', r"'\''"))
}

/// One tmux server (private socket) running one program in a 120x50 pane.
pub struct Tty {
    dir: tempfile::TempDir,
    sock: PathBuf,
    /// Absolute row (scrollback + cursor row) of the last prompt waited for.
    last_row: i64,
}

impl Tty {
    /// Run `argv` in `cwd` with `env` (`None` removes a variable). When it exits, the pane
    /// prints `[exit N]` and saves `stty -a` of the terminal (see [`Tty::stty`]).
    pub fn start(cwd: &Path, env: &[(&str, Option<&str>)], argv: &[&str]) -> Tty {
        let dir = tempfile::Builder::new()
            .prefix("cf-tty")
            .tempdir_in("/tmp")
            .unwrap();
        let sock = dir.path().join("sock");
        // `env` takes its options (-u) before the assignments.
        let mut cmd = String::from("env");
        for (k, _) in env.iter().filter(|(_, v)| v.is_none()) {
            cmd.push_str(&format!(" -u {k}"));
        }
        for (k, v) in env {
            if let Some(v) = v {
                cmd.push_str(&format!(" {k}={}", sh_quote(v)));
            }
        }
        for a in argv {
            cmd.push(' ');
            cmd.push_str(&sh_quote(a));
        }
        let stty = dir.path().join("stty.txt");
        let script = format!(
            "{cmd}; echo \"[exit $?]\"; stty -a > {} 2>&1; exec sleep 600",
            sh_quote(stty.to_str().unwrap())
        );
        let st = Command::new("tmux")
            .arg("-S")
            .arg(&sock)
            .args([
                "-f",
                "/dev/null",
                "new-session",
                "-d",
                "-x",
                "120",
                "-y",
                "50",
            ])
            .arg("-c")
            .arg(cwd)
            .args(["sh", "-c", &script])
            .env("LANG", "C.UTF-8")
            .status()
            .expect("tmux is installed");
        assert!(st.success(), "tmux new-session failed");
        Tty {
            dir,
            sock,
            last_row: -1,
        }
    }

    fn tmux(&self, args: &[&str]) -> String {
        let out = Command::new("tmux")
            .arg("-S")
            .arg(&self.sock)
            .args(args)
            .output()
            .expect("tmux runs");
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    /// Type text literally (no key names).
    pub fn type_text(&self, s: &str) {
        self.tmux(&["send-keys", "-l", s]);
    }

    /// Press keys by tmux name: `Enter`, `Escape`, `C-c`, `BSpace`, `C-u`, ...
    pub fn keys(&self, keys: &[&str]) {
        let mut args = vec!["send-keys"];
        args.extend_from_slice(keys);
        self.tmux(&args);
    }

    /// The whole pane history and screen, lines joined as the program wrote them.
    pub fn scrollback(&self) -> String {
        self.tmux(&["capture-pane", "-p", "-J", "-S", "-"])
    }

    /// The visible screen.
    pub fn screen(&self) -> String {
        self.tmux(&["capture-pane", "-p"])
    }

    /// `(absolute cursor row, line under the cursor, screen)`, read in one tmux command.
    fn cursor_line(&self) -> (i64, String, String) {
        let out = self.tmux(&[
            "display-message",
            "-p",
            "#{cursor_y} #{history_size}",
            ";",
            "capture-pane",
            "-p",
        ]);
        let (head, screen) = out.split_once('\n').unwrap_or((&out, ""));
        let mut it = head
            .split_whitespace()
            .map(|n| n.parse::<i64>().unwrap_or(0));
        let (y, hist) = (it.next().unwrap_or(0), it.next().unwrap_or(0));
        let line = screen.lines().nth(y as usize).unwrap_or("").to_owned();
        (hist + y, line, screen.to_owned())
    }

    /// Poll until `pred(screen)` holds; fails the test with the screen after [`TIMEOUT`].
    pub fn wait_until(&self, what: &str, pred: impl Fn(&str) -> bool) -> String {
        let t0 = Instant::now();
        loop {
            let s = self.scrollback();
            if pred(&s) {
                return s;
            }
            if t0.elapsed() > TIMEOUT {
                panic!("timed out waiting for {what}; pane:\n{s}");
            }
            std::thread::sleep(Duration::from_millis(40));
        }
    }

    /// Wait until the pane shows `needle` somewhere (scrollback included).
    pub fn wait_text(&self, needle: &str) -> String {
        self.wait_until(&format!("{needle:?}"), |s| s.contains(needle))
    }

    /// Wait until the program reads the answer to `label`: the line under the cursor,
    /// below the previous prompt, is exactly `label` (trailing blanks ignored), i.e. an
    /// empty input after that prompt text. Returns the screen.
    pub fn prompt(&mut self, label: &str) -> String {
        let want = label.trim_end();
        let t0 = Instant::now();
        loop {
            let (row, line, screen) = self.cursor_line();
            if row > self.last_row && line.trim_end() == want {
                self.last_row = row;
                return screen;
            }
            if t0.elapsed() > TIMEOUT {
                panic!(
                    "timed out waiting for the prompt {want:?} (cursor line {line:?}); pane:\n{}",
                    self.scrollback()
                );
            }
            std::thread::sleep(Duration::from_millis(30));
        }
    }

    /// Wait for the prompt `label`, type `text` and press Enter.
    pub fn answer(&mut self, label: &str, text: &str) {
        self.prompt(label);
        self.reply(text);
    }

    /// Type `text` and press Enter (at a prompt already waited for).
    pub fn reply(&self, text: &str) {
        if !text.is_empty() {
            self.type_text(text);
        }
        self.keys(&["Enter"]);
    }

    /// Wait until the line under the cursor is `line` (e.g. a typed value after its label).
    pub fn wait_cursor_line(&self, line: &str) -> String {
        let t0 = Instant::now();
        loop {
            let (_, l, screen) = self.cursor_line();
            if l.trim_end() == line.trim_end() {
                return screen;
            }
            if t0.elapsed() > TIMEOUT {
                panic!(
                    "timed out waiting for the cursor line {line:?} (now {l:?}); pane:\n{}",
                    self.scrollback()
                );
            }
            std::thread::sleep(Duration::from_millis(30));
        }
    }

    /// Wait for the program to exit; its exit code.
    pub fn wait_exit(&self) -> i32 {
        let s = self.wait_until("the program to exit", |s| s.contains("[exit "));
        let at = s.rfind("[exit ").unwrap();
        s[at + 6..]
            .split(']')
            .next()
            .unwrap()
            .trim()
            .parse()
            .unwrap()
    }

    /// `stty -a` of the pane's terminal after the program exited.
    pub fn stty(&self) -> String {
        let p = self.dir.path().join("stty.txt");
        let t0 = Instant::now();
        loop {
            if let Ok(s) = std::fs::read_to_string(&p)
                && s.contains("speed")
            {
                return s;
            }
            if t0.elapsed() > TIMEOUT {
                panic!("no stty output");
            }
            std::thread::sleep(Duration::from_millis(30));
        }
    }

    /// Assert the terminal is back in cooked mode with echo (what raw mode turns off).
    pub fn assert_terminal_restored(&self) {
        let s = self.stty();
        let flags: Vec<&str> = s.split_whitespace().collect();
        for f in ["icanon", "echo", "isig", "icrnl", "opost"] {
            assert!(
                flags.contains(&f),
                "terminal not restored ({f} missing):\n{s}"
            );
        }
    }
}

impl Drop for Tty {
    fn drop(&mut self) {
        let _ = Command::new("tmux")
            .arg("-S")
            .arg(&self.sock)
            .arg("kill-server")
            .output();
    }
}
