//! The host driver without booting a guest: overlay disks, seeds and keys, volumes,
//! remove, probe and adoption of a running "QEMU" (a stand-in process whose command line
//! names the instance). Needs `qemu-img` (skipped with a message when it is missing).

mod common;

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use clawfarm::desired::{BundleDesired, DesiredInstance};
use clawfarm::driver::qemu::export;
use clawfarm::driver::qemu::layout::{volume_disk, volumes_dir};
use clawfarm::driver::qemu::{QemuConfig, QemuDriver};
use clawfarm::driver::{Driver, Liveness};
use clawfarm::home::Home;
use clawfarm::input::clawspec::ProvisionStep;
use clawfarm::input::manifest::Volume;
use clawfarm::state::record::{Phase, ProcessId};
use clawfarm::store::part::qcow2_backing;

/// Whether `tool` is on `PATH` (`mkfs.ext4` and `debugfs` have no `--version`).
fn have(tool: &str) -> bool {
    std::env::var_os("PATH")
        .is_some_and(|p| std::env::split_paths(&p).any(|d| d.join(tool).is_file()))
}

/// A home with a sparse qcow2 "base image" of `gib` GiB stored as a blob (0444).
fn home_with_base(gib: u64) -> (tempfile::TempDir, Home, String) {
    home_with_base_as("qcow2", gib)
}

/// A home with a sparse base image of `gib` GiB in format `fmt` stored as a blob (0444).
fn home_with_base_as(fmt: &str, gib: u64) -> (tempfile::TempDir, Home, String) {
    home_with_base_data(fmt, gib, &[])
}

/// The same, with `qemu-io` commands (`write -P 0x11 0 1M`) run on the image before it is
/// stored.
fn home_with_base_data(fmt: &str, gib: u64, io: &[&str]) -> (tempfile::TempDir, Home, String) {
    let d = tempfile::tempdir().unwrap();
    let home = Home::new(d.path().join("home"));
    home.ensure().unwrap();
    let src = d.path().join("base.img");
    let st = Command::new("qemu-img")
        .args(["create", "-q", "-f", fmt])
        .arg(&src)
        .arg(format!("{gib}G"))
        .status()
        .unwrap();
    assert!(st.success());
    if !io.is_empty() {
        qemu_io(&src, fmt, io);
    }
    let sha = clawfarm::util::digest::sha256_file(&src).unwrap();
    let blob = home.blob(&sha);
    std::fs::rename(&src, &blob).unwrap();
    std::fs::set_permissions(&blob, std::fs::Permissions::from_mode(0o444)).unwrap();
    (d, home, sha)
}

fn bundle_on(base_sha: &str) -> Arc<BundleDesired> {
    let b = common::bundle('1', true, false);
    let mut spec = (*b.clawspec).clone();
    spec.image[0].sha256 = base_sha.to_string();
    spec.provision = vec![ProvisionStep {
        name: Some("setup".into()),
        shell: None,
        script: "echo hi".into(),
    }];
    Arc::new(BundleDesired {
        clawspec: Arc::new(spec),
        ..(*b).clone()
    })
}

fn instance(base_sha: &str, key: &str) -> DesiredInstance {
    let mut d = (*common::d("demo")
        .bundle(bundle_on(base_sha))
        .key(key)
        .build())
    .clone();
    d.volumes = vec![Volume {
        name: "data".into(),
        guest_path: "/srv/data".into(),
    }];
    d.build.volumes = d.volumes.clone();
    d
}

fn driver(home: &Home) -> QemuDriver {
    QemuDriver::with_config(
        home.clone(),
        QemuConfig {
            // Nothing in these tests may start a real QEMU.
            qemu: PathBuf::from("/bin/false"),
            ..QemuConfig::default()
        },
    )
}

/// Run `qemu-io -c CMD…` on `img`; every command must succeed (a `read -P` whose pattern
/// does not match fails).
fn qemu_io(img: &Path, fmt: &str, cmds: &[&str]) {
    let mut c = Command::new("qemu-io");
    c.args(["-f", fmt]);
    if cmds.iter().all(|x| x.starts_with("read")) {
        c.arg("-r");
    }
    for x in cmds {
        c.arg("-c").arg(x);
    }
    let out = c.arg(img).output().unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success() && !text.contains("failed"),
        "qemu-io {cmds:?} {}: {text}{}",
        img.display(),
        String::from_utf8_lossy(&out.stderr)
    );
}

fn mode(p: &Path) -> u32 {
    std::fs::metadata(p).unwrap().permissions().mode() & 0o777
}

#[tokio::test]
async fn overlay_disk_is_instant_small_and_checked() {
    if !have("qemu-img") {
        eprintln!("skipped: qemu-img not found");
        return;
    }
    let (_d, home, sha) = home_with_base(3);
    let drv = driver(&home);
    let inst = instance(&sha, "k1");
    let t = Instant::now();
    drv.create_disk(&inst).await.unwrap();
    let took = t.elapsed();
    let files = drv.files(&inst.clawid);
    let disk = files.disk();
    let size = std::fs::metadata(&disk).unwrap().len();
    eprintln!("overlay on a 3 GiB base: {took:?}, {size} bytes");
    assert!(took < Duration::from_secs(1), "took {took:?}");
    assert!(size < 4 << 20, "overlay is {size} bytes");
    assert_eq!(mode(&disk), 0o600);
    let blob = std::path::absolute(home.blob(&sha)).unwrap();
    assert_eq!(
        qcow2_backing(&disk).unwrap().as_deref(),
        Some(&*blob.to_string_lossy())
    );
    assert!(!files.disk_tmp().exists());

    // Again: kept as is.
    let before = std::fs::metadata(&disk).unwrap().modified().unwrap();
    drv.create_disk(&inst).await.unwrap();
    assert_eq!(
        std::fs::metadata(&disk).unwrap().modified().unwrap(),
        before
    );

    // An overlay on another blob is an error naming the disk (the planner replaces).
    let (_d2, home2, sha2) = home_with_base(1);
    std::fs::copy(home2.blob(&sha2), home.blob(&sha2)).unwrap();
    let other = instance(&sha2, "k1");
    let e = drv.create_disk(&other).await.unwrap_err();
    let msg = format!("{e:#}");
    assert!(
        msg.contains("disk.qcow2 backs on") && msg.contains(&sha),
        "{msg}"
    );

    // A missing blob is named.
    let missing = instance(&"e".repeat(64), "k1");
    let e = drv.create_disk(&missing).await.unwrap_err();
    assert!(format!("{e:#}").contains("is not in the store"), "{e:#}");
}

/// A raw base image (accepted by the store) gets an overlay whose backing format is raw:
/// the format is read from the image, never assumed (RFC 003 §10).
#[tokio::test]
async fn overlay_on_a_raw_base_names_raw_as_its_backing_format() {
    if !have("qemu-img") {
        eprintln!("skipped: qemu-img not found");
        return;
    }
    let (_d, home, sha) = home_with_base_as("raw", 1);
    let drv = driver(&home);
    let inst = instance(&sha, "k1");
    drv.create_disk(&inst).await.unwrap();
    let disk = drv.files(&inst.clawid).disk();
    let out = Command::new("qemu-img")
        .args(["info", "--output=json", "-U"])
        .arg(&disk)
        .output()
        .unwrap();
    assert!(out.status.success());
    let info: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(info["format"], "qcow2");
    assert_eq!(info["backing-filename-format"], "raw", "{info}");
    assert_eq!(info["virtual-size"], 1u64 << 30);
}

#[tokio::test]
async fn seed_keys_once_rewrite_on_change_volumes_outside() {
    let d = tempfile::tempdir().unwrap();
    let home = Home::new(d.path().join("home"));
    home.ensure().unwrap();
    let drv = driver(&home);
    let inst = instance(&"a".repeat(64), "secret-value-1");
    drv.write_seed(&inst).await.unwrap();
    let f = drv.files(&inst.clawid);
    for p in [f.seed(), f.seed_id(), f.key(), f.host_key()].iter() {
        assert_eq!(mode(p), 0o600, "{}", p.display());
    }
    let key = std::fs::read(f.key()).unwrap();
    let hostkey = std::fs::read(f.host_key()).unwrap();
    let id1 = std::fs::read_to_string(f.seed_id()).unwrap();
    let m1 = std::fs::metadata(f.seed()).unwrap().modified().unwrap();
    assert!(volume_disk(&home, &inst.clawid, "data").is_file());
    assert!(!volumes_dir(&home, &inst.clawid).starts_with(&f.dir));
    // No secret in any file except the seed image itself.
    for e in std::fs::read_dir(&f.dir).unwrap() {
        let p = e.unwrap().path();
        if p != f.seed() {
            let b = std::fs::read(&p).unwrap();
            assert!(
                !String::from_utf8_lossy(&b).contains("secret-value-1"),
                "{} holds the secret",
                p.display()
            );
        }
    }

    // Same content: nothing rewritten.
    std::thread::sleep(Duration::from_millis(20));
    drv.write_seed(&inst).await.unwrap();
    assert_eq!(std::fs::metadata(f.seed()).unwrap().modified().unwrap(), m1);
    // New param value: new seed (new instance id), same keys.
    let changed = instance(&"a".repeat(64), "secret-value-2");
    drv.write_seed(&changed).await.unwrap();
    assert_ne!(std::fs::read_to_string(f.seed_id()).unwrap(), id1);
    assert_eq!(std::fs::read(f.key()).unwrap(), key);
    assert_eq!(std::fs::read(f.host_key()).unwrap(), hostkey);

    // remove keeps volumes; purge deletes them.
    let disk = volume_disk(&home, &inst.clawid, "data");
    let before = std::fs::read(&disk).unwrap();
    drv.remove(&inst.clawid, false).await.unwrap();
    assert!(!f.dir.exists());
    assert_eq!(
        std::fs::read(&disk).unwrap(),
        before,
        "rm keeps the volume disk"
    );
    drv.remove(&inst.clawid, true).await.unwrap();
    assert!(!volumes_dir(&home, &inst.clawid).exists());
    // Removing what is gone is fine.
    drv.remove(&inst.clawid, true).await.unwrap();
}

/// A process that looks like this instance's QEMU: its command line names the QMP socket,
/// the boot nonce and the SSH forward, and its pid is in the pidfile.
fn fake_qemu(drv: &QemuDriver, clawid: &str) -> Child {
    let f = drv.files(clawid);
    std::fs::create_dir_all(&f.dir).unwrap();
    let child = Command::new("sh")
        .args(["-c", "sleep 60; exit 0", "qemu-system-x86_64"])
        .args(["-accel", "tcg", "-netdev"])
        .arg("user,id=net0,hostfwd=tcp:127.0.0.1:40022-:22")
        .args(["-fw_cfg", "name=opt/org.clawfarm/boot,string=cafe01"])
        .arg("-qmp")
        .arg(format!("unix:{},server=on,wait=off", f.marker()))
        .stdin(Stdio::null())
        .spawn()
        .unwrap();
    std::fs::write(f.pidfile(), format!("{}\n", child.id())).unwrap();
    std::thread::sleep(Duration::from_millis(50));
    child
}

#[tokio::test]
async fn probe_adopt_and_refuse_remove_of_a_running_vm() {
    let d = tempfile::tempdir().unwrap();
    let home = Home::new(d.path().join("home"));
    home.ensure().unwrap();
    let drv = driver(&home);
    let dd = common::d("adopt");
    let mut rec = dd.record(Phase::Creating);
    rec.runtime = Default::default();
    assert_eq!(drv.probe(&rec), Liveness::NotStarted);

    let mut child = fake_qemu(&drv, &rec.clawid);
    // The record knows nothing (crash right after the spawn), the pidfile does.
    let Liveness::Running(p) = drv.probe(&rec) else {
        panic!("not running: {:?}", drv.probe(&rec));
    };
    assert_eq!(p.pid, child.id());

    // start adopts it (the driver's qemu is /bin/false: a spawn would fail).
    std::fs::write(drv.files(&rec.clawid).disk(), b"x").unwrap();
    std::fs::write(drv.files(&rec.clawid).seed(), b"x").unwrap();
    let rt = drv.start(&rec).await.unwrap();
    assert_eq!(rt.process.as_ref(), Some(&p));
    assert_eq!(rt.boot_nonce.as_deref(), Some("cafe01"));
    assert_eq!(rt.ssh_port, Some(40022));
    assert_eq!(rt.accel.as_deref(), Some("tcg (adopted)"));
    // A second start adopts the same process again.
    assert_eq!(drv.start(&rec).await.unwrap(), rt);

    let e = drv.remove(&rec.clawid, false).await.unwrap_err();
    assert!(format!("{e:#}").contains("still running"), "{e:#}");

    // A pid that was reused by another process is not ours.
    rec.runtime = rt.clone();
    let reused = ProcessId {
        pid: p.pid,
        start_time: p.start_time + 7,
    };
    let mut rec2 = rec.clone();
    rec2.runtime.process = Some(reused);
    std::fs::remove_file(drv.files(&rec.clawid).pidfile()).unwrap();
    std::fs::remove_file(drv.files(&rec.clawid).runtime()).unwrap();
    assert_eq!(drv.probe(&rec2), Liveness::Exited);

    child.kill().unwrap();
    child.wait().unwrap();
    assert_eq!(drv.probe(&rec), Liveness::Exited);
    // Stopping a VM that is gone is fine.
    drv.stop(&rec).await.unwrap();
    drv.remove(&rec.clawid, false).await.unwrap();
}

/// Payload and volume disks without a VM: the payload image holds the tree (read back with
/// debugfs), a volume made from an old 9p-era folder keeps its files, export copies them
/// out, and hostile destinations are refused without changing anything.
#[test]
fn payload_and_volume_disks_round_trip() {
    use clawfarm::driver::qemu::disks;
    if !have("mkfs.ext4") || !have("debugfs") || !have("qemu-img") {
        eprintln!("skipped: needs mkfs.ext4, debugfs and qemu-img");
        return;
    }
    let d = tempfile::tempdir().unwrap();
    let src = d.path().join("claw");
    std::fs::create_dir_all(src.join("sub")).unwrap();
    std::fs::write(src.join("hello.txt"), "payload\n").unwrap();
    std::fs::write(src.join("sub/big.bin"), vec![7u8; 3 << 20]).unwrap();
    let img = d.path().join("payload.img");
    let id = d.path().join("payload.id");
    disks::ensure_payload_image(&src, &img, &id, "digest-1").unwrap();
    let m1 = std::fs::metadata(&img).unwrap().modified().unwrap();
    let cat = |img: &Path, path: &str| {
        let o = std::process::Command::new("debugfs")
            .args(["-R", &format!("cat {path}")])
            .arg(img)
            .output()
            .unwrap();
        String::from_utf8_lossy(&o.stdout).to_string()
    };
    assert_eq!(cat(&img, "/hello.txt"), "payload\n");
    // Same bundle: kept; another bundle: rebuilt.
    std::thread::sleep(Duration::from_millis(20));
    disks::ensure_payload_image(&src, &img, &id, "digest-1").unwrap();
    assert_eq!(std::fs::metadata(&img).unwrap().modified().unwrap(), m1);
    std::fs::write(src.join("hello.txt"), "changed\n").unwrap();
    disks::ensure_payload_image(&src, &img, &id, "digest-2").unwrap();
    assert_eq!(cat(&img, "/hello.txt"), "changed\n");

    // A volume seeded from an old folder; sparse qcow2.
    let old = d.path().join("vols/data");
    std::fs::create_dir_all(&old).unwrap();
    std::fs::write(old.join("kept"), "from 9p days\n").unwrap();
    let disk = d.path().join("vols/data.qcow2");
    disks::ensure_volume(Path::new("qemu-img"), &disk, "data", Some(&old)).unwrap();
    assert!(
        std::fs::metadata(&disk).unwrap().len() < 64 << 20,
        "not sparse"
    );
    let out = d.path().join("export");
    disks::export_volume(Path::new("qemu-img"), &disk, &out).unwrap();
    assert_eq!(
        std::fs::read_to_string(out.join("kept")).unwrap(),
        "from 9p days\n"
    );
    assert!(!out.join("lost+found").exists());
    // Existing volume: kept as is.
    let before = std::fs::read(&disk).unwrap();
    disks::ensure_volume(Path::new("qemu-img"), &disk, "data", None).unwrap();
    assert_eq!(std::fs::read(&disk).unwrap(), before);
    // A non-empty destination is refused and left alone.
    let e = disks::export_volume(Path::new("qemu-img"), &disk, &out).unwrap_err();
    assert!(format!("{e:#}").contains("not an empty folder"), "{e:#}");
    assert_eq!(std::fs::read_dir(&out).unwrap().count(), 1);
    // A missing disk names itself.
    let e = disks::export_volume(
        Path::new("qemu-img"),
        &d.path().join("nope.qcow2"),
        &d.path().join("o2"),
    )
    .unwrap_err();
    assert!(format!("{e:#}").contains("nope.qcow2"), "{e:#}");
    assert!(!d.path().join("o2").exists());
}

/// Issue 12: the exported layer holds every change above the base, the instance's own
/// (its overlay) as well as the scrub VM's (the 4 KiB overlay over the disk copy), so an
/// instance of the exported box sees the scrubbed disk. `qemu-img convert -B` alone copied
/// only the scrub VM's writes: on the base that was a broken ext4, and cloud-init failed
/// with `NotADirectoryError` on `/home/claw/.ssh`.
#[tokio::test]
async fn an_exported_layer_over_its_base_reads_as_the_scrubbed_disk() {
    if !have("qemu-img") || !have("qemu-io") {
        eprintln!("skipped: needs qemu-img and qemu-io");
        return;
    }
    let (d, home, sha) = home_with_base_data("qcow2", 1, &["write -P 0x11 0 2M"]);
    let drv = driver(&home);
    let inst = instance(&sha, "k1");
    drv.create_disk(&inst).await.unwrap();
    // The instance writes its own data and zeroes a block that holds base data.
    let disk = drv.files(&inst.clawid).disk();
    qemu_io(&disk, "qcow2", &["write -P 0x22 4M 1M", "write -z 0 64k"]);
    // Export: the copy, then the scrub VM writes and discards (fstrim) on its overlay.
    let qi = Path::new("qemu-img");
    let work = d.path().join("work");
    export::snapshot(qi, &disk, &work).unwrap();
    let top = export::work_files(&work).disk();
    qemu_io(
        &top,
        "qcow2",
        &["write -P 0x33 8M 64k", "discard 4M 4k", "discard 1M 4k"],
    );
    let base = std::path::absolute(home.blob(&sha)).unwrap();
    let out = d.path().join("run.qcow2");
    export::flatten(qi, &work, &base, &out).unwrap();
    assert_eq!(qcow2_backing(&out).unwrap(), None);
    // On its own the layer holds the instance's data and the scrub's.
    qemu_io(
        &out,
        "qcow2",
        &["read -P 0x22 4198400 1044480", "read -P 0x33 8M 64k"],
    );
    // Stored and linked to its base as an instance of the exported box would back on it,
    // it reads exactly as the scrubbed disk.
    let run_sha = clawfarm::util::digest::sha256_file(&out).unwrap();
    std::fs::rename(&out, home.blob(&run_sha)).unwrap();
    let linked = export::layer_on_base(&home, qi, &run_sha, &sha).unwrap();
    let cmp = Command::new("qemu-img")
        .args(["compare", "-f", "qcow2", "-F", "qcow2"])
        .arg(&top)
        .arg(&linked)
        .output()
        .unwrap();
    assert!(
        cmp.status.success(),
        "the layer over its base differs from the scrubbed disk: {}{}",
        String::from_utf8_lossy(&cmp.stdout),
        String::from_utf8_lossy(&cmp.stderr)
    );
}

/// What a guest writes in a volume never becomes a privilege on the host
/// (`rfc/012-sandbox.md`): `volume export` of a disk holding a setuid-root file, a setgid
/// folder, files of other owners, a device node, a FIFO and a symbolic link gives plain
/// files and folders of the exporting user, no special bit, no device or FIFO, and the
/// link as a link (not followed).
#[test]
fn volume_export_drops_guest_owners_special_bits_and_devices() {
    use clawfarm::driver::qemu::disks;
    use std::os::unix::fs::{MetadataExt, PermissionsExt};
    if !have("mkfs.ext4") || !have("debugfs") || !have("qemu-img") {
        eprintln!("skipped: needs mkfs.ext4, debugfs and qemu-img");
        return;
    }
    let root = rustix::process::geteuid().as_raw() == 0;
    let d = tempfile::tempdir().unwrap();
    let old = d.path().join("vols/data");
    std::fs::create_dir_all(old.join("dir")).unwrap();
    let suid = old.join("suid");
    std::fs::copy("/bin/true", &suid).unwrap();
    std::fs::set_permissions(&suid, std::fs::Permissions::from_mode(0o4755)).unwrap();
    std::fs::set_permissions(old.join("dir"), std::fs::Permissions::from_mode(0o2775)).unwrap();
    std::fs::write(old.join("dir/other"), "x").unwrap();
    std::os::unix::fs::symlink("/etc/shadow", old.join("link")).unwrap();
    let ok = |c: &mut std::process::Command| assert!(c.status().unwrap().success(), "{c:?}");
    ok(std::process::Command::new("mkfifo").arg(old.join("fifo")));
    if root {
        std::os::unix::fs::lchown(&suid, Some(0), Some(0)).unwrap();
        std::fs::set_permissions(&suid, std::fs::Permissions::from_mode(0o4755)).unwrap();
        std::os::unix::fs::lchown(old.join("dir/other"), Some(1234), Some(1234)).unwrap();
        ok(std::process::Command::new("mknod")
            .arg(old.join("null"))
            .args(["c", "1", "3"]));
    }
    let disk = d.path().join("vols/data.qcow2");
    disks::ensure_volume(Path::new("qemu-img"), &disk, "data", Some(&old)).unwrap();
    let out = d.path().join("export");
    let skipped = disks::export_volume(Path::new("qemu-img"), &disk, &out).unwrap();
    let (uid, gid) = (
        rustix::process::geteuid().as_raw(),
        rustix::process::getegid().as_raw(),
    );
    let mut seen = Vec::new();
    let mut stack = vec![out.clone()];
    while let Some(dir) = stack.pop() {
        for e in std::fs::read_dir(&dir).unwrap() {
            let p = e.unwrap().path();
            let m = std::fs::symlink_metadata(&p).unwrap();
            let t = m.file_type();
            assert!(t.is_file() || t.is_dir() || t.is_symlink(), "{p:?}: {t:?}");
            assert_eq!((m.uid(), m.gid()), (uid, gid), "{p:?}");
            if !t.is_symlink() {
                assert_eq!(m.mode() & 0o7000, 0, "{p:?}: mode {:o}", m.mode());
            }
            if t.is_dir() {
                stack.push(p.clone());
            }
            seen.push(p.strip_prefix(&out).unwrap().to_string_lossy().to_string());
        }
    }
    seen.sort();
    assert_eq!(seen, ["dir", "dir/other", "link", "suid"]);
    assert_eq!(mode(&out.join("suid")) & 0o777, 0o755);
    assert_eq!(
        std::fs::read_link(out.join("link")).unwrap(),
        Path::new("/etc/shadow")
    );
    assert_eq!(std::fs::read_to_string(out.join("dir/other")).unwrap(), "x");
    // Nothing left next to the destination.
    let left: Vec<_> = std::fs::read_dir(d.path())
        .unwrap()
        .map(|e| e.unwrap().file_name())
        .collect();
    assert_eq!(left.len(), 2, "{left:?}");
    // rdump already skips special files; anything that slips through is counted.
    assert!(skipped <= 2);
}

/// The guest's proxy is clawfarm's egress proxy, which does not chain to another proxy
/// yet: an instance whose network policy uses it refuses to start while
/// `CLAWFARM_GUEST_PROXY` is set, before any user, cgroup or QEMU is made, and the error
/// does not show the proxy's credentials (`rfc/012-sandbox.md`).
#[tokio::test]
async fn guest_proxy_and_an_egress_policy_refuse_to_start() {
    use clawfarm::input::network::{Egress, Network};
    let d = tempfile::tempdir().unwrap();
    let home = Home::new(d.path().join("home"));
    home.ensure().unwrap();
    let drv = QemuDriver::with_config(
        home.clone(),
        QemuConfig {
            qemu: PathBuf::from("/bin/false"),
            guest_proxy: Some("http://user:pa55word@proxy.lab.example:3128".into()),
            ..QemuConfig::default()
        },
    );
    let mut rec = common::d("demo").record(Phase::Stopped);
    rec.resources.network = Network {
        egress: Egress::Open,
        allow: Vec::new(),
    };
    let f = drv.files(&rec.clawid);
    std::fs::create_dir_all(&f.dir).unwrap();
    for p in [f.disk(), f.seed()] {
        std::fs::write(p, b"").unwrap();
    }
    let e = format!("{:#}", drv.start(&rec).await.unwrap_err());
    assert!(
        e.contains("CLAWFARM_GUEST_PROXY (proxy.lab.example:3128)") && e.contains("open"),
        "{e}"
    );
    assert!(!e.contains("pa55word"), "{e}");
    assert!(!Path::new(&format!("/sys/fs/cgroup/cpu/clawfarm/{}", rec.clawid)).exists());
}
