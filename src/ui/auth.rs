//! The dashboard's access control: one random token per home (`ui.token`, 0600), accepted
//! once as `?token=` (then kept as an HttpOnly, SameSite=Strict cookie), as that cookie, or
//! as `Authorization: Bearer`; and the CSRF rules for state-changing requests.

use std::io::{self, Read, Write};
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};

use hmac::{KeyInit, Mac};
use sha2::Sha256;

use crate::home::Home;

/// Name of the session cookie.
pub const COOKIE: &str = "clawfarm_ui";
/// Header carrying the CSRF token on POSTs made by the pages.
pub const CSRF_HEADER: &str = "x-csrf-token";

/// The access token of a home.
#[derive(Clone)]
pub struct Token {
    value: String,
    csrf: String,
}

impl std::fmt::Debug for Token {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Token(..)")
    }
}

impl Token {
    /// A token with this value (64 hex digits).
    pub fn new(value: String) -> Self {
        let mut mac = hmac::Hmac::<Sha256>::new_from_slice(value.as_bytes())
            .expect("HMAC takes any key length");
        mac.update(b"clawfarm-ui-csrf");
        let csrf = hex::encode(mac.finalize().into_bytes());
        Token { value, csrf }
    }

    /// The token itself (printed once by `clawfarm ui`; never logged).
    pub fn value(&self) -> &str {
        &self.value
    }

    /// The CSRF token the pages send back on POSTs (derived from the token, so it survives
    /// restarts and is useless without the session cookie).
    pub fn csrf(&self) -> &str {
        &self.csrf
    }

    /// Whether `given` is the token (constant time).
    pub fn matches(&self, given: &str) -> bool {
        ct_eq(self.value.as_bytes(), given.as_bytes())
    }

    /// Whether `given` is the CSRF token (constant time).
    pub fn csrf_matches(&self, given: &str) -> bool {
        ct_eq(self.csrf.as_bytes(), given.as_bytes())
    }
}

fn ct_eq(a: &[u8], b: &[u8]) -> bool {
    if a.len() != b.len() {
        return false;
    }
    a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

fn valid(s: &str) -> bool {
    s.len() == 64 && s.bytes().all(|b| b.is_ascii_hexdigit())
}

/// Read the token of `home`, creating it (32 random bytes, hex, mode 0600) when missing or
/// malformed. Returns the token and whether it was just created. A token file readable by
/// others is made 0600 again.
pub fn load_or_create(home: &Home) -> io::Result<(Token, bool)> {
    let path = home.ui_token();
    match std::fs::File::open(&path) {
        Ok(mut f) => {
            let mode = f.metadata()?.permissions().mode();
            if mode & 0o077 != 0 {
                std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600))?;
            }
            let mut s = String::new();
            Read::by_ref(&mut f).take(1024).read_to_string(&mut s)?;
            let s = s.trim();
            if valid(s) {
                return Ok((Token::new(s.to_string()), false));
            }
        }
        Err(e) if e.kind() == io::ErrorKind::NotFound => {}
        Err(e) => return Err(e),
    }
    let value = hex::encode(rand::random::<[u8; 32]>());
    // Written 0600 from the first byte (never world-readable, even briefly), then renamed.
    let tmp = path.with_extension(format!("tmp.{}", std::process::id()));
    let _ = std::fs::remove_file(&tmp);
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(&tmp)?;
    f.write_all(value.as_bytes())?;
    f.write_all(b"\n")?;
    f.sync_all()?;
    drop(f);
    std::fs::rename(&tmp, &path)?;
    Ok((Token::new(value), true))
}

/// The value of cookie `name` in a `Cookie:` header.
pub fn cookie<'a>(header: &'a str, name: &str) -> Option<&'a str> {
    header.split(';').find_map(|kv| {
        let (k, v) = kv.trim().split_once('=')?;
        (k == name).then_some(v)
    })
}

/// The `Set-Cookie` value that keeps the session.
pub fn set_cookie(token: &Token) -> String {
    format!(
        "{COOKIE}={}; Path=/; HttpOnly; SameSite=Strict; Max-Age=2592000",
        token.value()
    )
}

/// Whether a state-changing request comes from our own pages: `Origin` (or, without it,
/// `Referer`) must be `http://HOST` for the request's own `Host`, and a browser's
/// `Sec-Fetch-Site` must not say cross-site. `host` is the `Host` header.
pub fn same_origin(
    host: Option<&str>,
    origin: Option<&str>,
    referer: Option<&str>,
    fetch_site: Option<&str>,
) -> bool {
    let Some(host) = host.filter(|h| !h.is_empty()) else {
        return false;
    };
    if let Some(site) = fetch_site
        && !matches!(site, "same-origin" | "none")
    {
        return false;
    }
    let own = format!("http://{host}");
    match (origin, referer) {
        (Some(o), _) => o == own,
        (None, Some(r)) => r == own || r.starts_with(&format!("{own}/")),
        // No browser sends a cross-site POST without Origin; curl with a bearer token does.
        (None, None) => true,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn token_file_is_private_and_stable() {
        let t = tempfile::tempdir().unwrap();
        let home = Home::new(t.path());
        let (a, fresh) = load_or_create(&home).unwrap();
        assert!(fresh);
        let mode = std::fs::metadata(home.ui_token())
            .unwrap()
            .permissions()
            .mode();
        assert_eq!(mode & 0o777, 0o600);
        let (b, fresh) = load_or_create(&home).unwrap();
        assert!(!fresh);
        assert_eq!(a.value(), b.value());
        assert!(a.matches(b.value()));
        assert!(!a.matches(&b.value()[1..]));
        assert_ne!(a.csrf(), a.value());
        // Readable by others: made private again, same token.
        std::fs::set_permissions(home.ui_token(), std::fs::Permissions::from_mode(0o644)).unwrap();
        let (c, _) = load_or_create(&home).unwrap();
        assert_eq!(c.value(), a.value());
        let mode = std::fs::metadata(home.ui_token())
            .unwrap()
            .permissions()
            .mode();
        assert_eq!(mode & 0o777, 0o600);
        // Garbage: replaced by a fresh token.
        std::fs::write(home.ui_token(), "short").unwrap();
        let (d, fresh) = load_or_create(&home).unwrap();
        assert!(fresh);
        assert_ne!(d.value(), a.value());
    }

    #[test]
    fn origin_rules() {
        let h = Some("127.0.0.1:8080");
        assert!(same_origin(
            h,
            Some("http://127.0.0.1:8080"),
            None,
            Some("same-origin")
        ));
        assert!(!same_origin(h, Some("http://evil.example"), None, None));
        assert!(!same_origin(h, Some("null"), None, None));
        assert!(!same_origin(h, None, None, Some("cross-site")));
        assert!(!same_origin(h, None, None, Some("same-site")));
        assert!(same_origin(
            h,
            None,
            Some("http://127.0.0.1:8080/i/x"),
            None
        ));
        assert!(!same_origin(h, None, Some("http://127.0.0.1:80800/"), None));
        assert!(!same_origin(
            None,
            Some("http://127.0.0.1:8080"),
            None,
            None
        ));
        assert_eq!(cookie("a=1; clawfarm_ui=xyz; b=2", COOKIE), Some("xyz"));
        assert_eq!(cookie("xclawfarm_ui=1", COOKIE), None);
    }
}
