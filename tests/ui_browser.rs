//! The dashboard against a real `clawfarm ui` process on the fake driver
//! (`CLAWFARM_DRIVER=fake`), over real HTTP on 127.0.0.1:
//!
//! - HTTP rules (no browser needed): 401 without the token, `?token=` turns into an
//!   HttpOnly SameSite=Strict cookie, bearer for the API, cross-site and CSRF-less POSTs
//!   refused (and change nothing), purge refused without its second confirmation, the API
//!   has the shapes of `-o json`, `/metrics` parses as Prometheus text, and no secret value
//!   appears anywhere.
//! - In Debian's headless Chromium through chromedriver (WebDriver over HTTP): the table
//!   lists what `apply` created and follows a status change live without a reload, the Stop
//!   button stops an instance, a page on another origin cannot make the browser stop one,
//!   and screenshots of the pages are saved to `target/ui-screenshots/`.
//!
//! The browser test is skipped (with a message) only when chromedriver or chromium is not
//! installed; `scripts/setup-host.sh` installs both.

mod ui_support;

use std::io::{Read, Write};
use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::time::Duration;

use serde_json::Value;
use ui_support::{Browser, UiProc, browser_tools, client, screenshot_dir, wait_for};

const SECRET: &str = "sk-test-SECRET-9d2e77";

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

fn manifest(name: &str, port: u16) -> String {
    format!(
        "apiVersion: clawfarm/v1\nkind: Claw\nmetadata:\n  name: {name}\nspec:\n  clawbox: ../demo.clawbox\n  params:\n    OPENAI_API_KEY: {{env: TEST_OPENAI_KEY}}\n    MODEL: gpt-4o-mini\n  ports:\n    - name: gateway\n      host: {port}\n      guest: 18789\n"
    )
}

fn env() -> Env {
    let t = tempfile::tempdir().unwrap();
    let home = t.path().join("home");
    let dir = t.path().join("agents");
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::write(t.path().join("demo.clawbox"), clawspec_json()).unwrap();
    for n in ["alpha", "beta"] {
        std::fs::write(
            dir.join(format!("{n}.yaml")),
            manifest(n, ui_support::free_port()),
        )
        .unwrap();
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
    fn apply(&self) {
        let a = self.run(&["apply", "-f", self.dir.to_str().unwrap()]);
        assert!(a.status.success(), "{}", String::from_utf8_lossy(&a.stderr));
    }
    fn ui(&self, extra: &[&str]) -> UiProc {
        let mut args = vec!["ui", "--listen", "127.0.0.1:0"];
        args.extend_from_slice(extra);
        UiProc::spawn(self.cmd(&args))
    }
    fn ps(&self) -> Vec<Value> {
        let o = self.run(&["ps", "-o", "json"]);
        serde_json::from_slice::<Value>(&o.stdout)
            .unwrap()
            .as_array()
            .unwrap()
            .clone()
    }
    fn status(&self, name: &str) -> String {
        self.ps()
            .iter()
            .find(|r| r["name"] == name)
            .map(|r| r["status"].as_str().unwrap().to_string())
            .unwrap_or_else(|| "absent".into())
    }
    fn clawid(&self, name: &str) -> String {
        self.ps()
            .iter()
            .find(|r| r["name"] == name)
            .map(|r| r["clawid"].as_str().unwrap().to_string())
            .unwrap()
    }
}

fn no_secret(what: &str, body: &str) {
    assert!(!body.contains(SECRET), "{what} shows the secret value");
}

/// Log in like a browser: `?token=` → 303 with the session cookie. Returns the cookie pair.
fn login(ui: &UiProc) -> String {
    let r = client().get(ui.login_url()).send().unwrap();
    assert_eq!(r.status(), 303);
    assert_eq!(r.headers()["location"], "/");
    let c = r.headers()["set-cookie"].to_str().unwrap().to_string();
    assert!(c.contains("HttpOnly"), "{c}");
    assert!(c.contains("SameSite=Strict"), "{c}");
    c.split(';').next().unwrap().to_string()
}

fn csrf_of(page: &str) -> String {
    let i = page.find("name=\"csrf-token\" content=\"").unwrap() + 27;
    page[i..i + 64].to_string()
}

#[test]
fn http_rules_api_and_metrics() {
    let e = env();
    e.apply();
    // A broken manifest in the folder: the folder page names it with FILE:LINE:COL.
    std::fs::write(
        e.dir.join("broken.yaml"),
        "apiVersion: clawfarm/v1\nkind: Claw\nmetadata:\n  name: gamma\nspec:\n  clawbox: ../demo.clawbox\n  cpus: many\n",
    )
    .unwrap();
    let ui = e.ui(&["--dir", e.dir.to_str().unwrap()]);
    let token_file = e.home.join("ui.token");
    use std::os::unix::fs::PermissionsExt;
    assert_eq!(
        std::fs::metadata(&token_file).unwrap().permissions().mode() & 0o777,
        0o600
    );
    assert_eq!(
        std::fs::read_to_string(&token_file).unwrap().trim(),
        ui.token
    );
    let c = client();

    // Without the token: 401 everywhere, and nothing of the home shows.
    for p in [
        "/",
        "/i/alpha",
        "/images",
        "/folder",
        "/api/instances",
        "/metrics",
        "/sse/instances",
        "/static/app.js",
    ] {
        let r = c.get(format!("{}{p}", ui.base)).send().unwrap();
        assert_eq!(r.status(), 401, "{p}");
        let body = r.text().unwrap();
        assert!(!body.contains("alpha"), "{p}: {body}");
    }
    let r = c
        .get(format!("{}/?token={}", ui.base, "0".repeat(64)))
        .send()
        .unwrap();
    assert_eq!(r.status(), 401);
    let r = c
        .get(format!("{}/api/instances", ui.base))
        .bearer_auth("nope")
        .send()
        .unwrap();
    assert_eq!(r.status(), 401);
    let r = c
        .get(format!("{}/api/instances", ui.base))
        .header("cookie", "clawfarm_ui=wrong")
        .send()
        .unwrap();
    assert_eq!(r.status(), 401);

    // The cookie after the first visit; the redirect never leaves the server.
    let r = c
        .get(format!("{}//evil.example/?token={}", ui.base, ui.token))
        .send()
        .unwrap();
    assert_eq!(r.status(), 303);
    assert_eq!(r.headers()["location"], "/");
    let cookie = login(&ui);
    let page = c
        .get(format!("{}/", ui.base))
        .header("cookie", &cookie)
        .send()
        .unwrap();
    assert_eq!(page.status(), 200);
    let page = page.text().unwrap();
    assert!(page.contains("alpha") && page.contains("beta"));
    no_secret("the instances page", &page);
    let csrf = csrf_of(&page);

    // The API: the same rows as `ps -o json` (plus the dashboard's own fields).
    let api = ui.json("/api/instances");
    let ps = e.ps();
    assert_eq!(api.as_array().unwrap().len(), ps.len());
    for row in &ps {
        let a = api
            .as_array()
            .unwrap()
            .iter()
            .find(|r| r["clawid"] == row["clawid"])
            .unwrap();
        for (k, v) in row.as_object().unwrap() {
            if k != "updated" {
                assert_eq!(&a[k], v, "field {k}");
            }
            assert!(a.get(k).is_some(), "field {k} missing");
        }
        for k in ["phase", "uptime_secs", "cpu_percent", "memory_bytes"] {
            assert!(a.get(k).is_some(), "{k}");
        }
    }
    let alpha = e.clawid("alpha");
    let beta = e.clawid("beta");
    let detail = ui.json(&format!("/api/instances/{alpha}"));
    assert_eq!(detail["instance"]["name"], "alpha");
    assert!(detail["manifest"].as_str().unwrap().contains("(hidden)"));
    assert!(!detail["manifest"].as_str().unwrap().contains("gpt-4o-mini"));
    assert!(ui.get("/api/instances/nope").status() == 404);
    assert!(ui.get("/api/instances/..%2F..%2Fetc").status() == 404);
    let images = ui.json("/api/images");
    let o = e.run(&["images", "-o", "json"]);
    let cli_images: Value = serde_json::from_slice(&o.stdout).unwrap();
    assert_eq!(images, cli_images);
    let folder = ui.json("/api/folder");
    let diags: Vec<String> = folder["diagnostics"]
        .as_array()
        .unwrap()
        .iter()
        .map(|d| d.as_str().unwrap().to_string())
        .collect();
    assert!(
        diags
            .iter()
            .any(|d| d.contains("broken.yaml:7:") && d.contains("cpus")),
        "{diags:?}"
    );
    let fp = c
        .get(format!("{}/folder", ui.base))
        .header("cookie", &cookie)
        .send()
        .unwrap()
        .text()
        .unwrap();
    assert!(fp.contains("broken.yaml:7:"), "{fp}");

    // Cross-site POSTs are refused and change nothing.
    let stop_url = format!("{}/api/instances/{alpha}/stop", ui.base);
    let r = c
        .post(&stop_url)
        .header("cookie", &cookie)
        .header("origin", "http://evil.example")
        .header("x-csrf-token", &csrf)
        .send()
        .unwrap();
    assert_eq!(r.status(), 403);
    let r = c
        .post(&stop_url)
        .header("cookie", &cookie)
        .header("sec-fetch-site", "cross-site")
        .header("x-csrf-token", &csrf)
        .send()
        .unwrap();
    assert_eq!(r.status(), 403);
    let r = c
        .post(&stop_url)
        .header("cookie", &cookie)
        .header("origin", &ui.base)
        .send()
        .unwrap();
    assert_eq!(r.status(), 403, "no CSRF token");
    let r = c
        .post(&stop_url)
        .header("cookie", &cookie)
        .header("origin", &ui.base)
        .header("x-csrf-token", "0".repeat(64))
        .send()
        .unwrap();
    assert_eq!(r.status(), 403, "wrong CSRF token");
    let r = c.get(&stop_url).header("cookie", &cookie).send().unwrap();
    assert_ne!(r.status(), 200, "a GET never acts");
    assert_eq!(e.status("alpha"), "ready");

    // Purge needs the second confirmation (the name typed again).
    let rm_url = format!("{}/api/instances/{beta}/rm", ui.base);
    for body in [
        r#"{"purge": true}"#,
        r#"{"purge": true, "confirm": "alpha"}"#,
        r#"{"purge": true, "confirm": "bet"}"#,
    ] {
        let r = c
            .post(&rm_url)
            .bearer_auth(&ui.token)
            .body(body)
            .send()
            .unwrap();
        assert_eq!(r.status(), 400, "{body}");
    }
    let r = c
        .post(&rm_url)
        .bearer_auth(&ui.token)
        .body(r#"{"purge": true, "sneaky": 1}"#)
        .send()
        .unwrap();
    assert_eq!(r.status(), 400);
    assert_eq!(e.status("beta"), "ready");

    // Checkpoint, restore and suspend: bad input is refused and changes nothing.
    let act = |verb: &str, body: &str| {
        c.post(format!("{}/api/instances/{beta}/{verb}", ui.base))
            .bearer_auth(&ui.token)
            .body(body.to_string())
            .send()
            .unwrap()
    };
    for (verb, body, want) in [
        ("checkpoint", r#"{"tag": "bad tag/.."}"#, 400),
        ("checkpoint", r#"{"tag": "clawfarm-suspend"}"#, 400),
        ("restore", "", 400),
        ("restore", r#"{"tag": "never-taken"}"#, 409),
        ("stop", r#"{"tag": "t"}"#, 400),
        ("suspend", r#"{"tag": "t"}"#, 400),
        ("hibernate", "", 404),
    ] {
        let r = act(verb, body);
        assert_eq!(r.status().as_u16(), want, "{verb} {body}");
    }
    assert_eq!(e.status("beta"), "ready");
    let listed = e.run(&["checkpoints", "beta"]);
    assert!(
        !String::from_utf8_lossy(&listed.stdout).contains("bad tag"),
        "a refused checkpoint was taken"
    );

    // The same-origin page request works (cookie + CSRF + Origin), and so does a bearer.
    let r = c
        .post(&stop_url)
        .header("cookie", &cookie)
        .header("origin", &ui.base)
        .header("x-csrf-token", &csrf)
        .send()
        .unwrap();
    assert_eq!(r.status(), 200, "{}", r.text().unwrap());
    assert_eq!(e.status("alpha"), "stopped");
    let r = c
        .post(format!("{}/api/instances/{alpha}/start", ui.base))
        .bearer_auth(&ui.token)
        .send()
        .unwrap();
    assert_eq!(r.status(), 200);
    wait_for(Duration::from_secs(20), "alpha ready again", || {
        (e.status("alpha") == "ready").then_some(())
    });
    let r = c
        .post(format!("{}/api/instances/{alpha}/explode", ui.base))
        .bearer_auth(&ui.token)
        .send()
        .unwrap();
    assert_eq!(r.status(), 404);
    let ev = e.run(&["events"]);
    assert!(String::from_utf8_lossy(&ev.stdout).contains("clawfarm ui"));

    // /metrics parses as Prometheus text and says what ps says.
    let m = ui.get("/metrics");
    assert!(
        m.headers()["content-type"]
            .to_str()
            .unwrap()
            .starts_with("text/plain; version=0.0.4")
    );
    let text = m.text().unwrap();
    no_secret("/metrics", &text);
    let lines = text.lines().map(|l| Ok(l.to_string()));
    let scrape = prometheus_parse::Scrape::parse(lines).expect("valid Prometheus text");
    let value = |name: &str, label: Option<(&str, &str)>| -> f64 {
        scrape
            .samples
            .iter()
            .find(|s| s.metric == name && label.is_none_or(|(k, v)| s.labels.get(k) == Some(v)))
            .map(|s| match s.value {
                prometheus_parse::Value::Gauge(v)
                | prometheus_parse::Value::Counter(v)
                | prometheus_parse::Value::Untyped(v) => v,
                _ => f64::NAN,
            })
            .unwrap_or_else(|| panic!("no sample {name} {label:?}"))
    };
    assert_eq!(value("clawfarm_instances", Some(("status", "ready"))), 2.0);
    assert_eq!(
        value("clawfarm_instances", Some(("status", "stopped"))),
        0.0
    );
    assert_eq!(
        value("clawfarm_instance_restarts_total", Some(("name", "alpha"))),
        0.0
    );
    let bundle_bytes = value("clawfarm_store_bytes", Some(("kind", "bundle")));
    let stored: u64 = images
        .as_array()
        .unwrap()
        .iter()
        .filter(|i| i["kind"] == "bundle")
        .map(|i| i["size"].as_u64().unwrap())
        .sum();
    assert_eq!(bundle_bytes, stored as f64);
    assert!(
        scrape
            .samples
            .iter()
            .any(|s| s.metric == "clawfarm_reconcile_duration_seconds"),
        "the histogram is there"
    );

    // No secret in any page or answer.
    for p in [
        "/".to_string(),
        format!("/i/{alpha}"),
        "/images".into(),
        "/folder".into(),
        "/api/instances".into(),
        format!("/api/instances/{alpha}"),
        format!("/api/instances/{alpha}/logs/serial"),
        format!("/api/instances/{alpha}/logs/qemu"),
        "/api/folder".into(),
        "/api/events".into(),
        "/api/images".into(),
    ] {
        let r = ui.get(&p);
        assert_eq!(r.status(), 200, "{p}");
        no_secret(&p, &r.text().unwrap());
    }
}

#[test]
fn ui_refuses_a_second_server_on_a_busy_port_and_bad_flags() {
    let e = env();
    e.apply();
    let ui = e.ui(&[]);
    let addr = ui.base.trim_start_matches("http://").to_string();
    let o = e.run(&["ui", "--listen", &addr]);
    assert_eq!(o.status.code(), Some(1));
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(err.contains(&format!("cannot listen on {addr}")), "{err}");
    let o = e.run(&["ui", "--listen", "nonsense"]);
    assert_eq!(o.status.code(), Some(2));
    let o = e.run(&["ui", "--listen", "127.0.0.1:0", "--dir", "/nonexistent/x"]);
    assert_eq!(o.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&o.stderr).contains("is not a folder"));
    // The token survives restarts (a bookmark keeps working).
    let ui2 = e.ui(&[]);
    assert_eq!(ui2.token, ui.token);
}

/// A page on another origin that tries to make the browser stop `clawid`.
fn serve_attacker(target: String, clawid: String) -> u16 {
    let l = TcpListener::bind(("127.0.0.1", 0)).unwrap();
    let port = l.local_addr().unwrap().port();
    std::thread::spawn(move || {
        for c in l.incoming() {
            let Ok(mut c) = c else { continue };
            let mut buf = [0u8; 4096];
            let _ = c.read(&mut buf);
            let page = format!(
                "<!doctype html><html><body><h1>cute cats</h1>\
<form id=f method=POST action=\"{target}/api/instances/{clawid}/stop\"></form>\
<script>fetch(\"{target}/api/instances/{clawid}/stop\", {{method: \"POST\", credentials: \"include\", mode: \"no-cors\"}});\
setTimeout(() => document.getElementById('f').submit(), 300);</script></body></html>"
            );
            let _ = write!(
                c,
                "HTTP/1.1 200 OK\r\nContent-Type: text/html\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{page}",
                page.len()
            );
        }
    });
    port
}

#[test]
fn browser_live_table_actions_and_screenshots() {
    let Some((driver, chrome)) = browser_tools() else {
        eprintln!(
            "SKIPPED: chromedriver or chromium is not installed (scripts/setup-host.sh installs chromium and chromium-driver)"
        );
        return;
    };
    let e = env();
    e.apply();
    let ui = e.ui(&["--dir", e.dir.to_str().unwrap()]);
    let alpha = e.clawid("alpha");
    let beta = e.clawid("beta");
    let shots = screenshot_dir();
    let b = Browser::start(&driver, &chrome);

    // Without the token: the 401 page.
    b.goto(&format!("{}/", ui.base));
    let t = b.js("return document.body.innerText");
    assert!(t.as_str().unwrap().contains("401"), "{t}");

    // Log in: the token leaves the address bar, the table lists what apply created.
    b.goto(&ui.login_url());
    let url = b.js("return location.href");
    assert_eq!(url.as_str().unwrap(), format!("{}/", ui.base));
    let cookie_visible = b.js("return document.cookie");
    assert_eq!(cookie_visible, "", "the cookie is HttpOnly");
    wait_for(Duration::from_secs(20), "two rows", || {
        let n = b.js("return document.querySelectorAll('#instances tbody tr').length");
        (n == 2).then_some(())
    });
    let status_of = |id: &str| {
        b.js(&format!(
            "const r = document.getElementById('row-{id}'); return r ? r.dataset.status : null"
        ))
    };
    assert_eq!(status_of(&alpha), "ready");
    assert_eq!(status_of(&beta), "ready");
    wait_for(Duration::from_secs(20), "the live stream", || {
        (b.js("return document.getElementById('live').textContent") == "live").then_some(())
    });
    b.screenshot(&shots.join("instances.png"));

    // A change made by the CLI shows up without a reload.
    b.js("window.__noReload = 42; return null");
    let o = e.run(&["stop", "alpha"]);
    assert!(o.status.success());
    wait_for(Duration::from_secs(20), "alpha stopped in the page", || {
        (status_of(&alpha) == "stopped").then_some(())
    });
    assert_eq!(
        b.js("return window.__noReload"),
        42,
        "the page was reloaded"
    );

    // The Stop button stops beta (after the confirmation).
    b.click(&format!("#row-{beta} button[data-act=stop]"));
    let q = b.accept_alert();
    assert!(q.contains("Stop beta"), "{q}");
    wait_for(Duration::from_secs(20), "beta stopped", || {
        (e.status("beta") == "stopped").then_some(())
    });
    wait_for(Duration::from_secs(20), "beta stopped in the page", || {
        (status_of(&beta) == "stopped").then_some(())
    });
    assert_eq!(b.js("return window.__noReload"), 42);

    // Dismissing the dialog does nothing.
    b.click(&format!("#row-{beta} button[data-act=start]"));
    wait_for(Duration::from_secs(10), "a dialog", || b.alert_text());
    b.dismiss_alert();
    std::thread::sleep(Duration::from_secs(1));
    assert_eq!(e.status("beta"), "stopped");

    // Start beta from the page, then screenshot the table with mixed statuses.
    b.click(&format!("#row-{beta} button[data-act=start]"));
    b.accept_alert();
    wait_for(Duration::from_secs(20), "beta ready in the page", || {
        (status_of(&beta) == "ready").then_some(())
    });
    b.screenshot(&shots.join("instances-live.png"));

    // Purge from the page needs the name typed again: a wrong name keeps beta.
    b.click(&format!("#row-{beta} button[data-act=purge]"));
    b.accept_alert();
    b.alert_send("not-beta");
    b.accept_alert();
    std::thread::sleep(Duration::from_secs(1));
    assert_eq!(e.status("beta"), "ready");

    // A page on another origin cannot use the session.
    let evil = serve_attacker(ui.base.clone(), beta.clone());
    b.goto(&format!("http://localhost:{evil}/"));
    std::thread::sleep(Duration::from_secs(3));
    assert_eq!(e.status("beta"), "ready", "a cross-site page stopped beta");

    // The instance page, the images page and the folder page.
    b.goto(&format!("{}/i/{beta}", ui.base));
    // The fake guest reports its phases without timestamps: the boot summary, no bars (the
    // bars of a real boot are checked by tests/e2e_ui.rs).
    wait_for(Duration::from_secs(20), "the boot summary", || {
        b.js("return document.getElementById('bootsum').textContent")
            .as_str()
            .is_some_and(|s| s.ends_with(": done"))
            .then_some(())
    });
    let boots = b.js("return document.querySelectorAll('#boots .pboot').length");
    assert!(boots.as_u64().unwrap() >= 2, "earlier boots: {boots}");
    let serial = b.js("return document.getElementById('serial').textContent");
    let want = ui.json(&format!("/api/instances/{beta}/logs/serial"))["text"]
        .as_str()
        .unwrap()
        .to_string();
    if !want.is_empty() {
        assert!(
            serial
                .as_str()
                .unwrap()
                .contains(want.lines().next().unwrap())
        );
    }
    // Checkpoint from the page (the tag is asked for), listed live; restore from the list.
    b.click("#actions button[data-act=checkpoint]");
    b.alert_send("from-the-page");
    b.accept_alert();
    wait_for(Duration::from_secs(20), "the checkpoint listed", || {
        (b.js("return document.querySelectorAll('#checkpoints tr[data-tag=\"from-the-page\"]').length") == 1)
            .then_some(())
    });
    assert!(
        String::from_utf8_lossy(&e.run(&["checkpoints", "beta"]).stdout).contains("from-the-page")
    );
    b.screenshot(&shots.join("instance.png"));
    b.click("#checkpoints button[data-tag=\"from-the-page\"]");
    let q = b.accept_alert();
    assert!(
        q.contains("Restore beta to checkpoint from-the-page"),
        "{q}"
    );
    wait_for(Duration::from_secs(20), "the restore event", || {
        String::from_utf8_lossy(&e.run(&["events", "beta"]).stdout)
            .lines()
            .any(|l| l.contains("restore") && l.contains("from-the-page"))
            .then_some(())
    });
    // Suspend from the page; the button then says Resume, and resumes it.
    b.click("#actions button[data-act=suspend]");
    b.accept_alert();
    wait_for(Duration::from_secs(20), "beta suspended", || {
        (e.status("beta") == "suspended").then_some(())
    });
    wait_for(Duration::from_secs(20), "the Resume button", || {
        (b.js("const x = document.querySelector('#actions button[data-act=start]'); return x ? x.textContent : null") == "Resume")
            .then_some(())
    });
    b.click("#actions button[data-act=start]");
    b.accept_alert();
    wait_for(Duration::from_secs(20), "beta resumed", || {
        (e.status("beta") == "ready").then_some(())
    });
    b.goto(&format!("{}/images", ui.base));
    b.screenshot(&shots.join("images.png"));
    b.goto(&format!("{}/folder", ui.base));
    b.screenshot(&shots.join("folder.png"));
    let page = b.js("return document.documentElement.outerHTML");
    no_secret("the folder page", page.as_str().unwrap());
    assert!(Path::new(&shots.join("instances.png")).exists());
}

#[test]
fn metrics_count_watch_passes() {
    // A watch on the fake driver writes one `reconcile` line per pass; /metrics of a separate
    // `clawfarm ui` turns them into the histogram and the last-pass time.
    let e = env();
    let mut w = e
        .cmd(&["watch", e.dir.to_str().unwrap(), "--resync", "1s"])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let ui = e.ui(&[]);
    let hist = wait_for(Duration::from_secs(30), "two passes in /metrics", || {
        let text = ui.get("/metrics").text().unwrap();
        let s = prometheus_parse::Scrape::parse(text.lines().map(|l| Ok(l.to_string()))).unwrap();
        let h = s
            .samples
            .iter()
            .find(|x| x.metric == "clawfarm_reconcile_duration_seconds")
            .and_then(|x| match &x.value {
                prometheus_parse::Value::Histogram(h) => Some(h.clone()),
                _ => None,
            })?;
        let total = h.iter().find(|c| c.less_than.is_infinite())?.count;
        let last = s
            .samples
            .iter()
            .find(|x| x.metric == "clawfarm_last_reconcile_timestamp_seconds")?;
        (total >= 2.0).then_some((h, last.clone()))
    });
    let _ = w.kill();
    let _ = w.wait();
    // Buckets are cumulative.
    for pair in hist.0.windows(2) {
        assert!(pair[0].count <= pair[1].count, "{:?}", hist.0);
    }
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs_f64();
    match hist.1.value {
        prometheus_parse::Value::Gauge(v) | prometheus_parse::Value::Untyped(v) => {
            assert!((now - v).abs() < 60.0, "last pass {v}, now {now}")
        }
        ref v => panic!("{v:?}"),
    }
}
