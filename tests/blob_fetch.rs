//! Blob downloads against a real HTTP server on 127.0.0.1: verify, resume, restart,
//! mismatch, catalog names, file:// sources, disk-image checks.

#[path = "common/blobkit.rs"]
mod blobkit;
#[path = "common/httpd.rs"]
mod httpd;

use std::fs;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use blobkit::*;
use clawfarm::input::clawspec::Image;
use clawfarm::store::blob::BlobStore;
use clawfarm::store::part::{BlobError, FetchOptions};
use clawfarm::store::progress::{Progress, ProgressEvent};
use httpd::{Behavior, Server};

fn fast_opts(retries: u32) -> FetchOptions {
    FetchOptions {
        retries,
        retry_delay: Duration::from_millis(10),
        ..FetchOptions::default()
    }
}

fn chain(e: &dyn std::error::Error) -> String {
    let mut s = e.to_string();
    let mut cur = e.source();
    while let Some(c) = cur {
        s.push_str(": ");
        s.push_str(&c.to_string());
        cur = c.source();
    }
    s
}

fn image(reference: &str, sha256: &str) -> Image {
    Image {
        name: "base".into(),
        reference: reference.into(),
        sha256: sha256.into(),
    }
}

#[tokio::test]
async fn downloads_verifies_and_never_refetches() {
    let (_d, home) = home();
    let srv = Server::start(Behavior::default());
    let body = data(3 << 20, 1);
    let sum = sha(&body);
    srv.add("/a.img", body.clone());
    let store = BlobStore::with_options(&home, fast_opts(0));

    let seen = Arc::new(Mutex::new(Vec::new()));
    let s2 = seen.clone();
    let progress = Progress::from_fn(move |e| s2.lock().unwrap().push(e.clone()));
    let p = store
        .ensure(&image(&srv.url("/a.img"), &sum), None, &progress)
        .await
        .unwrap();
    assert_eq!(p, home.blob(&sum));
    assert_eq!(fs::read(&p).unwrap(), body);
    assert_eq!(mode(&p), 0o444);
    assert!(!store.part_path(&sum).exists());
    assert!(store.has(&sum));
    assert!(store.verify(&sum).unwrap());
    let events = seen.lock().unwrap().clone();
    assert!(matches!(events.first(), Some(ProgressEvent::Start { .. })));
    assert!(
        matches!(events.last(), Some(ProgressEvent::Finish { ok: true, position, .. }) if *position == body.len() as u64),
        "{events:?}"
    );

    // Present: no request at all.
    store
        .ensure(&image(&srv.url("/a.img"), &sum), None, &Progress::silent())
        .await
        .unwrap();
    assert_eq!(srv.requests().len(), 1);
}

#[tokio::test]
async fn dropped_connection_resumes_with_range() {
    let (_d, home) = home();
    let body = data(2 << 20, 2);
    let half = body.len() / 2;
    let sum = sha(&body);
    let srv = Server::start(Behavior {
        drop_first_after: Some(half),
        ..Behavior::default()
    });
    srv.add("/b.img", body.clone());
    let store = BlobStore::with_options(&home, fast_opts(2));
    let p = store
        .ensure(&image(&srv.url("/b.img"), &sum), None, &Progress::silent())
        .await
        .unwrap();
    assert_eq!(fs::read(&p).unwrap(), body);
    let reqs = srv.requests();
    assert_eq!(reqs.len(), 2, "{reqs:?}");
    assert_eq!(reqs[0].header("range"), None);
    assert_eq!(
        reqs[1].header("range"),
        Some(format!("bytes={half}-").as_str())
    );
    assert!(!store.part_path(&sum).exists());
}

#[tokio::test]
async fn interrupted_download_resumes_in_a_later_call() {
    let (_d, home) = home();
    let body = data(2 << 20, 3);
    let third = body.len() / 3;
    let sum = sha(&body);
    let srv = Server::start(Behavior {
        drop_first_after: Some(third),
        ..Behavior::default()
    });
    srv.add("/c.img", body.clone());
    // One attempt only: the first call fails and keeps its .part as progress.
    let once = FetchOptions {
        max_attempts: 1,
        ..fast_opts(0)
    };
    let store = BlobStore::with_options(&home, once.clone());
    let err = store
        .ensure(&image(&srv.url("/c.img"), &sum), None, &Progress::silent())
        .await
        .unwrap_err();
    assert!(matches!(err, BlobError::Http { .. }), "{err:?}");
    // The chain names the URL once (our message), not again in the source's.
    let chain = chain(&err);
    assert_eq!(chain.matches("/c.img").count(), 1, "{chain}");
    assert_eq!(
        fs::metadata(store.part_path(&sum)).unwrap().len(),
        third as u64
    );
    assert!(!store.has(&sum));

    // A new store (think: a new process) continues from the part: the hash covers it.
    let store = BlobStore::with_options(&home, once);
    let p = store
        .ensure(&image(&srv.url("/c.img"), &sum), None, &Progress::silent())
        .await
        .unwrap();
    assert_eq!(fs::read(&p).unwrap(), body);
    let reqs = srv.requests();
    assert_eq!(reqs.len(), 2);
    assert_eq!(
        reqs[1].header("range"),
        Some(format!("bytes={third}-").as_str())
    );
}

#[tokio::test]
async fn server_ignoring_range_restarts_from_zero() {
    let (_d, home) = home();
    let body = data(2 << 20, 4);
    let sum = sha(&body);
    let srv = Server::start(Behavior {
        drop_first_after: Some(700_000),
        honor_range: false,
        ..Behavior::default()
    });
    srv.add("/d.img", body.clone());
    let store = BlobStore::with_options(&home, fast_opts(2));
    let p = store
        .ensure(&image(&srv.url("/d.img"), &sum), None, &Progress::silent())
        .await
        .unwrap();
    assert_eq!(fs::read(&p).unwrap(), body);
    let reqs = srv.requests();
    assert_eq!(reqs.len(), 2);
    // It asked to resume, got a 200 with the whole file, and restarted cleanly.
    assert_eq!(reqs[1].header("range"), Some("bytes=700000-"));
}

#[tokio::test]
async fn wrong_bytes_fail_and_leave_nothing() {
    let (_d, home) = home();
    let body = data(1 << 20, 5);
    let sum = sha(&body);
    let srv = Server::start(Behavior {
        corrupt: true,
        ..Behavior::default()
    });
    srv.add("/e.img", body);
    let store = BlobStore::with_options(&home, fast_opts(2));
    let url = srv.url("/e.img");
    let err = store
        .ensure(&image(&url, &sum), None, &Progress::silent())
        .await
        .unwrap_err();
    assert!(matches!(err, BlobError::Mismatch { .. }), "{err:?}");
    let msg = err.to_string();
    assert!(msg.contains(&url) && msg.contains(&sum), "{msg}");
    assert!(!store.has(&sum));
    assert!(!store.part_path(&sum).exists());
    assert_nothing_left(&home);
    assert_eq!(srv.requests().len(), 1, "a mismatch is not retried");
}

#[tokio::test]
async fn stale_part_from_another_file_restarts_once_from_zero() {
    let (_d, home) = home();
    let body = data(1 << 20, 6);
    let sum = sha(&body);
    let srv = Server::start(Behavior::default());
    srv.add("/f.img", body.clone());
    let store = BlobStore::with_options(&home, fast_opts(0));
    store.ensure_dirs().unwrap();
    // A part left by an older file at the same URL: resuming it cannot verify.
    fs::write(store.part_path(&sum), data(1000, 99)).unwrap();
    let p = store
        .ensure(&image(&srv.url("/f.img"), &sum), None, &Progress::silent())
        .await
        .unwrap();
    assert_eq!(fs::read(&p).unwrap(), body);
    let reqs = srv.requests();
    assert_eq!(reqs.len(), 2);
    assert_eq!(reqs[0].header("range"), Some("bytes=1000-"));
    assert_eq!(reqs[1].header("range"), None);
}

#[tokio::test]
async fn complete_part_is_published_after_416() {
    let (_d, home) = home();
    let body = data(1 << 20, 7);
    let sum = sha(&body);
    let srv = Server::start(Behavior::default());
    srv.add("/g.img", body.clone());
    let store = BlobStore::with_options(&home, fast_opts(0));
    store.ensure_dirs().unwrap();
    // Killed after the last byte but before the rename.
    fs::write(store.part_path(&sum), &body).unwrap();
    let p = store
        .ensure(&image(&srv.url("/g.img"), &sum), None, &Progress::silent())
        .await
        .unwrap();
    assert_eq!(fs::read(&p).unwrap(), body);
    assert_eq!(srv.requests().len(), 1);
}

#[tokio::test]
async fn http_errors_name_the_url() {
    let (_d, home) = home();
    let srv = Server::start(Behavior::default());
    let store = BlobStore::with_options(&home, fast_opts(3));
    let url = srv.url("/missing.img");
    let err = store
        .ensure(&image(&url, &sha(b"x")), None, &Progress::silent())
        .await
        .unwrap_err();
    assert!(
        matches!(err, BlobError::Status { status: 404, .. }),
        "{err:?}"
    );
    assert!(err.to_string().contains(&url));
    assert_eq!(srv.requests().len(), 1, "404 is not retried");

    srv.set_behavior(Behavior {
        status: Some(503),
        ..Behavior::default()
    });
    let err = store
        .ensure(&image(&url, &sha(b"x")), None, &Progress::silent())
        .await
        .unwrap_err();
    assert!(
        matches!(err, BlobError::Status { status: 503, .. }),
        "{err:?}"
    );
    assert_eq!(srv.requests().len(), 1 + 4, "503 is retried 3 times");
}

#[tokio::test]
async fn file_source_is_copied_and_verified() {
    let (d, home) = home();
    let body = data(3 << 20, 8);
    let sum = sha(&body);
    let src = d.path().join("src.img");
    fs::write(&src, &body).unwrap();
    let store = BlobStore::new(&home);
    let url = format!("file://{}", src.display());
    let p = store
        .ensure(&image(&url, &sum), None, &Progress::silent())
        .await
        .unwrap();
    assert_eq!(fs::read(&p).unwrap(), body);
    assert_eq!(mode(&p), 0o444);

    let err = store
        .ensure(&image(&url, &sha(b"other")), None, &Progress::silent())
        .await
        .unwrap_err();
    assert!(matches!(err, BlobError::Mismatch { .. }), "{err:?}");
    let msg = err.to_string();
    assert!(msg.contains("src.img"), "{msg}");
    // A manifest naming a host file must not learn its digest (issue 10: file:///etc/shadow).
    assert!(!msg.contains(&sum), "local file digest leaked: {msg}");
    assert!(msg.contains("not shown for a local file"), "{msg}");
    assert!(!store.part_path(&sha(b"other")).exists());
}

#[tokio::test]
async fn catalog_names_resolve_through_the_home_catalog() {
    let (_d, home) = home();
    let srv = Server::start(Behavior::default());
    let body = data(100_000, 9);
    let sum = sha(&body);
    srv.add("/cat.img", body.clone());
    fs::write(
        home.root().join("catalog.json"),
        format!(r#"{{"images": {{"test:1": "{}"}}}}"#, srv.url("/cat.img")),
    )
    .unwrap();
    let store = BlobStore::new(&home);
    let p = store
        .ensure(&image("test:1", &sum), None, &Progress::silent())
        .await
        .unwrap();
    assert_eq!(fs::read(&p).unwrap(), body);

    let err = store
        .ensure(&image("nosuch:9", &sha(b"y")), None, &Progress::silent())
        .await
        .unwrap_err();
    assert!(matches!(err, BlobError::UnknownName { .. }), "{err:?}");
    assert!(err.to_string().contains("nosuch:9"));
}

#[tokio::test]
async fn clawbox_image_needs_an_import() {
    let (_d, home) = home();
    let store = BlobStore::new(&home);
    let digest = sha(b"bundle");
    let err = store
        .ensure(
            &image("clawbox:///run.qcow2", &sha(b"run")),
            Some(&digest),
            &Progress::silent(),
        )
        .await
        .unwrap_err();
    let msg = err.to_string();
    assert!(msg.contains("bundle not imported"), "{msg}");
    assert!(
        msg.contains(&digest) && msg.contains("clawbox:///run.qcow2"),
        "{msg}"
    );
}

#[tokio::test]
async fn qcow2_with_backing_file_is_refused() {
    let (_d, home) = home();
    let srv = Server::start(Behavior::default());
    let store = BlobStore::new(&home);
    for (path, body, needle) in [
        (
            "/backed.qcow2",
            qcow2(Some("/etc/shadow"), false, 4096),
            "/etc/shadow",
        ),
        (
            "/datafile.qcow2",
            qcow2(None, true, 4096),
            "external data file",
        ),
    ] {
        let sum = sha(&body);
        srv.add(path, body);
        let err = store
            .ensure(&image(&srv.url(path), &sum), None, &Progress::silent())
            .await
            .unwrap_err();
        assert!(matches!(err, BlobError::Disk { .. }), "{err:?}");
        assert!(err.to_string().contains(needle), "{err}");
        assert!(!store.has(&sum));
    }
    assert_nothing_left(&home);

    // A plain qcow2 is fine.
    let ok = qcow2(None, false, 4096);
    let sum = sha(&ok);
    srv.add("/ok.qcow2", ok);
    store
        .ensure(
            &image(&srv.url("/ok.qcow2"), &sum),
            None,
            &Progress::silent(),
        )
        .await
        .unwrap();
    assert_eq!(
        clawfarm::store::part::disk_format(&store.path(&sum)).unwrap(),
        clawfarm::store::part::DiskFormat::Qcow2
    );
}

#[tokio::test]
async fn bad_digest_and_bad_ref_are_rejected_without_io() {
    let (_d, home) = home();
    let store = BlobStore::new(&home);
    let e = store
        .ensure(
            &image("https://x.invalid/a", "ABC"),
            None,
            &Progress::silent(),
        )
        .await
        .unwrap_err();
    assert!(matches!(e, BlobError::BadDigest { .. }));
    let e = store
        .ensure(&image("ftp://x/a", &sha(b"a")), None, &Progress::silent())
        .await
        .unwrap_err();
    assert!(matches!(e, BlobError::UnsupportedRef(_)));
}

const PROGRESS_CHILD: &str = "CLAWFARM_TEST_PROGRESS_CHILD";

/// Body of the child of `stderr_progress_is_line_oriented_and_never_on_stdout`.
#[test]
fn progress_child() {
    let Ok(spec) = std::env::var(PROGRESS_CHILD) else {
        return;
    };
    let (root, url, sum) = {
        let v: Vec<&str> = spec.split('|').collect();
        (v[0].to_string(), v[1].to_string(), v[2].to_string())
    };
    let home = clawfarm::home::Home::new(root);
    let rt = tokio::runtime::Runtime::new().unwrap();
    rt.block_on(async {
        BlobStore::new(&home)
            .ensure(&image(&url, &sum), None, &Progress::stderr())
            .await
            .unwrap();
    });
}

#[test]
fn stderr_progress_is_line_oriented_and_never_on_stdout() {
    let (_d, home) = home();
    let srv = Server::start(Behavior::default());
    let body = data(8 << 20, 21);
    let sum = sha(&body);
    srv.add("/p.img", body);
    let out = std::process::Command::new(std::env::current_exe().unwrap())
        .args(["progress_child", "--exact", "--test-threads=1", "--quiet"])
        .env(
            PROGRESS_CHILD,
            format!("{}|{}|{}", home.root().display(), srv.url("/p.img"), sum),
        )
        .output()
        .unwrap();
    assert!(out.status.success());
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    // Not a terminal: one line at the start, at most one per 10 %, one at the end.
    let lines: Vec<&str> = stderr.lines().filter(|l| l.contains(&sum[..12])).collect();
    assert!(
        lines.first().unwrap().contains("started (8.0 MiB)"),
        "{stderr}"
    );
    assert!(lines.last().unwrap().contains("done, 8.0 MiB"), "{stderr}");
    assert!(lines.len() <= 12, "{stderr}");
    assert!(!stdout.contains(&sum[..12]), "progress on stdout: {stdout}");
}

#[test]
fn headers_written_by_real_qemu_img() {
    // Skipped where qemu-img is not installed.
    if std::process::Command::new("qemu-img")
        .arg("--version")
        .output()
        .is_err()
    {
        eprintln!("qemu-img not found; skipped");
        return;
    }
    use clawfarm::store::part::{DiskFormat, DiskProblem, check_disk_header, disk_format};
    let d = tempfile::tempdir().unwrap();
    let base = d.path().join("base.qcow2");
    let top = d.path().join("top.qcow2");
    let raw = d.path().join("disk.raw");
    let run = |args: &[&str]| {
        let st = std::process::Command::new("qemu-img")
            .args(args)
            .status()
            .unwrap();
        assert!(st.success(), "qemu-img {args:?}");
    };
    run(&["create", "-q", "-f", "qcow2", base.to_str().unwrap(), "16M"]);
    run(&[
        "create",
        "-q",
        "-f",
        "qcow2",
        "-F",
        "qcow2",
        "-b",
        base.to_str().unwrap(),
        top.to_str().unwrap(),
    ]);
    run(&["create", "-q", "-f", "raw", raw.to_str().unwrap(), "1M"]);
    assert_eq!(disk_format(&base).unwrap(), DiskFormat::Qcow2);
    assert_eq!(disk_format(&raw).unwrap(), DiskFormat::Raw);
    let head = fs::read(&top).unwrap();
    assert_eq!(
        check_disk_header(&head[..4096]),
        Err(DiskProblem::BackingFile {
            name: base.display().to_string()
        })
    );
    assert!(disk_format(&top).is_err());
    // An external data file (qcow2 v3 incompatible feature bit 2).
    let ext = d.path().join("ext.qcow2");
    let data = d.path().join("ext.data");
    run(&[
        "create",
        "-q",
        "-f",
        "qcow2",
        "-o",
        &format!("data_file={}", data.display()),
        ext.to_str().unwrap(),
        "1M",
    ]);
    let head = fs::read(&ext).unwrap();
    assert_eq!(
        check_disk_header(&head[..4096]),
        Err(DiskProblem::ExternalDataFile)
    );
}
