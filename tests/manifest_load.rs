//! `manifest::load`: folders, several files, bad files, names across files.

use std::fs;
use std::path::{Path, PathBuf};

use clawfarm::input::manifest::{load, names_in_file_best_effort};

const FIX: &str = "tests/fixtures/manifests";

fn claw(name: &str, extra: &str) -> String {
    format!(
        "apiVersion: clawfarm/v1\nkind: Claw\nmetadata:\n  name: {name}\nspec:\n  clawbox: ./b.clawbox\n{extra}"
    )
}

fn write(dir: &Path, rel: &str, text: &str) -> PathBuf {
    let p = dir.join(rel);
    fs::create_dir_all(p.parent().unwrap()).unwrap();
    fs::write(&p, text).unwrap();
    p
}

#[test]
fn valid_fixtures_load_cleanly() {
    let r = load(&[PathBuf::from(format!("{FIX}/valid"))]);
    assert!(r.diagnostics.is_empty(), "{:#?}", r.diagnostics);
    assert!(!r.has_errors());
    assert!(r.bad_files.is_empty());
    let files: Vec<String> = r.files.iter().map(|f| f.display().to_string()).collect();
    assert_eq!(
        files,
        vec![
            format!("{FIX}/valid/demo-a.yaml"),
            format!("{FIX}/valid/multi.yaml"),
            format!("{FIX}/valid/team/from-json.json"),
            format!("{FIX}/valid/team/minimal.yml"),
        ]
    );
    let names: Vec<&str> = r.claws.iter().map(|c| c.name.as_str()).collect();
    assert_eq!(
        names,
        vec!["demo-a", "worker", "idle", "json-one", "minimal"]
    );
}

#[test]
fn three_bad_files_are_all_reported_in_one_run() {
    let r = load(&[
        PathBuf::from(format!("{FIX}/invalid")),
        PathBuf::from(format!("{FIX}/valid")),
    ]);
    let got: Vec<String> = r.diagnostics.iter().map(|d| d.to_string()).collect();
    assert_eq!(
        got,
        vec![
            format!(
                "{FIX}/invalid/bad-memory.yaml:7:11: spec.memory: invalid memory size \"2GB\": use a number of MiB (e.g. 2048) or a size such as 512MiB, 2GiB or 1.5GiB"
            ),
            format!("{FIX}/invalid/syntax.yaml:7:10: invalid YAML: unclosed bracket '['"),
            format!(
                "{FIX}/invalid/unknown-field.yaml:7:3: unknown field \"cpu\" in spec; did you mean \"cpus\"?"
            ),
        ]
    );
    let bad: Vec<String> = r
        .bad_files
        .iter()
        .map(|f| f.display().to_string())
        .collect();
    assert_eq!(
        bad,
        vec![
            format!("{FIX}/invalid/bad-memory.yaml"),
            format!("{FIX}/invalid/syntax.yaml"),
            format!("{FIX}/invalid/unknown-field.yaml"),
        ]
    );
    // the good files still give their documents; the bad ones give none
    assert_eq!(r.claws.len(), 5);
    assert!(r.claws.iter().all(|c| !c.name.starts_with("bad-")));
    assert_eq!(r.files.len(), 7);
}

#[test]
fn duplicate_name_across_files_names_both_and_drops_both() {
    let t = tempfile::tempdir().unwrap();
    let a = write(t.path(), "a.yaml", &claw("same", ""));
    let b = write(
        t.path(),
        "sub/b.yaml",
        &format!("{}---\n{}", claw("other", ""), claw("same", "")),
    );
    write(t.path(), "c.yaml", &claw("fine", ""));
    let r = load(&[t.path().to_path_buf()]);
    let got: Vec<String> = r.diagnostics.iter().map(|d| d.to_string()).collect();
    assert_eq!(
        got,
        vec![format!(
            "{}:11:9: duplicate name \"same\" (also defined at {}:4:9)",
            b.display(),
            a.display()
        )]
    );
    assert_eq!(r.bad_files.iter().cloned().collect::<Vec<_>>(), vec![a, b]);
    let names: Vec<&str> = r.claws.iter().map(|c| c.name.as_str()).collect();
    assert_eq!(names, vec!["fine"]);
}

#[test]
fn duplicate_name_with_a_file_that_has_other_errors() {
    // b.yaml is broken elsewhere but still declares "same": a.yaml is dropped too, so the
    // engine never sees one "same" wanted and another "same" protected.
    let t = tempfile::tempdir().unwrap();
    let a = write(t.path(), "a.yaml", &claw("same", ""));
    let b = write(t.path(), "b.yaml", &claw("same", "  cpus: 0\n"));
    let r = load(&[t.path().to_path_buf()]);
    assert_eq!(r.diagnostics.len(), 2, "{:?}", r.diagnostics);
    assert_eq!(r.bad_files.len(), 2);
    assert!(r.bad_files.contains(&a) && r.bad_files.contains(&b));
    assert!(r.claws.is_empty());
}

#[test]
fn instance_names_collide_across_files() {
    let t = tempfile::tempdir().unwrap();
    let a = write(t.path(), "a.yaml", &claw("web", "  replicas: 3\n"));
    let b = write(t.path(), "b.yaml", &claw("web-2", ""));
    let r = load(&[t.path().to_path_buf()]);
    let got: Vec<String> = r.diagnostics.iter().map(|d| d.to_string()).collect();
    assert_eq!(
        got,
        vec![format!(
            "{}:4:9: instance name collision: \"web-2\" is the same as instance \"web-2\" of \"web\" (replicas: 3) defined at {}:4:9",
            b.display(),
            a.display()
        )]
    );
    assert_eq!(r.bad_files.len(), 2);
}

#[test]
fn folder_walk_skips_hidden_and_editor_files() {
    let t = tempfile::tempdir().unwrap();
    let d = t.path();
    write(d, "b.yaml", &claw("b", ""));
    write(d, "a.yml", &claw("a", ""));
    write(
        d,
        "z/c.json",
        "{\"apiVersion\":\"clawfarm/v1\",\"kind\":\"Claw\",\"metadata\":{\"name\":\"c\"},\"spec\":{\"clawbox\":\"x\"}}",
    );
    // all of these would fail if read
    for junk in [
        ".hidden.yaml",
        ".git/config.yaml",
        "b.yaml~",
        ".#b.yaml",
        "#b.yaml#",
        ".b.yaml.swp",
        "notes.txt",
        "README.md",
        "x.yaml.swp",
    ] {
        write(d, junk, "{{{ not yaml");
    }
    let r = load(&[d.to_path_buf()]);
    assert!(r.diagnostics.is_empty(), "{:#?}", r.diagnostics);
    let rel: Vec<String> = r
        .files
        .iter()
        .map(|f| f.strip_prefix(d).unwrap().display().to_string())
        .collect();
    assert_eq!(rel, vec!["a.yml", "b.yaml", "z/c.json"]);
    let names: Vec<&str> = r.claws.iter().map(|c| c.name.as_str()).collect();
    assert_eq!(names, vec!["a", "b", "c"]);
}

#[test]
fn explicit_files_are_read_whatever_their_extension_and_only_once() {
    let t = tempfile::tempdir().unwrap();
    let f = write(t.path(), "claw.txt", &claw("a", ""));
    let g = write(t.path(), "g.yaml", &claw("g", ""));
    let r = load(&[f.clone(), t.path().to_path_buf(), g.clone()]);
    assert!(r.diagnostics.is_empty(), "{:#?}", r.diagnostics);
    assert_eq!(r.files, vec![f, g]);
    assert_eq!(r.claws.len(), 2);
}

#[test]
fn missing_path_and_unreadable_content() {
    let t = tempfile::tempdir().unwrap();
    let missing = t.path().join("nope");
    let bin = t.path().join("bin.yaml");
    fs::write(&bin, b"apiVersion: clawfarm/v1\nkind: \xff\n").unwrap();
    let r = load(&[missing.clone(), t.path().to_path_buf()]);
    let got: Vec<String> = r.diagnostics.iter().map(|d| d.to_string()).collect();
    assert_eq!(got.len(), 2, "{got:?}");
    assert_eq!(
        got[0],
        format!("{}:2:7: file is not valid UTF-8", bin.display())
    );
    assert!(
        got[1].starts_with(&format!("{}: cannot read: ", missing.display())),
        "{got:?}"
    );
    assert!(r.bad_files.contains(&missing) && r.bad_files.contains(&bin));
}

#[test]
fn many_files_are_parsed_in_order() {
    let t = tempfile::tempdir().unwrap();
    for i in 0..300 {
        let extra = if i == 123 { "  cpus: 0\n" } else { "" };
        write(
            t.path(),
            &format!("m{i:04}.yaml"),
            &claw(&format!("c{i}"), extra),
        );
    }
    let r = load(&[t.path().to_path_buf()]);
    assert_eq!(r.files.len(), 300);
    assert_eq!(r.claws.len(), 299);
    assert_eq!(r.diagnostics.len(), 1);
    assert!(r.diagnostics[0].loc.file.ends_with("m0123.yaml"));
    let names: Vec<String> = r.claws.iter().map(|c| c.name.clone()).collect();
    let expected: Vec<String> = (0..300)
        .filter(|i| *i != 123)
        .map(|i| format!("c{i}"))
        .collect();
    assert_eq!(names, expected);
}

#[test]
fn best_effort_names_of_broken_files() {
    // YAML syntax error after two documents; the third name is only found by the line scan
    let text = "\
apiVersion: clawfarm/v1
kind: Claw
metadata:
  name: alpha   # first
spec: {clawbox: x, cpu: 1}
---
kind: Claw
metadata: {name: \"beta\", labels: {}}
---
metadata:
  labels:
    name: not-this-one
  name: 'gamma'
spec:
  name: nor-this
  ports: [{host: 1
";
    assert_eq!(
        names_in_file_best_effort(text),
        vec!["alpha", "beta", "gamma"]
    );
    // a file that is not YAML at all
    assert_eq!(
        names_in_file_best_effort(
            "metadata:\n\tname: tabbed\n---\n- metadata:\n    name: delta\n{{{"
        ),
        vec!["tabbed", "delta"]
    );
    assert!(names_in_file_best_effort("").is_empty());
    assert!(names_in_file_best_effort(":::\n- [").is_empty());
}

/// The parse cache of `watch`: an unchanged file is reused, an edited one (even of the same
/// size) is parsed again, a removed one leaves the cache, and the result is always the
/// result of an uncached load.
#[test]
fn cached_load_sees_every_edit_and_matches_an_uncached_load() {
    use clawfarm::input::manifest::{Cache, load_cached};
    let tmp = tempfile::tempdir().unwrap();
    let d = tmp.path();
    write(d, "a.yaml", &claw("alpha", "  cpus: 2\n"));
    write(d, "b.yaml", &claw("bravo", ""));
    let paths = [d.to_path_buf()];
    // Files just written are never trusted by identity alone.
    let settled = Cache::default();
    load_cached(&paths, Some(&settled));
    assert_eq!(settled.len(), 0, "a file changed a moment ago is not kept");
    // Trust identities at once, to see that an identity change is enough.
    let cache = Cache::with_settle(std::time::Duration::ZERO);
    let same = |c: &Cache| {
        let cached = load_cached(&paths, Some(c));
        let fresh = load(&paths);
        assert_eq!(cached.claws, fresh.claws);
        assert_eq!(cached.diagnostics, fresh.diagnostics);
        assert_eq!(cached.bad_files, fresh.bad_files);
        cached
    };
    let r = same(&cache);
    assert_eq!(cache.len(), 2);
    assert_eq!(r.claws[0].cpus, 2);

    // Same size, other content. File times tick coarsely (that is why a real cache waits
    // for SETTLE); step past one tick so that this edit has a new identity.
    let tick = || std::thread::sleep(std::time::Duration::from_millis(30));
    tick();
    write(d, "a.yaml", &claw("alpha", "  cpus: 3\n"));
    let r = same(&cache);
    assert_eq!(r.claws[0].cpus, 3, "an edit of the same size is seen");

    // an edit that breaks the file
    tick();
    write(d, "b.yaml", &claw("bravo", "  cpus: [\n"));
    let r = same(&cache);
    assert_eq!(r.bad_files.len(), 1);
    assert!(
        r.diagnostics[0].to_string().contains("b.yaml:7:"),
        "{:?}",
        r.diagnostics
    );

    fs::remove_file(d.join("b.yaml")).unwrap();
    let r = same(&cache);
    assert_eq!(r.claws.len(), 1);
    assert_eq!(cache.len(), 1, "a removed file leaves the cache");
}

#[test]
fn a_symlink_to_a_manifest_in_the_same_folder_is_the_same_file() {
    let t = tempfile::tempdir().unwrap();
    let real = write(t.path(), "b-real.yaml", &claw("solo", ""));
    // The link sorts first; the real file's own path is the one kept.
    std::os::unix::fs::symlink("b-real.yaml", t.path().join("a-link.yaml")).unwrap();
    let r = load(&[t.path().to_path_buf()]);
    assert!(r.diagnostics.is_empty(), "{:#?}", r.diagnostics);
    assert!(r.bad_files.is_empty(), "{:?}", r.bad_files);
    assert_eq!(r.files, vec![real]);
    let names: Vec<&str> = r.claws.iter().map(|c| c.name.as_str()).collect();
    assert_eq!(names, vec!["solo"]);

    // Two different files with the same name are still a duplicate.
    write(t.path(), "c.yaml", &claw("solo", ""));
    let r = load(&[t.path().to_path_buf()]);
    assert_eq!(r.diagnostics.len(), 1, "{:#?}", r.diagnostics);
    assert!(r.claws.is_empty());
}

/// Hostile inputs are bounded: a file with thousands of errors prints 20 and a count, an
/// oversized file is refused unread, and a symlink into /proc or a symlink loop is skipped
/// with a warning instead of walked.
#[test]
fn hostile_inputs_are_bounded() {
    let t = tempfile::tempdir().unwrap();
    let keys: String = (0..5000).map(|i| format!("  unknown{i}: 1\n")).collect();
    let many = write(t.path(), "many.yaml", &claw("many", &keys));
    let r = load(std::slice::from_ref(&many));
    assert_eq!(r.diagnostics.len(), 21, "{:#?}", &r.diagnostics[..3]);
    let last = r.diagnostics.last().unwrap().to_string();
    assert!(
        last.contains("and 4980 more problems in this file"),
        "{last}"
    );

    let huge = t.path().join("huge.yaml");
    let mut text = claw("huge", "");
    text.push_str(&"# padding\n".repeat(200_000)); // 2 MB
    fs::write(&huge, text).unwrap();
    let r = load(std::slice::from_ref(&huge));
    assert_eq!(r.diagnostics.len(), 1, "{:#?}", r.diagnostics);
    assert!(r.bad_files.contains(&huge));

    let walk = t.path().join("walk");
    fs::create_dir(&walk).unwrap();
    write(&walk, "ok.yaml", &claw("ok", ""));
    std::os::unix::fs::symlink("/proc", walk.join("proc")).unwrap();
    std::os::unix::fs::symlink(".", walk.join("loop")).unwrap();
    let r = load(std::slice::from_ref(&walk));
    let msgs: Vec<String> = r.diagnostics.iter().map(|d| d.to_string()).collect();
    assert!(
        msgs.iter().any(|m| m.contains("skipped: leads into /proc")),
        "{msgs:?}"
    );
    let names: Vec<&str> = r.claws.iter().map(|c| c.name.as_str()).collect();
    assert_eq!(names, vec!["ok"], "the loop is walked once: {msgs:?}");
}
