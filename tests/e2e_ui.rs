//! End to end, the dashboard with a real guest: `clawfarm watch DIR --ui` boots a TCG VM
//! while the instance page is open in headless Chromium; the serial console and the boot
//! timeline appear and grow while the guest boots, then the timeline shows the guest's
//! phases once it is ready; `/metrics` counts the watch pass. Screenshot saved to
//! `target/ui-screenshots/e2e-instance.png`.
//!
//! Runs only with `CLAWFARM_E2E=1`, like `tests/e2e_qemu.rs`. Without chromedriver the same
//! checks run through the JSON API the page uses (and say so).

mod ui_support;

mod net_support;

use net_support::{image, sha256};
use std::process::Command;
use std::time::{Duration, Instant};

use ui_support::{Browser, UiProc, browser_tools, screenshot_dir, wait_for};

const KEY: &str = "ui-e2e-secret-7f3a";

#[test]
fn dashboard_follows_a_real_boot() {
    if std::env::var("CLAWFARM_E2E").as_deref() != Ok("1") {
        eprintln!("skipped: set CLAWFARM_E2E=1 to boot a real guest (several minutes)");
        return;
    }
    let img = image();
    let t = tempfile::tempdir().unwrap();
    // QEMU runs as clawfarm-qemu: the home must be reachable (rfc/012-sandbox.md).
    std::fs::set_permissions(
        t.path(),
        std::os::unix::fs::PermissionsExt::from_mode(0o711),
    )
    .unwrap();
    let home = t.path().join("home");
    let dir = t.path().join("agents");
    let src = t.path().join("bundle");
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::create_dir_all(src.join("claw")).unwrap();
    std::fs::write(src.join("claw/hello.txt"), "hello\n").unwrap();
    let spec = serde_json::json!({
        "schema_version": 3,
        "name": "ui-e2e",
        "image": [{"name": "base", "ref": format!("file://{}", img.display()), "sha256": sha256(&img)}],
        "bootstrap": {
            "id": "openclaw",
            "install_script": "#!/bin/bash\necho installing; sleep 2; echo installed > /root/installed\n",
            "start_script": "#!/bin/bash\nset -e\ncd /opt/claw\nnohup python3 -m http.server 18902 >/dev/null 2>&1 &\nfor i in $(seq 50); do (exec 3<>/dev/tcp/127.0.0.1/18902) 2>/dev/null && exit 0; sleep 0.2; done\nexit 1\n",
            "params": {"required": [{"key": "API_KEY", "label": "key", "secret": true}]}
        }
    });
    std::fs::write(src.join("clawspec.json"), spec.to_string()).unwrap();
    let bx = t.path().join("ui.clawbox");
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
    let gw = ui_support::free_port();
    std::fs::write(
        dir.join("agent-ui.yaml"),
        format!(
            "apiVersion: clawfarm/v1\nkind: Claw\nmetadata:\n  name: agent-ui\nspec:\n  clawbox: ../ui.clawbox\n  cpus: 2\n  memory: 1GiB\n  ports:\n    - {{host: {gw}, guest: 18902, name: gateway}}\n  params:\n    API_KEY: {{env: UI_E2E_KEY}}\n"
        ),
    )
    .unwrap();

    let mut cmd = Command::new(env!("CARGO_BIN_EXE_clawfarm"));
    cmd.args([
        "watch",
        dir.to_str().unwrap(),
        "--ui",
        "--listen",
        "127.0.0.1:0",
        "--resync",
        "20s",
    ])
    .env("CLAWFARM_HOME", &home)
    .env("CLAWFARM_ACCEL", "tcg")
    .env("UI_E2E_KEY", KEY)
    .env_remove("CLAWFARM_DRIVER");
    let t0 = Instant::now();
    let ui = UiProc::spawn(cmd);
    let log = |m: &str| eprintln!("[e2e_ui {:>6.1}s] {m}", t0.elapsed().as_secs_f64());

    // The instance appears (watch imports, fetches, creates, starts it).
    let clawid = wait_for(Duration::from_secs(600), "the instance in the API", || {
        let v = ui.json("/api/instances");
        v.as_array()?
            .first()
            .filter(|r| r["pid"].is_u64())
            .and_then(|r| r["clawid"].as_str().map(String::from))
    });
    log(&format!("{clawid} started"));
    let status = |ui: &UiProc| {
        ui.json(&format!("/api/instances/{clawid}"))["instance"]["status"]
            .as_str()
            .unwrap()
            .to_string()
    };

    let tools = browser_tools();
    let browser = tools.as_ref().map(|(d, c)| Browser::start(d, c));
    if browser.is_none() {
        eprintln!("chromedriver is not installed: checking through the JSON API only");
    }
    if let Some(b) = &browser {
        b.goto(&ui.login_url());
        b.goto(&format!("{}/i/{clawid}", ui.base));
        // While it boots: the serial console fills in and the timeline has its boot bar.
        let serial_len = || {
            b.js("return document.getElementById('serial').textContent.length")
                .as_u64()
                .unwrap_or(0)
        };
        let first = wait_for(
            Duration::from_secs(300),
            "serial output in the page",
            || {
                let n = serial_len();
                (n > 0).then_some(n)
            },
        );
        let st = status(&ui);
        log(&format!("serial in the page ({first} chars) while {st}"));
        assert_eq!(
            st, "booting",
            "the page showed the console only after the boot"
        );
        let bars = b.js("return document.querySelectorAll('#timeline svg rect').length");
        assert!(bars.as_u64().unwrap() >= 1, "no timeline while booting");
        b.js("window.__noReload = 7; return null");
        wait_for(Duration::from_secs(300), "more serial output", || {
            (serial_len() > first + 200).then_some(())
        });
        log("the console grows without a reload");
        b.screenshot(&screenshot_dir().join("e2e-instance-booting.png"));
        wait_for(
            Duration::from_secs(900),
            "a guest phase in the timeline",
            || {
                let n = b.js("return document.querySelectorAll('#timeline rect[data-phase=\"cloud-init\"]').length");
                (n.as_u64().unwrap_or(0) > 0).then_some(())
            },
        );
        log("cloud-init phase in the timeline");
        assert_eq!(b.js("return window.__noReload"), 7);
    } else {
        let first = wait_for(Duration::from_secs(300), "serial output", || {
            let v = ui.json(&format!("/api/instances/{clawid}/logs/serial"));
            let n = v["text"].as_str().unwrap().len();
            (n > 0).then_some(n)
        });
        assert_eq!(status(&ui), "booting");
        log(&format!("serial ({first} bytes) while booting"));
    }

    // Ready: the timeline has the guest's phases with durations.
    wait_for(Duration::from_secs(900), "ready", || {
        (status(&ui) == "ready").then_some(())
    });
    log("ready");
    let d = ui.json(&format!("/api/instances/{clawid}"));
    let phases: Vec<String> = d["boot"]["phases"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| {
            format!(
                "{}={}",
                p["phase"].as_str().unwrap(),
                p["state"].as_str().unwrap()
            )
        })
        .collect();
    log(&format!("timeline: {phases:?}"));
    for want in ["boot=ok", "cloud-init=ok", "install=ok", "start=ok"] {
        assert!(
            phases.iter().any(|p| p == want),
            "{want} missing: {phases:?}"
        );
    }
    let serial = ui.json(&format!("/api/instances/{clawid}/logs/serial"));
    assert!(
        serial["text"].as_str().unwrap().contains("Linux"),
        "a real kernel's console"
    );
    if let Some(b) = &browser {
        wait_for(Duration::from_secs(30), "the page says ready", || {
            (b.js("return document.getElementById('status').textContent") == "ready").then_some(())
        });
        wait_for(Duration::from_secs(30), "the install bar", || {
            let n = b.js(
                "return document.querySelectorAll('#timeline rect[data-phase=\"install\"]').length",
            );
            (n.as_u64().unwrap_or(0) > 0).then_some(())
        });
        b.js("window.scrollTo(0, 0); return null");
        b.screenshot(&screenshot_dir().join("e2e-instance.png"));
        b.goto(&format!("{}/", ui.base));
        std::thread::sleep(Duration::from_secs(2));
        b.screenshot(&screenshot_dir().join("e2e-instances.png"));
        let html = b.js("return document.documentElement.outerHTML");
        assert!(!html.as_str().unwrap().contains(KEY));
    }
    let m = ui.get("/metrics").text().unwrap();
    let scrape =
        prometheus_parse::Scrape::parse(m.lines().map(|l| Ok(l.to_string()))).expect("metrics");
    let passes = scrape
        .samples
        .iter()
        .find(|s| s.metric == "clawfarm_reconcile_duration_seconds")
        .and_then(|s| match &s.value {
            prometheus_parse::Value::Histogram(h) => h
                .iter()
                .find(|c| c.less_than.is_infinite())
                .map(|c| c.count),
            _ => None,
        })
        .expect("the reconcile histogram");
    log(&format!("metrics: {passes} watch pass(es)"));
    assert!(passes >= 1.0, "{m}");
    assert!(m.contains("clawfarm_instances{status=\"ready\"} 1"), "{m}");
    assert!(!m.contains(KEY));

    // Stop from the API (bearer), then clean up.
    let r = ui_support::client()
        .post(format!("{}/api/instances/{clawid}/stop", ui.base))
        .bearer_auth(&ui.token)
        .send()
        .unwrap();
    assert_eq!(r.status(), 200);
    drop(browser);
    drop(ui);
    let o = Command::new(env!("CARGO_BIN_EXE_clawfarm"))
        .args(["rm", "-f", "--purge", &clawid])
        .env("CLAWFARM_HOME", &home)
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
}
