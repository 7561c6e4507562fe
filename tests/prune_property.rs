//! Property: for random corruptions (truncation, byte flips, deleted runs) of a random
//! manifest file, `apply --prune` never deletes an instance whose file still exists, unless
//! the corrupted file is still a valid manifest set that no longer declares it (and then
//! the apply succeeded). Runs the real binary on the fake driver.

use std::path::PathBuf;
use std::process::{Command, Stdio};

use proptest::prelude::*;

fn clawspec_json() -> String {
    serde_json::json!({
        "schema_version": 3,
        "name": "demo",
        "image": [{"name": "base", "ref": "https://example.invalid/base.qcow2",
                   "sha256": "a".repeat(64)}],
        "bootstrap": {"id": "openclaw", "install_script": "true", "start_script": "true",
                      "params": {"required": [], "optional": []}}
    })
    .to_string()
}

struct World {
    _t: tempfile::TempDir,
    home: PathBuf,
    dir: PathBuf,
    files: Vec<(PathBuf, String)>,
}

impl World {
    fn new() -> World {
        let t = tempfile::tempdir().unwrap();
        let home = t.path().join("home");
        let dir = t.path().join("agents");
        std::fs::create_dir_all(&dir).unwrap();
        std::fs::write(t.path().join("demo.clawbox"), clawspec_json()).unwrap();
        let files = vec![
            (
                dir.join("alpha.yaml"),
                "apiVersion: clawfarm/v1\nkind: Claw\nmetadata:\n  name: alpha\nspec:\n  \
                 clawbox: ../demo.clawbox\n  cpus: 2\n"
                    .to_string(),
            ),
            (
                dir.join("beta.json"),
                r#"{"apiVersion": "clawfarm/v1", "kind": "Claw", "metadata": {"name": "beta"}, "spec": {"clawbox": "../demo.clawbox"}}"#
                    .to_string(),
            ),
            (
                dir.join("gamma.yaml"),
                "apiVersion: clawfarm/v1\nkind: Claw\nmetadata:\n  name: gamma\nspec:\n  \
                 clawbox: ../demo.clawbox\n  replicas: 2\n---\napiVersion: clawfarm/v1\n\
                 kind: Claw\nmetadata:\n  name: delta\nspec:\n  clawbox: ../demo.clawbox\n"
                    .to_string(),
            ),
        ];
        for (p, s) in &files {
            std::fs::write(p, s).unwrap();
        }
        World {
            _t: t,
            home,
            dir,
            files,
        }
    }

    fn apply(&self) -> i32 {
        self.apply_out().0
    }

    fn apply_out(&self) -> (i32, String) {
        let o = Command::new(env!("CARGO_BIN_EXE_clawfarm"))
            .args(["apply", "--prune", "-f", self.dir.to_str().unwrap()])
            .env("CLAWFARM_HOME", &self.home)
            .env("CLAWFARM_DRIVER", "fake")
            .stdin(Stdio::null())
            .output()
            .unwrap();
        (
            o.status.code().unwrap_or(-1),
            format!(
                "{}{}",
                String::from_utf8_lossy(&o.stdout),
                String::from_utf8_lossy(&o.stderr)
            ),
        )
    }

    fn instances(&self) -> Vec<String> {
        let mut v: Vec<String> = std::fs::read_dir(self.home.join("claws"))
            .map(|rd| {
                rd.flatten()
                    .map(|e| e.file_name().to_string_lossy().into_owned())
                    .collect()
            })
            .unwrap_or_default();
        v.sort();
        v
    }
}

#[derive(Debug, Clone)]
enum Corruption {
    Truncate(usize),
    Flip(usize, u8),
    Delete(usize, usize),
}

fn corrupt(text: &str, c: &Corruption) -> Vec<u8> {
    let mut b = text.as_bytes().to_vec();
    let n = b.len();
    if n == 0 {
        return b;
    }
    match *c {
        Corruption::Truncate(at) => b.truncate(at % (n + 1)),
        Corruption::Flip(at, x) => b[at % n] ^= x.max(1),
        Corruption::Delete(at, len) => {
            let at = at % n;
            let end = (at + 1 + len % 8).min(n);
            b.drain(at..end);
        }
    }
    b
}

fn corruption() -> impl Strategy<Value = Corruption> {
    prop_oneof![
        any::<usize>().prop_map(Corruption::Truncate),
        (any::<usize>(), any::<u8>()).prop_map(|(a, x)| Corruption::Flip(a, x)),
        (any::<usize>(), any::<usize>()).prop_map(|(a, l)| Corruption::Delete(a, l)),
    ]
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 200, failure_persistence: None, ..ProptestConfig::default() })]

    #[test]
    fn prune_never_deletes_what_a_broken_file_described(
        which in 0usize..3,
        cs in proptest::collection::vec(corruption(), 1..3),
    ) {
        thread_local! {
            static WORLD: World = {
                let w = World::new();
                let (code, out) = w.apply_out();
                assert_eq!(code, 0, "{out}");
                assert_eq!(w.instances().len(), 5);
                w
            };
        }
        WORLD.with(|w| {
            let all = w.instances();
            let (path, good) = &w.files[which];
            let mut bytes = good.clone().into_bytes();
            for c in &cs {
                bytes = corrupt(&String::from_utf8_lossy(&bytes), c);
            }
            std::fs::write(path, &bytes).unwrap();
            let code = w.apply();
            let after = w.instances();
            // Put the file back and converge again for the next case.
            std::fs::write(path, good).unwrap();
            let (back, out) = w.apply_out();
            assert_eq!(back, 0, "after {cs:?} of {path:?} ({}): {out}", String::from_utf8_lossy(&bytes));
            if after.len() < all.len() {
                prop_assert_eq!(
                    code, 0,
                    "{:?} of {:?} deleted {:?} although the apply failed ({})",
                    cs, path, all.iter().filter(|i| !after.contains(i)).collect::<Vec<_>>(),
                    String::from_utf8_lossy(&bytes)
                );
            }
            Ok(())
        })?;
    }
}
