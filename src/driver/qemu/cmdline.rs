//! The QEMU command line of an instance, built from data (no effects), so that it can be
//! tested as a table and documented in one place (`rfc/005-qemu-driver.md`).

use std::path::PathBuf;

use super::accel::Accel;
use super::layout::{InstanceFiles, opt_path};
use crate::input::manifest::Port;

/// virtio-blk serial of the bundle payload disk (ext4, read-only; the guest mounts
/// `/dev/disk/by-id/virtio-claw-payload` at `/opt/claw`). Serials are at most 20 bytes.
pub const PAYLOAD_SERIAL: &str = "claw-payload";

/// Block node name of the instance disk (the qcow2 overlay): snapshots name it.
pub const DISK_NODE: &str = "claw-disk";

/// virtio-blk serial (and block node name) of the `i`-th volume disk: `claw-vol0`,
/// `claw-vol1`, … (volume names may be longer than a serial allows).
pub fn volume_serial(i: usize) -> String {
    format!("claw-vol{i}")
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
    /// The payload disk image (ext4, raw), attached read-only with serial
    /// [`PAYLOAD_SERIAL`].
    pub payload: Option<PathBuf>,
    /// `(serial, qcow2 file)` of each volume disk, attached read-write; the serial is also
    /// the block node name.
    pub volumes: Vec<(String, PathBuf)>,
    /// Start from this internal snapshot (`-loadvm`): a resume or a restore of a stopped VM.
    pub loadvm: Option<String>,
    /// `restrict=on` on the user-mode network: the guest can open no connection at all
    /// (network policy `none`); host port forwards into the guest still work.
    pub restrict_net: bool,
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
        // The boot disk is an explicit device with bootindex 0: `-device` disks (payload,
        // volumes) get PCI slots before `-drive if=virtio` ones, and the firmware would
        // otherwise try to boot the payload.
        kv(
            &mut a,
            "-drive",
            format!(
                "if=none,id=disk0,node-name={DISK_NODE},format=qcow2,file={},discard=unmap",
                opt_path(&f.disk())
            ),
        );
        kv(
            &mut a,
            "-device",
            "virtio-blk-pci,drive=disk0,bootindex=0".into(),
        );
        kv(
            &mut a,
            "-drive",
            format!(
                "if=virtio,format=raw,file={},readonly=on",
                opt_path(&f.seed())
            ),
        );
        // QEMU's seccomp filter (`rfc/012-sandbox.md`).
        kv(&mut a, "-sandbox", super::confine::SANDBOX_ARG.into());
        let restrict = if self.restrict_net {
            "restrict=on,"
        } else {
            ""
        };
        let mut net = format!(
            "user,id=net0,{restrict}hostfwd=tcp:127.0.0.1:{}-:22",
            self.ssh_port
        );
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
        // Payload and volumes are virtio-blk disks found by serial in the guest: every
        // cloud kernel has virtio-blk and ext4 (not all have 9p), and, unlike a mounted 9p
        // share, disks do not block snapshots and migration.
        if let Some(p) = &self.payload {
            kv(
                &mut a,
                "-drive",
                format!(
                    "if=none,id=payload,format=raw,file={},readonly=on",
                    opt_path(p)
                ),
            );
            kv(
                &mut a,
                "-device",
                format!("virtio-blk-pci,drive=payload,serial={PAYLOAD_SERIAL}"),
            );
        }
        for (serial, p) in &self.volumes {
            kv(
                &mut a,
                "-drive",
                format!(
                    "if=none,id=drive-{serial},node-name={serial},format=qcow2,file={},discard=unmap",
                    opt_path(p)
                ),
            );
            kv(
                &mut a,
                "-device",
                format!("virtio-blk-pci,drive=drive-{serial},serial={serial}"),
            );
        }
        if let Some(tag) = &self.loadvm {
            kv(&mut a, "-loadvm", tag.clone());
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
            loadvm: None,
            restrict_net: false,
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
                        "if=none,id=disk0,node-name=claw-disk,format=qcow2,file=/h/claws/demo-abc123/disk.qcow2,discard=unmap",
                    ),
                    ("-device", "virtio-blk-pci,drive=disk0,bootindex=0"),
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
                        "file,id=clawstatus,path=/h/claws/demo-abc123/status.log,append=on",
                    ),
                    (
                        "-device",
                        "virtserialport,chardev=clawstatus,name=org.clawfarm.status",
                    ),
                ],
                absent: &["-cpu", "-daemonize", "-runas"],
                virtfs: 0,
            },
            Case {
                name: "network none: restricted user network, forwards kept",
                edit: |s| {
                    s.restrict_net = true;
                    s.ports = vec![Port {
                        host: 18789,
                        guest: 18789,
                        name: None,
                    }];
                },
                want: &[(
                    "-netdev",
                    "user,id=net0,restrict=on,hostfwd=tcp:127.0.0.1:40022-:22,\
                     hostfwd=tcp:127.0.0.1:18789-:18789",
                )],
                absent: &[],
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
                name: "payload a read-only disk, volumes read-write qcow2 disks, no 9p",
                edit: |s| {
                    s.payload = Some("/h/claws/demo-abc123/payload.img".into());
                    s.volumes = vec![
                        (
                            "claw-vol0".into(),
                            "/h/volumes/demo-abc123/data.qcow2".into(),
                        ),
                        (
                            "claw-vol1".into(),
                            "/h/volumes/demo-abc123/odd,name.qcow2".into(),
                        ),
                    ];
                },
                want: &[
                    (
                        "-drive",
                        "if=none,id=payload,format=raw,file=/h/claws/demo-abc123/payload.img,readonly=on",
                    ),
                    (
                        "-device",
                        "virtio-blk-pci,drive=payload,serial=claw-payload",
                    ),
                    (
                        "-drive",
                        "if=none,id=drive-claw-vol0,node-name=claw-vol0,format=qcow2,\
                         file=/h/volumes/demo-abc123/data.qcow2,discard=unmap",
                    ),
                    (
                        "-device",
                        "virtio-blk-pci,drive=drive-claw-vol0,serial=claw-vol0",
                    ),
                    // Commas in paths are doubled (QEMU option syntax).
                    (
                        "-drive",
                        "if=none,id=drive-claw-vol1,node-name=claw-vol1,format=qcow2,\
                         file=/h/volumes/demo-abc123/odd,,name.qcow2,discard=unmap",
                    ),
                ],
                absent: &["-virtfs", "-loadvm"],
                virtfs: 0,
            },
            Case {
                name: "a resume starts from the saved state",
                edit: |s| s.loadvm = Some("clawfarm-suspend".into()),
                want: &[("-loadvm", "clawfarm-suspend")],
                absent: &[],
                virtfs: 0,
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
            // Every QEMU runs under its seccomp sandbox.
            assert!(
                has(
                    &args,
                    "-sandbox",
                    "on,obsolete=deny,elevateprivileges=deny,spawn=deny,resourcecontrol=deny"
                ),
                "{}",
                c.name
            );
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
