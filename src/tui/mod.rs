//! The terminal user interface: masked, validated param prompts and the `clawfarm new`
//! wizard.

pub mod prompt;
pub mod wizard;
