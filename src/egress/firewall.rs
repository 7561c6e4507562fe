//! The host firewall for QEMU's own sockets (nftables table `inet clawfarm`): packets of
//! processes running as the QEMU user may answer connections (port forwards into the
//! guest), and may open new connections only to the egress proxy on `127.0.0.1:PORT`;
//! everything else they send is rejected. It matters in `allow`/`open` mode, where QEMU's
//! user network is not restricted and would otherwise reach the host's loopback through
//! the guest's gateway address.

use std::io::Write;
use std::process::{Command, Stdio};

use anyhow::{Context, bail};

/// The nftables table name (family `inet`).
pub const TABLE: &str = "clawfarm";

/// The ruleset, replaced atomically as a whole (`nft -f -`).
pub fn ruleset(uid: u32, port: u16) -> String {
    format!(
        "table inet {TABLE}\n\
         delete table inet {TABLE}\n\
         table inet {TABLE} {{\n\
         \tchain output {{\n\
         \t\ttype filter hook output priority filter; policy accept;\n\
         \t\tmeta skuid {uid} jump qemu\n\
         \t}}\n\
         \tchain qemu {{\n\
         \t\tct state established,related accept\n\
         \t\tip daddr 127.0.0.1 tcp dport {port} accept\n\
         \t\tcounter reject\n\
         \t}}\n\
         }}\n"
    )
}

/// Install (or replace) the ruleset for QEMU uid `uid` and proxy port `port`.
pub fn ensure(uid: u32, port: u16) -> anyhow::Result<()> {
    let mut child = Command::new("nft")
        .args(["-f", "-"])
        .stdin(Stdio::piped())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .context(
            "network policies allow and open need nftables (the `nft` command) to confine \
             QEMU; run scripts/setup-host.sh or install the nftables package",
        )?;
    child
        .stdin
        .take()
        .expect("piped stdin")
        .write_all(ruleset(uid, port).as_bytes())
        .context("cannot write to nft")?;
    let out = child.wait_with_output().context("nft did not finish")?;
    if !out.status.success() {
        bail!(
            "nft could not install the QEMU firewall: {}",
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rules_name_the_uid_and_port() {
        let r = ruleset(995, 18780);
        assert!(r.contains("meta skuid 995 jump qemu"));
        assert!(r.contains("ip daddr 127.0.0.1 tcp dport 18780 accept"));
        assert!(r.contains("ct state established,related accept"));
        // Replaced as a whole: created, deleted and defined in one transaction.
        assert!(r.starts_with("table inet clawfarm\ndelete table inet clawfarm\n"));
    }
}
