//! The QEMU side of `clawfarm export` (see `rfc/010-export.md`) and of booting from an
//! exported layer:
//!
//! * [`snapshot`]: copy the disk of a stopped instance (the caller quiesced it);
//! * [`scrub`]: boot the copy once in a throwaway VM whose seed runs
//!   `assets/guest/clawfarm-scrub.sh` and powers off;
//! * [`flatten`]: `qemu-img rebase` of the scrubbed copy onto the base, then
//!   `qemu-img convert -c -B BASE`: a compressed qcow2 holding only the clusters that
//!   differ from the base image, with no backing file recorded (the bundle importer
//!   refuses backing files);
//! * [`to_raw`]: the layer as the raw bytes it holds (for the secret scan);
//! * [`layer_on_base`]: the store-side file an instance of an exported box backs on: a copy
//!   of the verified `run` layer whose header names the verified base blob.

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Duration;

use anyhow::{Context, bail};

use super::accel::Accel;
use super::cmdline::QemuSpec;
use super::layout::InstanceFiles;
use super::seed;
use crate::home::Home;
use crate::store::part::{DiskFormat, disk_format};
use crate::util::fsutil;

/// Run `qemu-img ARGS`; an error carries its stderr.
fn qemu_img(qemu_img: &Path, args: &[&str], what: &str) -> anyhow::Result<()> {
    let out = Command::new(qemu_img)
        .args(args)
        .stdin(Stdio::null())
        .output()
        .with_context(|| format!("cannot run {}", qemu_img.display()))?;
    if !out.status.success() {
        bail!(
            "{what}: qemu-img {} failed ({}): {}",
            args.first().copied().unwrap_or(""),
            out.status,
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    Ok(())
}

/// `qemu-img rebase` of the qcow2 `img` onto `base` (a file and its format): with `unsafe_`
/// only the header changes (`-u`); otherwise every cluster where the old backing chain and
/// `base` differ is first written into `img`, so it reads the same as before.
fn rebase(
    qemu_img_path: &Path,
    img: &Path,
    (base, base_fmt): (&Path, &str),
    unsafe_: bool,
    what: &str,
) -> anyhow::Result<()> {
    let (img, base) = (img.to_string_lossy(), base.to_string_lossy());
    let mut args = vec!["rebase"];
    if unsafe_ {
        args.push("-u");
    }
    args.extend(["-f", "qcow2", "-F", base_fmt, "-b", &base, &img]);
    qemu_img(qemu_img_path, &args, what)
}

fn format_name(path: &Path) -> anyhow::Result<&'static str> {
    Ok(match disk_format(path)? {
        DiskFormat::Qcow2 => "qcow2",
        DiskFormat::Raw => "raw",
    })
}

/// The folder of derived layer files (`<home>/layers/`).
pub fn layers_dir(home: &Home) -> PathBuf {
    home.root().join("layers")
}

/// The file an instance disk backs on when its bundle has a `run` layer over a `base`:
/// `layers/<run sha>-on-<base sha>.qcow2`, a copy of the run blob whose qcow2 header names
/// the base blob (made once, read-only). A raw `run` image is complete on its own and is
/// returned as is.
pub fn layer_on_base(
    home: &Home,
    qemu_img_path: &Path,
    run_sha: &str,
    base_sha: &str,
) -> anyhow::Result<PathBuf> {
    let run = std::path::absolute(home.blob(run_sha))?;
    let base = std::path::absolute(home.blob(base_sha))?;
    for (what, p) in [("run", &run), ("base", &base)] {
        if !p.is_file() {
            bail!(
                "the {what} image (blob {}) is not in the store",
                p.display()
            );
        }
    }
    if format_name(&run)? == "raw" {
        return Ok(run);
    }
    let dir = std::path::absolute(layers_dir(home))?;
    let out = dir.join(format!("{run_sha}-on-{base_sha}.qcow2"));
    if out.is_file() {
        return Ok(out);
    }
    fsutil::create_dir_mode(&dir, 0o755)
        .with_context(|| format!("cannot create {}", dir.display()))?;
    let tmp = dir.join(format!(".tmp-{run_sha}-{}", std::process::id()));
    let _ = std::fs::remove_file(&tmp);
    let r = (|| -> anyhow::Result<()> {
        std::fs::copy(&run, &tmp)
            .with_context(|| format!("cannot copy {} to {}", run.display(), tmp.display()))?;
        std::fs::set_permissions(&tmp, std::os::unix::fs::PermissionsExt::from_mode(0o644))?;
        let base_fmt = format_name(&base)?;
        rebase(
            qemu_img_path,
            &tmp,
            (&base, base_fmt),
            true,
            "linking the run layer to its base",
        )?;
        std::fs::set_permissions(&tmp, std::os::unix::fs::PermissionsExt::from_mode(0o444))?;
        std::fs::File::open(&tmp)?.sync_all()?;
        std::fs::rename(&tmp, &out)?;
        fsutil::sync_dir(&dir)?;
        Ok(())
    })();
    if let Err(e) = r {
        let _ = std::fs::remove_file(&tmp);
        return Err(e.context(format!("cannot make the layer file {}", out.display())));
    }
    Ok(out)
}

/// The disk copy inside an export work folder.
pub fn work_files(work: &Path) -> InstanceFiles {
    InstanceFiles::at(work)
}

/// The copy of the instance disk in a work folder; the scrub VM boots an overlay on it.
pub fn snapshot_path(work: &Path) -> PathBuf {
    work.join("snapshot.qcow2")
}

/// Copy the (stopped) instance disk `disk` into the work folder `work`, and create the
/// scrub VM's disk over it: a qcow2 overlay with **4 KiB clusters**, so that every
/// discard of a freed ext4 block (4 KiB) makes that block read as zeros (qcow2 marks a
/// discarded cluster over a backing file as a zero cluster). With the copy's 64 KiB
/// clusters, a freed block inside a cluster that still holds other data would keep its
/// old bytes (measured: a cloud-init state file rewritten at boot kept the base64 params).
pub fn snapshot(qemu_img_path: &Path, disk: &Path, work: &Path) -> anyhow::Result<()> {
    fsutil::create_dir_mode(work, 0o700)
        .with_context(|| format!("cannot create {}", work.display()))?;
    let copy = snapshot_path(work);
    std::fs::copy(disk, &copy)
        .with_context(|| format!("cannot copy {} to {}", disk.display(), copy.display()))?;
    std::fs::File::open(&copy)
        .and_then(|f| f.sync_all())
        .with_context(|| format!("cannot sync {}", copy.display()))?;
    let top = work_files(work).disk();
    qemu_img(
        qemu_img_path,
        &[
            "create",
            "-q",
            "-f",
            "qcow2",
            "-o",
            "cluster_size=4096",
            "-F",
            "qcow2",
            "-b",
            &copy.to_string_lossy(),
            &top.to_string_lossy(),
        ],
        "creating the scrub disk",
    )
}

/// Boot the disk copy in `work` once with the scrub seed and wait for the VM to power
/// itself off; the scrub must report [`seed::SCRUB_OK`] on the serial console.
pub async fn scrub(
    qemu: &Path,
    accel: Accel,
    work: &Path,
    memory_mib: u64,
    timeout: Duration,
    user: Option<super::confine::QemuUser>,
) -> anyhow::Result<Duration> {
    let files = work_files(work);
    let id = format!(
        "clawfarm-export-{}",
        &crate::util::digest::sha256_hex(work.to_string_lossy().as_bytes())[..16]
    );
    let img = seed::build_scrub_seed_image(&id)?;
    fsutil::write_atomic(&files.seed(), &img, 0o600)
        .with_context(|| format!("cannot write {}", files.seed().display()))?;
    let port = super::free_port().context("cannot find a free port on 127.0.0.1")?;
    let spec = QemuSpec {
        clawid: "clawfarm-export".into(),
        files: files.clone(),
        accel,
        cpus: 2,
        memory_mib: memory_mib.max(1024),
        ssh_port: port,
        ports: Vec::new(),
        nonce: "export".into(),
        payload: None,
        volumes: Vec::new(),
        loadvm: None,
        // The scrub needs no network; the disk it boots is the instance's.
        restrict_net: true,
    };
    // Confined like any instance QEMU (`rfc/012-sandbox.md`): never root.
    if let Some(u) = user {
        super::confine::prepare_work(work, &[snapshot_path(work), files.disk(), files.seed()], u)?;
    }
    let log = std::fs::File::create(files.qemu_log())
        .with_context(|| format!("cannot create {}", files.qemu_log().display()))?;
    let t0 = std::time::Instant::now();
    let mut cmd = tokio::process::Command::new(qemu);
    if let Some(u) = user {
        cmd.uid(u.uid).gid(u.gid);
    }
    let mut child = cmd
        .args(spec.args().into_iter().map(|a| {
            // Zero writes of the scrub's free-space fill become discards (rfc/010 §3).
            if a.contains(",discard=unmap") {
                a.replace(",discard=unmap", ",discard=unmap,detect-zeroes=unmap")
            } else {
                a
            }
        }))
        .current_dir(work)
        .stdin(Stdio::null())
        .stdout(Stdio::from(log.try_clone()?))
        .stderr(Stdio::from(log))
        .kill_on_drop(true)
        .spawn()
        .with_context(|| format!("cannot run {}", qemu.display()))?;
    let status = match tokio::time::timeout(timeout, child.wait()).await {
        Ok(s) => s.context("waiting for the scrub VM")?,
        Err(_) => {
            let _ = child.kill().await;
            bail!(
                "the scrub VM did not power off within {}s (serial console: {})",
                timeout.as_secs(),
                files.serial_log().display()
            );
        }
    };
    let serial = std::fs::read_to_string(files.serial_log()).unwrap_or_default();
    if !serial.lines().any(|l| l.trim_end() == seed::SCRUB_OK) {
        let why = serial
            .lines()
            .rfind(|l| l.starts_with("CLAWFARM-SCRUB failed"))
            .map(str::to_string)
            .unwrap_or_else(|| format!("the scrub VM ended ({status}) without reporting"));
        bail!(
            "scrubbing the disk copy failed: {why} (serial console: {})",
            files.serial_log().display()
        );
    }
    Ok(t0.elapsed())
}

/// Write the changes of the disk copy in `work` relative to `base` as a compressed qcow2
/// without backing file at `out`.
///
/// The scrubbed disk is a chain: the scrub VM's 4 KiB-cluster overlay, over the copy of
/// the instance's overlay, over the base (and over a run layer too, for an instance of an
/// exported box). `qemu-img convert -B BASE` copies only what the **top** image of its
/// source holds: it takes the source's own backing file to be BASE. So the top is first
/// rebased onto `base` (a safe `qemu-img rebase`, which writes into the top every cluster
/// where the chain below it differs from `base`); without that, the layer held the scrub
/// VM's writes only, not the instance's, and an instance booted from it saw a broken
/// file system (issue 12: cloud-init's `users-groups` failed with `NotADirectoryError`).
pub fn flatten(qemu_img_path: &Path, work: &Path, base: &Path, out: &Path) -> anyhow::Result<()> {
    let disk = work_files(work).disk();
    let base_fmt = format_name(base)?;
    let tmp_out = out.with_extension("flat-tmp");
    let _ = std::fs::remove_file(&tmp_out);
    rebase(
        qemu_img_path,
        &disk,
        (base, base_fmt),
        false,
        "folding the instance's changes into the scrubbed disk",
    )?;
    let r = qemu_img(
        qemu_img_path,
        &[
            "convert",
            "-f",
            "qcow2",
            "-O",
            "qcow2",
            "-c",
            "-B",
            &base.to_string_lossy(),
            "-F",
            base_fmt,
            &disk.to_string_lossy(),
            &tmp_out.to_string_lossy(),
        ],
        "writing the layer",
    )
    .and_then(|()| {
        // The layer is stored without a backing file: the importer refuses one (a host
        // path), and an instance links it to the verified base itself (layer_on_base).
        qemu_img(
            qemu_img_path,
            &[
                "rebase",
                "-u",
                "-f",
                "qcow2",
                "-b",
                "",
                &tmp_out.to_string_lossy(),
            ],
            "detaching the layer from the host's base path",
        )
    })
    .and_then(|()| {
        std::fs::rename(&tmp_out, out)
            .with_context(|| format!("cannot rename {} to {}", tmp_out.display(), out.display()))
    });
    if r.is_err() {
        let _ = std::fs::remove_file(&tmp_out);
    }
    r
}

/// The bytes the qcow2 `layer` holds, as a sparse raw file at `raw` (unallocated clusters
/// read as zeros: the layer is read without its base).
pub fn to_raw(qemu_img_path: &Path, layer: &Path, raw: &Path) -> anyhow::Result<()> {
    qemu_img(
        qemu_img_path,
        &[
            "convert",
            "-f",
            "qcow2",
            "-O",
            "raw",
            &layer.to_string_lossy(),
            &raw.to_string_lossy(),
        ],
        "decompressing the layer for the secret scan",
    )
}
