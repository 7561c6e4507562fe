//! A tiny HTTP/1.1 file server on 127.0.0.1 for download tests: `GET` only, one request
//! per connection (`Connection: close`), `Range: bytes=N-` support, and switches for the
//! failure modes the blob store must survive (dropped connections, ignored ranges, wrong
//! bytes, slow bodies, error statuses). It records every request.

#![allow(dead_code)]

use std::collections::HashMap;
use std::io::{BufRead, BufReader, Write};
use std::net::{Shutdown, TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::thread;
use std::time::Duration;

/// How the server misbehaves.
#[derive(Debug, Clone)]
pub struct Behavior {
    /// Honour `Range: bytes=N-` with 206 (else always 200 with the whole file).
    pub honor_range: bool,
    /// On the first request for a path, send the full `Content-Length` but only this many
    /// body bytes, then close the connection.
    pub drop_first_after: Option<usize>,
    /// Serve different bytes (same length) than the registered file.
    pub corrupt: bool,
    /// Send the body in chunks of this size with this pause between them.
    pub throttle: Option<(usize, Duration)>,
    /// Answer every request with this status and an empty body.
    pub status: Option<u16>,
}

impl Default for Behavior {
    fn default() -> Self {
        Behavior {
            honor_range: true,
            drop_first_after: None,
            corrupt: false,
            throttle: None,
            status: None,
        }
    }
}

/// One request as received.
#[derive(Debug, Clone)]
pub struct Request {
    /// Request target, e.g. `/img.qcow2`.
    pub path: String,
    /// Header (lowercase name, value) pairs.
    pub headers: Vec<(String, String)>,
}

impl Request {
    /// First header value with this (lowercase) name.
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.as_str())
    }
}

struct Shared {
    files: Mutex<HashMap<String, Vec<u8>>>,
    behavior: Mutex<Behavior>,
    requests: Mutex<Vec<Request>>,
    stop: AtomicBool,
}

/// A running server; stops when dropped.
pub struct Server {
    addr: std::net::SocketAddr,
    shared: Arc<Shared>,
}

impl Server {
    /// Start on an ephemeral port of 127.0.0.1.
    pub fn start(behavior: Behavior) -> Server {
        let listener = TcpListener::bind("127.0.0.1:0").expect("bind 127.0.0.1");
        let addr = listener.local_addr().unwrap();
        let shared = Arc::new(Shared {
            files: Mutex::new(HashMap::new()),
            behavior: Mutex::new(behavior),
            requests: Mutex::new(Vec::new()),
            stop: AtomicBool::new(false),
        });
        let s2 = shared.clone();
        thread::spawn(move || {
            for conn in listener.incoming() {
                if s2.stop.load(Ordering::SeqCst) {
                    break;
                }
                let Ok(conn) = conn else { continue };
                let s3 = s2.clone();
                thread::spawn(move || handle(conn, &s3));
            }
        });
        Server { addr, shared }
    }

    /// Serve `bytes` at `path` (e.g. `/a.img`).
    pub fn add(&self, path: &str, bytes: Vec<u8>) {
        self.shared
            .files
            .lock()
            .unwrap()
            .insert(path.to_string(), bytes);
    }

    /// Full URL of `path`.
    pub fn url(&self, path: &str) -> String {
        format!("http://{}{}", self.addr, path)
    }

    /// Every request so far.
    pub fn requests(&self) -> Vec<Request> {
        self.shared.requests.lock().unwrap().clone()
    }

    /// Change the behaviour for later requests.
    pub fn set_behavior(&self, b: Behavior) {
        *self.shared.behavior.lock().unwrap() = b;
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        self.shared.stop.store(true, Ordering::SeqCst);
        let _ = TcpStream::connect(self.addr);
    }
}

fn handle(conn: TcpStream, shared: &Shared) {
    let _ = conn.set_read_timeout(Some(Duration::from_secs(10)));
    let mut reader = BufReader::new(conn.try_clone().expect("clone stream"));
    let mut line = String::new();
    if reader.read_line(&mut line).unwrap_or(0) == 0 {
        return;
    }
    let path = line.split_whitespace().nth(1).unwrap_or("/").to_string();
    let mut headers = Vec::new();
    loop {
        let mut h = String::new();
        if reader.read_line(&mut h).unwrap_or(0) == 0 {
            return;
        }
        let h = h.trim_end();
        if h.is_empty() {
            break;
        }
        if let Some((k, v)) = h.split_once(':') {
            headers.push((k.trim().to_ascii_lowercase(), v.trim().to_string()));
        }
    }
    let req = Request { path, headers };
    let nth = {
        let mut reqs = shared.requests.lock().unwrap();
        let nth = reqs.iter().filter(|r| r.path == req.path).count();
        reqs.push(req.clone());
        nth
    };
    if shared.stop.load(Ordering::SeqCst) {
        return;
    }
    let b = shared.behavior.lock().unwrap().clone();
    let mut out = conn;
    if let Some(status) = b.status {
        let _ = write!(
            out,
            "HTTP/1.1 {status} Nope\r\nContent-Length: 0\r\nConnection: close\r\n\r\n"
        );
        return;
    }
    let Some(mut body) = shared.files.lock().unwrap().get(&req.path).cloned() else {
        let _ = write!(
            out,
            "HTTP/1.1 404 Not Found\r\nContent-Length: 0\r\nConnection: close\r\n\r\n"
        );
        return;
    };
    if b.corrupt {
        for x in body.iter_mut() {
            *x ^= 0x5a;
        }
    }
    let len = body.len();
    let range_start = req
        .header("range")
        .and_then(|r| r.strip_prefix("bytes="))
        .and_then(|r| r.strip_suffix('-'))
        .and_then(|n| n.parse::<usize>().ok());
    let (head, slice) = match range_start {
        Some(start) if b.honor_range && start >= len => {
            let _ = write!(
                out,
                "HTTP/1.1 416 Range Not Satisfiable\r\nContent-Range: bytes */{len}\r\nContent-Length: 0\r\nConnection: close\r\n\r\n"
            );
            return;
        }
        Some(start) if b.honor_range => (
            format!(
                "HTTP/1.1 206 Partial Content\r\nContent-Range: bytes {start}-{}/{len}\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
                len - 1,
                len - start
            ),
            &body[start..],
        ),
        _ => (
            format!(
                "HTTP/1.1 200 OK\r\nContent-Length: {len}\r\nAccept-Ranges: bytes\r\nConnection: close\r\n\r\n"
            ),
            &body[..],
        ),
    };
    if out.write_all(head.as_bytes()).is_err() {
        return;
    }
    let (send, drop_after) = match b.drop_first_after {
        Some(k) if nth == 0 => (&slice[..k.min(slice.len())], true),
        _ => (slice, false),
    };
    match b.throttle {
        Some((chunk, pause)) => {
            for c in send.chunks(chunk.max(1)) {
                if out.write_all(c).is_err() {
                    return;
                }
                let _ = out.flush();
                thread::sleep(pause);
            }
        }
        None => {
            let _ = out.write_all(send);
        }
    }
    let _ = out.flush();
    if drop_after {
        let _ = out.shutdown(Shutdown::Both);
    }
}
