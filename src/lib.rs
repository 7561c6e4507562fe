#![recursion_limit = "256"]
//! clawfarm: a declarative reconciler for AI-agent VM sandboxes.
//!
//! The library is organised the way the reconcile loop runs (`rfc/000-map-of-the-code.md`):
//!
//! * [`input`] parses and validates clawspecs, manifests and image refs (no effects);
//! * [`desired`] turns a set of manifests into [`desired::DesiredInstance`]s;
//! * [`state`] and [`observe`] read the actual state (records + live process probes);
//! * [`plan`] is the pure planner: desired × actual → a petgraph DAG of [`plan::Action`]s;
//! * [`reconcile`] prepares a pass, walks that DAG concurrently against a
//!   [`driver::Driver`], and runs the long-lived watch loop;
//! * [`driver`] holds the one seam for effects, with a recording fake and the QEMU driver;
//! * [`store`] keeps content-addressed blobs, downloads and imported bundles.
//!
//! The `clawfarm` binary ([`cli`]) is a thin layer of verbs over these modules.

#![warn(missing_docs)]

pub mod cli;
pub mod desired;
pub mod driver;
pub mod egress;
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
