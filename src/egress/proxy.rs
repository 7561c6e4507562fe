//! The egress proxy: an HTTP proxy on 127.0.0.1 (`CONNECT host:port` for TLS and
//! absolute-form `GET http://host/...` for plain HTTP) that authenticates each guest by
//! its instance token, decides with [`super::policy`], connects to the checked address
//! itself (no second resolution a guest could race) and writes one event per verdict to
//! the instance's event log (refused ones always, allowed ones in `allow` mode).

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use sha2::{Digest, Sha256};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

use super::policy::{Step, decide, filter, host_networks};
use super::{EgressConfig, HEALTH_BODY, HEALTH_PATH, Registration, lookup};
use crate::state::events::{Event, EventSink};

const MAX_HEAD: usize = 16 * 1024;
const HEAD_TIMEOUT: Duration = Duration::from_secs(30);
const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);
/// At most this many events per instance per [`EVENT_WINDOW`]; the rest are counted and
/// reported in one `suppressed` event, so a guest cannot fill the host's disk.
const EVENT_BUDGET: u32 = 100;
const EVENT_WINDOW: Duration = Duration::from_secs(10);

/// A parsed request head.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Request {
    /// `CONNECT`, `GET`, …
    pub method: String,
    /// Destination host (no brackets).
    pub host: String,
    /// Destination port.
    pub port: u16,
    /// For plain HTTP: the head to send upstream (origin-form, proxy headers removed,
    /// `Connection: close`). Empty for `CONNECT`.
    pub upstream_head: Vec<u8>,
    /// `(user, password)` of `Proxy-Authorization: Basic`.
    pub auth: Option<(String, String)>,
    /// The request asks for the health check.
    pub health: bool,
}

fn b64_decode(s: &str) -> Option<Vec<u8>> {
    let val = |c: u8| -> Option<u32> {
        Some(match c {
            b'A'..=b'Z' => c - b'A',
            b'a'..=b'z' => c - b'a' + 26,
            b'0'..=b'9' => c - b'0' + 52,
            b'+' => 62,
            b'/' => 63,
            _ => return None,
        } as u32)
    };
    let s = s.trim().trim_end_matches('=');
    let mut out = Vec::new();
    let mut acc = 0u32;
    let mut bits = 0;
    for c in s.bytes() {
        acc = (acc << 6) | val(c)?;
        bits += 6;
        if bits >= 8 {
            bits -= 8;
            out.push((acc >> bits) as u8);
            acc &= (1 << bits) - 1;
        }
    }
    Some(out)
}

fn split_authority(a: &str, default_port: Option<u16>) -> Result<(String, u16), String> {
    let (h, p) = if let Some(rest) = a.strip_prefix('[') {
        let (h, after) = rest.split_once(']').ok_or("bad IPv6 authority")?;
        (h, after.strip_prefix(':'))
    } else {
        match a.rsplit_once(':') {
            Some((h, p)) => (h, Some(p)),
            None => (a, None),
        }
    };
    let port = match (p, default_port) {
        (Some(p), _) => p.parse::<u16>().ok().filter(|p| *p > 0).ok_or("bad port")?,
        (None, Some(d)) => d,
        (None, None) => return Err("a port is needed".into()),
    };
    if h.is_empty()
        || h.len() > 253
        || !h
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'-' | b':' | b'_'))
    {
        return Err("bad host".into());
    }
    Ok((h.to_ascii_lowercase(), port))
}

/// Parse a request head (everything up to and including the blank line).
pub fn parse_head(head: &[u8]) -> Result<Request, String> {
    let text = std::str::from_utf8(head).map_err(|_| "the request is not UTF-8")?;
    let mut lines = text.split("\r\n");
    let first = lines.next().unwrap_or_default();
    let parts: Vec<&str> = first.split(' ').collect();
    if parts.len() != 3 || !parts[2].starts_with("HTTP/1.") {
        return Err("bad request line".into());
    }
    let (method, target, version) = (parts[0], parts[1], parts[2]);
    let mut auth = None;
    let mut headers = Vec::new();
    for l in lines {
        if l.is_empty() {
            continue;
        }
        let Some((k, v)) = l.split_once(':') else {
            return Err("bad header line".into());
        };
        let lk = k.trim().to_ascii_lowercase();
        if lk == "proxy-authorization" {
            let v = v.trim();
            if let Some(b) = v
                .strip_prefix("Basic ")
                .or_else(|| v.strip_prefix("basic "))
                && let Some(d) = b64_decode(b)
                && let Ok(d) = String::from_utf8(d)
                && let Some((u, p)) = d.split_once(':')
            {
                auth = Some((u.to_string(), p.to_string()));
            }
            continue;
        }
        if lk == "proxy-connection" || lk == "connection" || lk == "keep-alive" {
            continue;
        }
        headers.push(l);
    }
    if method == "CONNECT" {
        let (host, port) = split_authority(target, None)?;
        return Ok(Request {
            method: method.into(),
            host,
            port,
            upstream_head: Vec::new(),
            auth,
            health: false,
        });
    }
    if target == HEALTH_PATH {
        return Ok(Request {
            method: method.into(),
            host: String::new(),
            port: 0,
            upstream_head: Vec::new(),
            auth,
            health: true,
        });
    }
    let rest = target
        .strip_prefix("http://")
        .ok_or("only CONNECT and http:// URLs are proxied")?;
    let (authority, path) = match rest.find('/') {
        Some(i) => (&rest[..i], &rest[i..]),
        None => (rest, "/"),
    };
    let authority = authority.rsplit('@').next().unwrap_or(authority);
    let (host, port) = split_authority(authority, Some(80))?;
    let mut up = format!("{method} {path} {version}\r\n");
    for h in headers {
        up.push_str(h);
        up.push_str("\r\n");
    }
    up.push_str("Connection: close\r\n\r\n");
    Ok(Request {
        method: method.into(),
        host,
        port,
        upstream_head: up.into_bytes(),
        auth,
        health: false,
    })
}

struct Shared {
    cfg: EgressConfig,
    budget: Mutex<HashMap<String, (Instant, u32, u32)>>,
}

impl Shared {
    /// Emit an event unless the instance is over its budget.
    fn emit(&self, reg: &Registration, result: &str, message: String) {
        let sink = EventSink::to_file(reg.events.clone());
        let mut b = self.budget.lock().expect("budget lock");
        let now = Instant::now();
        let e = b.entry(reg.clawid.clone()).or_insert((now, 0, 0));
        if now.duration_since(e.0) > EVENT_WINDOW {
            if e.2 > 0 {
                sink.emit(Event::new(
                    &reg.clawid,
                    "egress",
                    "suppressed",
                    format!(
                        "{} more egress events in {:?} were not logged",
                        e.2, EVENT_WINDOW
                    ),
                ));
            }
            *e = (now, 0, 0);
        }
        if e.1 >= EVENT_BUDGET {
            e.2 += 1;
            return;
        }
        e.1 += 1;
        drop(b);
        sink.emit(Event::new(&reg.clawid, "egress", result, message));
    }
}

async fn read_head(s: &mut TcpStream) -> Result<(Vec<u8>, Vec<u8>), String> {
    let mut buf = Vec::with_capacity(2048);
    let mut tmp = [0u8; 4096];
    loop {
        if let Some(i) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
            let rest = buf.split_off(i + 4);
            return Ok((buf, rest));
        }
        if buf.len() > MAX_HEAD {
            return Err("request head too large".into());
        }
        let n = s.read(&mut tmp).await.map_err(|e| e.to_string())?;
        if n == 0 {
            return Err("connection closed".into());
        }
        buf.extend_from_slice(&tmp[..n]);
    }
}

async fn reply(s: &mut TcpStream, status: &str, extra: &str, body: &str) {
    let msg = format!(
        "HTTP/1.1 {status}\r\n{extra}Content-Type: text/plain\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    );
    let _ = s.write_all(msg.as_bytes()).await;
    let _ = s.shutdown().await;
}

fn token_ok(reg: &Registration, token: &str) -> bool {
    let got = hex::encode(Sha256::digest(token.as_bytes()));
    // Compare without an early exit.
    got.len() == reg.token_sha256.len()
        && got
            .bytes()
            .zip(reg.token_sha256.bytes())
            .fold(0u8, |acc, (a, b)| acc | (a ^ b))
            == 0
}

/// A refusal: an event, and `403` to the guest.
async fn refuse(shared: &Shared, reg: &Registration, s: &mut TcpStream, dest: &str, why: &str) {
    shared.emit(reg, "refused", format!("{dest}: {why}"));
    reply(
        s,
        "403 Forbidden",
        "",
        &format!("clawfarm egress: {dest} refused: {why}\n"),
    )
    .await;
}

async fn handle(shared: Arc<Shared>, mut s: TcpStream) {
    let (head, early) = match tokio::time::timeout(HEAD_TIMEOUT, read_head(&mut s)).await {
        Ok(Ok(v)) => v,
        _ => return,
    };
    let req = match parse_head(&head) {
        Ok(r) => r,
        Err(e) => {
            reply(
                &mut s,
                "400 Bad Request",
                "",
                &format!("clawfarm egress: {e}\n"),
            )
            .await;
            return;
        }
    };
    if req.health {
        reply(&mut s, "200 OK", "", &format!("{HEALTH_BODY}\n")).await;
        return;
    }
    let reg = req
        .auth
        .as_ref()
        .and_then(|(u, p)| lookup(&shared.cfg, u).filter(|r| token_ok(r, p)));
    let Some(reg) = reg else {
        reply(
            &mut s,
            "407 Proxy Authentication Required",
            "Proxy-Authenticate: Basic realm=\"clawfarm\"\r\n",
            "clawfarm egress: unknown instance or token\n",
        )
        .await;
        return;
    };
    let dest = if req.host.contains(':') {
        format!("[{}]:{}", req.host, req.port)
    } else {
        format!("{}:{}", req.host, req.port)
    };
    let (addrs, log, why) = match decide(&reg.network, &req.host, req.port) {
        Step::Refuse(why) => {
            refuse(&shared, &reg, &mut s, &dest, &why).await;
            return;
        }
        Step::Direct(a, why) => (vec![a], true, why),
        Step::Resolve { log, why } => {
            let resolved = tokio::time::timeout(
                CONNECT_TIMEOUT,
                tokio::net::lookup_host((req.host.as_str(), req.port)),
            )
            .await;
            let resolved: Vec<SocketAddr> = match resolved {
                Ok(Ok(it)) => it.collect(),
                Ok(Err(e)) => {
                    shared.emit(&reg, "failed", format!("{dest}: cannot resolve: {e}"));
                    reply(
                        &mut s,
                        "502 Bad Gateway",
                        "",
                        &format!("clawfarm egress: cannot resolve {dest}\n"),
                    )
                    .await;
                    return;
                }
                Err(_) => {
                    shared.emit(&reg, "failed", format!("{dest}: name resolution timed out"));
                    reply(
                        &mut s,
                        "504 Gateway Timeout",
                        "",
                        "clawfarm egress: name resolution timed out\n",
                    )
                    .await;
                    return;
                }
            };
            match filter(&resolved, &host_networks()) {
                Ok(a) => (a, log, why),
                Err(why) => {
                    refuse(&shared, &reg, &mut s, &dest, &why).await;
                    return;
                }
            }
        }
    };
    let mut up = None;
    let mut last = String::new();
    for a in &addrs {
        match tokio::time::timeout(CONNECT_TIMEOUT, TcpStream::connect(a)).await {
            Ok(Ok(c)) => {
                up = Some((c, *a));
                break;
            }
            Ok(Err(e)) => last = format!("{a}: {e}"),
            Err(_) => last = format!("{a}: timed out"),
        }
    }
    let Some((mut up, addr)) = up else {
        shared.emit(&reg, "failed", format!("{dest}: cannot connect: {last}"));
        reply(
            &mut s,
            "502 Bad Gateway",
            "",
            &format!("clawfarm egress: cannot connect to {dest}\n"),
        )
        .await;
        return;
    };
    if log {
        shared.emit(&reg, "allowed", format!("{dest} ({addr}): {why}"));
    }
    if req.method == "CONNECT" {
        if s.write_all(b"HTTP/1.1 200 Connection established\r\n\r\n")
            .await
            .is_err()
        {
            return;
        }
    } else if up.write_all(&req.upstream_head).await.is_err() {
        return;
    }
    if !early.is_empty() && up.write_all(&early).await.is_err() {
        return;
    }
    let _ = tokio::io::copy_bidirectional(&mut s, &mut up).await;
}

/// Serve on `listener` until the process ends.
pub async fn serve(cfg: EgressConfig, listener: TcpListener) -> std::io::Result<()> {
    let shared = Arc::new(Shared {
        cfg,
        budget: Mutex::new(HashMap::new()),
    });
    loop {
        let (s, _) = listener.accept().await?;
        let _ = s.set_nodelay(true);
        tokio::spawn(handle(shared.clone(), s));
    }
}

/// `clawfarm egress-proxy`: bind 127.0.0.1:`cfg.port` and serve.
pub fn run(cfg: EgressConfig) -> anyhow::Result<()> {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()?;
    rt.block_on(async move {
        let listener = TcpListener::bind(("127.0.0.1", cfg.port))
            .await
            .map_err(|e| anyhow::anyhow!("cannot listen on 127.0.0.1:{}: {e}", cfg.port))?;
        eprintln!(
            "[{}] clawfarm egress proxy on 127.0.0.1:{} (registry {})",
            crate::util::text::now_rfc3339(),
            cfg.port,
            cfg.registry_dir().display()
        );
        serve(cfg, listener).await?;
        Ok(())
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn heads() {
        let r = parse_head(
            b"CONNECT pypi.org:443 HTTP/1.1\r\nHost: pypi.org:443\r\nProxy-Authorization: Basic YWJjLTE6c2VjcmV0\r\n\r\n",
        )
        .unwrap();
        assert_eq!(
            (r.method.as_str(), r.host.as_str(), r.port),
            ("CONNECT", "pypi.org", 443)
        );
        assert_eq!(r.auth, Some(("abc-1".into(), "secret".into())));
        let r = parse_head(
            b"GET http://Deb.Debian.org/debian/ HTTP/1.1\r\nHost: deb.debian.org\r\nProxy-Connection: keep-alive\r\nProxy-Authorization: Basic YWJjLTE6c2VjcmV0\r\nAccept: */*\r\n\r\n",
        )
        .unwrap();
        assert_eq!((r.host.as_str(), r.port), ("deb.debian.org", 80));
        let up = String::from_utf8(r.upstream_head).unwrap();
        assert_eq!(
            up,
            "GET /debian/ HTTP/1.1\r\nHost: deb.debian.org\r\nAccept: */*\r\nConnection: close\r\n\r\n"
        );
        let r = parse_head(b"CONNECT [2606:4700::1111]:443 HTTP/1.1\r\n\r\n").unwrap();
        assert_eq!((r.host.as_str(), r.port), ("2606:4700::1111", 443));
        assert!(
            parse_head(b"GET /.clawfarm-egress HTTP/1.0\r\n\r\n")
                .unwrap()
                .health
        );
        for bad in [
            &b"CONNECT pypi.org HTTP/1.1\r\n\r\n"[..],
            b"CONNECT pypi.org:0 HTTP/1.1\r\n\r\n",
            b"GET https://pypi.org/ HTTP/1.1\r\n\r\n",
            b"GET /x HTTP/1.1\r\n\r\n",
            b"CONNECT a b:1 HTTP/1.1\r\n\r\n",
            b"CONNECT ev$il:80 HTTP/1.1\r\n\r\n",
            b"garbage\r\n\r\n",
        ] {
            assert!(parse_head(bad).is_err(), "{}", String::from_utf8_lossy(bad));
        }
    }

    #[test]
    fn base64() {
        assert_eq!(b64_decode("YWJjLTE6c2VjcmV0").unwrap(), b"abc-1:secret");
        assert_eq!(b64_decode("YQ==").unwrap(), b"a");
        assert!(b64_decode("a$b").is_none());
    }
}
