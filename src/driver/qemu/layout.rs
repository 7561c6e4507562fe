//! The files of one instance folder, `<home>/claws/<CLAWID>/`, and the disks of its
//! volumes, `<home>/volumes/<CLAWID>/<volume>.qcow2` (outside the instance folder, so `rm`
//! without `--purge` keeps them). See `rfc/005-qemu-driver.md`.
//!
//! ```text
//! claws/<CLAWID>/
//!   record.json        the record (written by the executor, not the driver)
//!   disk.qcow2         qcow2 overlay; backing file = blobs/<sha256> of the run or base image
//!   seed.img           cloud-init NoCloud seed (FAT, label CIDATA), 0600
//!   seed.id            cloud-init instance id of seed.img (content digest)
//!   payload.img        the bundle's claw/ payload as a read-only ext4 disk (raw)
//!   payload.id         digest of the payload tree payload.img was built from
//!   suspend.json       a suspended VM: the snapshot tag and boot nonce to resume with
//!   checkpoints/<tag>.json  what a checkpoint needs besides its snapshot (nonce, status)
//!   id_ed25519{,.pub}  login key of user claw, 0600
//!   host_ed25519{,.pub} the guest's sshd host key (pinned), 0600
//!   known_hosts        `[127.0.0.1]:<ssh port> ssh-ed25519 …`, rewritten at each start
//!   runtime.json       identity of the current QEMU process (pid, start time, nonce, …)
//!   qemu.pid           written by QEMU (-pidfile)
//!   qmp.sock           QMP socket (-qmp unix:…,server=on,wait=off)
//!   serial.log         serial console of the current boot (serial.prev.log: the one before)
//!   status.log         guest status lines (virtio-serial port org.clawfarm.status)
//!   qemu.log           QEMU's stdout/stderr plus one line per clawfarm start/stop
//!   egress.token       the instance's egress proxy token, 0600
//! ```

use std::path::{Path, PathBuf};

use crate::home::Home;

/// Paths inside one instance folder.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct InstanceFiles {
    /// `claws/<CLAWID>/`.
    pub dir: PathBuf,
}

macro_rules! file {
    ($(#[$m:meta])* $f:ident, $name:expr) => {
        $(#[$m])*
        pub fn $f(&self) -> PathBuf {
            self.dir.join($name)
        }
    };
}

impl InstanceFiles {
    /// The files of `clawid` in `home`. The folder path is made absolute, because QEMU
    /// resolves relative paths against its own working folder.
    pub fn new(home: &Home, clawid: &str) -> Self {
        let dir = home.claw_dir(clawid);
        InstanceFiles {
            dir: std::path::absolute(&dir).unwrap_or(dir),
        }
    }

    /// Files of an explicit folder (tests).
    pub fn at(dir: &Path) -> Self {
        InstanceFiles {
            dir: dir.to_owned(),
        }
    }

    file!(
        /// The qcow2 overlay.
        disk, "disk.qcow2");
    file!(
        /// Where the overlay is created before its rename.
        disk_tmp, "disk.qcow2.tmp");
    file!(
        /// The cloud-init seed image.
        seed, "seed.img");
    file!(
        /// The instance id of the seed image on disk.
        seed_id, "seed.id");
    file!(
        /// The payload disk image (ext4, raw, read-only in the guest).
        payload_img, "payload.img");
    file!(
        /// Digest of the payload tree `payload.img` was built from.
        payload_id, "payload.id");
    file!(
        /// A suspended VM's resume data.
        suspend, "suspend.json");
    file!(
        /// Metadata of the checkpoints (one JSON file per tag).
        checkpoints_dir, "checkpoints");
    file!(
        /// Guest status lines of the boot before (a cold boot moves `status.log` here).
        status_prev_log, "status.prev.log");
    file!(
        /// The instance's egress proxy token (0600, made once; `rfc/012-sandbox.md`).
        egress_token, "egress.token");
    file!(
        /// Login key of user `claw`.
        key, "id_ed25519");
    file!(
        /// Its public half.
        key_pub, "id_ed25519.pub");
    file!(
        /// The guest's sshd host key (private; goes into the seed).
        host_key, "host_ed25519");
    file!(
        /// Its public half.
        host_key_pub, "host_ed25519.pub");
    file!(
        /// `known_hosts` pinning the guest host key on the current SSH port.
        known_hosts, "known_hosts");
    file!(
        /// Identity of the current QEMU process.
        runtime, "runtime.json");
    file!(
        /// QEMU's pidfile.
        pidfile, "qemu.pid");
    file!(
        /// The QMP socket.
        qmp_sock, "qmp.sock");
    file!(
        /// Serial console of the current boot.
        serial_log, "serial.log");
    file!(
        /// Serial console of the boot before.
        serial_prev_log, "serial.prev.log");
    file!(
        /// Guest status lines.
        status_log, "status.log");
    file!(
        /// QEMU's own output and clawfarm's start/stop lines.
        qemu_log, "qemu.log");

    /// The string that QEMU's command line contains for this instance and no other: the
    /// QMP socket path, in QEMU's option syntax (commas doubled).
    pub fn marker(&self) -> String {
        opt_path(&self.qmp_sock())
    }
}

/// `<home>/volumes/<CLAWID>/<name>.qcow2`: the disk of volume `name`.
pub fn volume_disk(home: &Home, clawid: &str, name: &str) -> PathBuf {
    volumes_dir(home, clawid).join(format!("{name}.qcow2"))
}

/// `<home>/volumes/<CLAWID>/`: the disks of an instance's volumes (and, from before
/// volumes were disks, their host folders, which seed a new volume disk once).
pub fn volumes_dir(home: &Home, clawid: &str) -> PathBuf {
    let d = home.root().join("volumes").join(clawid);
    std::path::absolute(&d).unwrap_or(d)
}

/// A path in QEMU's `key=value,…` option syntax: commas doubled.
pub fn opt_path(p: &Path) -> String {
    p.to_string_lossy().replace(',', ",,")
}
