//! The runtime root (`/var/lib/clawfarm` for root, `~/.clawfarm` for others, by default)
//! and the paths inside it.
//!
//! ```text
//! <home>/
//!   secret.key              per-home HMAC key for param digests (0600)
//!   apply.lock              applier lock (flock) so two applies serialize
//!   events.jsonl            event log (JSON lines)
//!   blobs/<sha256>          immutable content-addressed blobs (0444)
//!   blobs/.tmp/             in-flight downloads
//!   bundles/<digest>/       imported bundles: clawspec.json, claw/ payload, bundle.json
//!   claws/<CLAWID>/         one folder per instance: record.json, lock, disk.qcow2,
//!                           seed.img, qmp.sock, serial.log, qemu.log, status.log, volumes/
//! ```
//! See `rfc/006-on-disk-layout.md` for the full contract.

use std::io;
use std::path::{Path, PathBuf};

use crate::util::fsutil;

/// Environment variable that overrides the runtime root.
pub const HOME_ENV: &str = "CLAWFARM_HOME";

/// The default runtime root of root (a system service's state folder, as Docker's or
/// libvirt's): reachable by the QEMU user, unlike `/root`.
pub const SYSTEM_HOME: &str = "/var/lib/clawfarm";

/// A runtime root. Cheap to clone; all paths are derived from `root`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Home {
    root: PathBuf,
    read_only: bool,
}

impl Home {
    /// Use `root` as the runtime root (not created until [`Home::ensure`]).
    pub fn new(root: impl Into<PathBuf>) -> Self {
        Home {
            root: root.into(),
            read_only: false,
        }
    }

    /// The same root for a read-only verb (`validate`, `plan`, `ps`, …): caches that would
    /// only speed up a later run (the bundle stat cache, pending clawspecs) are not
    /// written.
    pub fn read_only(mut self) -> Self {
        self.read_only = true;
        self
    }

    /// Whether this is a read-only verb's view of the home ([`Home::read_only`]).
    pub fn is_read_only(&self) -> bool {
        self.read_only
    }

    /// Resolve the root: explicit flag, then `$CLAWFARM_HOME`, then for root
    /// [`SYSTEM_HOME`] (QEMU runs as an unprivileged user that must reach the home, and
    /// `/root` is not searchable by others; an existing `/root/.clawfarm` of an older
    /// clawfarm is still used), else `~/.clawfarm`.
    pub fn resolve(flag: Option<&Path>) -> io::Result<Self> {
        if let Some(p) = flag {
            return Ok(Home::new(p));
        }
        if let Some(p) = std::env::var_os(HOME_ENV).filter(|v| !v.is_empty()) {
            return Ok(Home::new(PathBuf::from(p)));
        }
        default_root(
            rustix::process::geteuid().is_root(),
            std::env::var_os("HOME").map(PathBuf::from),
            |p| p.is_dir(),
        )
        .map(Home::new)
        .ok_or_else(|| {
            io::Error::new(
                io::ErrorKind::NotFound,
                "neither --home, CLAWFARM_HOME nor HOME is set",
            )
        })
    }

    /// Create the root (0700) and its fixed sub-folders. An existing root is never
    /// chmodded: it must already belong to this user and be writable by nobody else (a
    /// shared folder such as a 1777 one is refused, not silently narrowed).
    pub fn ensure(&self) -> io::Result<()> {
        use std::os::unix::fs::MetadataExt;
        match std::fs::metadata(&self.root) {
            Ok(m) => {
                let me = rustix::process::geteuid().as_raw();
                if !m.is_dir() {
                    return Err(io::Error::other("exists and is not a folder"));
                }
                if m.uid() != me {
                    return Err(io::Error::other(format!(
                        "is owned by uid {}, not by this user (uid {me}); use a folder of \
                         your own",
                        m.uid()
                    )));
                }
                if m.mode() & 0o022 != 0 {
                    return Err(io::Error::other(format!(
                        "is writable by group or others (mode {:o}); it would hold VM disks \
                         and keys: use a private folder, or chmod go-w it yourself",
                        m.mode() & 0o7777
                    )));
                }
            }
            Err(e) if e.kind() == io::ErrorKind::NotFound => {
                fsutil::create_dir_mode(&self.root, 0o700)?;
            }
            Err(e) => return Err(e),
        }
        for d in [self.blobs_dir(), self.bundles_dir(), self.claws_dir()] {
            std::fs::create_dir_all(d)?;
        }
        Ok(())
    }

    /// The lock file of instance `clawid` (outside its folder, so `rm` can delete the
    /// folder while holding it).
    pub fn instance_lock(&self, clawid: &str) -> PathBuf {
        self.root.join("locks").join(format!("{clawid}.lock"))
    }

    /// The root itself.
    pub fn root(&self) -> &Path {
        &self.root
    }
    /// `blobs/`.
    pub fn blobs_dir(&self) -> PathBuf {
        self.root.join("blobs")
    }
    /// `blobs/<sha256>`.
    pub fn blob(&self, sha256: &str) -> PathBuf {
        self.blobs_dir().join(sha256)
    }
    /// `bundles/`.
    pub fn bundles_dir(&self) -> PathBuf {
        self.root.join("bundles")
    }
    /// `bundles/<digest>/`.
    pub fn bundle_dir(&self, digest: &str) -> PathBuf {
        self.bundles_dir().join(digest)
    }
    /// `claws/`.
    pub fn claws_dir(&self) -> PathBuf {
        self.root.join("claws")
    }
    /// `claws/<CLAWID>/`.
    pub fn claw_dir(&self, clawid: &str) -> PathBuf {
        self.claws_dir().join(clawid)
    }
    /// `apply.lock`.
    pub fn apply_lock(&self) -> PathBuf {
        self.root.join("apply.lock")
    }
    /// `ui.token`: the dashboard's access token (0600).
    pub fn ui_token(&self) -> PathBuf {
        self.root.join("ui.token")
    }
    /// `events.jsonl`.
    pub fn events_log(&self) -> PathBuf {
        self.root.join("events.jsonl")
    }
    /// `secret.key`.
    pub fn secret_key_path(&self) -> PathBuf {
        self.root.join("secret.key")
    }

    /// The key for read-only verbs (`validate`, `plan`): the home's key when it exists
    /// (so digests compare with the records), else a random one used once, so that a
    /// read-only verb never creates anything in the home.
    pub fn secret_key_read_only(&self) -> io::Result<Vec<u8>> {
        if self.secret_key_path().exists() {
            self.secret_key()
        } else {
            Ok(rand::random::<[u8; 32]>().to_vec())
        }
    }

    /// The per-home HMAC key for param digests, created (0600, 32 random bytes) on first use.
    pub fn secret_key(&self) -> io::Result<Vec<u8>> {
        let p = self.secret_key_path();
        match std::fs::read(&p) {
            Ok(k) if k.len() == 32 => Ok(k),
            Ok(_) => Err(io::Error::new(
                io::ErrorKind::InvalidData,
                format!("{} is not a 32-byte key", p.display()),
            )),
            Err(e) if e.kind() == io::ErrorKind::NotFound => {
                self.ensure()?;
                // Create-if-absent: write a temp file, then hard-link it into place. Of two
                // racing first uses exactly one link succeeds, and both read the winner's key.
                let tmp = self
                    .root
                    .join(format!(".secret.key.{}", std::process::id()));
                let key: [u8; 32] = rand::random();
                fsutil::write_atomic(&tmp, &key, 0o600)?;
                let linked = std::fs::hard_link(&tmp, &p);
                let _ = std::fs::remove_file(&tmp);
                match linked {
                    Ok(()) => fsutil::sync_dir(&self.root)?,
                    Err(e) if e.kind() == io::ErrorKind::AlreadyExists => {}
                    Err(e) => return Err(e),
                }
                std::fs::read(&p)
            }
            Err(e) => Err(e),
        }
    }
}

/// The default root without a flag or `$CLAWFARM_HOME`: root gets [`SYSTEM_HOME`] unless
/// `$HOME/.clawfarm` already exists (a home made by an older clawfarm); others get
/// `$HOME/.clawfarm`.
fn default_root(
    is_root: bool,
    home: Option<PathBuf>,
    exists: impl Fn(&Path) -> bool,
) -> Option<PathBuf> {
    let mine = home.map(|h| h.join(".clawfarm"));
    match mine {
        Some(m) if !is_root || exists(&m) => Some(m),
        _ if is_root => Some(PathBuf::from(SYSTEM_HOME)),
        _ => None,
    }
}

/// The scratch root of this process (see [`scratch_home`]).
static SCRATCH: std::sync::Mutex<Option<PathBuf>> = std::sync::Mutex::new(None);

/// A runtime root in the temp folder, for what a read-only verb must fetch to check it (a
/// remote bundle not yet in the store): `validate` and `plan` write nothing into the real
/// home. Created on first use; removed by [`remove_scratch`].
pub fn scratch_home() -> io::Result<Home> {
    let mut slot = SCRATCH.lock().unwrap_or_else(|e| e.into_inner());
    if let Some(p) = slot.as_ref() {
        return Ok(Home::new(p.clone()));
    }
    use std::os::unix::fs::DirBuilderExt;
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.subsec_nanos());
    let dir =
        std::env::temp_dir().join(format!("clawfarm-check-{}-{nanos:08x}", std::process::id()));
    // `create` (not `create_all`) fails on an existing path: never someone else's folder.
    std::fs::DirBuilder::new().mode(0o700).create(&dir)?;
    *slot = Some(dir.clone());
    Ok(Home::new(dir))
}

/// Remove this process's scratch root, if one was made. Called once at exit.
pub fn remove_scratch() {
    let taken = SCRATCH.lock().unwrap_or_else(|e| e.into_inner()).take();
    if let Some(dir) = taken {
        // Blobs are 0444 in 0755 folders: removal needs only the folders' permissions.
        let _ = std::fs::remove_dir_all(dir);
    }
}

#[cfg(test)]
mod tests {
    use std::path::PathBuf;

    #[test]
    fn default_root_for_root_and_others() {
        let h = || Some(PathBuf::from("/root"));
        // root: the system folder, unless an older home exists.
        assert_eq!(
            super::default_root(true, h(), |_| false),
            Some(PathBuf::from(super::SYSTEM_HOME))
        );
        assert_eq!(
            super::default_root(true, h(), |_| true),
            Some(PathBuf::from("/root/.clawfarm"))
        );
        assert_eq!(
            super::default_root(true, None, |_| false),
            Some(PathBuf::from(super::SYSTEM_HOME))
        );
        // others: ~/.clawfarm; no HOME, no default.
        let u = || Some(PathBuf::from("/home/u"));
        assert_eq!(
            super::default_root(false, u(), |_| false),
            Some(PathBuf::from("/home/u/.clawfarm"))
        );
        assert_eq!(super::default_root(false, None, |_| false), None);
    }
}
