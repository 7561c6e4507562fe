//! The payload and volume disks of an instance (no 9p: every cloud kernel has virtio-blk and
//! ext4, and disks do not block snapshots). See `rfc/005-qemu-driver.md` §payload and volumes.
//!
//! * The bundle's `claw/` payload becomes `payload.img`: a raw ext4 image built with
//!   `mkfs.ext4 -d` (no journal, root-owned root folder), attached read-only with serial
//!   `claw-payload`. It is rebuilt when the bundle changes (`payload.id` holds the bundle
//!   digest it was built from).
//! * A volume is `volumes/<CLAWID>/<name>.qcow2`: a sparse qcow2 of [`VOLUME_SIZE`] holding
//!   an ext4 filesystem made on the host at first use (from the old host folder
//!   `volumes/<CLAWID>/<name>/` when one exists), attached read-write with serial
//!   `claw-volN`. qcow2 lets checkpoints include the volume.
//! * [`export_volume`] copies a volume's files to a host folder without mounting anything:
//!   `qemu-img convert` to a temporary raw image, then `debugfs -R "rdump / DEST"`.
//!
//! Host tools: `mkfs.ext4` and `debugfs` (e2fsprogs), `qemu-img`.

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use anyhow::{Context, bail};

use crate::util::fsutil;

/// Virtual size of a new volume disk (sparse: only what the guest writes takes space).
pub const VOLUME_SIZE: u64 = 8 << 30;

/// Smallest payload image.
const MIN_PAYLOAD: u64 = 8 << 20;

fn run(cmd: &mut Command, what: &str) -> anyhow::Result<()> {
    let out = cmd
        .stdin(Stdio::null())
        .output()
        .with_context(|| format!("cannot run {what}"))?;
    if !out.status.success() {
        bail!(
            "{what} failed ({}): {}",
            out.status,
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    Ok(())
}

/// Bytes and entries below `dir` (files rounded up to 4 KiB), not following links.
fn tree_size(dir: &Path) -> std::io::Result<(u64, u64)> {
    let (mut bytes, mut entries) = (0u64, 1u64);
    for e in std::fs::read_dir(dir)? {
        let e = e?;
        let m = e.path().symlink_metadata()?;
        entries += 1;
        if m.is_dir() {
            let (b, n) = tree_size(&e.path())?;
            bytes += b;
            entries += n;
        } else {
            bytes += m.len().div_ceil(4096) * 4096;
        }
    }
    Ok((bytes, entries))
}

/// Build (or keep) `out`, the payload disk made from folder `src`; `id` names the content
/// (the bundle digest) and is stored next to it in `id_file`. Atomic: built under a temp
/// name and renamed.
pub fn ensure_payload_image(
    src: &Path,
    out: &Path,
    id_file: &Path,
    id: &str,
) -> anyhow::Result<()> {
    let current = std::fs::read_to_string(id_file).unwrap_or_default();
    if out.is_file() && current.trim() == id {
        return Ok(());
    }
    let (bytes, entries) =
        tree_size(src).with_context(|| format!("cannot read the payload {}", src.display()))?;
    // ext4 metadata: inode tables, bitmaps, folders; generous, the image is sparse.
    let size = (bytes + bytes / 4 + entries * 8192 + (4 << 20)).max(MIN_PAYLOAD);
    let size = size.div_ceil(1 << 20) << 20;
    let tmp = out.with_extension("img.tmp");
    let _ = std::fs::remove_file(&tmp);
    let f =
        std::fs::File::create(&tmp).with_context(|| format!("cannot create {}", tmp.display()))?;
    f.set_len(size)
        .with_context(|| format!("cannot size {}", tmp.display()))?;
    drop(f);
    let r = run(
        Command::new("mkfs.ext4")
            .args([
                "-q",
                "-F",
                "-L",
                "claw-payload",
                "-m",
                "0",
                "-O",
                "^has_journal",
            ])
            .args(["-N", &(entries + 64).to_string()])
            .args(["-E", "root_owner=0:0"])
            .arg("-d")
            .arg(src)
            .arg(&tmp),
        "mkfs.ext4 (payload disk)",
    );
    if let Err(e) = r {
        let _ = std::fs::remove_file(&tmp);
        return Err(e);
    }
    std::fs::File::open(&tmp)
        .and_then(|f| f.sync_all())
        .and_then(|()| std::fs::rename(&tmp, out))
        .with_context(|| format!("cannot put the payload disk in place at {}", out.display()))?;
    fsutil::write_atomic(id_file, format!("{id}\n").as_bytes(), 0o600)
        .with_context(|| format!("cannot write {}", id_file.display()))
}

/// Create volume disk `disk` (ext4 labelled `label`, [`VOLUME_SIZE`]) unless it exists.
/// When `seed_dir` is a folder (a volume from the time volumes were 9p folders), its files
/// become the volume's content.
pub fn ensure_volume(
    qemu_img: &Path,
    disk: &Path,
    label: &str,
    seed_dir: Option<&Path>,
) -> anyhow::Result<()> {
    if disk.is_file() {
        return Ok(());
    }
    let raw = disk.with_extension("raw.tmp");
    let tmp = disk.with_extension("qcow2.tmp");
    let _ = std::fs::remove_file(&raw);
    let _ = std::fs::remove_file(&tmp);
    let r = (|| -> anyhow::Result<()> {
        let f = std::fs::File::create(&raw)
            .with_context(|| format!("cannot create {}", raw.display()))?;
        f.set_len(VOLUME_SIZE)
            .with_context(|| format!("cannot size {}", raw.display()))?;
        drop(f);
        let label: String = label.chars().take(16).collect();
        let mut mkfs = Command::new("mkfs.ext4");
        // Tables are initialised here (zeros stay holes), so the guest kernel has no lazy
        // init to write into the qcow2 while it boots.
        mkfs.args(["-q", "-F", "-L", &label, "-m", "0"]).args([
            "-E",
            "root_owner=0:0,lazy_itable_init=0,lazy_journal_init=0,nodiscard",
        ]);
        if let Some(d) = seed_dir.filter(|d| d.is_dir()) {
            mkfs.arg("-d").arg(d);
        }
        mkfs.arg(&raw);
        run(&mut mkfs, "mkfs.ext4 (volume disk)")?;
        run(
            Command::new(qemu_img)
                .args(["convert", "-q", "-f", "raw", "-O", "qcow2"])
                .arg(&raw)
                .arg(&tmp),
            "qemu-img convert (volume disk)",
        )?;
        std::fs::set_permissions(&tmp, std::os::unix::fs::PermissionsExt::from_mode(0o600))?;
        std::fs::File::open(&tmp)?.sync_all()?;
        std::fs::rename(&tmp, disk)?;
        fsutil::sync_dir(disk.parent().unwrap_or(Path::new(".")))?;
        Ok(())
    })();
    let _ = std::fs::remove_file(&raw);
    if r.is_err() {
        let _ = std::fs::remove_file(&tmp);
    }
    r.with_context(|| format!("cannot create the volume disk {}", disk.display()))
}

/// Copy the files of volume disk `disk` into folder `dest` (created; must not exist or be
/// empty). Reads the disk with `-U` (shared), so callers must make sure no VM writes it.
///
/// The guest wrote the disk, so nothing of its metadata is trusted (`rfc/012-sandbox.md`):
/// the copies belong to the user running the export (the guest's owners are dropped),
/// setuid, setgid and sticky bits are cleared, and device nodes, FIFOs and sockets are not
/// copied (`debugfs rdump` skips them; [`sanitize_tree`] removes any that appear). The work
/// happens in a 0700 folder next to `dest`, so nothing is ever visible with the guest's
/// owners or modes, and the final move stays on one filesystem.
///
/// Returns how many special files (devices, FIFOs, sockets) were left out.
pub fn export_volume(qemu_img: &Path, disk: &Path, dest: &Path) -> anyhow::Result<u64> {
    if !disk.is_file() {
        bail!("volume disk {} does not exist", disk.display());
    }
    if dest.exists()
        && std::fs::read_dir(dest)
            .map(|mut d| d.next().is_some())
            .unwrap_or(true)
    {
        bail!("{} exists and is not an empty folder", dest.display());
    }
    let dest_abs =
        std::path::absolute(dest).with_context(|| format!("cannot resolve {}", dest.display()))?;
    let parent = dest_abs.parent().unwrap_or(Path::new("/"));
    std::fs::create_dir_all(parent)
        .with_context(|| format!("cannot create {}", parent.display()))?;
    let scratch = Scratch(parent.join(format!(".clawfarm-export.{}", std::process::id())));
    let _ = std::fs::remove_dir_all(&scratch.0);
    fsutil::create_dir_mode(&scratch.0, 0o700)
        .with_context(|| format!("cannot create {}", scratch.0.display()))?;
    let raw: PathBuf = scratch.0.join("volume.raw");
    run(
        Command::new(qemu_img)
            .args(["convert", "-q", "-U", "-f", "qcow2", "-O", "raw"])
            .arg(disk)
            .arg(&raw),
        "qemu-img convert (volume export)",
    )?;
    let out = scratch.0.join("tree");
    std::fs::create_dir(&out)?;
    run(
        Command::new("debugfs")
            .arg("-R")
            .arg(format!("rdump / {}", out.display()))
            .arg(&raw),
        "debugfs rdump (volume export)",
    )?;
    let skipped = sanitize_tree(&out)
        .with_context(|| format!("cannot reset owners and modes under {}", out.display()))?;
    std::fs::create_dir_all(dest).with_context(|| format!("cannot create {}", dest.display()))?;
    // rdump of `/` writes the root's entries into `out` (lost+found is ext4's, not data).
    for e in std::fs::read_dir(&out)? {
        let e = e?;
        if e.file_name() == "lost+found" {
            continue;
        }
        std::fs::rename(e.path(), dest.join(e.file_name())).with_context(|| {
            format!("cannot move {} into {}", e.path().display(), dest.display())
        })?;
    }
    if skipped > 0 {
        tracing::warn!(
            "volume export {}: {skipped} device node(s), FIFO(s) or socket(s) not copied",
            disk.display()
        );
    }
    Ok(skipped)
}

/// Make every entry under `dir` (not `dir` itself) a plain file, folder or symbolic link
/// of the calling user: owner and group set to the caller's, modes cut to the permission
/// bits (no setuid, setgid or sticky bit; folders keep `u+rwx`), anything else (device
/// nodes, FIFOs, sockets) removed. Symbolic links are never followed. Returns how many
/// entries were removed.
pub fn sanitize_tree(dir: &Path) -> std::io::Result<u64> {
    use std::os::unix::fs::{MetadataExt, PermissionsExt};
    let (uid, gid) = (
        rustix::process::geteuid().as_raw(),
        rustix::process::getegid().as_raw(),
    );
    let mut removed = 0;
    for e in std::fs::read_dir(dir)? {
        let p = e?.path();
        let m = std::fs::symlink_metadata(&p)?;
        let t = m.file_type();
        if !(t.is_file() || t.is_dir() || t.is_symlink()) {
            std::fs::remove_file(&p)?;
            removed += 1;
            continue;
        }
        if m.uid() != uid || m.gid() != gid {
            std::os::unix::fs::lchown(&p, Some(uid), Some(gid))?;
        }
        if t.is_symlink() {
            continue;
        }
        let mode = if t.is_dir() {
            removed += sanitize_tree(&p)?;
            (m.mode() & 0o777) | 0o700
        } else {
            m.mode() & 0o777
        };
        // Set after the chown (which may itself clear setuid): the final mode is exact.
        std::fs::set_permissions(&p, std::fs::Permissions::from_mode(mode))?;
    }
    Ok(removed)
}

/// A scratch folder removed on drop.
struct Scratch(PathBuf);

impl Drop for Scratch {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}
