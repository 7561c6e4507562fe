//! Manifest parsing: valid documents, and every error case with its exact
//! `FILE:LINE:COL: message`.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use clawfarm::input::manifest::{
    ClawboxRef, DEFAULT_CPUS, DEFAULT_MEMORY_MIB, DesiredState, ParamSource, Port, Volume,
    parse_memory, parse_str,
};

const FILE: &str = "/m/dir/claws.yaml";

/// The diagnostics of `text` as printed lines.
fn errors(text: &str) -> Vec<String> {
    match parse_str(Path::new(FILE), text) {
        Ok(c) => panic!("expected errors, got {} claws", c.len()),
        Err(d) => d.iter().map(|d| d.to_string()).collect(),
    }
}

/// Expect exactly one diagnostic, `LINE:COL: message`.
fn one(text: &str, expected: &str) {
    let got = errors(text);
    assert_eq!(got, vec![format!("{FILE}:{expected}")], "for:\n{text}");
}

fn doc(spec_lines: &str) -> String {
    format!(
        "apiVersion: clawfarm/v1\nkind: Claw\nmetadata:\n  name: demo\nspec:\n  clawbox: ./demo.clawbox\n{spec_lines}"
    )
}

#[test]
fn full_example() {
    let text = "\
apiVersion: clawfarm/v1
kind: Claw
metadata:
  name: demo-a
spec:
  clawbox: ./demo.clawbox
  state: stopped
  replicas: 2
  cpus: 2
  memory: 2GiB
  ports: [{host: 18789, guest: 18789, name: gateway}]
  params:
    MODEL: gpt-4o
    OPENAI_API_KEY: {env: OPENAI_API_KEY}
    OTHER: {file: ../secrets/other.txt}
    COUNT: 012
    RATIO: 1.50
    FLAG: yes
    QUOTED: \"a: b\"
  volumes: [{name: state, guestPath: /root/.openclaw/}]
";
    let claws = parse_str(Path::new(FILE), text).unwrap();
    assert_eq!(claws.len(), 1);
    let c = &claws[0];
    assert_eq!(c.name, "demo-a");
    assert_eq!(c.loc.to_string(), format!("{FILE}:1:1"));
    assert_eq!(c.clawbox, ClawboxRef::Path("/m/dir/demo.clawbox".into()));
    assert_eq!(c.clawbox_loc.to_string(), format!("{FILE}:6:12"));
    assert_eq!(c.state, DesiredState::Stopped);
    assert_eq!(c.replicas, 2);
    assert_eq!(c.instance_names(), vec!["demo-a-0", "demo-a-1"]);
    assert_eq!(c.cpus, 2);
    assert_eq!(c.memory_mib, 2048);
    assert_eq!(
        c.ports,
        vec![Port {
            host: 18789,
            guest: 18789,
            name: Some("gateway".into())
        }]
    );
    let lit = |s: &str| ParamSource::Literal(s.into());
    let expected: BTreeMap<String, ParamSource> = [
        ("MODEL", lit("gpt-4o")),
        ("OPENAI_API_KEY", ParamSource::Env("OPENAI_API_KEY".into())),
        ("OTHER", ParamSource::File("/m/secrets/other.txt".into())),
        // scalars keep their text exactly as written
        ("COUNT", lit("012")),
        ("RATIO", lit("1.50")),
        ("FLAG", lit("yes")),
        ("QUOTED", lit("a: b")),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_string(), v))
    .collect();
    assert_eq!(c.params, expected);
    // param_locs point at each key
    let locs: Vec<String> = ["MODEL", "OPENAI_API_KEY", "OTHER", "QUOTED"]
        .iter()
        .map(|k| c.param_locs[*k].to_string())
        .collect();
    assert_eq!(
        locs,
        vec![
            format!("{FILE}:13:5"),
            format!("{FILE}:14:5"),
            format!("{FILE}:15:5"),
            format!("{FILE}:19:5")
        ]
    );
    assert_eq!(
        c.volumes,
        vec![Volume {
            name: "state".into(),
            guest_path: "/root/.openclaw".into()
        }]
    );
}

#[test]
fn defaults() {
    let c = &parse_str(Path::new(FILE), &doc("")).unwrap()[0];
    assert_eq!(c.state, DesiredState::Running);
    assert_eq!(c.replicas, 1);
    assert_eq!(c.instance_names(), vec!["demo"]);
    assert_eq!(c.cpus, DEFAULT_CPUS);
    assert_eq!(c.memory_mib, DEFAULT_MEMORY_MIB);
    assert!(c.ports.is_empty() && c.params.is_empty() && c.volumes.is_empty());
    // empty (null) lists and maps count as empty
    let c = &parse_str(Path::new(FILE), &doc("  ports:\n  params:\n  volumes: ~\n")).unwrap()[0];
    assert!(c.ports.is_empty() && c.params.is_empty() && c.volumes.is_empty());
}

#[test]
fn clawbox_forms() {
    let get = |v: &str| {
        let t = doc("").replace("./demo.clawbox", v);
        parse_str(Path::new(FILE), &t).unwrap()[0].clawbox.clone()
    };
    assert_eq!(
        get("demo.clawbox"),
        ClawboxRef::Path("/m/dir/demo.clawbox".into())
    );
    assert_eq!(
        get("../../x/./y.clawbox"),
        ClawboxRef::Path("/x/y.clawbox".into())
    );
    assert_eq!(
        get("/abs/b.clawbox"),
        ClawboxRef::Path("/abs/b.clawbox".into())
    );
    let sha = "a".repeat(64);
    for url in [
        "https://h.test/b.clawbox",
        "http://127.0.0.1:8080/b",
        "file:///srv/b.clawbox",
    ] {
        assert_eq!(
            get(&format!("{{url: \"{url}\", sha256: {sha}}}")),
            ClawboxRef::Url {
                url: url.into(),
                sha256: sha.clone()
            }
        );
    }
}

#[test]
fn relative_file_path_is_made_absolute() {
    let c = &parse_str(Path::new("rel/x.yaml"), &doc("")).unwrap()[0];
    let cwd = std::env::current_dir().unwrap();
    assert_eq!(c.clawbox, ClawboxRef::Path(cwd.join("rel/demo.clawbox")));
    // locations keep the path as given
    assert_eq!(c.loc.file, PathBuf::from("rel/x.yaml"));
}

#[test]
fn multi_document_files() {
    let text = "\
---
apiVersion: clawfarm/v1
kind: Claw
metadata: {name: one}
spec: {clawbox: a.clawbox}
---
# only a comment
---
apiVersion: clawfarm/v1
kind: Claw
metadata: {name: two}
spec: {clawbox: b.clawbox, cpus: 3}
...
---
";
    let claws = parse_str(Path::new(FILE), text).unwrap();
    let names: Vec<&str> = claws.iter().map(|c| c.name.as_str()).collect();
    assert_eq!(names, vec!["one", "two"]);
    assert_eq!(claws[1].loc.line, 9);
    assert_eq!(claws[1].cpus, 3);
    // A file with no document at all is an error (an emptied file protects what it
    // described; only deleting the file says "remove").
    for empty in ["", "\n\n", "# nothing\n", "# nothing\n---\n---\n"] {
        let e = parse_str(Path::new(FILE), empty).unwrap_err();
        assert!(
            format!("{e:?}").contains("holds no manifest document"),
            "{empty:?}: {e:?}"
        );
    }
}

#[test]
fn an_error_in_one_document_drops_the_whole_file() {
    let text = format!(
        "{}---\n{}",
        doc(""),
        doc("  cpus: 0\n").replace("demo", "demo2")
    );
    assert_eq!(
        errors(&text),
        vec![format!(
            "{FILE}:14:9: spec.cpus: must be from 1 to 64, got 0"
        )]
    );
}

#[test]
fn api_version_and_kind() {
    one(
        "apiVersion: clawfarm/v2\nkind: Claw\nmetadata: {name: a}\nspec: {clawbox: a}\n",
        "1:13: apiVersion: unsupported apiVersion \"clawfarm/v2\" (expected \"clawfarm/v1\")",
    );
    one(
        "apiVersion: clawfarm/v1\nkind: Pod\nmetadata: {name: a}\nspec: {clawbox: a}\n",
        "2:7: kind: unsupported kind \"Pod\" (expected \"Claw\")",
    );
    one(
        "kind: Claw\nmetadata: {name: a}\nspec: {clawbox: a}\n",
        "1:1: apiVersion: required field is missing",
    );
    one(
        "- a\n- b\n",
        "1:1: a manifest document must be a mapping (apiVersion, kind, metadata, spec), found a list",
    );
}

#[test]
fn missing_fields_point_at_the_parent() {
    one(
        "apiVersion: clawfarm/v1\nkind: Claw\nspec: {clawbox: a}\n",
        "1:1: metadata: required field is missing",
    );
    // both the missing name (at the metadata key) and the unknown field
    assert_eq!(
        errors("apiVersion: clawfarm/v1\nkind: Claw\nmetadata:\n  x: 1\nspec: {clawbox: a}\n"),
        vec![
            format!("{FILE}:3:1: metadata.name: required field is missing"),
            format!("{FILE}:4:3: unknown field \"x\" in metadata (expected one of: name)"),
        ]
    );
}

#[test]
fn unknown_fields() {
    one(
        &doc("  cpu: 2\n"),
        "7:3: unknown field \"cpu\" in spec; did you mean \"cpus\"?",
    );
    one(
        &doc("  foo: 2\n"),
        "7:3: unknown field \"foo\" in spec (expected one of: clawbox, state, replicas, cpus, memory, ports, params, volumes, network)",
    );
    one(
        &format!("{}extra: 1\n", doc("")),
        "7:1: unknown field \"extra\" (expected one of: apiVersion, kind, metadata, spec)",
    );
    one(
        &doc("  ports: [{host: 2000, guest: 1, nmae: x}]\n"),
        "7:34: unknown field \"nmae\" in spec.ports[0]; did you mean \"name\"?",
    );
    one(
        &doc("  params:\n    K: {env: A, default: b}\n"),
        "8:17: unknown field (not shown) in spec.params.K (expected one of: env, file)",
    );
}

#[test]
fn duplicate_keys() {
    one(
        &doc("  cpus: 1\n  cpus: 2\n"),
        "8:3: spec: duplicate key \"cpus\" (first at line 7, column 3)",
    );
}

#[test]
fn metadata_name_rules() {
    let named = |n: &str| doc("").replace("name: demo", &format!("name: {n}"));
    for bad in ["Demo", "-a", "a-", "a_b", "\"\"", &"a".repeat(41)] {
        let got = errors(&named(bad));
        assert_eq!(got.len(), 1, "{bad}: {got:?}");
        assert!(
            got[0].starts_with(&format!("{FILE}:4:9: metadata.name: ")),
            "{got:?}"
        );
        assert!(got[0].contains("is not a valid name"), "{got:?}");
    }
    for good in ["a", "0", "a-b-1", &"a".repeat(40)] {
        assert!(parse_str(Path::new(FILE), &named(good)).is_ok(), "{good}");
    }
    one(
        &named("[a]"),
        "4:9: metadata.name: expected a string, found a list",
    );
}

#[test]
fn clawbox_errors() {
    let with = |v: &str| doc("").replace("./demo.clawbox", v);
    one(
        &with("https://h.test/b.clawbox"),
        "6:12: spec.clawbox: a URL must be pinned by digest: write {url: ..., sha256: ...}",
    );
    one(&with("\"\""), "6:12: spec.clawbox: must not be empty");
    one(
        &with(&format!("{{url: ftp://h/b, sha256: {}}}", "a".repeat(64))),
        "6:18: spec.clawbox.url: must be an http://, https:// or file:// URL",
    );
    one(
        &with("{url: https://h/b, sha256: ABC}"),
        "6:39: spec.clawbox.sha256: must be 64 lowercase hex characters",
    );
    one(
        &with("{url: https://h/b}"),
        "6:12: spec.clawbox.sha256: required field is missing",
    );
    one(
        &with("[a]"),
        "6:12: spec.clawbox: expected a path or {url: ..., sha256: ...}, found a list",
    );
    one(
        "apiVersion: clawfarm/v1\nkind: Claw\nmetadata: {name: a}\nspec:\n  cpus: 1\n",
        "4:1: spec.clawbox: required field is missing",
    );
}

#[test]
fn state_replicas_cpus() {
    one(
        &doc("  state: paused\n"),
        "7:10: spec.state: must be \"running\", \"stopped\" or \"suspended\", got \"paused\"",
    );
    one(
        &doc("  replicas: 65\n"),
        "7:13: spec.replicas: must be from 1 to 64, got 65",
    );
    one(
        &doc("  replicas: 0\n"),
        "7:13: spec.replicas: must be from 1 to 64, got 0",
    );
    one(
        &doc("  cpus: 0\n"),
        "7:9: spec.cpus: must be from 1 to 64, got 0",
    );
    one(
        &doc("  cpus: 1.5\n"),
        "7:9: spec.cpus: expected a whole number from 1 to 64, found a number",
    );
    one(
        &doc("  cpus: \"2\"\n"),
        "7:9: spec.cpus: expected a whole number from 1 to 64, found a string",
    );
    one(
        &doc("  cpus: -1\n"),
        "7:9: spec.cpus: expected a whole number from 1 to 64, found a number",
    );
    one(
        &doc("  cpus: 99999999999999999999999\n"),
        "7:9: spec.cpus: must be from 1 to 64, got 99999999999999999999999",
    );
}

#[test]
fn memory() {
    for (text, mib) in [
        ("2GiB", 2048),
        ("2Gi", 2048),
        ("2G", 2048),
        ("1.5GiB", 1536),
        ("1.5 GiB", 1536),
        ("512MiB", 512),
        ("512", 512),
        ("128", 128),
        ("256GiB", 262_144),
        (" 0.25GiB ", 256),
    ] {
        assert_eq!(parse_memory(text), Ok(mib), "{text}");
    }
    for bad in [
        "", "GiB", "2GB", "2gib", "2 KiB", "1e3", "-1", "1.", "1..5GiB", "x",
    ] {
        let e = parse_memory(bad).unwrap_err();
        assert!(e.starts_with("invalid memory size"), "{bad}: {e}");
    }
    assert_eq!(
        parse_memory("0.1GiB").unwrap_err(),
        "memory size \"0.1GiB\" is not a whole number of MiB"
    );
    assert_eq!(
        parse_memory("64").unwrap_err(),
        "memory must be from 128 MiB to 262144 MiB (256 GiB), got 64 MiB"
    );
    assert!(parse_memory("257GiB").is_err());
    assert!(parse_memory("99999999999999999999GiB").is_err());
    // in a manifest: plain integers are MiB
    let c = &parse_str(Path::new(FILE), &doc("  memory: 4096\n")).unwrap()[0];
    assert_eq!(c.memory_mib, 4096);
    one(
        &doc("  memory: 2GB\n"),
        "7:11: spec.memory: invalid memory size \"2GB\": use a number of MiB (e.g. 2048) or a size such as 512MiB, 2GiB or 1.5GiB",
    );
    one(
        &doc("  memory: 100\n"),
        "7:11: spec.memory: memory must be from 128 MiB to 262144 MiB (256 GiB), got 100 MiB",
    );
    one(
        &doc("  memory: [1]\n"),
        "7:11: spec.memory: expected a size such as 2GiB or 512MiB, found a list",
    );
}

#[test]
fn ports() {
    one(
        &doc("  ports: [{host: 80, guest: 80}]\n"),
        "7:18: spec.ports[0].host: host port 80 is privileged; use a port from 1024 to 65535",
    );
    one(
        &doc("  ports: [{host: 70000, guest: 80}]\n"),
        "7:18: spec.ports[0].host: must be from 1 to 65535, got 70000",
    );
    one(
        &doc("  ports: [{host: 2000, guest: 0}]\n"),
        "7:31: spec.ports[0].guest: must be from 1 to 65535, got 0",
    );
    one(
        &doc("  ports: [{host: 2000}]\n"),
        "7:11: spec.ports[0].guest: required field is missing",
    );
    one(
        &doc("  ports:\n    - {host: 2000, guest: 1}\n    - host: 2000\n      guest: 2\n"),
        "9:13: spec.ports[1].host: host port 2000 is already used by spec.ports[0]",
    );
    one(
        &doc(
            "  ports:\n    - {host: 2000, guest: 1, name: gw}\n    - {host: 2001, guest: 2, name: gw}\n",
        ),
        "9:36: spec.ports[1].name: duplicate port name \"gw\" (already used by spec.ports[0])",
    );
    one(
        &doc("  ports: {host: 1}\n"),
        "7:10: spec.ports: expected a list, found a mapping",
    );
    one(
        &doc("  ports: [3000]\n"),
        "7:11: spec.ports[0]: expected a mapping, found a number",
    );
    // the same guest port twice is fine
    assert!(
        parse_str(
            Path::new(FILE),
            &doc("  ports: [{host: 2000, guest: 1}, {host: 2001, guest: 1}]\n")
        )
        .is_ok()
    );
}

#[test]
fn params() {
    one(
        &doc("  params:\n    my-key: 1\n"),
        "8:5: spec.params: invalid key \"my-key\": must match [A-Za-z_][A-Za-z0-9_]*",
    );
    one(
        &doc("  params:\n    K: {env: 1X}\n"),
        "8:14: spec.params.K.env: \"1X\" is not a valid environment variable name (must match [A-Za-z_][A-Za-z0-9_]*)",
    );
    one(
        &doc("  params:\n    K: {env: A, file: b}\n"),
        "8:17: spec.params.K: use either env or file, not both",
    );
    one(
        &doc("  params:\n    K: {}\n"),
        "8:8: spec.params.K: expected {env: NAME} or {file: PATH}",
    );
    one(
        &doc("  params:\n    K:\n"),
        "8:5: spec.params.K: has no value (write \"\" for an empty string)",
    );
    one(
        &doc("  params:\n    K: [a]\n"),
        "8:8: spec.params.K: expected a value, {env: NAME} or {file: PATH}, found a list",
    );
    one(
        &doc("  params:\n    K: {file: \"\"}\n"),
        "8:15: spec.params.K.file: must not be empty",
    );
    one(
        &doc("  params: [a]\n"),
        "7:11: spec.params: expected a mapping, found a list",
    );
    one(
        &doc("  params:\n    K: a\n    K: b\n"),
        "9:5: spec.params: duplicate key \"K\" (first at line 8, column 5)",
    );
    // an empty string literal is a value
    let c = &parse_str(Path::new(FILE), &doc("  params:\n    K: \"\"\n")).unwrap()[0];
    assert_eq!(c.params["K"], ParamSource::Literal(String::new()));
}

#[test]
fn param_values_are_never_echoed() {
    let secret = "sk-SECRET-value-123";
    let cases = [
        format!("  params:\n    my-key: {secret}\n"),
        format!("  params:\n    K: [{secret}]\n"),
        format!("  params:\n    K: {{env: {secret}, file: x}}\n"),
        format!("  params:\n    K: {{value: {secret}}}\n"),
        format!("  params:\n    K: {{{secret}: 1}}\n"),
        format!("  params:\n    K: a\n    K: {secret}\n"),
    ];
    for case in cases {
        for e in errors(&doc(&case)) {
            assert!(!e.contains("SECRET"), "{e}");
        }
    }
}

#[test]
fn volumes() {
    one(
        &doc("  volumes: [{name: a, guestPath: rel}]\n"),
        "7:34: spec.volumes[0].guestPath: must be an absolute path (starting with /)",
    );
    one(
        &doc("  volumes: [{name: a, guestPath: /}]\n"),
        "7:34: spec.volumes[0].guestPath: must not be the root folder /",
    );
    one(
        &doc("  volumes: [{name: a, guestPath: //.//}]\n"),
        "7:34: spec.volumes[0].guestPath: must not be the root folder /",
    );
    one(
        &doc("  volumes: [{name: a, guestPath: /a/../b}]\n"),
        "7:34: spec.volumes[0].guestPath: must not contain \"..\"",
    );
    one(
        &doc("  volumes: [{name: a, guestPath: \"/a b\"}]\n"),
        "7:34: spec.volumes[0].guestPath: must not contain spaces or control characters",
    );
    one(
        &doc("  volumes: [{name: A, guestPath: /a}]\n"),
        "7:20: spec.volumes[0].name: \"A\" is not a valid volume name: use lowercase letters, digits and '-', starting and ending with a letter or digit, at most 63 characters",
    );
    one(
        &doc("  volumes:\n    - {name: a, guestPath: /a}\n    - {name: a, guestPath: /b}\n"),
        "9:14: spec.volumes[1].name: duplicate volume name \"a\" (already used by spec.volumes[0])",
    );
    one(
        &doc("  volumes:\n    - {name: a, guestPath: /a}\n    - {name: b, guestPath: /a/}\n"),
        "9:28: spec.volumes[1].guestPath: \"/a\" is already mounted by spec.volumes[0]",
    );
    one(
        &doc("  volumes: [{name: a}]\n"),
        "7:13: spec.volumes[0].guestPath: required field is missing",
    );
}

/// A volume must never shadow the payload, the guest's system folders, or the state that
/// cloud-init, the runner and `ssh` rely on: not on them, inside them, or above them.
#[test]
fn volumes_never_hide_the_payload_or_system_folders() {
    let cases = [
        (
            "/opt/claw",
            "\"/opt/claw\" is reserved: the bundle's payload is mounted there",
        ),
        (
            "/opt/claw/sub",
            "\"/opt/claw/sub\" lies inside /opt/claw, which is reserved: the bundle's payload is mounted there",
        ),
        (
            "/opt",
            "\"/opt\" would hide /opt/claw, which is reserved: the bundle's payload is mounted there",
        ),
        (
            "/etc",
            "\"/etc\" is reserved: the guest's system configuration",
        ),
        (
            "//etc/./ssh/",
            "\"/etc/ssh\" lies inside /etc, which is reserved: the guest's system configuration",
        ),
        (
            "/var",
            "\"/var\" would hide /var/lib/cloud, which is reserved: cloud-init's state",
        ),
        (
            "/home/claw",
            "\"/home/claw\" would hide /home/claw/.ssh, which is reserved: the claw user's SSH keys",
        ),
        (
            "/usr/local",
            "\"/usr/local\" lies inside /usr, which is reserved: the guest's system files",
        ),
    ];
    for (path, why) in cases {
        one(
            &doc(&format!(
                "  volumes: [{{name: a, guestPath: \"{path}\"}}]\n"
            )),
            &format!("7:34: spec.volumes[0].guestPath: {why}"),
        );
    }
    // Near misses are fine: a prefix that is not a parent, and ordinary data folders.
    for path in [
        "/opt/clawdata",
        "/etcetera",
        "/var/lib/agent",
        "/home/claw/work",
        "/srv/data",
    ] {
        let text = doc(&format!("  volumes: [{{name: a, guestPath: {path}}}]\n"));
        let claws = parse_str(Path::new(FILE), &text).unwrap_or_else(|d| panic!("{path}: {d:?}"));
        assert_eq!(claws[0].volumes[0].guest_path, path);
    }
}

#[test]
fn yaml_syntax_errors() {
    one(
        &doc("  ports: [{host: 2000, guest: 1}\n"),
        "7:10: invalid YAML: unclosed bracket '['",
    );
    one(
        "apiVersion: clawfarm/v1\nkind: Claw\n\tmetadata: x\n",
        "2:7: invalid YAML: while scanning a plain scalar, found a tab",
    );
    one(
        "a: *nope\n",
        "1:4: invalid YAML: while parsing node, found unknown anchor",
    );
    one(
        &doc("  params:\n    K: !secret x\n"),
        "8:8: YAML tags are not supported (except !!str)",
    );
    one(
        &doc("  ports: !!seq []\n"),
        "7:10: YAML tags are not supported (except !!str)",
    );
}

#[test]
fn anchors_and_aliases_work() {
    let text = "\
apiVersion: clawfarm/v1
kind: Claw
metadata: {name: a}
spec:
  clawbox: a.clawbox
  params:
    A: &shared {env: SHARED}
    B: *shared
    C: !!str 123
";
    let c = &parse_str(Path::new(FILE), text).unwrap()[0];
    assert_eq!(c.params["B"], ParamSource::Env("SHARED".into()));
    assert_eq!(c.params["C"], ParamSource::Literal("123".into()));
}

#[test]
fn errors_are_collected_within_a_document() {
    let got = errors(&doc("  state: x\n  cpus: 0\n  memory: 1\n  replicas: 99\n"));
    assert_eq!(got.len(), 4, "{got:?}");
}

#[test]
fn names_within_a_file() {
    let two = |a: &str, ra: u32, b: &str| {
        format!(
            "apiVersion: clawfarm/v1\nkind: Claw\nmetadata: {{name: {a}}}\nspec: {{clawbox: x, replicas: {ra}}}\n---\napiVersion: clawfarm/v1\nkind: Claw\nmetadata: {{name: {b}}}\nspec: {{clawbox: x}}\n"
        )
    };
    one(
        &two("a", 1, "a"),
        &format!("8:18: duplicate name \"a\" (also defined at {FILE}:3:18)"),
    );
    one(
        &two("a", 2, "a-1"),
        &format!(
            "8:18: instance name collision: \"a-1\" is the same as instance \"a-1\" of \"a\" (replicas: 2) defined at {FILE}:3:18"
        ),
    );
    assert!(parse_str(Path::new(FILE), &two("a", 2, "a-2")).is_ok());
    assert!(parse_str(Path::new(FILE), &two("a", 1, "a-0")).is_ok());
}

#[test]
fn garbage_never_panics() {
    let samples = [
        doc(
            "  ports: [{host: 18789, guest: 18789}]\n  params:\n    A: {env: B}\n    C: \"q\\u00e9\"\n  volumes: [{name: v, guestPath: /x}]\n",
        ),
        "a: &a [*a]\n".to_string(),
        "{[: ]}\n- - -\n? ? ?\n".to_string(),
        "%YAML 1.2\n%TAG ! tag:x,2000:\n--- !foo\n...\n".to_string(),
        "a: |\n  x\n b: >-\n".to_string(),
        "\u{feff}\u{0}\u{7f}'\"\\".to_string(),
    ];
    for s in &samples {
        for (i, _) in s.char_indices() {
            let _ = parse_str(Path::new(FILE), &s[..i]);
            let _ = clawfarm::input::manifest::names_in_file_best_effort(&s[..i]);
        }
    }
    // deterministic pseudo-random bytes mapped to YAML-ish characters
    let alphabet: Vec<char> = "ab:-[]{},&*!|>'\"#\n  \t?%@`0123456789.~\\"
        .chars()
        .collect();
    let mut x: u64 = 0x9e3779b97f4a7c15;
    for _ in 0..3000 {
        let len = (x % 60) as usize;
        let mut s = String::new();
        for _ in 0..len {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            s.push(alphabet[(x % alphabet.len() as u64) as usize]);
        }
        let _ = parse_str(Path::new(FILE), &s);
        let _ = clawfarm::input::manifest::names_in_file_best_effort(&s);
    }
}

#[test]
fn alias_bomb_is_refused() {
    let mut text = String::from("a0: &a0 [x, x, x, x, x, x, x, x, x, x]\n");
    for i in 1..8 {
        let p = i - 1;
        text.push_str(&format!(
            "a{i}: &a{i} [*a{p}, *a{p}, *a{p}, *a{p}, *a{p}, *a{p}, *a{p}, *a{p}, *a{p}, *a{p}]\n"
        ));
    }
    let got = errors(&text);
    assert!(
        got.iter().any(|e| e.contains("document too large")),
        "{got:?}"
    );
}

#[test]
fn deep_nesting_is_an_error_not_a_crash() {
    let flow = format!("a: {}{}\n", "[".repeat(100_000), "]".repeat(100_000));
    let block: String = (0..600)
        .map(|i| format!("{}k{i}:\n", " ".repeat(i)))
        .collect();
    let seqs: String = (0..600).map(|i| format!("{}-\n", " ".repeat(i))).collect();
    for text in [flow, block, seqs] {
        let got = errors(&text);
        assert!(!got.is_empty());
        let _ = clawfarm::input::manifest::names_in_file_best_effort(&text);
    }
}

#[test]
fn json_syntax_errors_speak_json() {
    let file = Path::new("/m/dir/alpha.json");
    let errs = |text: &str| -> Vec<String> {
        match parse_str(file, text) {
            Ok(c) => panic!("expected errors, got {} claws", c.len()),
            Err(d) => d.iter().map(|d| d.to_string()).collect(),
        }
    };
    // The issue's repro: one line without its closing brace.
    let got = errs(
        r#"{"apiVersion":"clawfarm/v1","kind":"Claw","metadata":{"name":"alpha"},"spec":{"clawbox":"../box.json"}"#,
    );
    assert_eq!(got.len(), 1, "{got:?}");
    assert!(got[0].starts_with("/m/dir/alpha.json:1:"), "{got:?}");
    assert!(
        got[0].contains("invalid JSON: EOF while parsing"),
        "{got:?}"
    );
    assert!(!got[0].contains("YAML"), "{got:?}");

    // A lost comma, on line 2.
    let got = errs(
        "{\"apiVersion\": \"clawfarm/v1\", \"kind\": \"Claw\",\n \"metadata\": {\"name\": \"a\"} \"spec\": {}}\n",
    );
    assert_eq!(got.len(), 1, "{got:?}");
    assert!(got[0].starts_with("/m/dir/alpha.json:2:"), "{got:?}");
    assert!(
        got[0].contains("invalid JSON: expected `,` or `}`"),
        "{got:?}"
    );

    // Valid JSON is still checked as a manifest (JSON is YAML).
    let ok = parse_str(
        file,
        r#"{"apiVersion":"clawfarm/v1","kind":"Claw","metadata":{"name":"alpha"},"spec":{"clawbox":"./b.clawbox"}}"#,
    )
    .unwrap();
    assert_eq!(ok[0].name, "alpha");
    // A YAML file keeps YAML's wording.
    let got = errors("a: [\n");
    assert!(got.iter().any(|e| e.contains("invalid YAML")), "{got:?}");
}
