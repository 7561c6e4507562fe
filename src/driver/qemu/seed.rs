//! The cloud-init NoCloud seed of a claw, written by clawfarm itself.
//!
//! The seed is a small FAT image labelled `CIDATA` holding three files:
//!
//! * `meta-data`: `instance-id` and `local-hostname`;
//! * `user-data`: a `#cloud-config` document (see [`render_user_data`]);
//! * `network-config`: DHCP on the first NIC (see [`render_network_config`]).
//!
//! It is attached read-only as a second virtio disk; cloud-init's NoCloud datasource finds
//! it by its label. No host tool (genisoimage, cloud-localds, mtools) is needed.
//!
//! # What the user-data sets up in the guest
//!
//! | guest path | what |
//! | --- | --- |
//! | user `claw` | bash, group `sudo`, `NOPASSWD:ALL`, password locked, the given authorized key |
//! | `/etc/ssh/ssh_host_ed25519_key{,.pub}` | the host key pinned by the host (`ssh_genkeytypes: [ed25519]` is already satisfied by it, so no key is generated) |
//! | `/etc/clawfarm/params.env` | `KEY='value'` lines, root 0600 |
//! | `/etc/clawfarm/runner.json` | the phase list for the runner, root 0600 |
//! | `/usr/local/lib/clawfarm/{install,start,provision-N}.sh` | the scripts, root 0700 |
//! | `/usr/local/lib/clawfarm/clawfarm-runner.py` | the phase runner |
//! | `/etc/systemd/system/clawfarm-bootstrap.service` | runs the runner on every boot, after `cloud-final` (wanted by `cloud-init.target`) |
//! | `/opt/claw` | the payload disk (ext4, read-only, found by its virtio serial), when [`SeedInput::payload_serial`] is set |
//! | each volume's guest path | the volume disk (ext4, read-write, found by its virtio serial) |
//! | `/var/log/clawfarm/<phase>.log` | output of each phase (`install`, `start`, `provision-N`, `mount`, `cloud-init`), root 0600 |
//! | `/var/lib/clawfarm/state/<instance-id>/` | markers of the once-per-instance phases that succeeded |
//!
//! The status protocol the runner speaks is described in [`crate::driver::qemu::guest`].
//!
//! Secrets: param values are in the seed image (they must reach the guest) and nowhere else;
//! this module never logs user-data content.

use crate::util::secret::Secret;
use serde_json::{Value, json};
use std::io::{self, Cursor, Write};
use std::path::Path;

/// The phase runner script (Python 3), installed at [`RUNNER_PATH`].
pub const RUNNER_PY: &str = include_str!("../../../assets/guest/clawfarm-runner.py");
/// The systemd unit that runs the phase runner on every boot.
pub const BOOTSTRAP_UNIT: &str = include_str!("../../../assets/guest/clawfarm-bootstrap.service");
/// Name of the systemd unit in the guest.
pub const BOOTSTRAP_UNIT_NAME: &str = "clawfarm-bootstrap.service";
/// Guest path of the phase runner.
pub const RUNNER_PATH: &str = "/usr/local/lib/clawfarm/clawfarm-runner.py";
/// Guest path of the runner's configuration (phase list).
pub const RUNNER_CONFIG_PATH: &str = "/etc/clawfarm/runner.json";
/// Guest path of the params env file (root, 0600).
pub const PARAMS_ENV_PATH: &str = "/etc/clawfarm/params.env";
/// Guest folder of the phase scripts.
pub const SCRIPTS_DIR: &str = "/usr/local/lib/clawfarm";
/// Guest folder of the phase logs.
pub const LOG_DIR: &str = "/var/log/clawfarm";
/// Guest mount point of the bundle payload share.
pub const PAYLOAD_MOUNT: &str = "/opt/claw";
/// Default shell of a phase script.
pub const DEFAULT_SHELL: &str = "/bin/bash";
/// Volume label of the seed filesystem (cloud-init's NoCloud looks for `cidata`/`CIDATA`).
pub const SEED_LABEL: &str = "CIDATA";
/// Guest folder of the extra CA certificates ([`SeedInput::ca_certs`]).
pub const CA_DIR: &str = "/usr/local/share/ca-certificates";
/// The guest user that clawfarm logs in as.
pub const GUEST_USER: &str = "claw";

/// One provision step: a script run once per instance, after `start`.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct ProvisionStep {
    /// Optional human name, reported in status lines (`provision[1] setup`).
    pub name: Option<String>,
    /// The interpreter command line (split like a shell would, e.g. `/usr/bin/env python3`);
    /// the script path is appended. Defaults to [`DEFAULT_SHELL`].
    pub shell: Option<String>,
    /// The script text.
    pub script: String,
}

/// Everything the seed of one claw holds.
///
/// `Debug` is safe to print: param values are [`Secret`]s and the host private key is
/// redacted.
#[derive(Clone, Default)]
pub struct SeedInput {
    /// cloud-init instance id. When it changes, cloud-init reruns its per-instance modules
    /// and the runner reruns `install` and `provision`. Use [`instance_id_for`] to derive it
    /// from the rest of the content.
    pub instance_id: String,
    /// Guest hostname (RFC 1123 label: letters, digits, `-`, at most 63 characters).
    pub hostname: String,
    /// OpenSSH public key line authorized for user `claw`.
    pub ssh_authorized_key: String,
    /// OpenSSH ed25519 private key of the guest's sshd (pinned by the host).
    pub host_key_private: String,
    /// The matching public key line.
    pub host_key_public: String,
    /// Params written to `/etc/clawfarm/params.env` (root-only, 0600) and exported to every
    /// phase. Names must be shell identifiers.
    pub params: Vec<(String, Secret)>,
    /// Run once per instance, first.
    pub install_script: String,
    /// Run on every boot, after `install`; may leave daemons in the background.
    pub start_script: String,
    /// Run once per instance each, in order, after `start`.
    pub provision: Vec<ProvisionStep>,
    /// virtio-blk serial of the payload disk (ext4), mounted read-only at [`PAYLOAD_MOUNT`].
    pub payload_serial: Option<String>,
    /// Volume disks (ext4) as `(virtio-blk serial, absolute guest path)`, mounted
    /// read-write.
    pub volumes: Vec<(String, String)>,
    /// Extra CA certificates (PEM) the guest trusts (system store via `update-ca-certificates`), for TLS through
    /// an intercepting proxy. Also exported to every phase as `NODE_EXTRA_CA_CERTS`.
    pub ca_certs: Vec<String>,
    /// HTTP(S) proxy URL for the guest: apt, `/etc/environment` and every phase
    /// (`http_proxy`, `https_proxy` and the upper-case forms; `no_proxy` for loopback).
    /// The driver always sets clawfarm's egress proxy here,
    /// `http://CLAWID:TOKEN@10.0.2.2:PORT` (`rfc/012-sandbox.md`); it carries a token.
    pub proxy: Option<Secret>,
}

impl SeedInput {
    /// The guest's proxy URL, trimmed (`None` when unset or blank).
    pub fn proxy_url(&self) -> Option<&str> {
        self.proxy
            .as_ref()
            .map(|p| p.expose().trim())
            .filter(|p| !p.is_empty())
    }
}

impl std::fmt::Debug for SeedInput {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SeedInput")
            .field("instance_id", &self.instance_id)
            .field("hostname", &self.hostname)
            .field("ssh_authorized_key", &self.ssh_authorized_key)
            .field("host_key_private", &crate::util::secret::REDACTED)
            .field("host_key_public", &self.host_key_public)
            .field("params", &self.params)
            .field("install_script", &self.install_script)
            .field("start_script", &self.start_script)
            .field("provision", &self.provision)
            .field("payload_serial", &self.payload_serial)
            .field("volumes", &self.volumes)
            .field("ca_certs", &self.ca_certs.len())
            .field(
                "proxy",
                &self.proxy.as_ref().map(|_| crate::util::secret::REDACTED),
            )
            .finish()
    }
}

fn invalid(msg: String) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidInput, msg)
}

fn is_shell_name(k: &str) -> bool {
    let mut cs = k.chars();
    matches!(cs.next(), Some(c) if c == '_' || c.is_ascii_alphabetic())
        && cs.all(|c| c == '_' || c.is_ascii_alphanumeric())
}

fn is_serial(t: &str) -> bool {
    !t.is_empty()
        && t.len() <= 20
        && t.chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '-' | '.'))
}

/// Check that `input` can be written as a seed: hostname, param names, disk serials and guest
/// paths, keys present. [`build_seed_image`] calls it.
pub fn validate(input: &SeedInput) -> io::Result<()> {
    let h = &input.hostname;
    if h.is_empty()
        || h.len() > 63
        || h.starts_with('-')
        || h.ends_with('-')
        || !h.chars().all(|c| c.is_ascii_alphanumeric() || c == '-')
    {
        return Err(invalid(format!(
            "seed: hostname {h:?} is not a valid host name (letters, digits, '-', ≤ 63)"
        )));
    }
    if input.instance_id.is_empty()
        || !input
            .instance_id
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'))
    {
        return Err(invalid(format!(
            "seed: instance id {:?} must be non-empty [A-Za-z0-9._-]",
            input.instance_id
        )));
    }
    for (k, v) in &input.params {
        if !is_shell_name(k) {
            return Err(invalid(format!(
                "seed: param name {k:?} is not a shell variable name"
            )));
        }
        if v.expose().contains('\0') {
            return Err(invalid(format!("seed: param {k} contains a NUL byte")));
        }
    }
    for (what, key) in [
        ("ssh_authorized_key", &input.ssh_authorized_key),
        ("host_key_public", &input.host_key_public),
    ] {
        if key.trim().is_empty() || key.contains('\n') {
            return Err(invalid(format!(
                "seed: {what} must be one OpenSSH key line"
            )));
        }
    }
    if !input.host_key_private.contains("PRIVATE KEY") {
        return Err(invalid(
            "seed: host_key_private is not an OpenSSH private key".to_string(),
        ));
    }
    let mut mounts = Vec::new();
    if let Some(t) = &input.payload_serial {
        mounts.push((t.as_str(), PAYLOAD_MOUNT));
    }
    for (t, p) in &input.volumes {
        mounts.push((t.as_str(), p.as_str()));
    }
    for (t, p) in &mounts {
        if !is_serial(t) {
            return Err(invalid(format!(
                "seed: disk serial {t:?} must be 1-20 characters [A-Za-z0-9._-]"
            )));
        }
        if !p.starts_with('/')
            || *p == "/"
            || p.split('/').any(|c| c == ".." || c == ".")
            || p.chars().any(|c| c.is_control())
        {
            return Err(invalid(format!(
                "seed: guest path {p:?} of share {t} must be an absolute path other than /"
            )));
        }
    }
    for (i, s) in input.provision.iter().enumerate() {
        if s.shell.as_deref().is_some_and(|sh| sh.trim().is_empty()) {
            return Err(invalid(format!("seed: provision[{i}] has an empty shell")));
        }
    }
    Ok(())
}

/// Quote `v` for a POSIX shell: `'…'` with each `'` written as `'\''`.
pub fn shell_quote(v: &str) -> String {
    let mut out = String::with_capacity(v.len() + 2);
    out.push('\'');
    for c in v.chars() {
        if c == '\'' {
            out.push_str("'\\''");
        } else {
            out.push(c);
        }
    }
    out.push('\'');
    out
}

/// The content of `/etc/clawfarm/params.env`: one `KEY='value'` line per param, in order.
/// Params whose name is not a shell identifier are left out ([`validate`] rejects them).
pub fn render_params_env(input: &SeedInput) -> String {
    let mut s = String::from("# clawfarm params (generated; root-only)\n");
    for (k, v) in &input.params {
        if is_shell_name(k) {
            s.push_str(k);
            s.push('=');
            s.push_str(&shell_quote(v.expose()));
            s.push('\n');
        }
    }
    for (k, v) in guest_env(input) {
        s.push_str(&format!("{k}={}\n", shell_quote(&v)));
    }
    s
}

/// The guest-wide environment from [`SeedInput::proxy`] and [`SeedInput::ca_certs`]
/// (empty when neither is set).
pub fn guest_env(input: &SeedInput) -> Vec<(String, String)> {
    let mut out = Vec::new();
    if let Some(p) = input.proxy_url() {
        for k in ["http_proxy", "https_proxy", "HTTP_PROXY", "HTTPS_PROXY"] {
            out.push((k.to_string(), p.to_string()));
        }
        for k in ["no_proxy", "NO_PROXY"] {
            out.push((k.to_string(), "localhost,127.0.0.1,::1".to_string()));
        }
    }
    if !input.ca_certs.is_empty() {
        out.push((
            "NODE_EXTRA_CA_CERTS".to_string(),
            "/etc/ssl/certs/ca-certificates.crt".to_string(),
        ));
    }
    out
}

/// The `meta-data` file: instance id and hostname.
pub fn render_meta_data(input: &SeedInput) -> String {
    format!(
        "instance-id: {}\nlocal-hostname: {}\n",
        json_str(&input.instance_id),
        json_str(&input.hostname)
    )
}

/// The `network-config` file (network config version 2): DHCPv4 on `eth0`, the first NIC.
///
/// The clawfarm guest image boots with `net.ifnames=0`, so the first NIC is always `eth0`
/// whatever its PCI slot or driver; the image renders network config with ifupdown, which
/// needs a concrete interface name (it does not expand `match:` globs).
pub fn render_network_config() -> String {
    "version: 2\nethernets:\n  eth0:\n    dhcp4: true\n".to_string()
}

fn json_str(s: &str) -> String {
    Value::String(s.to_string()).to_string()
}

fn script_path(key: &str) -> String {
    format!("{SCRIPTS_DIR}/{key}.sh")
}

/// The runner configuration (`/etc/clawfarm/runner.json`): instance id, mounts and the
/// ordered phase list `install`, `start`, `provision[0..]`.
pub fn render_runner_config(input: &SeedInput) -> String {
    let mut phases = vec![
        json!({"phase": "install", "script": script_path("install"),
               "shell": DEFAULT_SHELL, "once": true}),
        json!({"phase": "start", "script": script_path("start"),
               "shell": DEFAULT_SHELL, "once": false}),
    ];
    for (i, s) in input.provision.iter().enumerate() {
        phases.push(json!({
            "phase": "provision",
            "step": i,
            "name": s.name.clone().unwrap_or_default(),
            "script": script_path(&format!("provision-{i}")),
            "shell": s.shell.clone().unwrap_or_else(|| DEFAULT_SHELL.to_string()),
            "once": true,
        }));
    }
    let mut mounts = Vec::new();
    if let Some(t) = &input.payload_serial {
        mounts.push(json!({"serial": t, "path": PAYLOAD_MOUNT, "readonly": true}));
    }
    for (t, p) in &input.volumes {
        mounts.push(json!({"serial": t, "path": p, "readonly": false}));
    }
    let cfg = json!({
        "version": 1,
        "instance_id": input.instance_id,
        "params_env": PARAMS_ENV_PATH,
        "payload": input.payload_serial.as_ref().map(|_| PAYLOAD_MOUNT),
        "mounts": mounts,
        "phases": phases,
    });
    let mut s = serde_json::to_string_pretty(&cfg).unwrap_or_default();
    s.push('\n');
    s
}

/// The `bootcmd` shell snippet: reports `cloud-init` `started` on every boot, as early as
/// cloud-init runs anything (before `write_files`, so it is self-contained).
fn bootcmd_script() -> String {
    format!(
        r#"modprobe qemu_fw_cfg 2>/dev/null; modprobe virtio_console 2>/dev/null
n=$(head -c 256 {nonce} 2>/dev/null | tr -cd 'A-Za-z0-9._-')
l=$(printf '{{"boot": "%s", "phase": "cloud-init", "status": "started", "ts": "%s"}}' "$n" "$(date -u +%Y-%m-%dT%H:%M:%SZ)")
p=/dev/virtio-ports/{port}
if [ ! -e "$p" ]; then for f in /sys/class/virtio-ports/*/name; do [ "$(cat "$f" 2>/dev/null)" = {port} ] && p=/dev/$(basename "$(dirname "$f")"); done; fi
[ -e "$p" ] && printf '%s\n' "$l" >> "$p" 2>/dev/null
printf 'CLAWFARM-STATUS %s\n' "$l" > /dev/ttyS0 2>/dev/null
true
"#,
        nonce = crate::driver::qemu::guest::NONCE_SYSFS_PATH,
        port = crate::driver::qemu::guest::STATUS_PORT_NAME,
    )
}

fn b64_file(path: &str, content: &str, permissions: &str) -> Value {
    json!({
        "path": path,
        "owner": "root:root",
        "permissions": permissions,
        "encoding": "b64",
        "content": base64(content.as_bytes()),
    })
}

/// The `user-data` file: a `#cloud-config` document.
///
/// The body after the `#cloud-config` line is JSON, which is valid YAML (flow style): every
/// string is escaped by serde_json, so no script, key or param value can break the
/// document. File contents are base64 (`encoding: b64`).
///
/// It creates user `claw`, installs the pinned host key, writes the params file, the
/// scripts, the runner and its unit, reports `cloud-init started` from `bootcmd` on every
/// boot, and enables + starts `clawfarm-bootstrap.service` from `runcmd` (first boot of an
/// instance; later boots start it through `multi-user.target`).
pub fn render_user_data(input: &SeedInput) -> String {
    let mut files = vec![
        b64_file(PARAMS_ENV_PATH, &render_params_env(input), "0600"),
        b64_file(RUNNER_CONFIG_PATH, &render_runner_config(input), "0600"),
        b64_file(&script_path("install"), &input.install_script, "0700"),
        b64_file(&script_path("start"), &input.start_script, "0700"),
    ];
    for (i, s) in input.provision.iter().enumerate() {
        files.push(b64_file(
            &script_path(&format!("provision-{i}")),
            &s.script,
            "0700",
        ));
    }
    files.push(b64_file(RUNNER_PATH, RUNNER_PY, "0755"));
    files.push(b64_file(
        &format!("/etc/systemd/system/{BOOTSTRAP_UNIT_NAME}"),
        BOOTSTRAP_UNIT,
        "0644",
    ));
    let env = guest_env(input);
    if !env.is_empty() {
        let text: String = env.iter().map(|(k, v)| format!("{k}={v}\n")).collect();
        files.push(json!({
            "path": "/etc/environment",
            "owner": "root:root",
            "permissions": "0644",
            "append": true,
            "content": text,
        }));
    }
    let mut doc = json!({
        "hostname": input.hostname,
        "preserve_hostname": false,
        "manage_etc_hosts": true,
        "users": [{
            "name": GUEST_USER,
            "gecos": "clawfarm",
            "shell": "/bin/bash",
            "groups": ["sudo"],
            "sudo": "ALL=(ALL) NOPASSWD:ALL",
            "lock_passwd": true,
            "ssh_authorized_keys": [input.ssh_authorized_key.trim()],
        }],
        "disable_root": true,
        "ssh_pwauth": false,
        "ssh_deletekeys": true,
        "ssh_genkeytypes": ["ed25519"],
        "ssh_keys": {
            "ed25519_private": input.host_key_private,
            "ed25519_public": input.host_key_public.trim(),
        },
        "bootcmd": [bootcmd_script()],
        "write_files": files,
        "runcmd": [
            ["systemctl", "daemon-reload"],
            ["systemctl", "enable", BOOTSTRAP_UNIT_NAME],
            ["systemctl", "start", "--no-block", BOOTSTRAP_UNIT_NAME],
        ],
    });
    if !input.ca_certs.is_empty() {
        // Not cloud-init's `ca_certs` module: in the guest image's cloud-init (22.4) it
        // left the trust store unchanged (measured). The certificates are written as files
        // and `update-ca-certificates` runs first thing in runcmd, before any phase.
        let files = doc["write_files"].as_array_mut().expect("write_files");
        for (i, pem) in input.ca_certs.iter().enumerate() {
            files.push(json!({
                "path": format!("{CA_DIR}/clawfarm-{i}.crt"),
                "owner": "root:root",
                "permissions": "0644",
                "content": pem,
            }));
        }
        doc["runcmd"]
            .as_array_mut()
            .expect("runcmd")
            .insert(0, json!(["update-ca-certificates"]));
    }
    if let Some(p) = input.proxy_url() {
        doc["apt"] = json!({ "http_proxy": p, "https_proxy": p });
    }
    let body = serde_json::to_string_pretty(&doc).unwrap_or_default();
    format!("#cloud-config\n{body}\n")
}

/// Split a PEM bundle into its certificates (`-----BEGIN CERTIFICATE-----` blocks).
pub fn split_pem(text: &str) -> Vec<String> {
    let mut out = Vec::new();
    let mut cur: Option<String> = None;
    for line in text.lines() {
        let l = line.trim_end();
        if l == "-----BEGIN CERTIFICATE-----" {
            cur = Some(String::new());
        }
        if let Some(c) = cur.as_mut() {
            c.push_str(l);
            c.push('\n');
        }
        if l == "-----END CERTIFICATE-----"
            && let Some(c) = cur.take()
        {
            out.push(c);
        }
    }
    out
}

/// The export scrub script (POSIX sh), run in a throwaway VM booted from a copy of an
/// instance's disk (see `rfc/010-export.md`).
pub const SCRUB_SH: &str = include_str!("../../../assets/guest/clawfarm-scrub.sh");
/// Where the scrub seed writes [`SCRUB_SH`] (tmpfs: it never reaches the disk).
pub const SCRUB_PATH: &str = "/run/clawfarm-scrub.sh";
/// The serial-console line the scrub writes when it finished (before powering off).
pub const SCRUB_OK: &str = "CLAWFARM-SCRUB ok";

/// The `user-data` of the export scrub VM: no users, no keys, no params. `bootcmd` removes
/// the instance's runner configuration first thing (so its phases never start in the scrub
/// VM), `write_files` puts [`SCRUB_SH`] in `/run`, and `runcmd` queues it as a transient
/// unit ordered after `cloud-final` (cloud-init has written all its state by then).
pub fn render_scrub_user_data() -> String {
    let doc = json!({
        "users": [],
        "disable_root": true,
        "ssh_pwauth": false,
        "ssh_deletekeys": false,
        "ssh_genkeytypes": [],
        "bootcmd": [format!(
            "rm -f {RUNNER_CONFIG_PATH} {PARAMS_ENV_PATH}; printf 'CLAWFARM-SCRUB booted\\n' > /dev/ttyS0 || true"
        )],
        "write_files": [b64_file(SCRUB_PATH, SCRUB_SH, "0700")],
        "runcmd": [[
            "systemd-run", "--no-block", "--unit", "clawfarm-scrub",
            "--property", "After=cloud-final.service",
            "/bin/sh", SCRUB_PATH,
        ]],
    });
    let body = serde_json::to_string_pretty(&doc).unwrap_or_default();
    format!("#cloud-config\n{body}\n")
}

/// The seed image of the export scrub VM (instance id `instance_id`, which must differ from
/// the instance's own so cloud-init treats the boot as a new instance).
pub fn build_scrub_seed_image(instance_id: &str) -> io::Result<Vec<u8>> {
    let meta = format!(
        "instance-id: {}\nlocal-hostname: clawfarm-export\n",
        json_str(instance_id)
    );
    fat_image(
        instance_id,
        &[
            ("meta-data", meta),
            ("user-data", render_scrub_user_data()),
            ("network-config", render_network_config()),
        ],
    )
}

/// Derive an instance id from everything else in `input` (its `instance_id` is ignored):
/// `clawfarm-` and 24 hex digits of a SHA-256 over the rendered files. Any change to the
/// seed content gives a new id, so cloud-init and the runner treat it as a new instance.
pub fn instance_id_for(input: &SeedInput) -> String {
    let mut probe = input.clone();
    probe.instance_id = String::new();
    let mut buf = Vec::new();
    for part in [
        render_meta_data(&probe),
        render_user_data(&probe),
        render_network_config(),
    ] {
        buf.extend_from_slice(&(part.len() as u64).to_le_bytes());
        buf.extend_from_slice(part.as_bytes());
    }
    let hex = crate::util::digest::sha256_hex(&buf);
    format!("clawfarm-{}", &hex[..24])
}

/// Standard base64 with padding.
fn base64(data: &[u8]) -> String {
    use base64::Engine as _;
    base64::engine::general_purpose::STANDARD.encode(data)
}

/// Standard base64 decoding, padding optional, whitespace skipped (an invalid input
/// decodes to nothing).
pub fn base64_decode(s: &str) -> Vec<u8> {
    use base64::Engine as _;
    use base64::engine::{DecodePaddingMode, GeneralPurpose, GeneralPurposeConfig};
    const LENIENT: GeneralPurpose = GeneralPurpose::new(
        &base64::alphabet::STANDARD,
        GeneralPurposeConfig::new().with_decode_padding_mode(DecodePaddingMode::Indifferent),
    );
    let clean: String = s.chars().filter(|c| !c.is_whitespace()).collect();
    LENIENT.decode(clean).unwrap_or_default()
}

/// Standard base64 with padding (for callers outside the seed, e.g. the export scan).
pub fn base64_encode(data: &[u8]) -> String {
    base64(data)
}

/// Parse a params env file written by [`render_params_env`] back into `(key, value)`.
pub fn parse_params_env(text: &str) -> Vec<(String, Secret)> {
    let mut out = Vec::new();
    let mut rest = text;
    while !rest.is_empty() {
        let (line_start, after) = match rest.find('=') {
            Some(i) if !rest[..i].contains('\n') => (&rest[..i], &rest[i + 1..]),
            _ => {
                // A comment or blank line.
                rest = rest.split_once('\n').map(|x| x.1).unwrap_or("");
                continue;
            }
        };
        let mut value = String::new();
        let mut chars = after.char_indices();
        let mut end = after.len();
        let mut in_quote = false;
        while let Some((i, c)) = chars.next() {
            match (in_quote, c) {
                (true, '\'') => in_quote = false,
                (true, c) => value.push(c),
                (false, '\'') => in_quote = true,
                (false, '\\') => {
                    if let Some((_, n)) = chars.next() {
                        value.push(n);
                    }
                }
                (false, '\n') => {
                    end = i + 1;
                    break;
                }
                (false, c) => value.push(c),
            }
        }
        if is_shell_name(line_start) {
            out.push((line_start.to_string(), Secret::new(value)));
        }
        rest = &after[end.min(after.len())..];
    }
    out
}

/// The params an instance was given, read back from its seed image (the only place on the
/// host that holds their values): the `params.env` file of its user-data.
pub fn read_seed_params(seed_image: &[u8]) -> io::Result<Vec<(String, Secret)>> {
    use std::io::Read;
    let fs = fatfs::FileSystem::new(Cursor::new(seed_image.to_vec()), fatfs::FsOptions::new())
        .map_err(|e| io::Error::new(e.kind(), format!("seed: opening the FAT image: {e}")))?;
    let mut ud = String::new();
    fs.root_dir()
        .open_file("user-data")?
        .read_to_string(&mut ud)?;
    let body = ud.strip_prefix("#cloud-config\n").unwrap_or(&ud);
    let doc: Value = serde_json::from_str(body)
        .map_err(|e| invalid(format!("seed: user-data is not clawfarm's: {e}")))?;
    let Some(files) = doc.get("write_files").and_then(Value::as_array) else {
        return Ok(Vec::new());
    };
    for f in files {
        if f.get("path").and_then(Value::as_str) == Some(PARAMS_ENV_PATH) {
            let content = f.get("content").and_then(Value::as_str).unwrap_or("");
            let text = String::from_utf8_lossy(&base64_decode(content)).into_owned();
            return Ok(parse_params_env(&text));
        }
    }
    Ok(Vec::new())
}

/// Build the seed image in memory: a FAT12/16 filesystem labelled `CIDATA` with
/// `meta-data`, `user-data` and `network-config` (long file names). Validates `input`
/// first.
pub fn build_seed_image(input: &SeedInput) -> io::Result<Vec<u8>> {
    validate(input)?;
    let files = [
        ("meta-data", render_meta_data(input)),
        ("user-data", render_user_data(input)),
        ("network-config", render_network_config()),
    ];
    fat_image(&input.instance_id, &files)
}

/// A FAT image labelled [`SEED_LABEL`] holding `files` (long file names).
fn fat_image(instance_id: &str, files: &[(&str, String)]) -> io::Result<Vec<u8>> {
    let content: usize = files.iter().map(|(_, c)| c.len()).sum();
    // Room for the content twice over plus FAT/root-dir overhead; at least 2 MiB.
    let size = (content * 2 + 512 * 1024)
        .max(2 * 1024 * 1024)
        .div_ceil(65536)
        * 65536;
    let mut disk = Cursor::new(vec![0u8; size]);
    let mut label = [b' '; 11];
    label[..SEED_LABEL.len()].copy_from_slice(SEED_LABEL.as_bytes());
    let volume_id = u32::from_str_radix(
        &crate::util::digest::sha256_hex(instance_id.as_bytes())[..8],
        16,
    )
    .unwrap_or(0x0c1a_3fa4);
    fatfs::format_volume(
        &mut disk,
        fatfs::FormatVolumeOptions::new()
            .volume_label(label)
            .volume_id(volume_id),
    )
    .map_err(|e| io::Error::new(e.kind(), format!("seed: formatting the FAT image: {e}")))?;
    {
        let fs = fatfs::FileSystem::new(&mut disk, fatfs::FsOptions::new())
            .map_err(|e| io::Error::new(e.kind(), format!("seed: opening the FAT image: {e}")))?;
        {
            let root = fs.root_dir();
            for (name, text) in files {
                let mut f = root.create_file(name).map_err(|e| {
                    io::Error::new(e.kind(), format!("seed: creating {name} in the image: {e}"))
                })?;
                f.truncate()?;
                f.write_all(text.as_bytes()).map_err(|e| {
                    io::Error::new(e.kind(), format!("seed: writing {name} in the image: {e}"))
                })?;
                f.flush()?;
            }
        }
        fs.unmount()
            .map_err(|e| io::Error::new(e.kind(), format!("seed: closing the FAT image: {e}")))?;
    }
    Ok(disk.into_inner())
}

/// Build the seed image and write it to `path` atomically (temp file, fsync, rename), mode
/// 0600. Errors name `path`.
pub fn write_seed(path: &Path, input: &SeedInput) -> io::Result<()> {
    let img = build_seed_image(input)?;
    crate::util::fsutil::write_atomic(path, &img, 0o600).map_err(|e| {
        io::Error::new(
            e.kind(),
            format!("writing seed image {}: {e}", path.display()),
        )
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Read;

    fn sample() -> SeedInput {
        let mut s = SeedInput {
            instance_id: String::new(),
            hostname: "claw-1".into(),
            ssh_authorized_key: "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIClaw claw@host".into(),
            host_key_private:
                "-----BEGIN OPENSSH PRIVATE KEY-----\nabc\n-----END OPENSSH PRIVATE KEY-----\n"
                    .into(),
            host_key_public: "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIHost".into(),
            params: vec![
                (
                    "API_KEY".into(),
                    Secret::new("s3cr'et \"x\" $HOME `id`\nline2"),
                ),
                ("EMPTY".into(), Secret::new("")),
            ],
            install_script: "#!/bin/bash\necho install\n".into(),
            start_script: "echo start\n".into(),
            provision: vec![
                ProvisionStep {
                    name: Some("setup".into()),
                    shell: None,
                    script: "echo p0".into(),
                },
                ProvisionStep {
                    name: None,
                    shell: Some("/usr/bin/env python3".into()),
                    script: "print('p1')".into(),
                },
            ],
            payload_serial: Some("claw-payload".into()),
            volumes: vec![("data".into(), "/srv/data".into())],
            ..SeedInput::default()
        };
        s.instance_id = instance_id_for(&s);
        s
    }

    fn b64_decode(s: &str) -> Vec<u8> {
        base64_decode(s)
    }

    #[test]
    fn base64_matches_known_vectors() {
        for (i, o) in [
            ("", ""),
            ("f", "Zg=="),
            ("fo", "Zm8="),
            ("foo", "Zm9v"),
            ("foob", "Zm9vYg=="),
            ("fooba", "Zm9vYmE="),
            ("foobar", "Zm9vYmFy"),
        ] {
            assert_eq!(base64(i.as_bytes()), o);
            assert_eq!(b64_decode(o), i.as_bytes());
        }
    }

    #[test]
    fn params_env_quotes_safely() {
        let env = render_params_env(&sample());
        assert!(env.contains("API_KEY='s3cr'\\''et \"x\" $HOME `id`\nline2'\n"));
        assert!(env.contains("EMPTY=''\n"));
        // The shell reads back exactly the values.
        let d = tempfile::tempdir().unwrap();
        let p = d.path().join("params.env");
        std::fs::write(&p, &env).unwrap();
        let out = std::process::Command::new("/bin/sh")
            .arg("-c")
            .arg("set -a; . \"$0\"; printf '%s|%s' \"$API_KEY\" \"$EMPTY\"")
            .arg(&p)
            .output()
            .unwrap();
        assert_eq!(
            String::from_utf8(out.stdout).unwrap(),
            "s3cr'et \"x\" $HOME `id`\nline2|"
        );
    }

    #[test]
    fn user_data_is_cloud_config_and_parses_as_yaml() {
        let s = sample();
        let ud = render_user_data(&s);
        assert!(ud.starts_with("#cloud-config\n"));
        let v: serde_json::Value = serde_saphyr::from_str(&ud).unwrap();
        let user = &v["users"][0];
        assert_eq!(user["name"], "claw");
        assert_eq!(user["shell"], "/bin/bash");
        assert_eq!(user["sudo"], "ALL=(ALL) NOPASSWD:ALL");
        assert_eq!(user["lock_passwd"], true);
        assert_eq!(user["ssh_authorized_keys"][0], s.ssh_authorized_key);
        assert_eq!(v["ssh_pwauth"], false);
        assert_eq!(v["ssh_keys"]["ed25519_private"], s.host_key_private);
        assert_eq!(v["hostname"], "claw-1");
        let files = v["write_files"].as_array().unwrap();
        let find = |p: &str| {
            files
                .iter()
                .find(|f| f["path"] == p)
                .unwrap_or_else(|| panic!("{p} not written"))
        };
        let params = find(PARAMS_ENV_PATH);
        assert_eq!(params["permissions"], "0600");
        assert_eq!(params["owner"], "root:root");
        assert_eq!(
            b64_decode(params["content"].as_str().unwrap()),
            render_params_env(&s).as_bytes()
        );
        let p1 = find("/usr/local/lib/clawfarm/provision-1.sh");
        assert_eq!(b64_decode(p1["content"].as_str().unwrap()), b"print('p1')");
        let runner = find(RUNNER_PATH);
        assert_eq!(
            b64_decode(runner["content"].as_str().unwrap()),
            RUNNER_PY.as_bytes()
        );
        let cfg: serde_json::Value = serde_json::from_slice(&b64_decode(
            find(RUNNER_CONFIG_PATH)["content"].as_str().unwrap(),
        ))
        .unwrap();
        assert_eq!(cfg["instance_id"], s.instance_id.as_str());
        let phases: Vec<String> = cfg["phases"]
            .as_array()
            .unwrap()
            .iter()
            .map(|p| {
                format!(
                    "{}{}",
                    p["phase"].as_str().unwrap(),
                    p["step"]
                        .as_u64()
                        .map(|n| n.to_string())
                        .unwrap_or_default()
                )
            })
            .collect();
        assert_eq!(phases, ["install", "start", "provision0", "provision1"]);
        assert_eq!(cfg["phases"][3]["shell"], "/usr/bin/env python3");
        assert_eq!(cfg["mounts"][0]["path"], "/opt/claw");
        assert_eq!(cfg["mounts"][0]["readonly"], true);
        assert_eq!(cfg["mounts"][1]["serial"], "data");
        assert_eq!(cfg["mounts"][0]["serial"], "claw-payload");
        assert!(
            v["bootcmd"][0]
                .as_str()
                .unwrap()
                .contains("org.clawfarm.status")
        );
        assert_eq!(v["runcmd"][1][2], BOOTSTRAP_UNIT_NAME);
    }

    #[test]
    fn bootstrap_unit_has_no_ordering_cycle() {
        // cloud-final.service is After=multi-user.target: a unit ordered after cloud-final
        // must not be wanted by multi-user.target (systemd would drop it at boot).
        assert!(BOOTSTRAP_UNIT.contains("After=cloud-final.service"));
        assert!(BOOTSTRAP_UNIT.contains("\nWantedBy=cloud-init.target"));
        assert!(!BOOTSTRAP_UNIT.contains("\nWantedBy=multi-user.target"));
        assert!(BOOTSTRAP_UNIT.contains("\nKillMode=process"));
        assert!(BOOTSTRAP_UNIT.contains("\nRemainAfterExit=yes"));
    }

    #[test]
    fn secrets_only_in_params_file() {
        let s = sample();
        let ud = render_user_data(&s);
        // The value is base64'd inside the params file, never in clear in user-data.
        assert!(!ud.contains("s3cr"));
        assert!(!format!("{s:?}").contains("s3cr"));
        assert!(
            !format!("{s:?}").contains("abc"),
            "private host key in Debug"
        );
    }

    #[test]
    fn instance_id_tracks_content() {
        let a = sample();
        let mut b = a.clone();
        assert_eq!(instance_id_for(&a), instance_id_for(&b));
        b.instance_id = "other".into();
        assert_eq!(instance_id_for(&a), instance_id_for(&b));
        b.provision[0].script.push_str("\necho more");
        assert_ne!(instance_id_for(&a), instance_id_for(&b));
        let mut c = a.clone();
        c.params[0].1 = Secret::new("rotated");
        assert_ne!(instance_id_for(&a), instance_id_for(&c));
        assert!(a.instance_id.starts_with("clawfarm-"));
    }

    #[test]
    fn params_read_back_from_the_seed() {
        let s = sample();
        let img = build_seed_image(&s).unwrap();
        let back = read_seed_params(&img).unwrap();
        let want: Vec<(String, String)> = s
            .params
            .iter()
            .map(|(k, v)| (k.clone(), v.expose().to_string()))
            .collect();
        let got: Vec<(String, String)> = back
            .iter()
            .map(|(k, v)| (k.clone(), v.expose().to_string()))
            .collect();
        assert_eq!(got, want);
    }

    #[test]
    fn scrub_seed_has_no_users_and_runs_the_scrub() {
        let ud = render_scrub_user_data();
        let v: serde_json::Value = serde_saphyr::from_str(&ud).unwrap();
        assert_eq!(v["users"].as_array().unwrap().len(), 0);
        assert_eq!(v["write_files"][0]["path"], SCRUB_PATH);
        assert_eq!(
            b64_decode(v["write_files"][0]["content"].as_str().unwrap()),
            SCRUB_SH.as_bytes()
        );
        assert!(
            v["runcmd"][0]
                .as_array()
                .unwrap()
                .iter()
                .any(|a| a == SCRUB_PATH)
        );
        assert!(
            v["bootcmd"][0]
                .as_str()
                .unwrap()
                .contains(RUNNER_CONFIG_PATH)
        );
        let img = build_scrub_seed_image("clawfarm-export-x").unwrap();
        assert!(read_seed_params(&img).unwrap().is_empty());
    }

    #[test]
    fn ca_certs_and_proxy_reach_cloud_init_and_the_phases() {
        let plain = render_user_data(&sample());
        assert!(!plain.contains("ca_certs") && !plain.contains("proxy"));
        let mut s = sample();
        let pem = "-----BEGIN CERTIFICATE-----\nMIIB\n-----END CERTIFICATE-----\n";
        s.ca_certs = split_pem(&format!("junk\n{pem}{pem}"));
        assert_eq!(s.ca_certs.len(), 2);
        s.proxy = Some(Secret::new("http://10.0.2.2:3128"));
        let v: serde_json::Value = serde_saphyr::from_str(&render_user_data(&s)).unwrap();
        let files = v["write_files"].as_array().unwrap();
        let ca: Vec<&serde_json::Value> = files
            .iter()
            .filter(|f| f["path"].as_str().unwrap().starts_with(CA_DIR))
            .collect();
        assert_eq!(ca.len(), 2);
        assert_eq!(ca[0]["content"], pem);
        assert_eq!(v["runcmd"][0][0], "update-ca-certificates");
        assert_eq!(v["apt"]["https_proxy"], "http://10.0.2.2:3128");
        let env = render_params_env(&s);
        assert!(
            env.contains("https_proxy='http://10.0.2.2:3128'\n"),
            "{env}"
        );
        assert!(env.contains("NODE_EXTRA_CA_CERTS='/etc/ssl/certs/ca-certificates.crt'"));
        let etc = v["write_files"]
            .as_array()
            .unwrap()
            .iter()
            .find(|f| f["path"] == "/etc/environment")
            .unwrap();
        assert_eq!(etc["append"], true);
        assert_ne!(instance_id_for(&s), instance_id_for(&sample()));
    }

    #[test]
    fn meta_and_network() {
        let s = sample();
        let md = render_meta_data(&s);
        let v: serde_json::Value = serde_saphyr::from_str(&md).unwrap();
        assert_eq!(v["instance-id"], s.instance_id.as_str());
        assert_eq!(v["local-hostname"], "claw-1");
        let nc: serde_json::Value = serde_saphyr::from_str(&render_network_config()).unwrap();
        assert_eq!(nc["version"], 2);
        assert_eq!(nc["ethernets"]["eth0"]["dhcp4"], true);
    }

    #[test]
    fn validation_rejects_bad_input() {
        let ok = sample();
        validate(&ok).unwrap();
        let cases: Vec<fn(&mut SeedInput)> = vec![
            |s| s.hostname = "bad host".into(),
            |s| s.hostname = String::new(),
            |s| s.instance_id = String::new(),
            |s| s.params.push(("1BAD".into(), Secret::new("x"))),
            |s| s.params.push(("A-B".into(), Secret::new("x"))),
            |s| s.payload_serial = Some("has space".into()),
            |s| s.payload_serial = Some("a-serial-longer-than-20".into()),
            |s| s.volumes.push(("v".into(), "relative".into())),
            |s| s.volumes.push(("v".into(), "/a/../b".into())),
            |s| s.ssh_authorized_key = String::new(),
            |s| s.host_key_private = "nope".into(),
        ];
        for (i, f) in cases.iter().enumerate() {
            let mut s = ok.clone();
            f(&mut s);
            assert!(validate(&s).is_err(), "case {i} accepted");
            assert!(build_seed_image(&s).is_err());
        }
    }

    #[test]
    fn seed_image_is_fat_with_label_and_long_names() {
        let s = sample();
        let img = build_seed_image(&s).unwrap();
        let fs = fatfs::FileSystem::new(Cursor::new(img), fatfs::FsOptions::new()).unwrap();
        assert_eq!(fs.volume_label(), "CIDATA");
        assert!(matches!(
            fs.fat_type(),
            fatfs::FatType::Fat12 | fatfs::FatType::Fat16
        ));
        let mut names: Vec<String> = fs
            .root_dir()
            .iter()
            .map(|e| e.unwrap().file_name())
            .collect();
        names.sort();
        assert_eq!(names, ["meta-data", "network-config", "user-data"]);
        let mut ud = String::new();
        fs.root_dir()
            .open_file("user-data")
            .unwrap()
            .read_to_string(&mut ud)
            .unwrap();
        assert_eq!(ud, render_user_data(&s));
    }

    #[test]
    fn big_scripts_fit() {
        let mut s = sample();
        s.install_script = "echo x\n".repeat(300_000);
        let img = build_seed_image(&s).unwrap();
        let fs = fatfs::FileSystem::new(Cursor::new(img), fatfs::FsOptions::new()).unwrap();
        let mut ud = String::new();
        fs.root_dir()
            .open_file("user-data")
            .unwrap()
            .read_to_string(&mut ud)
            .unwrap();
        assert_eq!(ud.len(), render_user_data(&s).len());
    }

    #[test]
    fn write_seed_is_0600_and_names_the_file_on_error() {
        use std::os::unix::fs::PermissionsExt;
        let d = tempfile::tempdir().unwrap();
        let p = d.path().join("seed.img");
        write_seed(&p, &sample()).unwrap();
        let m = std::fs::metadata(&p).unwrap();
        assert_eq!(m.permissions().mode() & 0o777, 0o600);
        let bad = d.path().join("missing-dir").join("seed.img");
        let e = write_seed(&bad, &sample()).unwrap_err();
        assert!(e.to_string().contains("missing-dir"), "{e}");
    }
}
