//! How a QEMU process is confined (`rfc/012-sandbox.md`): it never runs as root (it is
//! started as the dedicated system user `clawfarm-qemu`), it runs under QEMU's own seccomp
//! filter, and it is placed in a per-instance cgroup that bounds its CPU and memory.
//!
//! Everything here checks before it acts: the user is created only when missing, owners and
//! modes are changed only when they differ, a cgroup folder is reused.

use std::io;
use std::os::fd::{AsRawFd, OwnedFd};
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::{Context, bail};

use super::layout::InstanceFiles;
use crate::home::Home;

/// The user QEMU runs as unless `CLAWFARM_QEMU_USER` says otherwise.
pub const DEFAULT_USER: &str = "clawfarm-qemu";

/// QEMU's seccomp sandbox: obsolete system calls, privilege changes (`set*uid`), process
/// creation (`fork`/`exec`) and resource control (`setpriority`, `sched_setaffinity`, …) are
/// denied for the whole life of the process.
pub const SANDBOX_ARG: &str =
    "on,obsolete=deny,elevateprivileges=deny,spawn=deny,resourcecontrol=deny";

/// Memory QEMU may use above the guest's RAM (device emulation, the TCG translation cache,
/// page cache of its disk I/O) before the cgroup limit applies.
pub const MEMORY_OVERHEAD_MIB: u64 = 1024;

/// CPU time per 100 ms period QEMU may use above its vCPUs (its main loop and I/O
/// threads): half a core.
pub const CPU_OVERHEAD_US: u64 = 50_000;

/// The uid and gid QEMU runs as.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct QemuUser {
    /// User id (never 0).
    pub uid: u32,
    /// Primary group id.
    pub gid: u32,
}

/// Look `name` up in `/etc/passwd`: `(uid, gid)`.
pub fn lookup_user(passwd: &str, name: &str) -> Option<(u32, u32)> {
    passwd.lines().find_map(|l| {
        let f: Vec<&str> = l.split(':').collect();
        (f.len() >= 4 && f[0] == name).then(|| Some((f[2].parse().ok()?, f[3].parse().ok()?)))?
    })
}

/// The user QEMU runs as. When clawfarm itself is not root, QEMU simply runs as the
/// caller (`None`: nothing to change). As root: the user `name`, created as a system user
/// (no home, no shell) when it does not exist yet.
pub fn qemu_user(name: &str) -> anyhow::Result<Option<QemuUser>> {
    if rustix::process::geteuid().as_raw() != 0 {
        return Ok(None);
    }
    let read = || std::fs::read_to_string("/etc/passwd").unwrap_or_default();
    let found = match lookup_user(&read(), name) {
        Some(u) => u,
        None => {
            // Two clawfarm processes (or two starts of one apply) may get here at once:
            // one creates the user, the other waits and reads it.
            let _ = std::fs::create_dir_all("/run/clawfarm");
            let lock = std::fs::OpenOptions::new()
                .create(true)
                .truncate(false)
                .write(true)
                .open("/run/clawfarm/useradd.lock")
                .context("cannot open /run/clawfarm/useradd.lock")?;
            lock.lock()
                .context("cannot lock /run/clawfarm/useradd.lock")?;
            let again = lookup_user(&read(), name);
            let out = match again {
                Some(_) => None,
                None => Some(
                    Command::new("useradd")
                        .args([
                            "--system",
                            "--no-create-home",
                            "--home-dir",
                            "/nonexistent",
                            "--shell",
                            "/usr/sbin/nologin",
                            "--user-group",
                            name,
                        ])
                        .output(),
                ),
            };
            let why = match &out {
                None => String::new(),
                Some(Ok(o)) if o.status.success() => String::new(),
                Some(Ok(o)) => String::from_utf8_lossy(&o.stderr).trim().to_string(),
                Some(Err(e)) => e.to_string(),
            };
            lookup_user(&read(), name).ok_or_else(|| {
                anyhow::anyhow!(
                    "QEMU never runs as root, and its user {name} does not exist and could not \
                     be created (useradd: {why}); run scripts/setup-host.sh or create it with \
                     `useradd --system --user-group {name}`"
                )
            })?
        }
    };
    if found.0 == 0 {
        bail!("the QEMU user {name} has uid 0; QEMU never runs as root: pick another user");
    }
    Ok(Some(QemuUser {
        uid: found.0,
        gid: found.1,
    }))
}

fn chown(p: &Path, u: QemuUser) -> io::Result<()> {
    let m = std::fs::symlink_metadata(p)?;
    if m.file_type().is_symlink() {
        return Err(io::Error::other(format!(
            "{} is a symbolic link, refused",
            p.display()
        )));
    }
    if m.uid() != u.uid || m.gid() != u.gid {
        std::os::unix::fs::lchown(p, Some(u.uid), Some(u.gid))?;
    }
    Ok(())
}

fn add_mode(p: &Path, bits: u32) -> io::Result<()> {
    let m = std::fs::metadata(p)?;
    let mode = m.permissions().mode() & 0o7777;
    if mode & bits != bits {
        std::fs::set_permissions(p, std::fs::Permissions::from_mode(mode | bits))?;
    }
    Ok(())
}

/// Whether user `u` may search (traverse) folder `dir`, from its owner, group and mode.
fn searchable_by(dir: &Path, u: QemuUser) -> io::Result<bool> {
    let m = std::fs::metadata(dir)?;
    let mode = m.mode();
    Ok(if m.uid() == u.uid {
        mode & 0o100 != 0
    } else if m.gid() == u.gid {
        mode & 0o010 != 0
    } else {
        mode & 0o001 != 0
    })
}

/// Make the files QEMU opens reachable by `u`, and nothing more:
///
/// * the home folder and its `blobs/`, `bundles/`, `claws/`, `volumes/` folders, and each
///   `volumes/<CLAWID>/` folder, get the search bit for others (`o+x`, no listing), so that
///   QEMU can open the backing blob and the volume disks by their absolute paths; folders
///   above the home must already be searchable (else an error names the folder);
/// * the instance folder (0700, QEMU creates its QMP socket and pidfile there), its disk
///   images `disk.qcow2`, `seed.img`, `payload.img` (0600) and the files QEMU rewrites
///   (`serial.log`, `status.log`) are owned by `u`. The SSH keys, the egress token, the
///   record and `runtime.json` stay root's 0600; root and `u` are the only users that can
///   read the folder;
/// * each volume disk (`volumes/<CLAWID>/<name>.qcow2`) is owned by `u`, 0600; its folder
///   stays root's, so `u` cannot add, rename or replace files there.
pub fn prepare_files(
    home: &Home,
    files: &InstanceFiles,
    volumes: &[PathBuf],
    u: QemuUser,
) -> anyhow::Result<()> {
    let root = std::path::absolute(home.root()).unwrap_or_else(|_| home.root().to_path_buf());
    for a in root.ancestors().skip(1) {
        if !searchable_by(a, u).with_context(|| format!("cannot read {}", a.display()))? {
            bail!(
                "QEMU runs as uid {} and cannot reach the home {}: the folder {} is not \
                 searchable by it (chmod o+x {0}, or use a home under a searchable folder)",
                u.uid,
                root.display(),
                a.display()
            );
        }
    }
    let mut search = vec![
        root.clone(),
        home.blobs_dir(),
        home.bundles_dir(),
        home.claws_dir(),
        root.join("volumes"),
    ];
    search.extend(
        volumes
            .iter()
            .filter_map(|v| v.parent().map(Path::to_path_buf)),
    );
    for d in search {
        if d.is_dir() {
            add_mode(&d, 0o001).with_context(|| format!("cannot chmod {}", d.display()))?;
        }
    }
    chown(&files.dir, u).with_context(|| format!("cannot chown {}", files.dir.display()))?;
    let images = [files.disk(), files.seed(), files.payload_img()];
    let logs = [
        files.serial_log(),
        files.serial_prev_log(),
        files.status_log(),
        files.status_prev_log(),
    ];
    for (p, mode) in images
        .iter()
        .chain(volumes)
        .map(|p| (p, Some(0o600)))
        .chain(logs.iter().map(|p| (p, None)))
    {
        match own(p, u, mode) {
            Ok(()) => {}
            Err(e) if e.kind() == io::ErrorKind::NotFound => {}
            Err(e) => return Err(e).with_context(|| format!("cannot chown {}", p.display())),
        }
    }
    Ok(())
}

/// Make an export work folder usable by the scrub VM's QEMU running as `u`: its parent
/// gets `o+x`, the folders above must already be searchable (else an error names the
/// folder), the work folder (0700) and the disk images in it (0600) are owned by `u`.
pub fn prepare_work(work: &Path, images: &[PathBuf], u: QemuUser) -> anyhow::Result<()> {
    let work = std::path::absolute(work).unwrap_or_else(|_| work.to_path_buf());
    if let Some(p) = work.parent() {
        add_mode(p, 0o001).with_context(|| format!("cannot chmod {}", p.display()))?;
        for a in p.ancestors().skip(1) {
            if !searchable_by(a, u).with_context(|| format!("cannot read {}", a.display()))? {
                bail!(
                    "QEMU runs as uid {} and cannot reach {}: the folder {} is not \
                     searchable by it (chmod o+x {2})",
                    u.uid,
                    work.display(),
                    a.display()
                );
            }
        }
    }
    own(&work, u, Some(0o700)).with_context(|| format!("cannot chown {}", work.display()))?;
    for p in images {
        own(p, u, Some(0o600)).with_context(|| format!("cannot chown {}", p.display()))?;
    }
    Ok(())
}

/// [`chown`] to `u`, and set `mode` when given and different.
fn own(p: &Path, u: QemuUser, mode: Option<u32>) -> io::Result<()> {
    chown(p, u)?;
    if let Some(mode) = mode
        && std::fs::symlink_metadata(p)?.permissions().mode() & 0o7777 != mode
    {
        std::fs::set_permissions(p, std::fs::Permissions::from_mode(mode))?;
    }
    Ok(())
}

/// Which cgroup hierarchy the host has.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum CgroupFs {
    /// cgroup v2 at this mount point (`cpu.max`, `memory.max`).
    V2(PathBuf),
    /// cgroup v1: the `cpu` and `memory` controller mount points.
    V1 {
        /// `cpu` controller (`cpu.cfs_quota_us`).
        cpu: PathBuf,
        /// `memory` controller (`memory.limit_in_bytes`).
        memory: PathBuf,
    },
}

impl CgroupFs {
    /// Find the hierarchy under `/sys/fs/cgroup` (`None`: no usable controllers).
    pub fn detect() -> Option<Self> {
        let base = Path::new("/sys/fs/cgroup");
        let ctl = std::fs::read_to_string(base.join("cgroup.controllers")).ok();
        if let Some(c) = ctl {
            let has = |w: &str| c.split_whitespace().any(|x| x == w);
            return (has("cpu") && has("memory")).then(|| CgroupFs::V2(base.to_path_buf()));
        }
        let cpu = base.join("cpu");
        let memory = base.join("memory");
        (cpu.join("cpu.cfs_quota_us").is_file() && memory.join("memory.limit_in_bytes").is_file())
            .then_some(CgroupFs::V1 { cpu, memory })
    }
}

/// The limits of one instance.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    /// CPU time per 100 ms period, in µs: `cpus` × 100 000 plus [`CPU_OVERHEAD_US`].
    pub cpu_quota_us: u64,
    /// Memory limit in bytes (guest RAM + [`MEMORY_OVERHEAD_MIB`]).
    pub memory_bytes: u64,
}

impl Limits {
    /// The limits of an instance with `cpus` vCPUs and `memory_mib` of RAM.
    pub fn of(cpus: u32, memory_mib: u64) -> Self {
        Limits {
            cpu_quota_us: u64::from(cpus.max(1)) * 100_000 + CPU_OVERHEAD_US,
            memory_bytes: (memory_mib.max(128) + MEMORY_OVERHEAD_MIB) * 1024 * 1024,
        }
    }
}

/// The cgroup folders of an instance, opened for joining (the `cgroup.procs` files are
/// opened before the fork, so the child only writes its pid).
#[derive(Debug)]
pub struct CgroupJoin {
    procs: Vec<OwnedFd>,
    /// The folders (for messages and tests).
    pub dirs: Vec<PathBuf>,
}

fn write_file(p: &Path, v: &str) -> anyhow::Result<()> {
    std::fs::write(p, v).with_context(|| format!("cannot write {v:?} to {}", p.display()))
}

/// Create (or reuse) `clawfarm/<clawid>` in the hierarchy and set its limits.
pub fn prepare_cgroup(fs: &CgroupFs, clawid: &str, l: Limits) -> anyhow::Result<CgroupJoin> {
    let mk = |d: &Path| -> anyhow::Result<()> {
        std::fs::create_dir_all(d).with_context(|| format!("cannot create {}", d.display()))
    };
    let dirs = match fs {
        CgroupFs::V2(base) => {
            let parent = base.join("clawfarm");
            mk(&parent)?;
            for d in [base.as_path(), parent.as_path()] {
                let sub = d.join("cgroup.subtree_control");
                let cur = std::fs::read_to_string(&sub).unwrap_or_default();
                for c in ["cpu", "memory"] {
                    if !cur.split_whitespace().any(|x| x == c) {
                        write_file(&sub, &format!("+{c}"))?;
                    }
                }
            }
            let dir = parent.join(clawid);
            mk(&dir)?;
            let _ = std::fs::write(parent.join("cpu.weight"), "10000");
            write_file(&dir.join("cpu.max"), &format!("{} 100000", l.cpu_quota_us))?;
            write_file(&dir.join("memory.max"), &l.memory_bytes.to_string())?;
            let _ = std::fs::write(dir.join("memory.swap.max"), "0");
            vec![dir]
        }
        CgroupFs::V1 { cpu, memory } => {
            let c = cpu.join("clawfarm").join(clawid);
            let m = memory.join("clawfarm").join(clawid);
            mk(&c)?;
            mk(&m)?;
            // Weights: the group of all VMs must not weigh like one host thread (the quota,
            // not the weight, is what bounds each VM); each VM weighs like `cpus` threads.
            let _ = std::fs::write(cpu.join("clawfarm").join("cpu.shares"), "262144");
            write_file(
                &c.join("cpu.shares"),
                &(1024 * (l.cpu_quota_us / 100_000).max(1)).to_string(),
            )?;
            write_file(&c.join("cpu.cfs_period_us"), "100000")?;
            write_file(&c.join("cpu.cfs_quota_us"), &l.cpu_quota_us.to_string())?;
            write_file(
                &m.join("memory.limit_in_bytes"),
                &l.memory_bytes.to_string(),
            )?;
            let _ = std::fs::write(
                m.join("memory.memsw.limit_in_bytes"),
                l.memory_bytes.to_string(),
            );
            vec![c, m]
        }
    };
    let mut procs = Vec::new();
    for d in &dirs {
        let p = d.join("cgroup.procs");
        let f = std::fs::OpenOptions::new()
            .write(true)
            .open(&p)
            .with_context(|| format!("cannot open {}", p.display()))?;
        procs.push(OwnedFd::from(f));
    }
    Ok(CgroupJoin { procs, dirs })
}

impl CgroupJoin {
    /// Move the calling process into the cgroups. Runs in the child between fork and exec:
    /// only `getpid` and `write`, no allocation.
    pub fn join_self(&self) -> io::Result<()> {
        let mut buf = [0u8; 12];
        let mut n = unsafe { libc::getpid() } as u32;
        let mut i = buf.len();
        loop {
            i -= 1;
            buf[i] = b'0' + (n % 10) as u8;
            n /= 10;
            if n == 0 {
                break;
            }
        }
        for fd in &self.procs {
            let len = buf.len() - i;
            // SAFETY: a valid open descriptor and a buffer of `len` initialised bytes.
            let r = unsafe { libc::write(fd.as_raw_fd(), buf[i..].as_ptr().cast(), len) };
            if r < 0 {
                return Err(io::Error::last_os_error());
            }
        }
        Ok(())
    }
}

/// Remove the (empty) cgroup folders of `clawid`; best effort (a live QEMU keeps them).
pub fn remove_cgroup(fs: &CgroupFs, clawid: &str) {
    let dirs = match fs {
        CgroupFs::V2(base) => vec![base.join("clawfarm").join(clawid)],
        CgroupFs::V1 { cpu, memory } => vec![
            cpu.join("clawfarm").join(clawid),
            memory.join("clawfarm").join(clawid),
        ],
    };
    // A QEMU that just exited may still be counted for a moment: retry for up to 3 s.
    let t0 = std::time::Instant::now();
    for d in dirs {
        while d.exists() && std::fs::remove_dir(&d).is_err() {
            if t0.elapsed() > std::time::Duration::from_secs(3) {
                break;
            }
            std::thread::sleep(std::time::Duration::from_millis(100));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn passwd_lookup() {
        let p = "root:x:0:0:root:/root:/bin/bash\nclawfarm-qemu:x:995:993::/nonexistent:/usr/sbin/nologin\nbad:x:y:z\n";
        assert_eq!(lookup_user(p, "clawfarm-qemu"), Some((995, 993)));
        assert_eq!(lookup_user(p, "root"), Some((0, 0)));
        assert_eq!(lookup_user(p, "bad"), None);
        assert_eq!(lookup_user(p, "clawfarm"), None);
    }

    #[test]
    fn limits() {
        let l = Limits::of(2, 1024);
        assert_eq!(l.cpu_quota_us, 250_000);
        assert_eq!(l.memory_bytes, (1024 + MEMORY_OVERHEAD_MIB) << 20);
        assert_eq!(Limits::of(0, 16).cpu_quota_us, 150_000);
    }
}
