//! File locks (`flock`, through std's `File::lock`/`try_lock`): the applier lock that
//! serializes applies, the per-instance locks taken for every mutation of an instance, and
//! the per-blob locks of the store. One primitive, [`try_lock_file`]; [`lock`] polls it
//! with a timeout and leaves a note naming the holder (its pid and verb, never the rest
//! of its command line, which may carry secrets) so a waiter can say whom it waits for.
//! Locks are released when dropped, or when the process dies, even by `kill -9`.

use std::fs::{File, OpenOptions, TryLockError};
use std::io::{self, Read, Seek, Write};
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

/// How often a busy lock is tried again.
pub const POLL: Duration = Duration::from_millis(50);

/// Open (creating, with `mode`) `path` and try to take an exclusive lock on it without
/// waiting. `Ok(None)`: somebody else holds it.
pub fn try_lock_file(path: &Path, mode: u32) -> io::Result<Option<File>> {
    let f = OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(false)
        .mode(mode)
        .open(path)?;
    match f.try_lock() {
        Ok(()) => Ok(Some(f)),
        Err(TryLockError::WouldBlock) => Ok(None),
        Err(TryLockError::Error(e)) => Err(e),
    }
}

/// A held lock with a holder note; released on drop.
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
        // Clear the holder note; the kernel drops the lock when the fd closes.
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
    #[error("{what} is held by {holder} (gave up after {}; see --lock-timeout)", humantime::format_duration(Duration::from_millis(waited.as_millis() as u64)))]
    Timeout {
        /// What the lock protects, e.g. `the apply lock of /root/.clawfarm`.
        what: String,
        /// Holder description from the lock file.
        holder: String,
        /// How long we waited.
        waited: Duration,
    },
}

/// Read the holder note of a lock file (`pid 123: clawfarm apply`).
pub fn holder(path: &Path) -> String {
    let mut s = String::new();
    if let Ok(f) = File::open(path) {
        let _ = f.take(256).read_to_string(&mut s);
    }
    let s = s.trim();
    if s.is_empty() {
        "another process".into()
    } else {
        s.to_string()
    }
}

/// Global options of `clawfarm` that take a value as the next argument.
const VALUE_OPTIONS: &[&str] = &["--home", "--log-format", "--accel"];

/// `pid N: PROGRAM VERB`: who holds a lock. Only the verb of the command line, never its
/// arguments (`run --param KEY=VALUE` must not end up in a lock file or a waiter's message).
fn holder_note() -> String {
    let args: Vec<String> = std::env::args().collect();
    let program = args
        .first()
        .and_then(|a| Path::new(a).file_name())
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_else(|| "clawfarm".into());
    let mut verb = None;
    let mut it = args.iter().skip(1);
    while let Some(a) = it.next() {
        if a == "--" {
            break;
        }
        if a.starts_with('-') {
            if !a.contains('=') && VALUE_OPTIONS.contains(&a.as_str()) {
                it.next();
            }
            continue;
        }
        verb = Some(a.as_str());
        break;
    }
    // A verb is a short lowercase word; anything else is not echoed.
    let verb = verb
        .filter(|v| v.len() <= 16 && v.bytes().all(|b| b.is_ascii_lowercase() || b == b'-'))
        .unwrap_or("");
    format!("pid {}: {program} {verb}", std::process::id())
        .trim_end()
        .to_string()
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
    let start = Instant::now();
    let mut told = false;
    let mut file = loop {
        if let Some(f) = try_lock_file(path, 0o600).map_err(io_err)? {
            break f;
        }
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
        std::thread::sleep(POLL);
    };
    file.set_len(0).map_err(io_err)?;
    file.rewind().map_err(io_err)?;
    file.write_all(holder_note().as_bytes()).map_err(io_err)?;
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
        assert!(
            !msg.contains('µ'),
            "a duration for people, not Debug: {msg}"
        );
        drop(_a);
        lock(&p, "the x lock", Some(Duration::ZERO), |_| {}).unwrap();
    }

    #[test]
    fn try_lock_file_reports_a_held_lock() {
        let d = tempfile::tempdir().unwrap();
        let p = d.path().join("y.lock");
        let a = try_lock_file(&p, 0o600).unwrap();
        assert!(a.is_some());
        assert!(try_lock_file(&p, 0o600).unwrap().is_none());
        drop(a);
        assert!(try_lock_file(&p, 0o600).unwrap().is_some());
    }
}
