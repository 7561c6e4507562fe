//! `.clawbox` import and inspect, with bundles built by the real `tar` and `gzip`.

#[path = "common/blobkit.rs"]
mod blobkit;
#[path = "common/httpd.rs"]
mod httpd;

use std::collections::BTreeSet;
use std::fs;
use std::path::{Path, PathBuf};
use std::time::Instant;

use blobkit::*;
use clawfarm::desired::BundleKind;
use clawfarm::home::Home;
use clawfarm::store::bundle::{self, BundleError, StoredKind};
use clawfarm::store::progress::Progress;
use httpd::{Behavior, Server};

/// A bundle source folder: clawspec.json, run.qcow2, claw/ payload.
struct Src {
    dir: PathBuf,
    run: Vec<u8>,
}

fn make_src(root: &Path, run_sha_override: Option<&str>) -> Src {
    let dir = root.join("src");
    fs::create_dir_all(dir.join("claw/bin")).unwrap();
    fs::create_dir_all(dir.join("claw/etc/deep")).unwrap();
    fs::create_dir_all(dir.join("claw/empty")).unwrap();
    let run = qcow2(None, false, 3 << 20);
    let run_sha = run_sha_override.map_or_else(|| sha(&run), str::to_string);
    fs::write(
        dir.join("clawspec.json"),
        clawspec(
            "demo",
            ("ubuntu:24.04", BASE_SHA),
            Some(("clawbox:///run.qcow2", &run_sha)),
        ),
    )
    .unwrap();
    fs::write(dir.join("run.qcow2"), &run).unwrap();
    fs::write(dir.join("claw/bin/tool"), "#!/bin/sh\necho hi\n").unwrap();
    fs::write(dir.join("claw/etc/deep/conf.toml"), "a = 1\n").unwrap();
    use std::os::unix::fs::PermissionsExt;
    fs::set_permissions(
        dir.join("claw/bin/tool"),
        fs::Permissions::from_mode(0o4777),
    )
    .unwrap();
    fs::set_permissions(
        dir.join("claw/etc/deep/conf.toml"),
        fs::Permissions::from_mode(0o666),
    )
    .unwrap();
    Src { dir, run }
}

fn check_imported(home: &Home, imp: &bundle::ImportedBundle, run: &[u8], box_path: &Path) {
    let file_digest = sha(&fs::read(box_path).unwrap());
    assert_eq!(imp.digest, file_digest);
    let dir = home.bundle_dir(&imp.digest);
    assert_eq!(imp.dir, dir);
    assert_eq!(
        names(&dir),
        vec!["bundle.json", "claw", "clawspec.json"],
        "bundle folder"
    );
    // Payload: read-only, no setuid, nothing writable.
    assert_eq!(mode(&dir.join("claw/bin/tool")), 0o555);
    assert_eq!(mode(&dir.join("claw/etc/deep/conf.toml")), 0o444);
    assert_eq!(mode(&dir.join("claw")), 0o555);
    assert_eq!(mode(&dir.join("claw/etc/deep")), 0o555);
    assert!(dir.join("claw/empty").is_dir());
    assert_eq!(
        fs::read_to_string(dir.join("claw/bin/tool")).unwrap(),
        "#!/bin/sh\necho hi\n"
    );
    // Run image: in the store, read-only, byte-identical.
    let run_sha = sha(run);
    let blob = home.blob(&run_sha);
    assert_eq!(fs::read(&blob).unwrap(), run);
    assert_eq!(mode(&blob), 0o444);
    // Metadata.
    let m = &imp.meta;
    assert_eq!(m.kind, BundleKind::TarGz);
    assert_eq!(m.digest, imp.digest);
    assert_eq!(m.run_blob.as_deref(), Some(run_sha.as_str()));
    assert_eq!(m.base_blob.as_deref(), Some(BASE_SHA));
    assert!(m.has_payload);
    assert_eq!(m.source, fs::canonicalize(box_path).unwrap());
    assert_eq!(m.name, "demo");
    let on_disk: bundle::BundleMeta =
        serde_json::from_slice(&fs::read(dir.join("bundle.json")).unwrap()).unwrap();
    assert_eq!(&on_disk, m);
    // Nothing temporary left.
    assert!(
        names(&home.bundles_dir())
            .iter()
            .all(|n| !n.starts_with(".tmp-")),
        "{:?}",
        names(&home.bundles_dir())
    );
    assert!(names(&home.blobs_dir().join(".tmp")).is_empty());
}

#[tokio::test]
async fn import_cli_bundle_clawspec_first() {
    let (d, home) = home();
    let src = make_src(d.path(), None);
    let b = tar_gz_cli(
        &src.dir,
        &["clawspec.json", "run.qcow2", "claw"],
        &d.path().join("a.clawbox"),
    );
    let imp = bundle::import(&home, &b, &Progress::silent())
        .await
        .unwrap();
    assert!(imp.fresh);
    check_imported(&home, &imp, &src.run, &b);
}

#[tokio::test]
async fn import_cli_bundle_run_first_with_dot_prefix() {
    let (d, home) = home();
    let src = make_src(d.path(), None);
    let b = tar_gz_cli(
        &src.dir,
        &["./run.qcow2", "./claw", "./clawspec.json"],
        &d.path().join("b.clawbox"),
    );
    let imp = bundle::import(&home, &b, &Progress::silent())
        .await
        .unwrap();
    check_imported(&home, &imp, &src.run, &b);
    // The whole folder form (`tar -C src .`) too.
    let (_d2, home2) = blobkit::home();
    let b2 = tar_gz_cli(&src.dir, &["."], &d.path().join("c.clawbox"));
    let imp2 = bundle::import(&home2, &b2, &Progress::silent())
        .await
        .unwrap();
    check_imported(&home2, &imp2, &src.run, &b2);
}

#[tokio::test]
async fn missing_clawspec_names_the_bundle() {
    let (d, home) = home();
    let src = make_src(d.path(), None);
    let b = tar_gz_cli(
        &src.dir,
        &["run.qcow2", "claw"],
        &d.path().join("nospec.clawbox"),
    );
    let err = bundle::import(&home, &b, &Progress::silent())
        .await
        .unwrap_err();
    assert!(
        matches!(err, BundleError::MissingClawspec { .. }),
        "{err:?}"
    );
    let msg = err.to_string();
    assert!(
        msg.contains("nospec.clawbox") && msg.contains("clawspec.json"),
        "{msg}"
    );
    assert_nothing_left(&home);
    let err = bundle::inspect(&home, &b).unwrap_err();
    assert!(err.to_string().contains("nospec.clawbox"));
}

#[tokio::test]
async fn run_image_mismatch_fails_in_both_orders_and_leaves_nothing() {
    let (d, home) = home();
    let src = make_src(d.path(), Some(&sha(b"something else")));
    for (i, order) in [
        ["clawspec.json", "run.qcow2", "claw"],
        ["run.qcow2", "claw", "clawspec.json"],
    ]
    .iter()
    .enumerate()
    {
        let b = tar_gz_cli(&src.dir, order, &d.path().join(format!("bad{i}.clawbox")));
        let err = bundle::import(&home, &b, &Progress::silent())
            .await
            .unwrap_err();
        assert!(matches!(err, BundleError::ImageMismatch { .. }), "{err:?}");
        let msg = err.to_string();
        assert!(
            msg.contains(&format!("bad{i}.clawbox")) && msg.contains("run.qcow2"),
            "{msg}"
        );
        assert_nothing_left(&home);
    }
}

#[tokio::test]
async fn json_bundle_imports_and_rejects_clawbox_refs() {
    let (d, home) = home();
    let p = d.path().join("remote.clawbox");
    let spec = clawspec(
        "remote",
        ("https://example.invalid/base.img", BASE_SHA),
        None,
    );
    fs::write(&p, format!("\n  {spec}\n")).unwrap();
    let ins = bundle::inspect(&home, &p).unwrap();
    assert_eq!(ins.kind, BundleKind::Json);
    assert!(!ins.imported);
    let imp = bundle::import(&home, &p, &Progress::silent())
        .await
        .unwrap();
    assert_eq!(imp.digest, sha(&fs::read(&p).unwrap()));
    assert_eq!(names(&imp.dir), vec!["bundle.json", "clawspec.json"]);
    assert!(!imp.meta.has_payload);
    assert_eq!(imp.meta.run_blob, None);
    assert!(bundle::inspect(&home, &p).unwrap().imported);

    let bad = d.path().join("bad.clawbox");
    fs::write(
        &bad,
        clawspec(
            "bad",
            ("ubuntu:24.04", BASE_SHA),
            Some(("clawbox:///run.qcow2", BASE_SHA)),
        ),
    )
    .unwrap();
    for err in [
        bundle::inspect(&home, &bad).unwrap_err(),
        bundle::import(&home, &bad, &Progress::silent())
            .await
            .unwrap_err(),
    ] {
        assert!(matches!(err, BundleError::ClawboxInJson { .. }), "{err:?}");
        assert!(err.to_string().contains("bad.clawbox"));
    }

    // A JSON clawspec saved with a UTF-8 byte order mark is still a JSON bundle.
    let bom = d.path().join("bom.clawbox");
    let spec = clawspec("bom", ("https://example.invalid/base.img", BASE_SHA), None);
    let mut bytes = vec![0xef, 0xbb, 0xbf];
    bytes.extend_from_slice(spec.as_bytes());
    fs::write(&bom, bytes).unwrap();
    let ins = bundle::inspect(&home, &bom).unwrap();
    assert_eq!(ins.kind, BundleKind::Json);
    let imp = bundle::import(&home, &bom, &Progress::silent())
        .await
        .unwrap();
    assert_eq!(imp.clawspec.name, "bom");

    // An invalid JSON clawspec: the message names the file once.
    let invalid = d.path().join("invalid.clawbox");
    fs::write(&invalid, r#"{"schema_version": 3}"#).unwrap();
    let msg = bundle::inspect(&home, &invalid).unwrap_err().to_string();
    assert_eq!(msg.matches("invalid.clawbox").count(), 1, "{msg}");
    assert!(msg.contains("invalid clawspec"), "{msg}");

    let junk = d.path().join("junk.clawbox");
    fs::write(&junk, "hello").unwrap();
    let err = bundle::inspect(&home, &junk).unwrap_err();
    assert!(matches!(err, BundleError::NotABundle { .. }), "{err:?}");
}

#[tokio::test]
async fn import_is_idempotent() {
    let (d, home) = home();
    let src = make_src(d.path(), None);
    let b = tar_gz_cli(
        &src.dir,
        &["clawspec.json", "run.qcow2", "claw"],
        &d.path().join("i.clawbox"),
    );
    let first = bundle::import(&home, &b, &Progress::silent())
        .await
        .unwrap();
    let meta1 = fs::read(first.dir.join("bundle.json")).unwrap();
    std::thread::sleep(std::time::Duration::from_millis(1100));
    let second = bundle::import(&home, &b, &Progress::silent())
        .await
        .unwrap();
    assert!(!second.fresh);
    assert_eq!(second.digest, first.digest);
    assert_eq!(fs::read(first.dir.join("bundle.json")).unwrap(), meta1);

    // Under another name (no stat-cache entry): the work is redone, the result is the same.
    let copy = d.path().join("copy.clawbox");
    fs::copy(&b, &copy).unwrap();
    let third = bundle::import(&home, &copy, &Progress::silent())
        .await
        .unwrap();
    assert_eq!(third.digest, first.digest);
    assert_eq!(fs::read(first.dir.join("bundle.json")).unwrap(), meta1);
    check_imported(&home, &third, &src.run, &b);
}

#[tokio::test]
async fn killed_import_leftovers_are_cleaned_and_import_converges() {
    let (d, home) = home();
    let src = make_src(d.path(), None);
    let b = tar_gz_cli(
        &src.dir,
        &["clawspec.json", "run.qcow2", "claw"],
        &d.path().join("k.clawbox"),
    );
    let digest = sha(&fs::read(&b).unwrap());
    let dead = dead_pid();
    // What a `kill -9` mid-import leaves: a temp folder (with a read-only payload folder),
    // a staged blob, and a download part of the run image.
    let tmp = home.bundles_dir().join(format!(".tmp-{digest}-{dead}"));
    fs::create_dir_all(tmp.join("claw/sub")).unwrap();
    fs::write(tmp.join("claw/sub/f"), "x").unwrap();
    use std::os::unix::fs::PermissionsExt;
    fs::set_permissions(tmp.join("claw/sub"), fs::Permissions::from_mode(0o555)).unwrap();
    let pending = home.bundles_dir().join(format!(".tmp-pending0-{dead}"));
    fs::create_dir_all(&pending).unwrap();
    let blob_tmp = home.blobs_dir().join(".tmp");
    fs::create_dir_all(&blob_tmp).unwrap();
    fs::write(blob_tmp.join(format!("import-{dead}-0.part")), "partial").unwrap();
    fs::write(
        blob_tmp.join(format!("{}.part", sha(&src.run))),
        &src.run[..1000],
    )
    .unwrap();

    let imp = bundle::import(&home, &b, &Progress::silent())
        .await
        .unwrap();
    assert!(imp.fresh);
    check_imported(&home, &imp, &src.run, &b);
    assert!(!tmp.exists() && !pending.exists());
    assert!(names(&blob_tmp).is_empty(), "{:?}", names(&blob_tmp));
}

#[tokio::test]
async fn inspect_identifies_without_importing_and_caches_the_digest() {
    let (d, home) = home();
    let src = make_src(d.path(), None);
    let b = tar_gz_cli(
        &src.dir,
        &["clawspec.json", "run.qcow2", "claw"],
        &d.path().join("s.clawbox"),
    );
    let bytes = fs::read(&b).unwrap();
    let ins = bundle::inspect(&home, &b).unwrap();
    assert_eq!(ins.digest, sha(&bytes));
    assert_eq!(ins.kind, BundleKind::TarGz);
    assert!(!ins.imported);
    assert_eq!(ins.clawspec.name, "demo");
    assert_eq!(ins.source, fs::canonicalize(&b).unwrap());
    // Nothing imported.
    assert!(!home.bundle_dir(&ins.digest).exists());
    assert!(!home.blob(&sha(&src.run)).exists());
    let cache = fs::read_to_string(home.bundles_dir().join("stat-cache.json")).unwrap();
    assert!(cache.contains(&ins.digest), "{cache}");

    // A later process planning the same unchanged, unimported file reads neither it nor
    // its archive: clobber the bytes (same size, mtime, inode) and it still answers.
    {
        let f = fs::OpenOptions::new().write(true).open(&b).unwrap();
        let mtime = f.metadata().unwrap().modified().unwrap();
        use std::os::unix::fs::FileExt;
        f.write_all_at(&vec![0u8; bytes.len()], 0).unwrap();
        f.set_modified(mtime).unwrap();
        bundle::clear_process_cache();
        let again = bundle::inspect(&home, &b).unwrap();
        assert_eq!(again.digest, ins.digest);
        assert_eq!(again.clawspec.name, "demo");
        assert!(!again.imported);
        f.write_all_at(&bytes, 0).unwrap();
        f.set_modified(mtime).unwrap();
    }

    bundle::import(&home, &b, &Progress::silent())
        .await
        .unwrap();
    assert!(bundle::inspect(&home, &b).unwrap().imported);

    // Same size, same mtime, same inode, other bytes: the cache answers (no re-hash).
    let f = fs::OpenOptions::new().write(true).open(&b).unwrap();
    let mtime = f.metadata().unwrap().modified().unwrap();
    use std::os::unix::fs::FileExt;
    f.write_all_at(b"\0\0\0\0", bytes.len() as u64 - 8).unwrap();
    f.set_modified(mtime).unwrap();
    assert_eq!(bundle::inspect(&home, &b).unwrap().digest, ins.digest);
    // A new mtime invalidates the entry: the file is read again.
    f.set_modified(mtime + std::time::Duration::from_secs(1))
        .unwrap();
    drop(f);
    let again = bundle::inspect(&home, &b);
    match again {
        Ok(x) => assert_ne!(x.digest, ins.digest),
        Err(e) => assert!(e.to_string().contains("s.clawbox"), "{e}"),
    }
}

#[tokio::test]
async fn inspect_stops_reading_the_archive_at_clawspec_json() {
    let (d, home) = home();
    let src = make_src(d.path(), None);
    let b = tar_gz_cli(
        &src.dir,
        &["clawspec.json", "run.qcow2", "claw"],
        &d.path().join("t.clawbox"),
    );
    // Cut the file in the middle of run.qcow2's data: inspect (which stops after
    // clawspec.json) still identifies it; import (which reads everything) fails.
    let bytes = fs::read(&b).unwrap();
    let cut = d.path().join("cut.clawbox");
    fs::write(&cut, &bytes[..bytes.len() / 2]).unwrap();
    let ins = bundle::inspect(&home, &cut).unwrap();
    assert_eq!(ins.digest, sha(&bytes[..bytes.len() / 2]));
    let err = bundle::import(&home, &cut, &Progress::silent())
        .await
        .unwrap_err();
    assert!(matches!(err, BundleError::Corrupt { .. }), "{err:?}");
    assert!(err.to_string().contains("cut.clawbox"));
    assert_nothing_left(&home);
}

#[tokio::test]
async fn steady_state_inspect_costs_microseconds() {
    let (d, home) = home();
    let src = make_src(d.path(), None);
    let b = tar_gz_cli(
        &src.dir,
        &["clawspec.json", "run.qcow2", "claw"],
        &d.path().join("p.clawbox"),
    );
    bundle::import(&home, &b, &Progress::silent())
        .await
        .unwrap();
    bundle::inspect(&home, &b).unwrap();
    let n = 10_000;
    let t = Instant::now();
    for _ in 0..n {
        let x = bundle::inspect(&home, &b).unwrap();
        assert!(x.imported);
    }
    let per = t.elapsed() / n;
    eprintln!("steady-state inspect: {per:?} per call");
    // Generous bound for an unoptimized build on a busy machine.
    assert!(per.as_micros() < 500, "{per:?} per inspect");
}

#[tokio::test]
async fn url_bundle_is_fetched_as_a_blob_then_imported() {
    let (d, home) = home();
    let src = make_src(d.path(), None);
    let b = tar_gz_cli(
        &src.dir,
        &["clawspec.json", "run.qcow2", "claw"],
        &d.path().join("u.clawbox"),
    );
    let bytes = fs::read(&b).unwrap();
    let digest = sha(&bytes);
    let srv = Server::start(Behavior::default());
    srv.add("/u.clawbox", bytes);
    let p = bundle::fetch_url_bundle(&home, &srv.url("/u.clawbox"), &digest, &Progress::silent())
        .await
        .unwrap();
    assert_eq!(p, home.blob(&digest));
    let ins = bundle::inspect(&home, &p).unwrap();
    assert_eq!(ins.digest, digest);
    assert!(!ins.imported);
    let imp = bundle::import_desired(&home, &ins, &Progress::silent())
        .await
        .unwrap();
    assert_eq!(imp.digest, digest);
    assert!(bundle::inspect(&home, &p).unwrap().imported);

    let err = bundle::fetch_url_bundle(&home, &srv.url("/nope"), &sha(b"n"), &Progress::silent())
        .await
        .unwrap_err();
    // The printed chain names the URL, once.
    let chain: Vec<String> =
        std::iter::successors(Some(&err as &dyn std::error::Error), |e| e.source())
            .map(|e| e.to_string())
            .collect();
    let chain = chain.join(": ");
    assert_eq!(chain.matches("/nope").count(), 1, "{chain}");
}

#[tokio::test]
async fn list_and_gc_keep_what_is_referenced() {
    let (d, home) = home();
    let src = make_src(d.path(), None);
    let a = tar_gz_cli(
        &src.dir,
        &["clawspec.json", "run.qcow2", "claw"],
        &d.path().join("a.clawbox"),
    );
    let a = bundle::import(&home, &a, &Progress::silent())
        .await
        .unwrap();

    // A second bundle with its own run image.
    let d2 = d.path().join("two");
    fs::create_dir_all(&d2).unwrap();
    let run2 = qcow2(None, false, 100_000);
    fs::write(d2.join("run.qcow2"), &run2).unwrap();
    fs::write(
        d2.join("clawspec.json"),
        clawspec(
            "two",
            ("ubuntu:24.04", BASE_SHA),
            Some(("clawbox:///run.qcow2", &sha(&run2))),
        ),
    )
    .unwrap();
    let b = tar_gz_cli(
        &d2,
        &["clawspec.json", "run.qcow2"],
        &d.path().join("b.clawbox"),
    );
    let b = bundle::import(&home, &b, &Progress::silent())
        .await
        .unwrap();
    // An orphan blob, and the base blob of both bundles.
    let store = clawfarm::store::blob::BlobStore::new(&home);
    let orphan = data(5000, 3);
    fs::write(home.blob(&sha(&orphan)), &orphan).unwrap();
    fs::write(home.blob(BASE_SHA), b"base").unwrap();
    let leftover = home
        .bundles_dir()
        .join(format!(".tmp-pending9-{}", dead_pid()));
    fs::create_dir_all(&leftover).unwrap();

    let items = bundle::list(&home);
    assert_eq!(
        items
            .iter()
            .filter(|i| i.kind == StoredKind::Bundle)
            .count(),
        2
    );
    assert_eq!(
        items.iter().filter(|i| i.kind == StoredKind::Blob).count(),
        4
    );
    let run_item = items.iter().find(|i| i.digest == sha(&src.run)).unwrap();
    assert_eq!(run_item.size, src.run.len() as u64);
    let a_item = items.iter().find(|i| i.digest == a.digest).unwrap();
    assert!(a_item.blobs.contains(&sha(&src.run)) && a_item.blobs.contains(&BASE_SHA.to_string()));
    assert!(a_item.size > 0);

    let referenced: BTreeSet<String> = [a.digest.clone()].into();
    let dry = bundle::gc(&home, &referenced, true);
    let removed: BTreeSet<&str> = dry.removed.iter().map(|i| i.digest.as_str()).collect();
    let expect: BTreeSet<String> = [b.digest.clone(), sha(&run2), sha(&orphan)].into();
    assert_eq!(removed, expect.iter().map(String::as_str).collect());
    assert_eq!(dry.temp, vec![leftover.clone()]);
    assert!(dry.freed_bytes > 0);
    assert!(
        home.bundle_dir(&b.digest).exists() && leftover.exists(),
        "dry run removes nothing"
    );

    let real = bundle::gc(&home, &referenced, false);
    assert!(real.failures.is_empty(), "{:?}", real.failures);
    assert_eq!(real.removed.len(), 3);
    assert!(!home.bundle_dir(&b.digest).exists());
    assert!(!store.has(&sha(&run2)) && !store.has(&sha(&orphan)));
    assert!(store.has(&sha(&src.run)) && store.has(BASE_SHA));
    assert!(bundle::is_imported(&home, &a.digest));
    assert!(!leftover.exists());

    // Nothing referenced: everything goes, cached clawspecs of unimported bundles too.
    let j = d.path().join("j.clawbox");
    fs::write(
        &j,
        clawspec("j", ("https://example.invalid/b.img", BASE_SHA), None),
    )
    .unwrap();
    let jd = bundle::inspect(&home, &j).unwrap().digest;
    let spec_cache = home.bundles_dir().join(".specs").join(format!("{jd}.json"));
    assert!(spec_cache.exists());
    let all = bundle::gc(&home, &BTreeSet::new(), false);
    assert!(all.failures.is_empty());
    assert!(bundle::list(&home).is_empty());
    assert!(!spec_cache.exists());
}
