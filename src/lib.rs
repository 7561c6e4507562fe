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

pub mod cli;
pub mod desired;
pub mod driver;
pub mod home;
pub mod input;
pub mod observe;
pub mod plan;
pub mod reconcile;
pub mod state;
pub mod store;
pub mod tui;
pub mod ui;
pub mod util;
