//! What clawfarm remembers about instances: versioned records written atomically, and the
//! event log.

pub mod events;
pub mod record;
