//! Shared by the dashboard tests: a running `clawfarm ui` (or `watch --ui`) process, and a
//! minimal WebDriver client for Debian's headless Chromium through `chromedriver`.
#![allow(dead_code)]

use std::io::{BufRead, BufReader};
use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::{Value, json};

/// A dashboard process; killed when dropped.
pub struct UiProc {
    pub child: Child,
    /// `http://127.0.0.1:PORT` (no trailing slash).
    pub base: String,
    /// The token from the printed address.
    pub token: String,
}

impl UiProc {
    /// Start `cmd` (already carrying its args and env), read `dashboard: URL` from its stdout.
    pub fn spawn(mut cmd: Command) -> UiProc {
        cmd.stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .stdin(Stdio::null());
        let mut child = cmd.spawn().expect("start the dashboard");
        let out = child.stdout.take().unwrap();
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            let mut rd = BufReader::new(out);
            loop {
                let mut l = String::new();
                if rd.read_line(&mut l).unwrap_or(0) == 0 {
                    return;
                }
                if let Some(u) = l.trim().strip_prefix("dashboard: ") {
                    let _ = tx.send(u.to_string());
                }
            }
        });
        let url = rx
            .recv_timeout(Duration::from_secs(60))
            .expect("the dashboard printed its address");
        let (base, token) = url.split_once("/?token=").expect("address with a token");
        UiProc {
            child,
            base: base.to_string(),
            token: token.to_string(),
        }
    }

    /// The address that logs in.
    pub fn login_url(&self) -> String {
        format!("{}/?token={}", self.base, self.token)
    }

    /// A client that carries the token as a bearer.
    pub fn get(&self, path: &str) -> reqwest::blocking::Response {
        client()
            .get(format!("{}{path}", self.base))
            .bearer_auth(&self.token)
            .send()
            .unwrap()
    }

    /// A GET with the token, as JSON.
    pub fn json(&self, path: &str) -> Value {
        let r = self.get(path);
        assert!(r.status().is_success(), "{path}: {}", r.status());
        r.json().unwrap()
    }
}

impl Drop for UiProc {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A client that follows no redirects and keeps no cookies.
pub fn client() -> reqwest::blocking::Client {
    reqwest::blocking::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .timeout(Duration::from_secs(60))
        .build()
        .unwrap()
}

/// A free TCP port on 127.0.0.1.
pub fn free_port() -> u16 {
    TcpListener::bind(("127.0.0.1", 0))
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// Poll `f` until it returns `Some`, or panic after `within` with `what`.
pub fn wait_for<T>(within: Duration, what: &str, mut f: impl FnMut() -> Option<T>) -> T {
    let t0 = Instant::now();
    loop {
        if let Some(v) = f() {
            return v;
        }
        assert!(
            t0.elapsed() < within,
            "timed out after {within:?} waiting for {what}"
        );
        std::thread::sleep(Duration::from_millis(200));
    }
}

/// Where the tests save their screenshots (`target/ui-screenshots/`).
pub fn screenshot_dir() -> PathBuf {
    let d = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("target/ui-screenshots");
    std::fs::create_dir_all(&d).unwrap();
    d
}

/// `chromedriver` and `chromium`, when installed.
pub fn browser_tools() -> Option<(PathBuf, PathBuf)> {
    let find = |names: &[&str]| {
        names.iter().find_map(|n| {
            std::env::var_os("PATH").and_then(|p| {
                std::env::split_paths(&p)
                    .map(|d| d.join(n))
                    .find(|f| f.is_file())
            })
        })
    };
    let driver = find(&["chromedriver"])?;
    let chrome = find(&["chromium", "chromium-browser", "google-chrome"])?;
    Some((driver, chrome))
}

/// A chromedriver process and one headless Chromium session.
pub struct Browser {
    driver: Child,
    base: String,
    session: String,
    http: reqwest::blocking::Client,
    _profile: tempfile::TempDir,
}

impl Browser {
    /// Start chromedriver and a headless Chromium session (fresh empty profile).
    pub fn start(driver: &Path, chrome: &Path) -> Browser {
        let port = free_port();
        let child = Command::new(driver)
            .arg(format!("--port={port}"))
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("start chromedriver");
        let base = format!("http://127.0.0.1:{port}");
        let http = reqwest::blocking::Client::builder()
            .timeout(Duration::from_secs(120))
            .build()
            .unwrap();
        wait_for(Duration::from_secs(30), "chromedriver", || {
            http.get(format!("{base}/status")).send().ok()
        });
        let profile = tempfile::tempdir().unwrap();
        let caps = json!({"capabilities": {"alwaysMatch": {
            "browserName": "chrome",
            "goog:chromeOptions": {
                "binary": chrome,
                "args": ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic",
                         "--no-first-run", "--disable-background-networking",
                         "--disable-component-update", "--disable-sync",
                         "--window-size=1440,900",
                         format!("--user-data-dir={}", profile.path().display())]
            }
        }}});
        let r: Value = http
            .post(format!("{base}/session"))
            .json(&caps)
            .send()
            .unwrap()
            .json()
            .unwrap();
        let session = r["value"]["sessionId"]
            .as_str()
            .unwrap_or_else(|| panic!("no WebDriver session: {r}"))
            .to_string();
        Browser {
            driver: child,
            base,
            session,
            http,
            _profile: profile,
        }
    }

    fn cmd(&self, method: reqwest::Method, path: &str, body: Option<Value>) -> Value {
        let url = format!("{}/session/{}{path}", self.base, self.session);
        let mut rq = self.http.request(method, url);
        if let Some(b) = body {
            rq = rq.json(&b);
        }
        let r: Value = rq.send().unwrap().json().unwrap();
        r["value"].clone()
    }

    fn ok(&self, v: Value, what: &str) -> Value {
        if v.get("error").is_some() {
            panic!("WebDriver {what}: {v}");
        }
        v
    }

    /// Load a page.
    pub fn goto(&self, url: &str) {
        let v = self.cmd(reqwest::Method::POST, "/url", Some(json!({ "url": url })));
        self.ok(v, "navigate");
    }

    /// Run a script; its return value.
    pub fn js(&self, script: &str) -> Value {
        let v = self.cmd(
            reqwest::Method::POST,
            "/execute/sync",
            Some(json!({"script": script, "args": []})),
        );
        self.ok(v, script)
    }

    /// Click the element that `css` selects.
    pub fn click(&self, css: &str) {
        // The live views re-render their rows and buttons on every update: an element found
        // just before a re-render is stale by the time it is clicked. Find it again then.
        for attempt in 0..10 {
            let v = self.cmd(
                reqwest::Method::POST,
                "/element",
                Some(json!({"using": "css selector", "value": css})),
            );
            let v = self.ok(v, css);
            let id = v
                .as_object()
                .and_then(|o| o.values().next())
                .and_then(|v| v.as_str())
                .expect("element id")
                .to_string();
            let v = self.cmd(
                reqwest::Method::POST,
                &format!("/element/{id}/click"),
                Some(json!({})),
            );
            if v.get("error").and_then(|e| e.as_str()) == Some("stale element reference")
                && attempt < 9
            {
                continue;
            }
            self.ok(v, "click");
            return;
        }
    }

    /// The text of the open dialog, when one is open.
    pub fn alert_text(&self) -> Option<String> {
        let v = self.cmd(reqwest::Method::GET, "/alert/text", None);
        v.as_str().map(String::from)
    }

    /// Wait for a dialog and accept it; its text.
    pub fn accept_alert(&self) -> String {
        let t = wait_for(Duration::from_secs(10), "a dialog", || self.alert_text());
        let v = self.cmd(reqwest::Method::POST, "/alert/accept", Some(json!({})));
        self.ok(v, "accept");
        t
    }

    /// Dismiss the open dialog (Cancel).
    pub fn dismiss_alert(&self) {
        let v = self.cmd(reqwest::Method::POST, "/alert/dismiss", Some(json!({})));
        self.ok(v, "dismiss");
    }

    /// Type into an open prompt.
    pub fn alert_send(&self, text: &str) {
        wait_for(Duration::from_secs(10), "a prompt", || self.alert_text());
        let v = self.cmd(
            reqwest::Method::POST,
            "/alert/text",
            Some(json!({ "text": text })),
        );
        self.ok(v, "send keys to prompt");
    }

    /// Save a PNG screenshot to `path`.
    pub fn screenshot(&self, path: &Path) {
        use base64::Engine as _;
        let v = self.cmd(reqwest::Method::GET, "/screenshot", None);
        let b64 = v.as_str().expect("screenshot data");
        let png = base64::engine::general_purpose::STANDARD
            .decode(b64)
            .unwrap();
        assert!(png.starts_with(b"\x89PNG"), "a PNG");
        std::fs::write(path, png).unwrap();
        eprintln!("screenshot: {}", path.display());
    }
}

impl Drop for Browser {
    fn drop(&mut self) {
        let _ = self
            .http
            .delete(format!("{}/session/{}", self.base, self.session))
            .send();
        let _ = self.driver.kill();
        let _ = self.driver.wait();
    }
}
