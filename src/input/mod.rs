//! The two input formats, parsed and validated without effects: manifests (`kind: Claw`,
//! YAML or JSON), clawspecs (the bundle's `clawspec.json`, v3) and their image refs.

pub mod clawspec;
pub mod image_ref;
pub mod manifest;
pub mod network;
