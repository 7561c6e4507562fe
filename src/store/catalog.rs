//! The image catalog: short names such as `ubuntu:24.04` → download URLs.
//!
//! A clawspec may name its base image by a catalog name instead of a URL. The catalog only
//! says *where* to fetch; the SHA-256 always comes from the clawspec, so a catalog entry
//! can never change which bytes an instance boots.
//!
//! Built-in defaults are merged with `<home>/catalog.json` (or `catalog.yaml` / `catalog.yml`),
//! whose entries win:
//!
//! ```json
//! { "images": { "ubuntu:24.04": "https://mirror.example/ubuntu-24.04-{arch}.img",
//!               "corp:base":    "file:///srv/images/corp-base.qcow2" } }
//! ```
//!
//! `{arch}` in a URL is replaced by the Debian-style host architecture (`amd64`, `arm64`).

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use serde::Deserialize;

use crate::home::Home;

/// Errors loading or using the catalog.
#[derive(Debug, thiserror::Error)]
pub enum CatalogError {
    /// The catalog file exists but cannot be read.
    #[error("cannot read image catalog {path}")]
    Read {
        /// The catalog file.
        path: PathBuf,
        /// The I/O error.
        #[source]
        source: std::io::Error,
    },
    /// The catalog file is not valid JSON/YAML of the expected shape.
    #[error("invalid image catalog {path}: {message}")]
    Parse {
        /// The catalog file.
        path: PathBuf,
        /// The parser's message.
        message: String,
    },
    /// An entry's value is not an `http(s)://` or `file://` URL.
    #[error(
        "image catalog {path}: entry {name:?} has unsupported URL {url:?} (want http(s):// or file://)"
    )]
    BadUrl {
        /// The catalog file.
        path: PathBuf,
        /// The entry name.
        name: String,
        /// The offending value.
        url: String,
    },
}

/// On-disk catalog shape.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct CatalogFile {
    images: BTreeMap<String, String>,
}

/// Built-in names. Users extend or override them in `<home>/catalog.json`.
pub const BUILTIN: &[(&str, &str)] = &[
    (
        "ubuntu:24.04",
        "https://cloud-images.ubuntu.com/releases/24.04/release/ubuntu-24.04-server-cloudimg-{arch}.img",
    ),
    (
        "ubuntu:22.04",
        "https://cloud-images.ubuntu.com/releases/22.04/release/ubuntu-22.04-server-cloudimg-{arch}.img",
    ),
    (
        "debian:12",
        "https://cloud.debian.org/images/cloud/bookworm/latest/debian-12-genericcloud-{arch}.qcow2",
    ),
    (
        "debian:13",
        "https://cloud.debian.org/images/cloud/trixie/latest/debian-13-genericcloud-{arch}.qcow2",
    ),
];

/// Host architecture in Debian/Ubuntu image naming.
pub fn host_arch() -> &'static str {
    match std::env::consts::ARCH {
        "x86_64" => "amd64",
        "aarch64" => "arm64",
        other => other,
    }
}

/// Name → URL map (built-ins merged with the user's file).
#[derive(Debug, Clone, Default)]
pub struct Catalog {
    entries: BTreeMap<String, String>,
    /// The user file that was merged, if any.
    pub source: Option<PathBuf>,
}

/// The catalog file names looked for under the home, in order.
pub const CATALOG_FILES: &[&str] = &["catalog.json", "catalog.yaml", "catalog.yml"];

impl Catalog {
    /// Built-in entries only.
    pub fn builtin() -> Self {
        Catalog {
            entries: BUILTIN
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect(),
            source: None,
        }
    }

    /// Built-ins merged with the first of [`CATALOG_FILES`] found under `home`.
    pub fn load(home: &Home) -> Result<Self, CatalogError> {
        let mut cat = Catalog::builtin();
        for name in CATALOG_FILES {
            let path = home.root().join(name);
            match std::fs::read(&path) {
                Ok(bytes) => {
                    cat.merge_file(&path, &bytes)?;
                    break;
                }
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => continue,
                Err(source) => return Err(CatalogError::Read { path, source }),
            }
        }
        Ok(cat)
    }

    fn merge_file(&mut self, path: &Path, bytes: &[u8]) -> Result<(), CatalogError> {
        let is_json = path.extension().is_some_and(|e| e == "json");
        let file: CatalogFile = if is_json {
            serde_json::from_slice(bytes).map_err(|e| CatalogError::Parse {
                path: path.to_path_buf(),
                message: e.to_string(),
            })?
        } else {
            let text = std::str::from_utf8(bytes).map_err(|e| CatalogError::Parse {
                path: path.to_path_buf(),
                message: e.to_string(),
            })?;
            serde_saphyr::from_str(text).map_err(|e| CatalogError::Parse {
                path: path.to_path_buf(),
                message: e.to_string(),
            })?
        };
        for (name, url) in file.images {
            if !(url.starts_with("http://")
                || url.starts_with("https://")
                || url.starts_with("file://"))
            {
                return Err(CatalogError::BadUrl {
                    path: path.to_path_buf(),
                    name,
                    url,
                });
            }
            self.entries.insert(name, url);
        }
        self.source = Some(path.to_path_buf());
        Ok(())
    }

    /// Add or replace one entry (tests, embedding).
    pub fn insert(&mut self, name: impl Into<String>, url: impl Into<String>) {
        self.entries.insert(name.into(), url.into());
    }

    /// The URL for `name`, with `{arch}` substituted, or `None` when unknown.
    pub fn resolve(&self, name: &str) -> Option<String> {
        self.entries
            .get(name)
            .map(|u| u.replace("{arch}", host_arch()))
    }

    /// All names, sorted.
    pub fn names(&self) -> impl Iterator<Item = &str> {
        self.entries.keys().map(String::as_str)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn builtin_and_user_entries() {
        let d = tempfile::tempdir().unwrap();
        let home = Home::new(d.path());
        let cat = Catalog::load(&home).unwrap();
        assert!(cat.resolve("ubuntu:24.04").unwrap().starts_with("https://"));
        assert!(!cat.resolve("ubuntu:24.04").unwrap().contains("{arch}"));
        assert_eq!(cat.resolve("nope:1"), None);

        std::fs::write(
            d.path().join("catalog.json"),
            r#"{"images":{"mine:1":"file:///x.img","ubuntu:24.04":"http://127.0.0.1/u.img"}}"#,
        )
        .unwrap();
        let cat = Catalog::load(&home).unwrap();
        assert_eq!(cat.resolve("mine:1").unwrap(), "file:///x.img");
        assert_eq!(
            cat.resolve("ubuntu:24.04").unwrap(),
            "http://127.0.0.1/u.img"
        );
        assert!(cat.resolve("debian:12").is_some());
    }

    #[test]
    fn yaml_catalog_and_bad_url() {
        let d = tempfile::tempdir().unwrap();
        let home = Home::new(d.path());
        std::fs::write(
            d.path().join("catalog.yaml"),
            "images:\n  mine:2: https://example.invalid/a.img\n",
        )
        .unwrap();
        let cat = Catalog::load(&home).unwrap();
        assert_eq!(
            cat.resolve("mine:2").unwrap(),
            "https://example.invalid/a.img"
        );
        std::fs::write(d.path().join("catalog.yaml"), "images:\n  bad: ftp://x/y\n").unwrap();
        let e = Catalog::load(&home).unwrap_err().to_string();
        assert!(e.contains("bad") && e.contains("catalog.yaml"), "{e}");
    }
}
