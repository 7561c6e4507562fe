//! The reconcile loop: one pass (desired × observed → plan → execute), the executor that
//! walks the plan's DAG, and watch mode, which runs passes continuously.

pub mod exec;
pub mod export;
pub mod ops;
pub mod pass;
pub mod watch;
