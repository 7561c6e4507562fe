//! clawfarm: a declarative reconciler for AI-agent VM sandboxes.
//!
//! The library is organised the way the reconcile loop runs:
//!
//! * [`clawspec`] and [`manifest`] parse and validate the two input formats (no effects);
//! * [`desired`] turns a set of manifests into [`desired::DesiredInstance`]s;
//! * [`record`] and [`observe`] read the actual state (records + live process probes);
//! * [`plan`] is the pure planner: desired × actual → a petgraph DAG of [`plan::Action`]s;
//! * [`exec`] walks that DAG concurrently against a [`driver::Driver`];
//! * [`driver`] holds the one seam for effects, with a recording fake and the QEMU driver.
//!
//! The `clawfarm` binary ([`cli`]) is a thin layer of verbs over these modules.

pub mod blob;
pub mod bundle;
pub mod catalog;
pub mod clawspec;
pub mod cli;
pub mod desired;
pub mod digest;
pub mod driver;
pub mod engine;
pub mod events;
pub mod exec;
pub mod fetch;
pub mod fsutil;
pub mod guest;
pub mod home;
pub mod lock;
pub mod manifest;
pub mod observe;
pub mod par;
pub mod plan;
pub mod progress;
pub mod prompt;
pub mod qmp;
pub mod record;
pub mod resolve;
pub mod run;
pub mod secret;
pub mod seed;
pub mod sshkeys;
pub mod watch;
pub mod wizard;
