//! Shared by the tests that boot real guests or talk to local services: the guest image,
//! a file digest, and a tiny HTTP service on the host's 127.0.0.1.
#![allow(dead_code)]

use std::io::{BufRead, BufReader, Write};
use std::net::{TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Instant;

/// `$CLAWFARM_GUEST_IMAGE`, else the cached image of `scripts/build-guest-image.sh`.
pub fn image() -> PathBuf {
    if let Some(p) = std::env::var_os("CLAWFARM_GUEST_IMAGE").filter(|p| !p.is_empty()) {
        return PathBuf::from(p);
    }
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let out = Command::new(root.join("scripts/build-guest-image.sh"))
        .stderr(Stdio::inherit())
        .output()
        .expect("run build-guest-image.sh");
    assert!(out.status.success(), "guest image build failed");
    let s = String::from_utf8_lossy(&out.stdout);
    PathBuf::from(s.lines().last().expect("image path").trim())
}

/// SHA-256 (hex) of a file, by `sha256sum`.
pub fn sha256(p: &Path) -> String {
    let out = Command::new("sha256sum").arg(p).output().unwrap();
    String::from_utf8_lossy(&out.stdout)
        .split_whitespace()
        .next()
        .unwrap()
        .to_string()
}

/// Read an HTTP request head from `c`; returns its first line.
pub fn read_request(c: &TcpStream) -> String {
    let mut rd = BufReader::new(c.try_clone().unwrap());
    let mut first = String::new();
    let _ = rd.read_line(&mut first);
    loop {
        let mut l = String::new();
        if rd.read_line(&mut l).unwrap_or(0) == 0 || l == "\r\n" {
            break;
        }
    }
    first
}

/// `tar -czf OUT -C SRC clawspec.json claw`: a bundle from a source folder.
pub fn pack_bundle(src: &Path, out: &Path) {
    let st = Command::new("tar")
        .arg("-czf")
        .arg(out)
        .arg("-C")
        .arg(src)
        .args(["clawspec.json", "claw"])
        .status()
        .unwrap();
    assert!(st.success());
}

/// An HTTP/1.0 service on 127.0.0.1 that answers every request with `body`, followed by
/// the request line when `echo` is set. Returns its port.
pub fn service(body: &'static str, echo: bool) -> u16 {
    let l = TcpListener::bind(("127.0.0.1", 0)).unwrap();
    let port = l.local_addr().unwrap().port();
    std::thread::spawn(move || {
        for c in l.incoming() {
            let Ok(mut c) = c else { continue };
            std::thread::spawn(move || {
                let first = read_request(&c);
                let body = if echo {
                    format!("{body} {}", first.trim())
                } else {
                    body.to_string()
                };
                let _ = write!(
                    c,
                    "HTTP/1.0 200 OK\r\nContent-Length: {}\r\n\r\n{body}",
                    body.len()
                );
            });
        }
    });
    port
}

/// When the test started (the first call).
pub fn t0() -> Instant {
    static T0: std::sync::OnceLock<Instant> = std::sync::OnceLock::new();
    *T0.get_or_init(Instant::now)
}

/// A progress line on stderr: `[tag seconds-since-t0] message`.
pub fn log_as(tag: &str, m: &str) {
    eprintln!("[{tag} {:>7.1}s] {m}", t0().elapsed().as_secs_f64());
}

/// A work folder `/tmp/<prefix>…` (short: unix socket paths are limited to 107 bytes) that
/// the QEMU user can traverse (0711; QEMU never runs as root, `rfc/012-sandbox.md`).
pub fn work_dir(prefix: &str) -> tempfile::TempDir {
    let work = tempfile::Builder::new()
        .prefix(prefix)
        .tempdir_in("/tmp")
        .unwrap();
    std::fs::set_permissions(
        work.path(),
        std::os::unix::fs::PermissionsExt::from_mode(0o711),
    )
    .unwrap();
    work
}
