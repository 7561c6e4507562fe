//! The content-addressed store under the runtime root: blobs (`blobs/<sha256>`), how they
//! are fetched (HTTP with resume, `file://`), imported bundles (`bundles/<digest>/`), the
//! catalog of named image refs, and download progress.

pub mod blob;
pub mod bundle;
pub mod catalog;
pub mod fetch;
pub mod part;
pub mod progress;
