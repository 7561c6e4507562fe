//! What clawfarm remembers about instances: versioned records written atomically, and the
//! event log.

pub mod events;
pub mod record;

use std::time::Duration;

use crate::home::Home;
use crate::util::lock::{FileLock, LockError, lock};

/// Take the per-instance lock of `clawid` (every mutation of an instance holds it),
/// waiting up to `timeout` (`None` = forever).
pub fn lock_instance(
    home: &Home,
    clawid: &str,
    timeout: Option<Duration>,
) -> Result<FileLock, LockError> {
    lock(
        &home.instance_lock(clawid),
        &format!("the lock of instance {clawid}"),
        timeout,
        |_| {},
    )
}
