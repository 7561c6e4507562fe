//! The network policy of an instance (`spec.network` in a manifest; `rfc/012-sandbox.md`):
//! its types, the grammar of an allow entry, and which addresses are never a destination.
//! Pure: no I/O here, so the proxy (`crate::egress`) and the manifest validation share one
//! set of rules.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use serde::{Deserialize, Serialize};

/// What the guest may open connections to.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Egress {
    /// Nothing (the default). Host port forwards into the guest still work.
    #[default]
    None,
    /// Only the destinations of the allow list, through the egress proxy.
    Allow,
    /// Any public address, through the egress proxy; never the host, private ranges,
    /// link-local or other instances.
    Open,
}

impl Egress {
    /// `none`, `allow` or `open`.
    pub fn parse(s: &str) -> Option<Self> {
        match s {
            "none" => Some(Egress::None),
            "allow" => Some(Egress::Allow),
            "open" => Some(Egress::Open),
            _ => None,
        }
    }
    /// The manifest word.
    pub fn as_str(self) -> &'static str {
        match self {
            Egress::None => "none",
            Egress::Allow => "allow",
            Egress::Open => "open",
        }
    }
}

impl std::fmt::Display for Egress {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// The host part of an allow entry.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum AllowHost {
    /// A DNS name (lowercase), matched exactly.
    Name(String),
    /// `*.suffix`: any name under `suffix` (not `suffix` itself).
    Suffix(String),
    /// A public IP literal.
    Ip(IpAddr),
    /// `127.0.0.1:PORT` / `localhost:PORT`: that exact port on the host's loopback.
    HostLoopback,
}

/// One allow entry: a host and an optional port (no port: 80 and 443).
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub struct AllowEntry {
    /// Which host.
    pub host: AllowHost,
    /// Which port; `None` = 80 and 443.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub port: Option<u16>,
}

/// Ports an entry without a port allows.
pub const DEFAULT_PORTS: [u16; 2] = [80, 443];

impl AllowEntry {
    /// Parse `host`, `host:port`, `*.suffix[:port]`, `[v6]:port`, `127.0.0.1:port`.
    pub fn parse(s: &str) -> Result<Self, String> {
        let s = s.trim();
        if s.is_empty() {
            return Err("an allow entry is empty".into());
        }
        if s.contains('/') {
            return Err(format!(
                "\"{s}\" is not a host name or host:port (address ranges are not allowed)"
            ));
        }
        let (host, port) = split_host_port(s)?;
        let port = match port {
            None => None,
            Some(p) => Some(parse_port(p).map_err(|e| format!("\"{s}\": {e}"))?),
        };
        let lower = host.to_ascii_lowercase();
        if lower == "localhost" || lower == "127.0.0.1" {
            return match port {
                Some(_) => Ok(AllowEntry {
                    host: AllowHost::HostLoopback,
                    port,
                }),
                None => Err(format!(
                    "\"{s}\" names the host's loopback without a port; name the one port the guest may reach, e.g. 127.0.0.1:8080"
                )),
            };
        }
        if let Ok(ip) = lower.parse::<IpAddr>() {
            if let Some(why) = forbidden_ip(ip) {
                return Err(format!(
                    "\"{s}\" names a {why} address, which the guest may never reach"
                ));
            }
            return Ok(AllowEntry {
                host: AllowHost::Ip(ip),
                port,
            });
        }
        if let Some(rest) = lower.strip_prefix("*.") {
            check_dns_name(rest).map_err(|e| format!("\"{s}\": {e}"))?;
            return Ok(AllowEntry {
                host: AllowHost::Suffix(rest.to_string()),
                port,
            });
        }
        check_dns_name(&lower).map_err(|e| format!("\"{s}\": {e}"))?;
        Ok(AllowEntry {
            host: AllowHost::Name(lower),
            port,
        })
    }

    /// Whether this entry allows `host` (lowercase name or IP literal) on `port`.
    pub fn matches(&self, host: &str, port: u16) -> bool {
        let port_ok = match self.port {
            Some(p) => p == port,
            None => DEFAULT_PORTS.contains(&port),
        };
        if !port_ok {
            return false;
        }
        let host = host.trim_end_matches('.').to_ascii_lowercase();
        match &self.host {
            AllowHost::Name(n) => *n == host,
            AllowHost::Suffix(sfx) => host
                .strip_suffix(sfx.as_str())
                .is_some_and(|head| head.len() > 1 && head.ends_with('.')),
            AllowHost::Ip(ip) => host
                .trim_start_matches('[')
                .trim_end_matches(']')
                .parse::<IpAddr>()
                .is_ok_and(|h| h == *ip),
            AllowHost::HostLoopback => host == "127.0.0.1" || host == "localhost",
        }
    }
}

impl std::fmt::Display for AllowEntry {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match &self.host {
            AllowHost::Name(n) => f.write_str(n)?,
            AllowHost::Suffix(s) => write!(f, "*.{s}")?,
            AllowHost::Ip(IpAddr::V6(ip)) => write!(f, "[{ip}]")?,
            AllowHost::Ip(ip) => write!(f, "{ip}")?,
            AllowHost::HostLoopback => f.write_str("127.0.0.1")?,
        }
        if let Some(p) = self.port {
            write!(f, ":{p}")?;
        }
        Ok(())
    }
}

/// The network policy of one instance.
#[derive(Debug, Clone, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct Network {
    /// `none`, `allow` or `open`.
    pub egress: Egress,
    /// The allow list (`allow` mode; host-loopback entries also count in `open` mode).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub allow: Vec<AllowEntry>,
}

impl Network {
    /// Whether the guest needs the egress proxy (and QEMU the host firewall).
    pub fn uses_proxy(&self) -> bool {
        self.egress != Egress::None
    }
}

/// Split `host[:port]` / `[v6][:port]`.
fn split_host_port(s: &str) -> Result<(&str, Option<&str>), String> {
    if let Some(rest) = s.strip_prefix('[') {
        let (h, after) = rest
            .split_once(']')
            .ok_or_else(|| format!("\"{s}\": a '[' without its ']'"))?;
        return match after {
            "" => Ok((h, None)),
            _ => match after.strip_prefix(':') {
                Some(p) => Ok((h, Some(p))),
                None => Err(format!("\"{s}\": expected :PORT after ']'")),
            },
        };
    }
    match s.matches(':').count() {
        0 => Ok((s, None)),
        1 => {
            let (h, p) = s.split_once(':').expect("one colon");
            Ok((h, Some(p)))
        }
        // A bare IPv6 literal.
        _ => Ok((s, None)),
    }
}

fn parse_port(p: &str) -> Result<u16, String> {
    if p.is_empty() || !p.bytes().all(|b| b.is_ascii_digit()) || p.len() > 5 {
        return Err(format!("port \"{p}\" is not a number from 1 to 65535"));
    }
    match p.parse::<u32>() {
        Ok(n) if (1..=65535).contains(&n) => Ok(n as u16),
        _ => Err(format!("port \"{p}\" is not a number from 1 to 65535")),
    }
}

/// A DNS name: labels of letters, digits and '-', 1-63 characters, not starting or ending
/// with '-', at most 253 characters, at least two labels, and not all digits (that would be
/// an address).
pub fn check_dns_name(name: &str) -> Result<(), String> {
    let name = name.strip_suffix('.').unwrap_or(name);
    if name.is_empty() || name.len() > 253 {
        return Err("a host name must be 1 to 253 characters".into());
    }
    let labels: Vec<&str> = name.split('.').collect();
    for l in &labels {
        let ok = !l.is_empty()
            && l.len() <= 63
            && l.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-')
            && !l.starts_with('-')
            && !l.ends_with('-');
        if !ok {
            return Err(format!(
                "\"{name}\" is not a valid host name (label \"{l}\": letters, digits and '-', 1 to 63 characters)"
            ));
        }
    }
    if labels.len() < 2 {
        return Err(format!(
            "\"{name}\" is not a fully qualified host name (e.g. pypi.org)"
        ));
    }
    if labels
        .last()
        .is_some_and(|l| l.bytes().all(|b| b.is_ascii_digit()))
    {
        return Err(format!(
            "\"{name}\" is neither a host name nor an IP address"
        ));
    }
    Ok(())
}

/// Why `ip` is never a destination for a guest (`None`: a public unicast address).
pub fn forbidden_ip(ip: IpAddr) -> Option<&'static str> {
    match ip {
        IpAddr::V4(v4) => forbidden_v4(v4),
        IpAddr::V6(v6) => {
            if let Some(v4) = v6.to_ipv4_mapped() {
                return forbidden_v4(v4);
            }
            forbidden_v6(v6)
        }
    }
}

fn forbidden_v4(ip: Ipv4Addr) -> Option<&'static str> {
    let o = ip.octets();
    if ip.is_loopback() {
        Some("loopback")
    } else if ip.is_private() {
        Some("private")
    } else if ip.is_link_local() {
        Some("link-local")
    } else if ip.is_unspecified() || o[0] == 0 {
        Some("unspecified")
    } else if ip.is_broadcast() || ip.is_multicast() || o[0] >= 240 {
        Some("multicast or reserved")
    } else if o[0] == 100 && (o[1] & 0xc0) == 64 {
        Some("shared (carrier-grade NAT)")
    } else if o[0] == 192 && o[1] == 0 && o[2] == 0 {
        Some("IETF protocol")
    } else if o[0] == 198 && (o[1] & 0xfe) == 18 {
        Some("benchmarking")
    } else {
        None
    }
}

fn forbidden_v6(ip: Ipv6Addr) -> Option<&'static str> {
    let s = ip.segments();
    if ip.is_loopback() {
        Some("loopback")
    } else if ip.is_unspecified() {
        Some("unspecified")
    } else if (s[0] & 0xffc0) == 0xfe80 {
        Some("link-local")
    } else if (s[0] & 0xfe00) == 0xfc00 {
        Some("private (unique local)")
    } else if ip.is_multicast() {
        Some("multicast or reserved")
    } else if s[0] == 0 && s[1] == 0 && s[2] == 0 && s[3] == 0 && s[4] == 0 && s[5] == 0 {
        // IPv4-compatible (deprecated) addresses.
        Some("IPv4-compatible")
    } else if s[0] == 0x64 && s[1] == 0xff9b {
        // NAT64 can reach private IPv4 ranges.
        Some("NAT64")
    } else if s[0] == 0x2002 || (s[0] == 0x2001 && s[1] == 0) {
        // 6to4 and Teredo embed IPv4 addresses.
        Some("6to4/Teredo")
    } else {
        None
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn entries() {
        let ok = [
            ("pypi.org", "pypi.org"),
            ("PyPI.org:443", "pypi.org:443"),
            ("*.pythonhosted.org", "*.pythonhosted.org"),
            ("127.0.0.1:8080", "127.0.0.1:8080"),
            ("localhost:9", "127.0.0.1:9"),
            ("1.1.1.1:53", "1.1.1.1:53"),
            ("[2606:4700::1111]:443", "[2606:4700::1111]:443"),
            ("deb.debian.org.", "deb.debian.org."),
        ];
        for (s, want) in ok {
            let e = AllowEntry::parse(s).unwrap_or_else(|e| panic!("{s}: {e}"));
            assert_eq!(e.to_string(), want, "{s}");
        }
        let bad = [
            ("", "empty"),
            ("10.0.0.0/8", "ranges"),
            ("10.1.2.3", "private"),
            ("192.168.1.1:80", "private"),
            ("172.16.0.1", "private"),
            ("169.254.169.254", "link-local"),
            ("[fe80::1]:80", "link-local"),
            ("[fd00::1]:80", "private"),
            ("100.64.0.1", "carrier"),
            ("0.0.0.0:80", "unspecified"),
            ("127.0.0.1", "without a port"),
            ("localhost", "without a port"),
            ("127.0.0.2:80", "loopback"),
            ("pypi.org:0", "port"),
            ("pypi.org:70000", "port"),
            ("pypi.org:http", "port"),
            ("pypi.org:", "port"),
            ("exa mple.com", "valid host name"),
            ("-bad.com", "valid host name"),
            ("intranet", "fully qualified"),
            ("*.com.", "fully qualified"),
            ("1.2.3", "neither"),
            ("[::1", "without"),
            ("a..b", "valid host name"),
        ];
        for (s, why) in bad {
            let e = AllowEntry::parse(s).expect_err(s);
            assert!(e.contains(why), "{s}: {e}");
        }
    }

    #[test]
    fn matching() {
        let e = AllowEntry::parse("pypi.org").unwrap();
        assert!(e.matches("pypi.org", 443));
        assert!(e.matches("PYPI.ORG.", 80));
        assert!(!e.matches("pypi.org", 22));
        assert!(!e.matches("evilpypi.org", 443));
        assert!(!e.matches("pypi.org.evil.com", 443));
        let s = AllowEntry::parse("*.pythonhosted.org:443").unwrap();
        assert!(s.matches("files.pythonhosted.org", 443));
        assert!(!s.matches("pythonhosted.org", 443));
        assert!(!s.matches("xpythonhosted.org", 443));
        assert!(!s.matches("files.pythonhosted.org", 80));
        let l = AllowEntry::parse("127.0.0.1:8080").unwrap();
        assert!(l.matches("127.0.0.1", 8080));
        assert!(l.matches("localhost", 8080));
        assert!(!l.matches("127.0.0.1", 8081));
    }

    #[test]
    fn forbidden_addresses() {
        for a in [
            "127.0.0.1",
            "127.8.9.1",
            "10.0.2.2",
            "172.31.255.255",
            "192.168.0.1",
            "169.254.169.254",
            "100.100.100.200",
            "0.0.0.0",
            "255.255.255.255",
            "224.0.0.1",
            "::1",
            "::",
            "fe80::1",
            "fc00::1",
            "::ffff:127.0.0.1",
            "::ffff:10.0.0.1",
            "64:ff9b::a00:1",
            "2002:a00:1::",
        ] {
            let ip: IpAddr = a.parse().unwrap();
            assert!(forbidden_ip(ip).is_some(), "{a} must be forbidden");
        }
        // Documentation ranges are not routed on the internet, but they are not the host's
        // either: on the development host the package mirrors live at 203.0.113.80. The
        // host's own networks are refused by the proxy from its interfaces instead.
        for a in ["151.101.0.223", "1.1.1.1", "2a04:4e42::223", "203.0.113.80"] {
            let ip: IpAddr = a.parse().unwrap();
            assert_eq!(forbidden_ip(ip), None, "{a}");
        }
    }
}
