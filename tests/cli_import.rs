//! `clawfarm import` with the real (QEMU) driver's store path: the images a box refers to are
//! fetched over real HTTP on 127.0.0.1 and verified at import, so `run` and `apply` work
//! offline afterwards; `images` shows what is stored and what is still missing; a wrong
//! digest stores nothing and fails the import.

#[path = "common/httpd.rs"]
mod httpd;

use std::process::{Command, Output, Stdio};

use httpd::{Behavior, Server};

fn sha(b: &[u8]) -> String {
    clawfarm::util::digest::sha256_hex(b)
}

fn clawspec(name: &str, url: &str, sum: &str) -> String {
    serde_json::json!({
        "schema_version": 3,
        "name": name,
        "image": [{"name": "base", "ref": url, "sha256": sum}],
        "bootstrap": {"id": "openclaw", "install_script": "true", "start_script": "true",
                      "params": {"required": [], "optional": []}}
    })
    .to_string()
}

fn clawfarm(home: &std::path::Path, args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_clawfarm"))
        .args(args)
        .env("CLAWFARM_HOME", home)
        .env_remove("CLAWFARM_DRIVER")
        .stdin(Stdio::null())
        .output()
        .unwrap()
}

fn text(o: &Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    )
}

#[test]
fn import_fetches_and_verifies_every_image_and_images_shows_what_is_missing() {
    let t = tempfile::tempdir().unwrap();
    let home = t.path().join("home");
    let srv = Server::start(Behavior::default());
    // A raw disk image (any bytes that are not a refused qcow2).
    let body: Vec<u8> = (0..300_000u32).map(|i| (i % 251) as u8).collect();
    let sum = sha(&body);
    srv.add("/base.img", body.clone());

    // --no-fetch records the bundle only; `images` says the base is missing.
    let lazy = t.path().join("lazy.clawbox");
    std::fs::write(&lazy, clawspec("lazy", &srv.url("/base.img"), &sum)).unwrap();
    let o = clawfarm(&home, &["import", "--no-fetch", lazy.to_str().unwrap()]);
    assert!(o.status.success(), "{}", text(&o));
    assert!(srv.requests().is_empty(), "--no-fetch downloaded");
    let o = clawfarm(&home, &["images", "-o", "json"]);
    let v: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    let lazy_row = v
        .as_array()
        .unwrap()
        .iter()
        .find(|r| r["name"] == "lazy")
        .unwrap();
    assert_eq!(lazy_row["missing"], serde_json::json!([sum]), "{v}");

    // A plain import fetches it, verified, and `images` shows nothing missing.
    let o = clawfarm(&home, &["import", lazy.to_str().unwrap()]);
    assert!(o.status.success(), "{}", text(&o));
    assert!(text(&o).contains("image base"), "{}", text(&o));
    assert_eq!(std::fs::read(home.join("blobs").join(&sum)).unwrap(), body);
    let o = clawfarm(&home, &["images"]);
    let table = String::from_utf8_lossy(&o.stdout).to_string();
    let row = table.lines().find(|l| l.contains("lazy")).unwrap();
    assert!(row.trim_end().ends_with('-'), "nothing missing: {table}");
    // A second import downloads nothing.
    let before = srv.requests().len();
    let o = clawfarm(&home, &["import", lazy.to_str().unwrap()]);
    assert!(text(&o).contains("already stored"), "{}", text(&o));
    assert_eq!(srv.requests().len(), before);

    // A wrong digest: the import fails naming the image, and no blob is stored.
    let bad_sum = sha(b"something else");
    let bad = t.path().join("bad.clawbox");
    std::fs::write(&bad, clawspec("bad", &srv.url("/base.img"), &bad_sum)).unwrap();
    let o = clawfarm(&home, &["import", bad.to_str().unwrap()]);
    assert_eq!(o.status.code(), Some(1), "{}", text(&o));
    assert!(text(&o).contains("SHA-256 mismatch"), "{}", text(&o));
    assert!(text(&o).contains("image \"base\" of bad"), "{}", text(&o));
    assert!(!home.join("blobs").join(&bad_sum).exists());
}
