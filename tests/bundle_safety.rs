//! Malicious bundles: every unsafe entry is refused with an error naming the bundle and
//! the entry, and nothing is left behind (temp folder and staged blobs removed).
//! Archives are built with the `tar` crate's raw header API, which the CLI cannot do.

#[path = "common/blobkit.rs"]
mod blobkit;

use std::fs;
use std::path::{Path, PathBuf};

use blobkit::*;
use clawfarm::store::bundle::{self, BundleError, ImportOptions, Refusal};
use clawfarm::store::progress::Progress;

/// A valid clawspec + run image, then `evil` entries.
fn bundle_with(dir: &Path, name: &str, evil: Vec<Raw<'_>>, spec_first: bool) -> PathBuf {
    let run = qcow2(None, false, 200_000);
    let spec = clawspec(
        "evil",
        ("ubuntu:24.04", BASE_SHA),
        Some(("clawbox:///run.qcow2", &sha(&run))),
    );
    let mut entries = Vec::new();
    if spec_first {
        entries.push(Raw::file("clawspec.json", spec.as_bytes()));
    }
    entries.push(Raw::file("run.qcow2", &run));
    entries.push(Raw::dir("claw/"));
    entries.push(Raw::file("claw/ok.txt", b"fine"));
    entries.extend(evil);
    if !spec_first {
        entries.push(Raw::file("clawspec.json", spec.as_bytes()));
    }
    raw_tar_gz(&entries, &dir.join(name))
}

async fn refused(
    b: &Path,
    opts: &ImportOptions,
) -> (clawfarm::home::Home, tempfile::TempDir, BundleError) {
    let (d, home) = home();
    let err = bundle::import_with(&home, b, &Progress::silent(), opts)
        .await
        .unwrap_err();
    assert_nothing_left(&home);
    (home, d, err)
}

fn assert_refused(err: &BundleError, bundle_name: &str, entry: &str, reason: &Refusal) {
    match err {
        BundleError::Refused {
            bundle,
            entry: e,
            reason: r,
        } => {
            assert!(bundle.ends_with(bundle_name), "{err}");
            assert_eq!(e, entry, "{err}");
            assert_eq!(r, reason, "{err}");
        }
        other => panic!("expected a refusal of {entry}, got {other:?}"),
    }
    let msg = err.to_string();
    assert!(msg.contains(bundle_name) && msg.contains(entry), "{msg}");
}

async fn check_case(name: &str, evil: Vec<Raw<'_>>, entry: &str, reason: Refusal) {
    let d = tempfile::tempdir().unwrap();
    for spec_first in [true, false] {
        let file = format!("{name}-{spec_first}.clawbox");
        let b = bundle_with(
            d.path(),
            &file,
            evil.iter().map(clone_raw).collect(),
            spec_first,
        );
        let (_h, _d, err) = refused(&b, &ImportOptions::default()).await;
        assert_refused(&err, &file, entry, &reason);
    }
}

fn clone_raw<'a>(r: &Raw<'a>) -> Raw<'a> {
    Raw {
        path: r.path,
        kind: r.kind,
        data: r.data,
        mode: r.mode,
        link: r.link,
    }
}

#[tokio::test]
async fn absolute_path() {
    check_case(
        "abs",
        vec![Raw::file("/tmp/clawfarm-evil", b"x")],
        "/tmp/clawfarm-evil",
        Refusal::AbsolutePath,
    )
    .await;
    assert!(!Path::new("/tmp/clawfarm-evil").exists());
}

#[tokio::test]
async fn parent_dir_component() {
    check_case(
        "dotdot",
        vec![Raw::file("claw/../../escape.txt", b"x")],
        "claw/../../escape.txt",
        Refusal::ParentDir,
    )
    .await;
}

#[tokio::test]
async fn symlink() {
    let link = Raw {
        path: b"claw/passwd",
        kind: b'2',
        data: b"",
        mode: 0o777,
        link: b"/etc/passwd",
    };
    check_case("symlink", vec![link], "claw/passwd", Refusal::Symlink).await;
}

#[tokio::test]
async fn hard_link() {
    let link = Raw {
        path: b"claw/hl",
        kind: b'1',
        data: b"",
        mode: 0o644,
        link: b"claw/ok.txt",
    };
    check_case("hardlink", vec![link], "claw/hl", Refusal::HardLink).await;
}

#[tokio::test]
async fn device_nodes() {
    for (kind, name) in [(b'3', "claw/tty"), (b'4', "claw/sda")] {
        let dev = Raw {
            path: name.as_bytes(),
            kind,
            data: b"",
            mode: 0o666,
            link: b"",
        };
        check_case("dev", vec![dev], name, Refusal::Device).await;
    }
}

#[tokio::test]
async fn fifo() {
    let f = Raw {
        path: b"claw/pipe",
        kind: b'6',
        data: b"",
        mode: 0o644,
        link: b"",
    };
    check_case("fifo", vec![f], "claw/pipe", Refusal::Fifo).await;
}

#[tokio::test]
async fn sparse_and_unknown_types() {
    let s = Raw {
        path: b"claw/sparse",
        kind: b'S',
        data: b"",
        mode: 0o644,
        link: b"",
    };
    check_case("sparse", vec![s], "claw/sparse", Refusal::Sparse).await;
    let v = Raw {
        path: b"claw/vol",
        kind: b'V',
        data: b"",
        mode: 0o644,
        link: b"",
    };
    check_case("vol", vec![v], "claw/vol", Refusal::UnsupportedType('V')).await;
}

#[tokio::test]
async fn duplicate_entries() {
    check_case(
        "dup",
        vec![Raw::file("claw/ok.txt", b"again")],
        "claw/ok.txt",
        Refusal::Duplicate,
    )
    .await;
    // Same path spelled differently is still the same path.
    check_case(
        "dup2",
        vec![Raw::file("./run.qcow2", b"other")],
        "./run.qcow2",
        Refusal::Duplicate,
    )
    .await;
    // A second clawspec.json could change the spec after the images were checked.
    let d = tempfile::tempdir().unwrap();
    let b = bundle_with(
        d.path(),
        "dupspec.clawbox",
        vec![Raw::file("clawspec.json", b"{}")],
        true,
    );
    let (_h, _d, err) = refused(&b, &ImportOptions::default()).await;
    assert_refused(
        &err,
        "dupspec.clawbox",
        "clawspec.json",
        &Refusal::Duplicate,
    );
}

#[tokio::test]
async fn entry_over_the_size_limit() {
    let d = tempfile::tempdir().unwrap();
    let big = vec![0u8; 300_000];
    let b = bundle_with(
        d.path(),
        "big.clawbox",
        vec![Raw::file("claw/big.bin", &big)],
        true,
    );
    let opts = ImportOptions {
        max_entry_bytes: 250_000,
        ..ImportOptions::default()
    };
    let (_h, _d, err) = refused(&b, &opts).await;
    assert_refused(
        &err,
        "big.clawbox",
        "claw/big.bin",
        &Refusal::TooLarge {
            size: 300_000,
            limit: 250_000,
        },
    );
}

#[tokio::test]
async fn gzip_bomb_hits_the_expansion_limit() {
    let d = tempfile::tempdir().unwrap();
    // 64 MiB of zeros compress to ~64 KiB (1000:1).
    let zeros = vec![0u8; 64 << 20];
    let b = bundle_with(
        d.path(),
        "bomb.clawbox",
        vec![Raw::file("claw/zeros.bin", &zeros)],
        true,
    );
    assert!(fs::metadata(&b).unwrap().len() < 1 << 20);
    let opts = ImportOptions {
        max_total_bytes: 16 << 20,
        ..ImportOptions::default()
    };
    let (_h, _d, err) = refused(&b, &opts).await;
    match &err {
        BundleError::ExpansionLimit {
            bundle,
            entry,
            limit,
        } => {
            assert!(bundle.ends_with("bomb.clawbox"));
            assert_eq!(entry, "claw/zeros.bin");
            assert_eq!(*limit, 16 << 20);
        }
        other => panic!("expected the expansion limit, got {other:?}"),
    }
}

#[tokio::test]
async fn too_many_entries() {
    let d = tempfile::tempdir().unwrap();
    let b = bundle_with(
        d.path(),
        "many.clawbox",
        vec![Raw::file("claw/a", b"1"), Raw::file("claw/b", b"2")],
        true,
    );
    let opts = ImportOptions {
        max_entries: 5,
        ..ImportOptions::default()
    };
    let (_h, _d, err) = refused(&b, &opts).await;
    assert_refused(
        &err,
        "many.clawbox",
        "claw/b",
        &Refusal::TooManyEntries { limit: 5 },
    );
}

#[tokio::test]
async fn non_regular_clawspec() {
    let d = tempfile::tempdir().unwrap();
    let b = raw_tar_gz(
        &[Raw::dir("clawspec.json/"), Raw::file("run.qcow2", b"x")],
        &d.path().join("specdir.clawbox"),
    );
    let (_h, _d, err) = refused(&b, &ImportOptions::default()).await;
    assert_refused(
        &err,
        "specdir.clawbox",
        "clawspec.json/",
        &Refusal::ClawspecNotRegular,
    );
    let b = raw_tar_gz(
        &[Raw {
            path: b"clawspec.json",
            kind: b'2',
            data: b"",
            mode: 0o777,
            link: b"/etc/hostname",
        }],
        &d.path().join("speclink.clawbox"),
    );
    let (_h, _d, err) = refused(&b, &ImportOptions::default()).await;
    assert_refused(&err, "speclink.clawbox", "clawspec.json", &Refusal::Symlink);
    // inspect refuses it as well.
    let (_d2, home) = home();
    assert!(bundle::inspect(&home, &b).is_err());
}

#[tokio::test]
async fn qcow2_run_image_with_backing_file_is_refused() {
    let d = tempfile::tempdir().unwrap();
    for (name, run, needle) in [
        (
            "backing",
            qcow2(Some("/etc/shadow"), false, 10_000),
            "/etc/shadow",
        ),
        ("datafile", qcow2(None, true, 10_000), "external data file"),
    ] {
        for spec_first in [true, false] {
            let spec = clawspec(
                "q",
                ("ubuntu:24.04", BASE_SHA),
                Some(("clawbox:///run.qcow2", &sha(&run))),
            );
            let mut e = vec![Raw::file("run.qcow2", &run)];
            let s = Raw::file("clawspec.json", spec.as_bytes());
            if spec_first {
                e.insert(0, s);
            } else {
                e.push(s);
            }
            let file = format!("{name}-{spec_first}.clawbox");
            let b = raw_tar_gz(&e, &d.path().join(&file));
            let (_h, _d, err) = refused(&b, &ImportOptions::default()).await;
            assert!(matches!(err, BundleError::Disk { .. }), "{err:?}");
            let msg = err.to_string();
            assert!(
                msg.contains(&file) && msg.contains("run.qcow2") && msg.contains(needle),
                "{msg}"
            );
        }
    }
}

#[tokio::test]
async fn payload_modes_are_sanitised() {
    let (d, home) = home();
    let run = qcow2(None, false, 1000);
    let spec = clawspec(
        "modes",
        ("ubuntu:24.04", BASE_SHA),
        Some(("clawbox:///run.qcow2", &sha(&run))),
    );
    let mut suid = Raw::file("claw/suid", b"#!/bin/sh\n");
    suid.mode = 0o6777;
    let mut ww = Raw::file("claw/ww", b"data");
    ww.mode = 0o666;
    let mut dir = Raw::dir("claw/open/");
    dir.mode = 0o1777;
    let b = raw_tar_gz(
        &[
            Raw::file("clawspec.json", spec.as_bytes()),
            Raw::file("run.qcow2", &run),
            suid,
            ww,
            dir,
            Raw::file("claw/open/f", b"f"),
        ],
        &d.path().join("modes.clawbox"),
    );
    let imp = bundle::import(&home, &b, &Progress::silent())
        .await
        .unwrap();
    let p = imp.payload_dir();
    assert_eq!(mode(&p.join("suid")), 0o555);
    assert_eq!(mode(&p.join("ww")), 0o444);
    assert_eq!(mode(&p.join("open")), 0o555);
    assert_eq!(mode(&p.join("open/f")), 0o444);
}

#[tokio::test]
async fn missing_in_bundle_image_is_an_error() {
    let d = tempfile::tempdir().unwrap();
    let spec = clawspec(
        "noimg",
        ("ubuntu:24.04", BASE_SHA),
        Some(("clawbox:///run.qcow2", BASE_SHA)),
    );
    let b = raw_tar_gz(
        &[
            Raw::file("clawspec.json", spec.as_bytes()),
            Raw::file("other.qcow2", b"x"),
        ],
        &d.path().join("noimg.clawbox"),
    );
    let (_h, _d, err) = refused(&b, &ImportOptions::default()).await;
    assert!(matches!(err, BundleError::MissingImage { .. }), "{err:?}");
    assert!(err.to_string().contains("noimg.clawbox"));
}

#[tokio::test]
async fn oversized_long_name_header_is_refused_without_buffering_it() {
    // A GNU long-name record is read into memory by the tar parser: 64 MiB of it must be
    // refused at the 1 MiB header budget, not buffered.
    let d = tempfile::tempdir().unwrap();
    let name = vec![b'a'; 64 << 20];
    let ln = Raw {
        path: b"././@LongLink",
        kind: b'L',
        data: &name,
        mode: 0o644,
        link: b"",
    };
    let b = bundle_with(
        d.path(),
        "longname.clawbox",
        vec![ln, Raw::file("x", b"x")],
        true,
    );
    let (_h, _d, err) = refused(&b, &ImportOptions::default()).await;
    assert_refused(
        &err,
        "longname.clawbox",
        "(headers after claw/ok.txt)",
        &Refusal::HeadersTooLarge { limit: 1 << 20 },
    );
}

#[tokio::test]
async fn pax_global_header_and_long_names_are_fine() {
    let (d, home) = home();
    let run = qcow2(None, false, 1000);
    let spec = clawspec(
        "pax",
        ("ubuntu:24.04", BASE_SHA),
        Some(("clawbox:///run.qcow2", &sha(&run))),
    );
    let g = Raw {
        path: b"pax_global_header",
        kind: b'g',
        data: b"52 comment=0123456789012345678901234567890123456789\n",
        mode: 0o666,
        link: b"",
    };
    let b = raw_tar_gz(
        &[
            g,
            Raw::file("clawspec.json", spec.as_bytes()),
            Raw::file("run.qcow2", &run),
        ],
        &d.path().join("pax.clawbox"),
    );
    bundle::import(&home, &b, &Progress::silent())
        .await
        .unwrap();

    // Long payload paths written by GNU tar (ustar 100-byte limit exceeded).
    let src = d.path().join("src");
    let long = format!("claw/{}/{}", "d".repeat(120), "f".repeat(150));
    fs::create_dir_all(src.join(&long).parent().unwrap()).unwrap();
    fs::write(src.join(&long), "deep").unwrap();
    fs::write(src.join("run.qcow2"), &run).unwrap();
    fs::write(src.join("clawspec.json"), &spec).unwrap();
    let b2 = tar_gz_cli(
        &src,
        &["clawspec.json", "run.qcow2", "claw"],
        &d.path().join("long.clawbox"),
    );
    let imp = bundle::import(&home, &b2, &Progress::silent())
        .await
        .unwrap();
    assert_eq!(fs::read_to_string(imp.dir.join(&long)).unwrap(), "deep");
}

#[tokio::test]
async fn the_ratio_cap_stops_a_bomb_that_the_total_limit_would_let_through() {
    let d = tempfile::tempdir().unwrap();
    let zeros = vec![0u8; 64 << 20];
    let b = bundle_with(
        d.path(),
        "bomb.clawbox",
        vec![Raw::file("claw/zeros.bin", &zeros)],
        true,
    );
    let compressed = fs::metadata(&b).unwrap().len();
    // Default totals (32 GiB); the floor and the ratio are lowered so that a 64 MiB bomb
    // (beside a small random run.qcow2) stands for a multi-GiB one.
    let opts = ImportOptions {
        ratio_floor_bytes: 1 << 20,
        max_ratio: 20,
        ..ImportOptions::default()
    };
    assert!(opts.max_total_bytes >= 32 << 30);
    assert_eq!(opts.max_entry_bytes, 16 << 30);
    assert_eq!(ImportOptions::default().max_ratio, 200);
    assert!(
        compressed * 20 < 64 << 20,
        "the bomb compresses over 20:1 ({compressed} bytes)"
    );
    let (_h, _d, err) = refused(&b, &opts).await;
    match &err {
        BundleError::ExpansionLimit { limit, .. } => assert_eq!(*limit, compressed * 20),
        other => panic!("expected the expansion limit, got {other:?}"),
    }
    // The default floor is 256 MiB: a small bundle may still expand that far.
    assert_eq!(ImportOptions::default().expansion_limit(1), 256 << 20);
    assert_eq!(
        ImportOptions::default().expansion_limit(1 << 40),
        32 << 30,
        "never above the total"
    );
}
