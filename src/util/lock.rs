//! File locks (flock): the applier lock that serializes applies, and per-instance locks
//! taken for every mutation of an instance. The holder writes its pid and command into
//! the lock file so a waiter can say who it is waiting for.

use std::fs::{File, OpenOptions};
use std::io::{self, Read, Seek, Write};
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use rustix::fs::{FlockOperation, flock};

/// A held lock; released on drop (or when the process dies, even by `kill -9`).
#[derive(Debug)]
pub struct FileLock {
    file: File,
    path: PathBuf,
}

impl FileLock {
    /// The lock file.
    pub fn path(&self) -> &Path {
        &self.path
    }
}

impl Drop for FileLock {
    fn drop(&mut self) {
        // Clear the holder note; the kernel drops the flock when the fd closes.
        let _ = self.file.set_len(0);
    }
}

/// Errors taking a lock.
#[derive(Debug, thiserror::Error)]
pub enum LockError {
    /// Could not open or lock the file.
    #[error("cannot lock {path}")]
    Io {
        /// Lock file.
        path: PathBuf,
        /// Cause.
        #[source]
        source: io::Error,
    },
    /// Somebody else holds it and the timeout ran out.
    #[error("{what} is held by {holder} (gave up after {waited:?}; see --lock-timeout)")]
    Timeout {
        /// What the lock protects, e.g. `the apply lock of /root/.clawfarm`.
        what: String,
        /// Holder description from the lock file.
        holder: String,
        /// How long we waited.
        waited: Duration,
    },
}

/// Read the holder note of a lock file (`pid 123: clawfarm apply -f x`).
pub fn holder(path: &Path) -> String {
    let mut s = String::new();
    if let Ok(mut f) = File::open(path) {
        let _ = f.read_to_string(&mut s);
    }
    let s = s.trim();
    if s.is_empty() {
        "another process".into()
    } else {
        s.to_string()
    }
}

/// Take an exclusive lock on `path`, waiting up to `timeout` (`None` = forever, zero = fail
/// fast). `on_wait` is called once, with the holder, when the lock is busy.
pub fn lock(
    path: &Path,
    what: &str,
    timeout: Option<Duration>,
    mut on_wait: impl FnMut(&str),
) -> Result<FileLock, LockError> {
    let io_err = |source| LockError::Io {
        path: path.to_owned(),
        source,
    };
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir).map_err(io_err)?;
    }
    let mut file = OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(false)
        .mode(0o600)
        .open(path)
        .map_err(io_err)?;
    let start = Instant::now();
    let mut told = false;
    loop {
        match flock(&file, FlockOperation::NonBlockingLockExclusive) {
            Ok(()) => break,
            Err(e) if e == rustix::io::Errno::WOULDBLOCK || e == rustix::io::Errno::INTR => {
                let waited = start.elapsed();
                if timeout.is_some_and(|t| waited >= t) {
                    return Err(LockError::Timeout {
                        what: what.to_string(),
                        holder: holder(path),
                        waited,
                    });
                }
                if !told {
                    on_wait(&holder(path));
                    told = true;
                }
                std::thread::sleep(Duration::from_millis(50));
            }
            Err(e) => return Err(io_err(e.into())),
        }
    }
    let note = format!(
        "pid {}: {}",
        std::process::id(),
        std::env::args().collect::<Vec<_>>().join(" ")
    );
    file.set_len(0).map_err(io_err)?;
    file.rewind().map_err(io_err)?;
    file.write_all(note.as_bytes()).map_err(io_err)?;
    Ok(FileLock {
        file,
        path: path.to_owned(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn second_lock_times_out_naming_holder() {
        let d = tempfile::tempdir().unwrap();
        let p = d.path().join("x.lock");
        let _a = lock(&p, "the x lock", None, |_| {}).unwrap();
        // flock locks are per open file description, so a second open in the same
        // process contends like another process would.
        let mut waited_for = String::new();
        let e = lock(&p, "the x lock", Some(Duration::from_millis(120)), |h| {
            waited_for = h.to_string()
        })
        .unwrap_err();
        assert!(waited_for.starts_with(&format!("pid {}", std::process::id())));
        let msg = e.to_string();
        assert!(msg.contains("the x lock is held by pid"), "{msg}");
        drop(_a);
        lock(&p, "the x lock", Some(Duration::ZERO), |_| {}).unwrap();
    }
}
