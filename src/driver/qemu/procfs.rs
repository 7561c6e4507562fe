//! Process identity from `/proc`: a pid alone is never trusted.
//!
//! A QEMU process is "this instance's VM" when all of these hold:
//!
//! * `/proc/<pid>/stat` exists and the process is not a zombie;
//! * its start time (field 22, clock ticks since boot) equals the recorded one, so a pid
//!   reused by a later process never matches;
//! * its `/proc/<pid>/cmdline` has an argument containing the instance's marker (the path
//!   of its QMP socket, which is inside the instance folder).

use std::io;

use crate::state::record::ProcessId;

/// What `/proc/<pid>/stat` says about a process.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Stat {
    /// State letter (`R`, `S`, `D`, `Z`, …).
    pub state: char,
    /// Start time in clock ticks since boot.
    pub start_time: u64,
}

/// Parse the content of `/proc/<pid>/stat`. The command name (field 2) is in parentheses
/// and may itself contain spaces and parentheses, so fields are counted after the last `)`.
pub fn parse_stat(s: &str) -> Option<Stat> {
    let rest = &s[s.rfind(')')? + 1..];
    let mut f = rest.split_ascii_whitespace();
    let state = f.next()?.chars().next()?;
    // After the state (field 3) come fields 4..; start time is field 22.
    let start_time = f.nth(22 - 4)?.parse().ok()?;
    Some(Stat { state, start_time })
}

/// Read `/proc/<pid>/stat`.
pub fn stat(pid: u32) -> io::Result<Stat> {
    let s = std::fs::read_to_string(format!("/proc/{pid}/stat"))?;
    parse_stat(&s).ok_or_else(|| {
        io::Error::new(
            io::ErrorKind::InvalidData,
            format!("cannot parse /proc/{pid}/stat"),
        )
    })
}

/// The arguments of a process (empty for zombies and kernel threads).
pub fn cmdline(pid: u32) -> io::Result<Vec<String>> {
    let b = std::fs::read(format!("/proc/{pid}/cmdline"))?;
    Ok(b.split(|&c| c == 0)
        .filter(|a| !a.is_empty())
        .map(|a| String::from_utf8_lossy(a).into_owned())
        .collect())
}

/// True when one argument of `pid` contains `marker`.
pub fn cmdline_names(pid: u32, marker: &str) -> bool {
    cmdline(pid).is_ok_and(|args| args.iter().any(|a| a.contains(marker)))
}

/// Identify a live process by pid alone (from a pidfile): alive, not a zombie, its command
/// line names `marker`. Returns its full identity.
pub fn identify(pid: u32, marker: &str) -> Option<ProcessId> {
    if pid == 0 {
        return None;
    }
    let st = stat(pid).ok()?;
    if st.state == 'Z' || st.state == 'X' || !cmdline_names(pid, marker) {
        return None;
    }
    Some(ProcessId {
        pid,
        start_time: st.start_time,
    })
}

/// True when `p` is alive (not a zombie), started at the recorded time and still names
/// `marker` in its command line.
pub fn is_alive(p: &ProcessId, marker: &str) -> bool {
    identify(p.pid, marker).is_some_and(|q| q.start_time == p.start_time)
}

/// The value following `flag` in a command line (`-pidfile X` → `X`).
pub fn arg_after<'a>(args: &'a [String], flag: &str) -> impl Iterator<Item = &'a str> {
    args.windows(2)
        .filter(move |w| w[0] == flag)
        .map(|w| w[1].as_str())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::process::{Command, Stdio};

    #[test]
    fn parses_stat_with_awkward_command_names() {
        let line = "4242 (qemu) sys (x)) S 1 4242 4242 0 -1 4194560 100 0 0 0 5 6 0 0 20 0 3 0 987654 1000 200 18446744073709551615";
        assert_eq!(
            parse_stat(line),
            Some(Stat {
                state: 'S',
                start_time: 987654
            })
        );
        assert_eq!(parse_stat("garbage"), None);
        let me = stat(std::process::id()).unwrap();
        assert!(me.start_time > 0);
    }

    #[test]
    fn identity_needs_start_time_and_marker() {
        let marker = "/tmp/clawfarm-test-home/claws/x-123456/qmp.sock";
        // `sh -c CMD NAME`: NAME becomes $0 and shows in the command line (two commands, so
        // the shell does not exec `sleep` in its place).
        let mut child = Command::new("sh")
            .args(["-c", "sleep 30; exit 0", marker])
            .stdin(Stdio::null())
            .spawn()
            .unwrap();
        let pid = child.id();
        // Between fork and exec the child's command line is still ours: wait for the exec.
        let t = std::time::Instant::now();
        let id = loop {
            if let Some(id) = identify(pid, marker) {
                break id;
            }
            assert!(
                t.elapsed() < std::time::Duration::from_secs(5),
                "the child is identified"
            );
            std::thread::sleep(std::time::Duration::from_millis(10));
        };
        assert!(is_alive(&id, marker));
        // The same pid with another start time: the pid was reused by another process.
        let reused = ProcessId {
            pid,
            start_time: id.start_time + 1,
        };
        assert!(!is_alive(&reused, marker));
        // The same pid and start time, but its command line names another instance.
        assert!(!is_alive(
            &id,
            "/tmp/clawfarm-test-home/claws/other/qmp.sock"
        ));
        // A live process that is not ours at all (this test) is never identified.
        let me = identify(std::process::id(), marker);
        assert_eq!(me, None);

        child.kill().unwrap();
        // Not yet reaped: a zombie is not alive.
        std::thread::sleep(std::time::Duration::from_millis(100));
        assert_eq!(stat(pid).map(|s| s.state).ok(), Some('Z'));
        assert!(!is_alive(&id, marker));
        child.wait().unwrap();
        assert!(!is_alive(&id, marker));
    }

    #[test]
    fn arg_after_finds_values() {
        let args: Vec<String> = ["qemu", "-pidfile", "/a/qemu.pid", "-m", "1024"]
            .iter()
            .map(|s| s.to_string())
            .collect();
        assert_eq!(
            arg_after(&args, "-pidfile").collect::<Vec<_>>(),
            ["/a/qemu.pid"]
        );
        assert_eq!(arg_after(&args, "-nope").count(), 0);
    }
}
