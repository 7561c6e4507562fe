//! A small async client of the QEMU Machine Protocol (QMP) over a unix socket.
//!
//! QMP is line-delimited JSON. On connect QEMU sends a greeting (`{"QMP": {...}}`); the
//! client must send `qmp_capabilities` before any other command. Every command carries an
//! `id` that the reply echoes; asynchronous events (`{"event": ...}`) may arrive between a
//! command and its reply, and are queued for [`Qmp::wait_event`] / [`Qmp::take_events`].
//!
//! QEMU serves one QMP client per socket at a time; clawfarm connects only for the
//! duration of one operation (start check, stop, status) and every wait has a timeout, so
//! a stuck peer never blocks a command forever.

use std::collections::VecDeque;
use std::io;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde_json::{Value, json};
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
use tokio::net::UnixStream;
use tokio::net::unix::{OwnedReadHalf, OwnedWriteHalf};
use tokio::time::{Instant, timeout_at};

/// Default time allowed for one command round trip.
pub const DEFAULT_COMMAND_TIMEOUT: Duration = Duration::from_secs(10);

/// Errors of the QMP client. Each names the socket it concerns.
#[derive(Debug, thiserror::Error)]
pub enum QmpError {
    /// The socket could not be connected.
    #[error("cannot connect to QMP socket {path}")]
    Connect {
        /// The socket.
        path: PathBuf,
        /// Cause.
        #[source]
        source: io::Error,
    },
    /// Reading or writing failed.
    #[error("I/O error on QMP socket {path}")]
    Io {
        /// The socket.
        path: PathBuf,
        /// Cause.
        #[source]
        source: io::Error,
    },
    /// QEMU closed the connection (it is exiting, or another client took over).
    #[error("QMP socket {path} was closed by QEMU")]
    Closed {
        /// The socket.
        path: PathBuf,
    },
    /// A wait ran out.
    #[error("no answer to {what} on QMP socket {path} within {after:?}")]
    Timeout {
        /// The socket.
        path: PathBuf,
        /// What was waited for (`greeting`, `command system_powerdown`, …).
        what: String,
        /// How long.
        after: Duration,
    },
    /// The peer sent something that is not QMP.
    #[error("unexpected message on QMP socket {path}: {detail}")]
    Protocol {
        /// The socket.
        path: PathBuf,
        /// What was wrong.
        detail: String,
    },
    /// QEMU answered the command with an error.
    #[error("QMP command {command} failed: {class}: {desc}")]
    Command {
        /// The command.
        command: String,
        /// QMP error class (`GenericError`, `CommandNotFound`, …).
        class: String,
        /// QEMU's description.
        desc: String,
    },
}

/// An asynchronous QMP event.
#[derive(Debug, Clone, PartialEq)]
pub struct QmpEvent {
    /// Event name, e.g. `SHUTDOWN`, `POWERDOWN`, `STOP`.
    pub event: String,
    /// Its `data` (null when absent).
    pub data: Value,
}

/// A connected QMP session (capabilities negotiated).
#[derive(Debug)]
pub struct Qmp {
    path: PathBuf,
    rd: BufReader<OwnedReadHalf>,
    wr: OwnedWriteHalf,
    next_id: u64,
    events: VecDeque<QmpEvent>,
    version: Option<String>,
    command_timeout: Duration,
}

impl Qmp {
    /// Connect to `path`, read the greeting and negotiate capabilities, all within
    /// `within`.
    pub async fn connect(path: &Path, within: Duration) -> Result<Qmp, QmpError> {
        let deadline = Instant::now() + within;
        let stream = match timeout_at(deadline, UnixStream::connect(path)).await {
            Ok(Ok(s)) => s,
            Ok(Err(source)) => {
                return Err(QmpError::Connect {
                    path: path.to_owned(),
                    source,
                });
            }
            Err(_) => {
                return Err(QmpError::Timeout {
                    path: path.to_owned(),
                    what: "connect".into(),
                    after: within,
                });
            }
        };
        let (rd, wr) = stream.into_split();
        let mut q = Qmp {
            path: path.to_owned(),
            rd: BufReader::new(rd),
            wr,
            next_id: 1,
            events: VecDeque::new(),
            version: None,
            command_timeout: DEFAULT_COMMAND_TIMEOUT,
        };
        let greeting = q.read_message(deadline, "greeting", within).await?;
        let Some(g) = greeting.get("QMP") else {
            return Err(q.protocol(format!("expected a greeting, got {greeting}")));
        };
        q.version = g
            .pointer("/version/qemu")
            .and_then(|v| {
                Some(format!(
                    "{}.{}.{}",
                    v.get("major")?,
                    v.get("minor")?,
                    v.get("micro")?
                ))
            })
            .or_else(|| Some("unknown".into()));
        q.command_timeout = deadline
            .saturating_duration_since(Instant::now())
            .max(Duration::from_millis(100));
        q.execute("qmp_capabilities", None).await?;
        q.command_timeout = DEFAULT_COMMAND_TIMEOUT;
        Ok(q)
    }

    /// QEMU's version from the greeting (`7.2.22`).
    pub fn version(&self) -> Option<&str> {
        self.version.as_deref()
    }

    /// The socket path.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Set the time allowed for each later command round trip (snapshot jobs answer late
    /// while the guest's state is written).
    pub fn set_command_timeout(&mut self, t: Duration) {
        self.command_timeout = t;
    }

    fn protocol(&self, detail: String) -> QmpError {
        QmpError::Protocol {
            path: self.path.clone(),
            detail,
        }
    }

    /// Read one JSON message (a line) before `deadline`.
    async fn read_message(
        &mut self,
        deadline: Instant,
        what: &str,
        after: Duration,
    ) -> Result<Value, QmpError> {
        let mut line = String::new();
        loop {
            line.clear();
            let n = match timeout_at(deadline, self.rd.read_line(&mut line)).await {
                Ok(Ok(n)) => n,
                Ok(Err(source)) => {
                    return Err(QmpError::Io {
                        path: self.path.clone(),
                        source,
                    });
                }
                Err(_) => {
                    return Err(QmpError::Timeout {
                        path: self.path.clone(),
                        what: what.to_string(),
                        after,
                    });
                }
            };
            if n == 0 {
                return Err(QmpError::Closed {
                    path: self.path.clone(),
                });
            }
            if line.trim().is_empty() {
                continue;
            }
            return serde_json::from_str(line.trim())
                .map_err(|e| self.protocol(format!("{e} in {:?}", line.trim())));
        }
    }

    /// Queue an event message; returns false when `v` is not an event.
    fn stash_event(&mut self, v: &Value) -> bool {
        let Some(name) = v.get("event").and_then(Value::as_str) else {
            return false;
        };
        self.events.push_back(QmpEvent {
            event: name.to_string(),
            data: v.get("data").cloned().unwrap_or(Value::Null),
        });
        true
    }

    /// Run `command` with optional `arguments`; returns the `return` value. Events that
    /// arrive meanwhile are queued.
    pub async fn execute(
        &mut self,
        command: &str,
        arguments: Option<Value>,
    ) -> Result<Value, QmpError> {
        let id = self.next_id;
        self.next_id += 1;
        let mut msg = json!({ "execute": command, "id": id });
        if let Some(a) = arguments {
            msg["arguments"] = a;
        }
        let mut bytes = msg.to_string().into_bytes();
        bytes.push(b'\n');
        let deadline = Instant::now() + self.command_timeout;
        match timeout_at(deadline, self.wr.write_all(&bytes)).await {
            Ok(Ok(())) => {}
            Ok(Err(e)) if e.kind() == io::ErrorKind::BrokenPipe => {
                return Err(QmpError::Closed {
                    path: self.path.clone(),
                });
            }
            Ok(Err(source)) => {
                return Err(QmpError::Io {
                    path: self.path.clone(),
                    source,
                });
            }
            Err(_) => {
                return Err(QmpError::Timeout {
                    path: self.path.clone(),
                    what: format!("command {command}"),
                    after: self.command_timeout,
                });
            }
        }
        loop {
            let v = self
                .read_message(
                    deadline,
                    &format!("command {command}"),
                    self.command_timeout,
                )
                .await?;
            if self.stash_event(&v) {
                continue;
            }
            if v.get("id").and_then(Value::as_u64) != Some(id) {
                // A reply to something else (cannot happen with one client) - skip it.
                continue;
            }
            if let Some(r) = v.get("return") {
                return Ok(r.clone());
            }
            if let Some(e) = v.get("error") {
                return Err(QmpError::Command {
                    command: command.to_string(),
                    class: e
                        .get("class")
                        .and_then(Value::as_str)
                        .unwrap_or("unknown")
                        .to_string(),
                    desc: e
                        .get("desc")
                        .and_then(Value::as_str)
                        .unwrap_or("")
                        .to_string(),
                });
            }
            return Err(self.protocol(format!("reply without return or error: {v}")));
        }
    }

    /// Wait up to `within` for event `name` (queued events count first). `Ok(None)` when
    /// it did not come in time; [`QmpError::Closed`] when QEMU closed the socket first.
    pub async fn wait_event(
        &mut self,
        name: &str,
        within: Duration,
    ) -> Result<Option<QmpEvent>, QmpError> {
        if let Some(i) = self.events.iter().position(|e| e.event == name) {
            return Ok(self.events.remove(i));
        }
        let deadline = Instant::now() + within;
        loop {
            let v = match self
                .read_message(deadline, &format!("event {name}"), within)
                .await
            {
                Ok(v) => v,
                Err(QmpError::Timeout { .. }) => return Ok(None),
                Err(e) => return Err(e),
            };
            if self.stash_event(&v) && self.events.back().is_some_and(|e| e.event == name) {
                return Ok(self.events.pop_back());
            }
        }
    }

    /// Every event received so far (oldest first), emptying the queue.
    pub fn take_events(&mut self) -> Vec<QmpEvent> {
        self.events.drain(..).collect()
    }

    /// `query-status`: the run state (`running`, `paused`, `shutdown`, `internal-error`,
    /// `guest-panicked`, …).
    pub async fn query_status(&mut self) -> Result<String, QmpError> {
        let r = self.execute("query-status", None).await?;
        r.get("status")
            .and_then(Value::as_str)
            .map(str::to_string)
            .ok_or_else(|| self.protocol(format!("query-status returned {r}")))
    }

    /// `quit`: QEMU exits at once. A connection closed before the reply counts as done.
    pub async fn quit(&mut self) -> Result<(), QmpError> {
        match self.execute("quit", None).await {
            Ok(_) | Err(QmpError::Closed { .. }) => Ok(()),
            Err(QmpError::Io { source, .. }) if source.kind() == io::ErrorKind::ConnectionReset => {
                Ok(())
            }
            Err(e) => Err(e),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
    use tokio::net::UnixListener;

    /// A fake QMP server: greets, then answers each command from `script`
    /// (command name → lines to send back, `{id}` replaced by the request id).
    async fn fake_server(listener: UnixListener, script: Vec<(&'static str, Vec<String>)>) {
        let (s, _) = listener.accept().await.unwrap();
        let (rd, mut wr) = s.into_split();
        let mut rd = BufReader::new(rd);
        wr.write_all(
            b"{\"QMP\": {\"version\": {\"qemu\": {\"micro\": 22, \"minor\": 2, \"major\": 7}, \
              \"package\": \"\"}, \"capabilities\": [\"oob\"]}}\r\n",
        )
        .await
        .unwrap();
        let mut line = String::new();
        for (want, replies) in script {
            line.clear();
            if rd.read_line(&mut line).await.unwrap() == 0 {
                return;
            }
            let v: Value = serde_json::from_str(&line).unwrap();
            assert_eq!(v["execute"], want, "client sent {line}");
            let id = v["id"].to_string();
            for r in replies {
                wr.write_all(r.replace("{id}", &id).as_bytes())
                    .await
                    .unwrap();
                wr.write_all(b"\r\n").await.unwrap();
            }
        }
        // Keep the connection open until the client hangs up.
        let _ = rd.read_line(&mut line).await;
    }

    fn ok(id_json: &str) -> String {
        format!("{{\"return\": {{}}, \"id\": {id_json}}}")
    }

    #[tokio::test]
    async fn greeting_capabilities_powerdown_and_events() {
        let d = tempfile::tempdir().unwrap();
        let sock = d.path().join("qmp.sock");
        let l = UnixListener::bind(&sock).unwrap();
        let server = tokio::spawn(fake_server(
            l,
            vec![
                ("qmp_capabilities", vec![ok("{id}")]),
                (
                    "system_powerdown",
                    vec![
                        // An event before the reply must be queued, not taken as the reply.
                        r#"{"timestamp": {"seconds": 1, "microseconds": 2}, "event": "POWERDOWN"}"#
                            .to_string(),
                        ok("{id}"),
                        r#"{"timestamp": {"seconds": 3, "microseconds": 0}, "event": "SHUTDOWN", "data": {"guest": true, "reason": "guest-shutdown"}}"#
                            .to_string(),
                    ],
                ),
                (
                    "query-status",
                    vec![r#"{"return": {"status": "running", "running": true}, "id": {id}}"#.into()],
                ),
            ],
        ));
        let mut q = Qmp::connect(&sock, Duration::from_secs(5)).await.unwrap();
        assert_eq!(q.version(), Some("7.2.22"));
        assert_eq!(
            q.execute("system_powerdown", None).await.unwrap(),
            json!({})
        );
        let ev = q
            .wait_event("SHUTDOWN", Duration::from_secs(5))
            .await
            .unwrap()
            .expect("shutdown event");
        assert_eq!(ev.data["reason"], "guest-shutdown");
        assert_eq!(q.query_status().await.unwrap(), "running");
        let rest = q.take_events();
        assert_eq!(
            rest.iter().map(|e| e.event.as_str()).collect::<Vec<_>>(),
            ["POWERDOWN"]
        );
        drop(q);
        server.await.unwrap();
    }

    #[tokio::test]
    async fn error_reply_is_a_command_error() {
        let d = tempfile::tempdir().unwrap();
        let sock = d.path().join("qmp.sock");
        let l = UnixListener::bind(&sock).unwrap();
        let server = tokio::spawn(fake_server(
            l,
            vec![
                ("qmp_capabilities", vec![ok("{id}")]),
                (
                    "cont",
                    vec![
                        r#"{"error": {"class": "GenericError", "desc": "guest is shut down"}, "id": {id}}"#
                            .into(),
                    ],
                ),
            ],
        ));
        let mut q = Qmp::connect(&sock, Duration::from_secs(5)).await.unwrap();
        let e = q.execute("cont", None).await.unwrap_err();
        assert_eq!(
            e.to_string(),
            "QMP command cont failed: GenericError: guest is shut down"
        );
        drop(q);
        server.await.unwrap();
    }

    #[tokio::test]
    async fn silent_peer_times_out_and_missing_socket_is_named() {
        let d = tempfile::tempdir().unwrap();
        let sock = d.path().join("qmp.sock");
        let l = UnixListener::bind(&sock).unwrap();
        // Accepts, never greets.
        let _server = tokio::spawn(async move {
            let (_s, _) = l.accept().await.unwrap();
            tokio::time::sleep(Duration::from_secs(30)).await;
        });
        let e = Qmp::connect(&sock, Duration::from_millis(200))
            .await
            .unwrap_err();
        assert!(matches!(e, QmpError::Timeout { .. }), "{e}");
        assert!(e.to_string().contains("greeting"), "{e}");

        let gone = d.path().join("nope.sock");
        let e = Qmp::connect(&gone, Duration::from_secs(1))
            .await
            .unwrap_err();
        assert!(e.to_string().contains(&*gone.to_string_lossy()), "{e}");
    }

    #[tokio::test]
    async fn quit_tolerates_a_closed_connection() {
        let d = tempfile::tempdir().unwrap();
        let sock = d.path().join("qmp.sock");
        let l = UnixListener::bind(&sock).unwrap();
        let server = tokio::spawn(async move {
            let (s, _) = l.accept().await.unwrap();
            let (rd, mut wr) = s.into_split();
            let mut rd = BufReader::new(rd);
            wr.write_all(b"{\"QMP\": {\"version\": {}, \"capabilities\": []}}\n")
                .await
                .unwrap();
            let mut line = String::new();
            rd.read_line(&mut line).await.unwrap();
            wr.write_all(b"{\"return\": {}, \"id\": 1}\n")
                .await
                .unwrap();
            line.clear();
            rd.read_line(&mut line).await.unwrap();
            assert!(line.contains("quit"));
            // QEMU exits without answering.
        });
        let mut q = Qmp::connect(&sock, Duration::from_secs(5)).await.unwrap();
        q.quit().await.unwrap();
        server.await.unwrap();
    }
}
