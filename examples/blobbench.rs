//! Hidden benchmark driver for `scripts/bench-blobs.sh` (not part of the CLI).
//!
//! ```text
//! blobbench gen FILE MIB        write MIB MiB of semi-compressible data (about 2:1 with gzip)
//! blobbench verify FILE         SHA-256 of FILE the way the blob store verifies blobs
//! blobbench import BOX HOME     import BOX into the runtime root HOME
//! ```
//! Each command prints one line to stdout: `<result> <seconds>`.

use std::io::{BufWriter, Write};
use std::path::Path;
use std::process::ExitCode;
use std::time::Instant;

fn generate(path: &Path, mib: usize) -> std::io::Result<()> {
    const WORDS: &[&str] = &[
        "kernel ",
        "module ",
        "systemd ",
        "libc.so.6 ",
        "/usr/lib/",
        "0000 ",
        "config=",
        "agent ",
        "sandbox ",
        "qcow2 ",
        "\n",
        "true ",
        "false ",
        "python3 ",
        "node_modules/",
    ];
    let mut out = BufWriter::with_capacity(1 << 20, std::fs::File::create(path)?);
    let mut x: u64 = 0x9e37_79b9_7f4a_7c15;
    let mut block = vec![0u8; 64 << 10];
    for _ in 0..mib * 16 {
        // 24 KiB of noise, then 40 KiB of text-like runs: gzip -1 gets about 2:1.
        for chunk in block[..24 << 10].chunks_mut(8) {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            chunk.copy_from_slice(&x.to_le_bytes()[..chunk.len()]);
        }
        let mut i = 24 << 10;
        while i < block.len() {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            let w = WORDS[(x % WORDS.len() as u64) as usize].as_bytes();
            let n = w.len().min(block.len() - i);
            block[i..i + n].copy_from_slice(&w[..n]);
            i += n;
        }
        out.write_all(&block)?;
    }
    out.flush()
}

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let t = Instant::now();
    let result: Result<String, String> = match args.iter().map(String::as_str).collect::<Vec<_>>()[..]
    {
        ["gen", file, mib] => mib
            .parse()
            .map_err(|e| format!("bad size: {e}"))
            .and_then(|m| generate(Path::new(file), m).map_err(|e| e.to_string()))
            .map(|()| "ok".into()),
        ["verify", file] => {
            clawfarm::store::part::hash_file(Path::new(file)).map_err(|e| e.to_string())
        }
        ["import", bx, home] => {
            let home = clawfarm::home::Home::new(home);
            clawfarm::store::bundle::import_blocking(
                &home,
                Path::new(bx),
                &clawfarm::store::progress::Progress::silent(),
                &clawfarm::store::bundle::ImportOptions::default(),
            )
            .map(|b| b.digest)
            .map_err(|e| {
                let mut s = e.to_string();
                let mut src = std::error::Error::source(&e);
                while let Some(c) = src {
                    s.push_str(&format!(": {c}"));
                    src = c.source();
                }
                s
            })
        }
        _ => Err("usage: blobbench gen FILE MIB | verify FILE | import BOX HOME".into()),
    };
    match result {
        Ok(r) => {
            println!("{r} {:.3}", t.elapsed().as_secs_f64());
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("blobbench: {e}");
            ExitCode::FAILURE
        }
    }
}
