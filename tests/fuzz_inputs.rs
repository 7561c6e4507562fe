//! A bounded fuzz harness that runs in CI (proptest, fixed case counts): mutations of valid
//! seeds and raw bytes fed to the manifest parser, the clawspec parser and the bundle
//! importer. The properties: no panic, every refusal is an error value, and a refused
//! import leaves nothing behind in the home. More cases: `PROPTEST_CASES=N`.

#[path = "common/blobkit.rs"]
mod blobkit;

use std::path::Path;

use blobkit::*;
use clawfarm::input::clawspec::ClawSpec;
use clawfarm::input::manifest::parse_str;
use clawfarm::store::bundle;
use clawfarm::store::progress::Progress;
use proptest::prelude::*;

const MANIFEST: &str = "apiVersion: clawfarm/v1\nkind: Claw\nmetadata:\n  name: alpha\n\
spec:\n  clawbox: ../demo.clawbox\n  replicas: 2\n  cpus: 2\n  memory: 2GiB\n  ports:\n  \
- {host: 18789, guest: 18789, name: gateway}\n  params:\n    KEY: {env: K}\n    MODEL: gpt\n\
  volumes: [{name: data, guestPath: /srv/data}]\n---\n{\"apiVersion\": \"clawfarm/v1\", \
\"kind\": \"Claw\", \"metadata\": {\"name\": \"b\"}, \"spec\": {\"clawbox\": \"x\"}}\n";

fn clawspec_seed() -> String {
    clawspec(
        "fuzz",
        ("ubuntu:24.04", &"1".repeat(64)),
        Some(("clawbox:///run.qcow2", &"2".repeat(64))),
    )
}

/// A mutation: (position, kind, byte).
fn mutate(seed: &[u8], muts: &[(usize, u8, u8)]) -> Vec<u8> {
    let mut b = seed.to_vec();
    for &(at, kind, x) in muts {
        if b.is_empty() {
            b.push(x);
            continue;
        }
        let i = at % b.len();
        match kind % 5 {
            0 => b[i] ^= x.max(1),
            1 => {
                b.remove(i);
            }
            2 => b.insert(i, x),
            3 => b.truncate(i),
            _ => {
                // Duplicate a run (nesting, repeated keys).
                let end = (i + 1 + x as usize % 32).min(b.len());
                let run: Vec<u8> = b[i..end].to_vec();
                b.splice(i..i, run);
            }
        }
    }
    b
}

fn mutations() -> impl Strategy<Value = Vec<(usize, u8, u8)>> {
    proptest::collection::vec((any::<usize>(), any::<u8>(), any::<u8>()), 1..8)
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 2000, failure_persistence: None, ..ProptestConfig::default() })]

    #[test]
    fn manifest_parser_never_panics(muts in mutations()) {
        let bytes = mutate(MANIFEST.as_bytes(), &muts);
        let text = String::from_utf8_lossy(&bytes);
        if let Err(diags) = parse_str(Path::new("/fuzz/a.yaml"), &text) {
            prop_assert!(!diags.is_empty());
            prop_assert!(diags.len() <= 21, "capped: {}", diags.len());
        }
    }

    #[test]
    fn manifest_parser_takes_any_bytes(bytes in proptest::collection::vec(any::<u8>(), 0..512)) {
        let _ = parse_str(Path::new("/fuzz/a.yaml"), &String::from_utf8_lossy(&bytes));
    }

    #[test]
    fn clawspec_parser_never_panics(muts in mutations()) {
        let _ = ClawSpec::parse(&mutate(clawspec_seed().as_bytes(), &muts));
    }
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 150, failure_persistence: None, ..ProptestConfig::default() })]

    /// Mutated tar.gz bundles (mutations of the decompressed tar, recompressed, and of the
    /// compressed bytes): import never panics; a refused import leaves nothing behind.
    #[test]
    fn bundle_importer_never_panics_and_leaves_nothing_on_refusal(
        muts in mutations(),
        on_gzip in any::<bool>(),
    ) {
        let run = qcow2(None, false, 4096);
        let spec = clawspec(
            "fuzz",
            ("ubuntu:24.04", &"1".repeat(64)),
            Some(("clawbox:///run.qcow2", &sha(&run))),
        );
        let d = tempfile::tempdir().unwrap();
        let good = raw_tar_gz(
            &[
                Raw::file("clawspec.json", spec.as_bytes()),
                Raw::file("run.qcow2", &run),
                Raw::dir("claw/"),
                Raw::file("claw/a.txt", b"payload"),
            ],
            &d.path().join("good.clawbox"),
        );
        let gzbytes = std::fs::read(&good).unwrap();
        let bytes = if on_gzip {
            mutate(&gzbytes, &muts)
        } else {
            let mut dec = flate2::read::GzDecoder::new(&gzbytes[..]);
            let mut tar = Vec::new();
            std::io::Read::read_to_end(&mut dec, &mut tar).unwrap();
            gz(&mutate(&tar, &muts))
        };
        let b = d.path().join("fuzz.clawbox");
        std::fs::write(&b, &bytes).unwrap();
        let (_hd, home) = home();
        let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
        let r = rt.block_on(bundle::import(&home, &b, &Progress::silent()));
        if r.is_err() {
            assert_nothing_left(&home);
        }
    }
}
