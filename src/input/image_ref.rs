//! The image ref grammar of clawspecs (`image[].ref`), one validator for every reader: the
//! clawspec checks, `clawfarm new` and the importer all call [`parse_ref`].
//!
//! - `http://HOST/…` or `https://HOST/…`: a download.
//! - `file:///ABSOLUTE/PATH`: a file on this host.
//! - `clawbox:///NAME`: a top-level file of the bundle archive (no `/`, `.` or `..`).
//! - `NAME:TAG`: a catalog name such as `ubuntu:24.04` (lowercase name segments separated by
//!   `.`, `_`, `/` or `-`; a tag of letters, digits, `.`, `_`, `-`).

use std::path::PathBuf;
use std::sync::LazyLock;

/// Scheme prefix of an image inside its bundle (`clawbox:///run.qcow2`).
pub const CLAWBOX_SCHEME: &str = "clawbox:///";

/// Where an image ref points.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ImageSource {
    /// `http://` or `https://`.
    Http(String),
    /// `file:///ABS/PATH`.
    File(PathBuf),
    /// `clawbox:///NAME`: a top-level file of the bundle, stored by import.
    Clawbox(String),
    /// A catalog name such as `ubuntu:24.04`.
    Name(String),
}

/// A ref that is not in the grammar, and why.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("unsupported image ref {reference:?}: {reason}")]
pub struct RefError {
    /// The ref as written (clipped to 200 characters).
    pub reference: String,
    /// What is wrong with it, as a hint that never repeats the ref.
    pub reason: String,
}

impl RefError {
    /// A refusal of `reference` for `reason`.
    pub fn new(reference: &str, reason: impl Into<String>) -> RefError {
        RefError {
            reference: reference.chars().take(200).collect(),
            reason: reason.into(),
        }
    }
}

static CATALOG_NAME: LazyLock<regex::Regex> = LazyLock::new(|| {
    regex::Regex::new(r"^[a-z0-9]+(?:[._/-][a-z0-9]+)*:[A-Za-z0-9_][A-Za-z0-9._-]{0,127}$")
        .expect("catalog name pattern")
});

/// Classify an image ref (no I/O), or say why it is not one.
pub fn parse_ref(reference: &str) -> Result<ImageSource, RefError> {
    let refuse = |reason: &str| Err(RefError::new(reference, reason));
    if reference.trim().is_empty() {
        return refuse("must not be empty");
    }
    if reference
        .chars()
        .any(|c| c.is_whitespace() || c.is_control())
    {
        return refuse("must not contain spaces or control characters");
    }
    let Some((scheme, rest)) = reference.split_once("://") else {
        return if CATALOG_NAME.is_match(reference) {
            Ok(ImageSource::Name(reference.to_string()))
        } else {
            refuse(
                "expected a URL (http://, https://, file:///, clawbox:///) or a catalog name \
                 such as ubuntu:24.04",
            )
        };
    };
    match scheme {
        "http" | "https" => match reqwest::Url::parse(reference) {
            Ok(u) if !rest.starts_with('/') && u.host_str().is_some_and(|h| !h.is_empty()) => {
                Ok(ImageSource::Http(u.to_string()))
            }
            _ => refuse("needs a host, e.g. https://example.com/base.qcow2"),
        },
        "file" => {
            let path = reqwest::Url::parse(reference)
                .ok()
                .filter(|_| rest.starts_with('/') && rest.len() > 1)
                .and_then(|u| u.to_file_path().ok());
            match path {
                Some(p) => Ok(ImageSource::File(p)),
                None => {
                    refuse("file:// needs an absolute path, e.g. file:///srv/images/base.qcow2")
                }
            }
        }
        "clawbox" => match rest.strip_prefix('/') {
            Some(name)
                if !name.is_empty() && !name.contains('/') && name != "." && name != ".." =>
            {
                Ok(ImageSource::Clawbox(name.to_string()))
            }
            _ => refuse(
                "clawbox:///NAME names a top-level file of the bundle, e.g. clawbox:///run.qcow2",
            ),
        },
        _ => refuse(
            "unsupported scheme: use http://, https://, file:///, clawbox:/// or a catalog name \
             such as ubuntu:24.04",
        ),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_grammar() {
        assert_eq!(
            parse_ref("clawbox:///run.qcow2").unwrap(),
            ImageSource::Clawbox("run.qcow2".into())
        );
        assert_eq!(
            parse_ref("file:///tmp/x.img").unwrap(),
            ImageSource::File("/tmp/x.img".into())
        );
        assert!(matches!(
            parse_ref("https://h/x").unwrap(),
            ImageSource::Http(_)
        ));
        assert!(matches!(
            parse_ref("http://10.0.0.1:8080/x").unwrap(),
            ImageSource::Http(_)
        ));
        for name in ["ubuntu:24.04", "library/debian:bookworm-slim", "debian:12"] {
            assert_eq!(parse_ref(name).unwrap(), ImageSource::Name(name.into()));
        }
        for bad in [
            "",
            "https://",
            "http:///x",
            "ftp://x/y",
            "file://relative",
            "file:///",
            "clawbox://run.qcow2",
            "clawbox:///",
            "clawbox:///a/b",
            "clawbox:///..",
            "clawbox:///../x",
            "ubuntu",
            "Ubuntu:24.04",
            "a b:1",
            "x:\u{7}",
        ] {
            let e = parse_ref(bad).unwrap_err();
            assert!(!e.reason.is_empty(), "{bad}");
            assert_eq!(e.reference, bad);
        }
    }

    #[test]
    fn every_builtin_catalog_name_is_in_the_grammar() {
        for (name, _) in crate::store::catalog::BUILTIN {
            assert!(
                matches!(parse_ref(name), Ok(ImageSource::Name(_))),
                "{name}"
            );
        }
    }
}
