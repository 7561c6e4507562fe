//! The two input formats, parsed and validated without effects: manifests (`kind: Claw`,
//! YAML or JSON) and clawspecs (the bundle's `clawspec.json`, v3).

pub mod clawspec;
pub mod manifest;
