//! The egress proxy over real TCP on 127.0.0.1 (no guest): authentication, every policy,
//! refusals of the host's loopback, of the host's own addresses and of names that are not
//! listed, the one host port an allow list names, plain HTTP forwarding, and the events.
//! The only outside destination is the Debian package mirror (a CONNECT, no data).

use std::io::{Read, Write};
use std::net::TcpStream;
use std::path::Path;
use std::time::Duration;

mod net_support;

use net_support::service;

use clawfarm::egress::{EgressConfig, Registration, register};
use clawfarm::input::network::{AllowEntry, Egress, Network};
use clawfarm::state::events;

fn b64(s: &str) -> String {
    const T: &[u8] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let b = s.as_bytes();
    let mut o = String::new();
    for c in b.chunks(3) {
        let n = (u32::from(c[0]) << 16)
            | (u32::from(*c.get(1).unwrap_or(&0)) << 8)
            | u32::from(*c.get(2).unwrap_or(&0));
        for i in 0..4 {
            if i <= c.len() {
                o.push(T[((n >> (18 - 6 * i)) & 63) as usize] as char);
            } else {
                o.push('=');
            }
        }
    }
    o
}

/// Send one request head through the proxy; returns the whole answer (until close or 5 s).
fn ask(port: u16, head: &str) -> String {
    let mut s = TcpStream::connect(("127.0.0.1", port)).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(15))).unwrap();
    s.write_all(head.as_bytes()).unwrap();
    let mut buf = Vec::new();
    let mut tmp = [0u8; 4096];
    loop {
        match s.read(&mut tmp) {
            Ok(0) | Err(_) => break,
            Ok(n) => {
                buf.extend_from_slice(&tmp[..n]);
                // A CONNECT answer stays open: stop at the end of its head.
                if head.starts_with("CONNECT") && buf.windows(4).any(|w| w == b"\r\n\r\n") {
                    break;
                }
            }
        }
    }
    String::from_utf8_lossy(&buf).into_owned()
}

fn auth(id: &str, token: &str) -> String {
    format!(
        "Proxy-Authorization: Basic {}\r\n",
        b64(&format!("{id}:{token}"))
    )
}

fn reg(cfg: &EgressConfig, events: &Path, id: &str, token: &str, net: Network) {
    use sha2::Digest;
    register(
        cfg,
        &Registration {
            clawid: id.into(),
            events: events.to_path_buf(),
            token_sha256: hex::encode(sha2::Sha256::digest(token.as_bytes())),
            network: net,
        },
    )
    .unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn proxy_verdicts_over_real_tcp() {
    let t = tempfile::tempdir().unwrap();
    let listener = tokio::net::TcpListener::bind(("127.0.0.1", 0))
        .await
        .unwrap();
    let port = listener.local_addr().unwrap().port();
    let cfg = EgressConfig {
        port,
        run_dir: t.path().join("run"),
        bin: None,
    };
    tokio::spawn(clawfarm::egress::proxy::serve(cfg.clone(), listener));
    let ev = t.path().join("events.jsonl");
    let secret = service("secret", true);
    let named = service("named", true);
    let tok_a = "0123456789abcdef0123456789abcdef";
    let tok_o = "fedcba9876543210fedcba9876543210";
    let tok_n = "00112233445566778899aabbccddeeff";
    reg(
        &cfg,
        &ev,
        "alw-1",
        tok_a,
        Network {
            egress: Egress::Allow,
            allow: vec![
                AllowEntry::parse("deb.debian.org").unwrap(),
                AllowEntry::parse(&format!("127.0.0.1:{named}")).unwrap(),
            ],
        },
    );
    reg(
        &cfg,
        &ev,
        "opn-1",
        tok_o,
        Network {
            egress: Egress::Open,
            allow: vec![],
        },
    );
    reg(&cfg, &ev, "non-1", tok_n, Network::default());
    let p = port;
    tokio::task::spawn_blocking(move || {
        // Health check.
        assert!(ask(p, "GET /.clawfarm-egress HTTP/1.0\r\n\r\n").contains("clawfarm-egress"));
        let get = |host: &str, a: &str| {
            ask(
                p,
                &format!("GET http://{host}/x HTTP/1.1\r\nHost: {host}\r\n{a}\r\n"),
            )
        };
        // No token, a wrong token, an unknown or malformed instance: 407.
        for a in [
            String::new(),
            auth("alw-1", "ffffffffffffffffffffffffffffffff"),
            auth("alw-1", tok_o),
            auth("nobody", tok_a),
            auth("../run/egress/alw-1", tok_a),
        ] {
            let r = get(&format!("127.0.0.1:{named}"), &a);
            assert!(r.starts_with("HTTP/1.1 407"), "{a}: {r}");
        }
        // The one named host port: forwarded as origin-form, proxy headers removed.
        let r = get(&format!("127.0.0.1:{named}"), &auth("alw-1", tok_a));
        assert!(r.contains("named GET /x HTTP/1.1"), "{r}");
        // Every other host loopback port, by any name: refused in allow and open mode.
        for host in [
            format!("127.0.0.1:{secret}"),
            format!("localhost:{secret}"),
            format!("127.0.0.2:{secret}"),
            format!("[::1]:{secret}"),
        ] {
            for (id, tok) in [("alw-1", tok_a), ("opn-1", tok_o)] {
                let r = get(&host, &auth(id, tok));
                assert!(r.starts_with("HTTP/1.1 403"), "{id} {host}: {r}");
                assert!(!r.contains("secret GET"), "{id} {host}: {r}");
            }
        }
        // The host's own addresses (open mode resolves and refuses them).
        for ip in clawfarm::egress::policy::host_networks()
            .into_iter()
            .map(|n| n.addr)
        {
            let host = if ip.is_ipv6() {
                format!("[{ip}]:{secret}")
            } else {
                format!("{ip}:{secret}")
            };
            let r = get(&host, &auth("opn-1", tok_o));
            assert!(r.starts_with("HTTP/1.1 403"), "{host}: {r}");
        }
        // Policy none refuses everything; allow refuses what is not listed.
        let r = get("deb.debian.org", &auth("non-1", tok_n));
        assert!(
            r.starts_with("HTTP/1.1 403") && r.contains("policy is none"),
            "{r}"
        );
        let r = ask(
            p,
            &format!(
                "CONNECT pypi.org:443 HTTP/1.1\r\n{}\r\n",
                auth("alw-1", tok_a)
            ),
        );
        assert!(
            r.starts_with("HTTP/1.1 403") && r.contains("not in the allow list"),
            "{r}"
        );
        let r = ask(
            p,
            &format!(
                "CONNECT deb.debian.org:22 HTTP/1.1\r\n{}\r\n",
                auth("alw-1", tok_a)
            ),
        );
        assert!(r.starts_with("HTTP/1.1 403"), "{r}");
        // A listed registry: the tunnel opens.
        let r = ask(
            p,
            &format!(
                "CONNECT deb.debian.org:443 HTTP/1.1\r\n{}\r\n",
                auth("alw-1", tok_a)
            ),
        );
        assert!(r.starts_with("HTTP/1.1 200 Connection established"), "{r}");
        // Garbage.
        assert!(ask(p, "BLAH\r\n\r\n").starts_with("HTTP/1.1 400"));
    })
    .await
    .unwrap();
    let evs = events::read(&ev).unwrap();
    let count = |id: &str, res: &str| {
        evs.iter()
            .filter(|e| e.instance == id && e.action == "egress" && e.result == res)
            .count()
    };
    assert_eq!(count("alw-1", "allowed"), 2, "{evs:#?}");
    assert!(count("alw-1", "refused") >= 6, "{evs:#?}");
    assert!(count("opn-1", "refused") >= 4, "{evs:#?}");
    assert_eq!(count("opn-1", "allowed"), 0, "open mode logs refusals only");
    assert_eq!(count("non-1", "refused"), 1);
    assert!(
        evs.iter()
            .any(|e| e.message.contains("pypi.org:443: not in the allow list"))
    );
    // Nothing about unauthenticated requests reaches an instance's log.
    assert!(
        evs.iter()
            .all(|e| ["alw-1", "opn-1", "non-1"].contains(&e.instance.as_str()))
    );
    // No token in any event.
    let text = std::fs::read_to_string(&ev).unwrap();
    for tok in [tok_a, tok_o, tok_n] {
        assert!(!text.contains(tok));
    }
}
