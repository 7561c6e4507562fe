//! The QEMU command line of an instance, built from data (no effects), so that it can be
//! tested as a table and documented in one place (`rfc/005-qemu-driver.md`).

use std::path::PathBuf;

use super::accel::Accel;
use super::layout::{InstanceFiles, opt_path};
use crate::input::manifest::Port;

/// 9p mount tag of the bundle payload (mounted read-only at `/opt/claw` in the guest).
pub const PAYLOAD_TAG: &str = "claw";

/// 9p mount tag of the `i`-th volume (`vol0`, `vol1`, …; tags are at most 31 characters,
/// volume names may be longer).
pub fn volume_tag(i: usize) -> String {
    format!("vol{i}")
}

/// Everything that varies between QEMU command lines.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct QemuSpec {
    /// CLAWID (the VM name).
    pub clawid: String,
    /// The instance folder.
    pub files: InstanceFiles,
    /// Accelerator.
    pub accel: Accel,
    /// vCPUs.
    pub cpus: u32,
    /// Memory in MiB.
    pub memory_mib: u64,
    /// Host port on 127.0.0.1 forwarded to the guest's port 22.
    pub ssh_port: u16,
    /// Other forwards (host ports on 127.0.0.1).
    pub ports: Vec<Port>,
    /// Per-start nonce (fw_cfg), `[A-Za-z0-9]`.
    pub nonce: String,
    /// Host folder of the bundle payload, shared read-only as [`PAYLOAD_TAG`].
    pub payload: Option<PathBuf>,
    /// `(tag, host folder)` of each volume, shared read-write.
    pub volumes: Vec<(String, PathBuf)>,
}

impl QemuSpec {
    /// The arguments (without the program name).
    pub fn args(&self) -> Vec<String> {
        fn kv(a: &mut Vec<String>, k: &str, v: String) {
            a.push(k.to_string());
            a.push(v);
        }
        let f = &self.files;
        let mut a: Vec<String> = Vec::new();
        kv(
            &mut a,
            "-name",
            format!("guest={},debug-threads=on", self.clawid),
        );
        kv(&mut a, "-machine", "pc".into());
        match self.accel {
            Accel::Kvm => {
                kv(&mut a, "-accel", "kvm".into());
                kv(&mut a, "-cpu", "host".into());
            }
            Accel::Tcg => kv(&mut a, "-accel", "tcg".into()),
        }
        kv(&mut a, "-smp", self.cpus.max(1).to_string());
        kv(&mut a, "-m", format!("{}M", self.memory_mib.max(128)));
        a.extend(["-nodefaults", "-no-user-config"].map(String::from));
        kv(&mut a, "-display", "none".into());
        kv(
            &mut a,
            "-serial",
            format!("file:{}", opt_path(&f.serial_log())),
        );
        kv(
            &mut a,
            "-drive",
            format!(
                "if=virtio,format=qcow2,file={},discard=unmap",
                opt_path(&f.disk())
            ),
        );
        kv(
            &mut a,
            "-drive",
            format!(
                "if=virtio,format=raw,file={},readonly=on",
                opt_path(&f.seed())
            ),
        );
        let mut net = format!("user,id=net0,hostfwd=tcp:127.0.0.1:{}-:22", self.ssh_port);
        for p in &self.ports {
            net.push_str(&format!(",hostfwd=tcp:127.0.0.1:{}-:{}", p.host, p.guest));
        }
        kv(&mut a, "-netdev", net);
        // `romfile=`: no iPXE option ROM (never network-booted; saves firmware time).
        kv(
            &mut a,
            "-device",
            "virtio-net-pci,netdev=net0,romfile=".into(),
        );
        kv(&mut a, "-device", "virtio-rng-pci".into());
        // The guest status channel and boot nonce (the guest side's contract).
        a.extend(crate::driver::qemu::guest::qemu_status_args(
            &f.status_log(),
            &self.nonce,
        ));
        if let Some(p) = &self.payload {
            kv(
                &mut a,
                "-virtfs",
                format!(
                    "local,path={},mount_tag={PAYLOAD_TAG},security_model=none,readonly=on",
                    opt_path(p)
                ),
            );
        }
        for (tag, p) in &self.volumes {
            kv(
                &mut a,
                "-virtfs",
                format!(
                    "local,path={},mount_tag={tag},security_model=none",
                    opt_path(p)
                ),
            );
        }
        kv(
            &mut a,
            "-qmp",
            format!("unix:{},server=on,wait=off", opt_path(&f.qmp_sock())),
        );
        kv(
            &mut a,
            "-pidfile",
            f.pidfile().to_string_lossy().into_owned(),
        );
        a
    }
}

/// What a running QEMU's command line says about its start: nonce, SSH port, accelerator.
/// Used to adopt a VM whose `runtime.json` was lost (crash right after the spawn).
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Parsed {
    /// The fw_cfg boot nonce.
    pub nonce: Option<String>,
    /// The host port forwarded to guest port 22.
    pub ssh_port: Option<u16>,
    /// `kvm` or `tcg`.
    pub accel: Option<String>,
}

/// Read nonce, SSH port and accelerator back from `args` (as in `/proc/<pid>/cmdline`).
pub fn parse_args(args: &[String]) -> Parsed {
    let mut p = Parsed::default();
    for w in args.windows(2) {
        match w[0].as_str() {
            "-fw_cfg" => {
                if let Some(n) = w[1].strip_prefix(&format!(
                    "name={},string=",
                    crate::driver::qemu::guest::NONCE_FW_CFG_NAME
                )) {
                    p.nonce = Some(n.to_string());
                }
            }
            "-netdev" => {
                p.ssh_port = w[1].split(',').find_map(|kv| {
                    let r = kv.strip_prefix("hostfwd=tcp:127.0.0.1:")?;
                    let (host, guest) = r.split_once("-:")?;
                    (guest == "22").then(|| host.parse().ok()).flatten()
                });
            }
            "-accel" => p.accel = Some(w[1].split(',').next().unwrap_or("").to_string()),
            _ => {}
        }
    }
    p
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::path::Path;

    fn spec() -> QemuSpec {
        QemuSpec {
            clawid: "demo-abc123".into(),
            files: InstanceFiles::at(Path::new("/h/claws/demo-abc123")),
            accel: Accel::Tcg,
            cpus: 2,
            memory_mib: 1024,
            ssh_port: 40022,
            ports: vec![],
            nonce: "n0nce".into(),
            payload: None,
            volumes: vec![],
        }
    }

    fn has(args: &[String], k: &str, v: &str) -> bool {
        args.windows(2).any(|w| w[0] == k && w[1] == v)
    }

    fn count(args: &[String], k: &str) -> usize {
        args.iter().filter(|a| *a == k).count()
    }

    #[test]
    fn table() {
        struct Case {
            name: &'static str,
            edit: fn(&mut QemuSpec),
            want: &'static [(&'static str, &'static str)],
            absent: &'static [&'static str],
            virtfs: usize,
        }
        let cases = [
            Case {
                name: "tcg, no forwards, no shares",
                edit: |_| {},
                want: &[
                    ("-accel", "tcg"),
                    ("-smp", "2"),
                    ("-m", "1024M"),
                    ("-netdev", "user,id=net0,hostfwd=tcp:127.0.0.1:40022-:22"),
                    ("-serial", "file:/h/claws/demo-abc123/serial.log"),
                    (
                        "-drive",
                        "if=virtio,format=qcow2,file=/h/claws/demo-abc123/disk.qcow2,discard=unmap",
                    ),
                    (
                        "-drive",
                        "if=virtio,format=raw,file=/h/claws/demo-abc123/seed.img,readonly=on",
                    ),
                    (
                        "-qmp",
                        "unix:/h/claws/demo-abc123/qmp.sock,server=on,wait=off",
                    ),
                    ("-pidfile", "/h/claws/demo-abc123/qemu.pid"),
                    ("-fw_cfg", "name=opt/org.clawfarm/boot,string=n0nce"),
                    (
                        "-chardev",
                        "file,id=clawstatus,path=/h/claws/demo-abc123/status.log",
                    ),
                    (
                        "-device",
                        "virtserialport,chardev=clawstatus,name=org.clawfarm.status",
                    ),
                ],
                absent: &["-cpu", "-daemonize"],
                virtfs: 0,
            },
            Case {
                name: "kvm uses the host cpu",
                edit: |s| s.accel = Accel::Kvm,
                want: &[("-accel", "kvm"), ("-cpu", "host")],
                absent: &[],
                virtfs: 0,
            },
            Case {
                name: "ports bind 127.0.0.1 only",
                edit: |s| {
                    s.ports = vec![
                        Port {
                            host: 18789,
                            guest: 18789,
                            name: Some("gateway".into()),
                        },
                        Port {
                            host: 8080,
                            guest: 80,
                            name: None,
                        },
                    ]
                },
                want: &[(
                    "-netdev",
                    "user,id=net0,hostfwd=tcp:127.0.0.1:40022-:22,\
                     hostfwd=tcp:127.0.0.1:18789-:18789,hostfwd=tcp:127.0.0.1:8080-:80",
                )],
                absent: &[],
                virtfs: 0,
            },
            Case {
                name: "payload read-only, volumes read-write",
                edit: |s| {
                    s.payload = Some("/h/bundles/d1/claw".into());
                    s.volumes = vec![
                        ("vol0".into(), "/h/volumes/demo-abc123/data".into()),
                        ("vol1".into(), "/h/volumes/demo-abc123/odd,name".into()),
                    ];
                },
                want: &[
                    (
                        "-virtfs",
                        "local,path=/h/bundles/d1/claw,mount_tag=claw,security_model=none,readonly=on",
                    ),
                    (
                        "-virtfs",
                        "local,path=/h/volumes/demo-abc123/data,mount_tag=vol0,security_model=none",
                    ),
                    // Commas in paths are doubled (QEMU option syntax).
                    (
                        "-virtfs",
                        "local,path=/h/volumes/demo-abc123/odd,,name,mount_tag=vol1,security_model=none",
                    ),
                ],
                absent: &[],
                virtfs: 3,
            },
            Case {
                name: "memory and cpus have floors",
                edit: |s| {
                    s.cpus = 0;
                    s.memory_mib = 16;
                },
                want: &[("-smp", "1"), ("-m", "128M")],
                absent: &[],
                virtfs: 0,
            },
        ];
        for c in cases {
            let mut s = spec();
            (c.edit)(&mut s);
            let args = s.args();
            for (k, v) in c.want {
                assert!(has(&args, k, v), "{}: missing {k} {v} in {args:?}", c.name);
            }
            for k in c.absent {
                assert_eq!(count(&args, k), 0, "{}: unexpected {k}", c.name);
            }
            assert_eq!(count(&args, "-virtfs"), c.virtfs, "{}", c.name);
            // Every instance is identified by its QMP socket path in the command line.
            assert!(
                args.iter().any(|a| a.contains(&s.files.marker())),
                "{}",
                c.name
            );
            // What adoption reads back matches what was started.
            let p = parse_args(&args);
            assert_eq!(p.nonce.as_deref(), Some("n0nce"), "{}", c.name);
            assert_eq!(p.ssh_port, Some(40022), "{}", c.name);
            assert_eq!(
                p.accel.as_deref(),
                Some(&*s.accel.to_string()),
                "{}",
                c.name
            );
        }
    }
}
