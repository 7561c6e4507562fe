//! The verdict on one destination: pure functions of the policy, the destination, the
//! addresses its name resolved to and the host's own addresses (table-tested).

use std::net::{IpAddr, Ipv4Addr, SocketAddr};

use crate::input::network::{AllowHost, Egress, Network, forbidden_ip};

/// What the proxy does with a request for `host:port`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Step {
    /// Refuse without resolving (the reason is for the event).
    Refuse(String),
    /// Connect to exactly this address (a host loopback port the allow list names).
    Direct(SocketAddr, String),
    /// Resolve the name, then [`filter`] the addresses.
    Resolve {
        /// Whether the allowed connection is logged (allow mode) or not (open mode).
        log: bool,
        /// Why it is allowed (for the event).
        why: String,
    },
}

fn is_loopback_name(host: &str) -> bool {
    let h = host.trim_end_matches('.').to_ascii_lowercase();
    h == "localhost"
        || h.ends_with(".localhost")
        || h.parse::<IpAddr>().is_ok_and(|ip| ip.is_loopback())
}

/// First step of the verdict on `host:port` (`host` as the guest wrote it, without
/// brackets for IPv6).
pub fn decide(net: &Network, host: &str, port: u16) -> Step {
    if net.egress == Egress::None {
        return Step::Refuse("network policy is none".into());
    }
    let entry = net.allow.iter().find(|e| e.matches(host, port));
    if is_loopback_name(host) {
        return match entry {
            Some(e) if e.host == AllowHost::HostLoopback => Step::Direct(
                SocketAddr::from((Ipv4Addr::LOCALHOST, port)),
                format!("host port named in the allow list ({e})"),
            ),
            _ => Step::Refuse("the host's loopback is never reachable".into()),
        };
    }
    match net.egress {
        Egress::Allow => match entry {
            Some(e) => Step::Resolve {
                log: true,
                why: format!("in the allow list ({e})"),
            },
            None => Step::Refuse("not in the allow list".into()),
        },
        _ => Step::Resolve {
            log: false,
            why: "network policy is open".into(),
        },
    }
}

/// An address of one of the host's interfaces with its prefix length: the host's own
/// address and the network it is attached to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct HostNet {
    /// The interface address.
    pub addr: IpAddr,
    /// Prefix length of its network.
    pub prefix: u8,
}

impl HostNet {
    /// Whether `ip` is in this network.
    pub fn contains(&self, ip: IpAddr) -> bool {
        fn bits(ip: IpAddr) -> (u128, u8) {
            match ip {
                IpAddr::V4(v) => (u128::from(u32::from(v)) << 96, 32),
                IpAddr::V6(v) => match v.to_ipv4_mapped() {
                    Some(v4) => (u128::from(u32::from(v4)) << 96, 32),
                    None => (u128::from(v), 128),
                },
            }
        }
        let (a, la) = bits(self.addr);
        let (b, lb) = bits(ip);
        if la != lb {
            return false;
        }
        let p = u32::from(self.prefix.min(la));
        let mask = if p == 0 { 0 } else { u128::MAX << (128 - p) };
        a & mask == b & mask
    }
}

/// Keep the addresses a guest may connect to: `Err(reason)` when none is left. Refused:
/// [`forbidden_ip`] ranges, the host's own addresses and the networks its interfaces are
/// attached to.
pub fn filter(resolved: &[SocketAddr], host: &[HostNet]) -> Result<Vec<SocketAddr>, String> {
    let mut ok = Vec::new();
    let mut why = String::new();
    for a in resolved {
        let ip = a.ip();
        let reason = if host.iter().any(|n| n.addr == ip) {
            Some("an address of this host".to_string())
        } else if let Some(r) = forbidden_ip(ip) {
            Some(r.to_string())
        } else {
            host.iter()
                .find(|n| n.contains(ip))
                .map(|n| format!("on this host's network {}/{}", n.addr, n.prefix))
        };
        match reason {
            None => ok.push(*a),
            Some(r) if why.is_empty() => why = format!("resolves to {ip} ({r})"),
            Some(_) => {}
        }
    }
    if ok.is_empty() {
        Err(if why.is_empty() {
            "resolves to no address".into()
        } else {
            why
        })
    } else {
        Ok(ok)
    }
}

/// The addresses of the host's interfaces with their prefix lengths (`getifaddrs`).
pub fn host_networks() -> Vec<HostNet> {
    let mut out = Vec::new();
    let mut ifap: *mut libc::ifaddrs = std::ptr::null_mut();
    // SAFETY: getifaddrs fills a list that we walk read-only and free once.
    unsafe {
        if libc::getifaddrs(&mut ifap) != 0 {
            return out;
        }
        let mut p = ifap;
        while !p.is_null() {
            let a = (*p).ifa_addr;
            let m = (*p).ifa_netmask;
            if !a.is_null() {
                let (addr, prefix) = match i32::from((*a).sa_family) {
                    libc::AF_INET => {
                        let s = &*(a as *const libc::sockaddr_in);
                        let prefix = if m.is_null() {
                            32
                        } else {
                            let s = &*(m as *const libc::sockaddr_in);
                            u32::from_be(s.sin_addr.s_addr).count_ones() as u8
                        };
                        (
                            Some(IpAddr::from(u32::from_be(s.sin_addr.s_addr).to_be_bytes())),
                            prefix,
                        )
                    }
                    libc::AF_INET6 => {
                        let s = &*(a as *const libc::sockaddr_in6);
                        let prefix = if m.is_null() {
                            128
                        } else {
                            let s = &*(m as *const libc::sockaddr_in6);
                            s.sin6_addr
                                .s6_addr
                                .iter()
                                .map(|b| b.count_ones())
                                .sum::<u32>() as u8
                        };
                        (Some(IpAddr::from(s.sin6_addr.s6_addr)), prefix)
                    }
                    _ => (None, 0),
                };
                if let Some(addr) = addr {
                    out.push(HostNet { addr, prefix });
                }
            }
            p = (*p).ifa_next;
        }
        libc::freeifaddrs(ifap);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::input::network::AllowEntry;

    fn net(egress: Egress, allow: &[&str]) -> Network {
        Network {
            egress,
            allow: allow
                .iter()
                .map(|a| AllowEntry::parse(a).unwrap())
                .collect(),
        }
    }

    #[test]
    fn decisions() {
        let allow = net(Egress::Allow, &["pypi.org", "127.0.0.1:8080", "1.1.1.1:53"]);
        let open = net(Egress::Open, &["127.0.0.1:9000"]);
        let none = Network::default();
        let refused = |s: Step| matches!(s, Step::Refuse(_));
        assert!(refused(decide(&none, "pypi.org", 443)));
        assert!(matches!(
            decide(&allow, "pypi.org", 443),
            Step::Resolve { log: true, .. }
        ));
        assert!(refused(decide(&allow, "pypi.org", 22)));
        assert!(refused(decide(&allow, "registry.npmjs.org", 443)));
        assert_eq!(
            decide(&allow, "127.0.0.1", 8080),
            Step::Direct(
                "127.0.0.1:8080".parse().unwrap(),
                "host port named in the allow list (127.0.0.1:8080)".into()
            )
        );
        assert!(matches!(
            decide(&allow, "localhost", 8080),
            Step::Direct(..)
        ));
        for h in [
            "127.0.0.1",
            "localhost",
            "foo.localhost",
            "127.1.2.3",
            "::1",
        ] {
            assert!(refused(decide(&allow, h, 8081)), "{h}");
            assert!(refused(decide(&open, h, 8081)), "{h}");
        }
        assert!(matches!(decide(&open, "127.0.0.1", 9000), Step::Direct(..)));
        assert!(matches!(
            decide(&open, "example.org", 443),
            Step::Resolve { log: false, .. }
        ));
        assert!(matches!(
            decide(&allow, "1.1.1.1", 53),
            Step::Resolve { .. }
        ));
    }

    #[test]
    fn filtering() {
        let sa = |s: &str| -> SocketAddr { s.parse().unwrap() };
        let hn = |a: &str, prefix: u8| HostNet {
            addr: a.parse().unwrap(),
            prefix,
        };
        let host = vec![hn("192.0.2.2", 24), hn("2001:db8::2", 64)];
        assert_eq!(
            filter(&[sa("151.101.0.223:443")], &host),
            Ok(vec![sa("151.101.0.223:443")])
        );
        // A name that resolves to loopback, a private address or the host is refused.
        for a in [
            "127.0.0.1:80",
            "10.0.2.2:80",
            "169.254.169.254:80",
            "[::1]:80",
        ] {
            let e = filter(&[sa(a)], &host).unwrap_err();
            assert!(e.starts_with("resolves to"), "{a}: {e}");
        }
        // The host's own addresses and the networks it is attached to are refused too.
        let e = filter(&[sa("192.0.2.2:443")], &host).unwrap_err();
        assert!(e.contains("an address of this host"), "{e}");
        for a in ["192.0.2.1:80", "[2001:db8::1]:80", "[::ffff:192.0.2.9]:80"] {
            let e = filter(&[sa(a)], &host).unwrap_err();
            assert!(e.contains("on this host's network"), "{a}: {e}");
        }
        assert!(filter(&[sa("203.0.113.80:443")], &host).is_ok());
        // Mixed answers: only the public address is kept.
        assert_eq!(
            filter(&[sa("127.0.0.1:443"), sa("151.101.0.223:443")], &host),
            Ok(vec![sa("151.101.0.223:443")])
        );
        assert!(filter(&[], &host).is_err());
        assert!(
            host_networks()
                .iter()
                .any(|n| n.addr.is_loopback() && n.prefix > 0)
        );
    }
}
