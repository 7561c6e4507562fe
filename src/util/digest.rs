//! SHA-256 helpers: hex digests of bytes and files, and the keyed digest used for params.

use hmac::{KeyInit, Mac};
use sha2::{Digest, Sha256};
use std::io::{self, Read};
use std::path::Path;

/// Lowercase hex SHA-256 of `data`.
pub fn sha256_hex(data: &[u8]) -> String {
    hex::encode(Sha256::digest(data))
}

/// Lowercase hex SHA-256 of a file, streamed in 1 MiB chunks.
pub fn sha256_file(path: &Path) -> io::Result<String> {
    let mut f = std::fs::File::open(path)?;
    let mut h = Sha256::new();
    let mut buf = vec![0u8; 1 << 20];
    loop {
        let n = f.read(&mut buf)?;
        if n == 0 {
            break;
        }
        h.update(&buf[..n]);
    }
    Ok(hex::encode(h.finalize()))
}

/// True when `s` is a lowercase 64-hex SHA-256 digest.
pub fn is_sha256_hex(s: &str) -> bool {
    s.len() == 64
        && s.bytes()
            .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
}

/// Keyed digest (HMAC-SHA256) of a param value. Records store this, never the value; the
/// key is per runtime root, so a low-entropy secret cannot be guessed from a record offline.
pub fn keyed_digest(key: &[u8], label: &str, value: &str) -> String {
    let mut mac = hmac::Hmac::<Sha256>::new_from_slice(key).expect("HMAC takes any key length");
    mac.update(label.as_bytes());
    mac.update(&[0]);
    mac.update(value.as_bytes());
    hex::encode(mac.finalize().into_bytes())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn known_vector() {
        assert_eq!(
            sha256_hex(b"abc"),
            "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"
        );
        assert!(is_sha256_hex(&sha256_hex(b"")));
        assert!(!is_sha256_hex(&sha256_hex(b"").to_uppercase()));
    }

    #[test]
    fn keyed_digest_depends_on_key_and_value() {
        let a = keyed_digest(b"k1", "P", "v");
        assert_ne!(a, keyed_digest(b"k2", "P", "v"));
        assert_ne!(a, keyed_digest(b"k1", "P", "w"));
        assert_ne!(a, keyed_digest(b"k1", "Q", "v"));
    }
}
