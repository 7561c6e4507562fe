//! A string that never prints itself.

use std::fmt;

/// A param value that may be secret. `Debug` and `Display` print a redacted marker, so a
/// value can travel through errors, logs and plans without leaking. Use [`Secret::expose`]
/// only where the value really goes: the guest env file inside the cloud-init seed.
#[derive(Clone, PartialEq, Eq, Hash)]
pub struct Secret(String);

/// Serializes as the redacted marker: a secret never reaches a file through serde.
impl serde::Serialize for Secret {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(REDACTED)
    }
}

impl<'de> serde::Deserialize<'de> for Secret {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        String::deserialize(d).map(Secret)
    }
}

impl Secret {
    /// Wrap a value.
    pub fn new(v: impl Into<String>) -> Self {
        Secret(v.into())
    }
    /// The value itself. Every call site is a place where the secret leaves the process.
    pub fn expose(&self) -> &str {
        &self.0
    }
}

/// The marker printed in place of a secret value.
pub const REDACTED: &str = "(sensitive)";

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(REDACTED)
    }
}

impl fmt::Display for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(REDACTED)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    #[test]
    fn never_prints() {
        let s = Secret::new("hunter2");
        assert!(!format!("{s} {s:?} {:?}", vec![s.clone()]).contains("hunter2"));
        assert_eq!(s.expose(), "hunter2");
        assert!(!serde_json::to_string(&s).unwrap().contains("hunter2"));
    }
}
