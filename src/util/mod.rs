//! Small helpers with no knowledge of clawfarm's concepts: atomic files, digests, secrets,
//! parallel maps, file locks, human-readable sizes and times.

pub mod digest;
pub mod fsutil;
pub mod lock;
pub mod par;
pub mod secret;
pub mod text;
