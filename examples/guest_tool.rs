//! Host-side helper for guest bring-up tests (used by `scripts/boot-bare.sh`).
//!
//! ```text
//! guest_tool seed --out DIR [--hostname H] [--install FILE] [--start FILE]
//!                 [--provision NAME=FILE]... [--param KEY=VALUE]...
//!                 [--payload-serial SERIAL] [--volume SERIAL:/guest/path]...
//!     Generates the login key (DIR/id_ed25519{,.pub}) and the guest host key
//!     (DIR/host_ed25519.pub), writes DIR/seed.img with clawfarm::driver::qemu::seed::write_seed and
//!     DIR/instance-id. Prints the seed path.
//! guest_tool status FILE NONCE
//!     Parses a status log (or serial log) with clawfarm::driver::qemu::guest::read_status and prints one
//!     JSON object: {"booted", "done", "failed": {"phase","code","tail"}|null, "last", "summary"}.
//! guest_tool nonce
//!     Prints a fresh boot nonce.
//! ```

use clap::{Parser, Subcommand};
use clawfarm::driver::qemu::seed::{ProvisionStep, SeedInput};
use clawfarm::driver::qemu::{guest, seed, sshkeys};
use clawfarm::util::secret::Secret;
use std::path::PathBuf;
use std::process::ExitCode;

#[derive(Parser)]
struct Cli {
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Subcommand)]
enum Cmd {
    /// Write keys and a seed image into a folder.
    Seed {
        #[arg(long)]
        out: PathBuf,
        #[arg(long, default_value = "claw-bare")]
        hostname: String,
        #[arg(long)]
        install: Option<PathBuf>,
        #[arg(long)]
        start: Option<PathBuf>,
        /// NAME=FILE (NAME may be empty); FILE may start with a `#!shell` line naming the
        /// interpreter to use instead of /bin/bash.
        #[arg(long)]
        provision: Vec<String>,
        /// KEY=VALUE
        #[arg(long)]
        param: Vec<String>,
        /// virtio-blk serial of the payload disk (e.g. claw-payload).
        #[arg(long)]
        payload_serial: Option<String>,
        /// SERIAL:/guest/path of a volume disk
        #[arg(long)]
        volume: Vec<String>,
    },
    /// Parse a status log for a nonce.
    Status { file: PathBuf, nonce: String },
    /// Print a fresh nonce.
    Nonce,
}

fn read(p: &Option<PathBuf>) -> anyhow::Result<String> {
    Ok(match p {
        Some(p) => std::fs::read_to_string(p)
            .map_err(|e| anyhow::anyhow!("reading {}: {e}", p.display()))?,
        None => String::new(),
    })
}

fn run() -> anyhow::Result<()> {
    match Cli::parse().cmd {
        Cmd::Nonce => println!("{}", guest::new_nonce()),
        Cmd::Status { file, nonce } => {
            let st = guest::read_status(&file, &nonce)?;
            let v = serde_json::json!({
                "booted": st.booted,
                "done": st.done,
                "failed": st.failed.as_ref().map(|f| serde_json::json!({
                    "phase": f.phase, "code": f.code, "tail": f.tail})),
                "last": st.last,
                "summary": st.summary(),
            });
            println!("{v}");
        }
        Cmd::Seed {
            out,
            hostname,
            install,
            start,
            provision,
            param,
            payload_serial,
            volume,
        } => {
            std::fs::create_dir_all(&out)?;
            let login = sshkeys::generate("clawfarm-bare")?;
            let host = sshkeys::generate(&format!("root@{hostname}"))?;
            clawfarm::util::fsutil::write_atomic(
                &out.join("id_ed25519"),
                login.private_openssh.as_bytes(),
                0o600,
            )?;
            std::fs::write(
                out.join("id_ed25519.pub"),
                format!("{}\n", login.public_line),
            )?;
            std::fs::write(
                out.join("host_ed25519.pub"),
                format!("{}\n", host.public_line),
            )?;
            let mut steps = Vec::new();
            for p in provision {
                let (name, file) = p
                    .split_once('=')
                    .ok_or_else(|| anyhow::anyhow!("--provision wants NAME=FILE, got {p}"))?;
                let script = read(&Some(PathBuf::from(file)))?;
                let shell = script
                    .lines()
                    .next()
                    .and_then(|l| l.strip_prefix("#!"))
                    .map(|s| s.trim().to_string());
                steps.push(ProvisionStep {
                    name: (!name.is_empty()).then(|| name.to_string()),
                    shell,
                    script,
                });
            }
            let mut params = Vec::new();
            for kv in param {
                let (k, v) = kv
                    .split_once('=')
                    .ok_or_else(|| anyhow::anyhow!("--param wants KEY=VALUE"))?;
                params.push((k.to_string(), Secret::new(v)));
            }
            let mut volumes = Vec::new();
            for tv in volume {
                let (t, p) = tv
                    .split_once(':')
                    .ok_or_else(|| anyhow::anyhow!("--volume wants SERIAL:/path, got {tv}"))?;
                volumes.push((t.to_string(), p.to_string()));
            }
            let mut input = SeedInput {
                instance_id: String::new(),
                hostname,
                ssh_authorized_key: login.public_line.clone(),
                host_key_private: host.private_openssh.clone(),
                host_key_public: host.public_line.clone(),
                params,
                install_script: read(&install)?,
                start_script: read(&start)?,
                provision: steps,
                payload_serial,
                volumes,
                ..SeedInput::default()
            };
            input.instance_id = seed::instance_id_for(&input);
            let path = out.join("seed.img");
            seed::write_seed(&path, &input)?;
            std::fs::write(out.join("instance-id"), format!("{}\n", input.instance_id))?;
            println!("{}", path.display());
        }
    }
    Ok(())
}

fn main() -> ExitCode {
    match run() {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("guest_tool: {e:#}");
            ExitCode::FAILURE
        }
    }
}
