//! SSH key material for a claw: the login key of user `claw` and the guest's pinned host key.
//!
//! Both are ed25519 keys generated on the host with the `ssh-key` crate. The host key pair
//! goes into the cloud-init seed (`ssh_keys`), so the host knows the guest's host key before
//! the first connection and can connect with `StrictHostKeyChecking=yes` and a
//! `known_hosts` file made by [`known_hosts_line`].

use ssh_key::rand_core::OsRng;
use ssh_key::{Algorithm, HashAlg, LineEnding, PrivateKey, PublicKey};
use std::io;

/// A freshly generated ed25519 key pair in OpenSSH formats.
///
/// `Debug` does not print the private key.
#[derive(Clone)]
pub struct KeyPair {
    /// The private key in OpenSSH format (`-----BEGIN OPENSSH PRIVATE KEY-----` …), LF line
    /// endings, trailing newline, not encrypted. Store it with mode 0600.
    pub private_openssh: String,
    /// The public key as one `authorized_keys` / `.pub` line: `ssh-ed25519 AAAA… comment`
    /// (no trailing newline).
    pub public_line: String,
}

impl std::fmt::Debug for KeyPair {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("KeyPair")
            .field("private_openssh", &crate::util::secret::REDACTED)
            .field("public_line", &self.public_line)
            .finish()
    }
}

fn key_err(what: &str, e: ssh_key::Error) -> io::Error {
    io::Error::other(format!("{what}: {e}"))
}

/// Generate an ed25519 key pair with `comment` (e.g. `clawfarm@<claw>`), returned as
/// `(private_openssh, public_line)`. See [`KeyPair`] for the formats.
pub fn generate_keypair(comment: &str) -> io::Result<(String, String)> {
    let kp = generate(comment)?;
    Ok((kp.private_openssh, kp.public_line))
}

/// Like [`generate_keypair`], as a [`KeyPair`].
pub fn generate(comment: &str) -> io::Result<KeyPair> {
    let mut key = PrivateKey::random(&mut OsRng, Algorithm::Ed25519)
        .map_err(|e| key_err("generating an ed25519 key", e))?;
    key.set_comment(comment);
    let private_openssh = key
        .to_openssh(LineEnding::LF)
        .map_err(|e| key_err("encoding the private key", e))?
        .to_string();
    let public_line = key
        .public_key()
        .to_openssh()
        .map_err(|e| key_err("encoding the public key", e))?;
    Ok(KeyPair {
        private_openssh,
        public_line,
    })
}

/// The public key line (`ssh-ed25519 AAAA… comment`) of an OpenSSH private key.
pub fn public_line_of(private_openssh: &str) -> io::Result<String> {
    let key = PrivateKey::from_openssh(private_openssh)
        .map_err(|e| key_err("parsing an OpenSSH private key", e))?;
    key.public_key()
        .to_openssh()
        .map_err(|e| key_err("encoding the public key", e))
}

/// The SHA256 fingerprint (`SHA256:…`, as `ssh-keygen -l` prints it) of a public key line.
pub fn fingerprint(public_line: &str) -> io::Result<String> {
    let key = PublicKey::from_openssh(public_line.trim())
        .map_err(|e| key_err("parsing an OpenSSH public key", e))?;
    Ok(key.fingerprint(HashAlg::Sha256).to_string())
}

/// One `known_hosts` line pinning `public_line` (the guest host key) for `host` and `port`:
/// `[127.0.0.1]:2222 ssh-ed25519 AAAA…` (port 22 gives the bare host). The key's comment
/// is dropped.
pub fn known_hosts_line(host: &str, port: u16, public_line: &str) -> String {
    let mut parts = public_line.split_whitespace();
    let algo = parts.next().unwrap_or_default();
    let body = parts.next().unwrap_or_default();
    let host = if port == 22 {
        host.to_string()
    } else {
        format!("[{host}]:{port}")
    };
    format!("{host} {algo} {body}")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn generated_keys_round_trip() {
        let (private, public) = generate_keypair("claw@test").unwrap();
        assert!(private.starts_with("-----BEGIN OPENSSH PRIVATE KEY-----\n"));
        assert!(private.ends_with("-----END OPENSSH PRIVATE KEY-----\n"));
        assert!(public.starts_with("ssh-ed25519 "));
        assert!(public.ends_with(" claw@test"));
        assert_eq!(public_line_of(&private).unwrap(), public);
        assert!(fingerprint(&public).unwrap().starts_with("SHA256:"));
        // Two keys differ.
        let (p2, _) = generate_keypair("claw@test").unwrap();
        assert_ne!(private, p2);
    }

    #[test]
    fn known_hosts_format() {
        let l = known_hosts_line("127.0.0.1", 2222, "ssh-ed25519 AAAAC3 host@x");
        assert_eq!(l, "[127.0.0.1]:2222 ssh-ed25519 AAAAC3");
        assert_eq!(
            known_hosts_line("h", 22, "ssh-ed25519 AAAAC3"),
            "h ssh-ed25519 AAAAC3"
        );
    }

    #[test]
    fn debug_hides_private_key() {
        let kp = generate("x").unwrap();
        assert!(!format!("{kp:?}").contains("PRIVATE KEY"));
    }
}
