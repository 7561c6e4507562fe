//! Table tests for every clawspec v3 rule: each case mutates the seed example and asserts
//! the exact field path (and the gist of the message) of the error.

use clawfarm::input::clawspec::{ClawSpec, ClawSpecError, Validator};
use serde_json::{Value, json};

const SEED: &str = include_str!("fixtures/clawspecs/seed-example.json");

fn seed() -> Value {
    serde_json::from_str(SEED).unwrap()
}

fn parse(v: &Value) -> Result<ClawSpec, ClawSpecError> {
    ClawSpec::parse(serde_json::to_string(v).unwrap().as_bytes())
}

/// Apply `edit` to the seed and expect exactly one problem at `path` whose message contains `msg`.
fn expect_one(edit: impl FnOnce(&mut Value), path: &str, msg: &str) {
    let mut v = seed();
    edit(&mut v);
    let err = parse(&v).expect_err(&format!("expected an error at {path}"));
    assert_eq!(
        err.problems.len(),
        1,
        "expected one problem at {path}, got:\n{err}"
    );
    let (p, m) = &err.problems[0];
    assert_eq!(p, path, "wrong path; full error:\n{err}");
    assert!(m.contains(msg), "message {m:?} should contain {msg:?}");
}

fn ptr<'a>(v: &'a mut Value, pointer: &str) -> &'a mut Value {
    v.pointer_mut(pointer)
        .unwrap_or_else(|| panic!("no {pointer}"))
}

fn obj<'a>(v: &'a mut Value, pointer: &str) -> &'a mut serde_json::Map<String, Value> {
    ptr(v, pointer).as_object_mut().unwrap()
}

fn req0(v: &mut Value) -> &mut serde_json::Map<String, Value> {
    obj(v, "/bootstrap/params/required/0")
}

#[test]
fn seed_example_parses() {
    let spec = ClawSpec::parse(SEED.as_bytes()).expect("seed example must parse");
    assert_eq!(spec.schema_version, 3);
    assert_eq!(spec.name, "demo-openclaw");
    assert_eq!(spec.base().reference, "ubuntu:24.04");
    assert_eq!(spec.run().unwrap().reference, "clawbox:///run.qcow2");
    assert_eq!(spec.bootstrap.id, "openclaw");
    let params: Vec<(&str, bool)> = spec.params().map(|(p, r)| (p.key.as_str(), r)).collect();
    assert_eq!(
        params,
        vec![("OPENAI_API_KEY", true), ("DISCORD_TOKEN", false)]
    );
    assert!(spec.param("DISCORD_TOKEN").unwrap().secret);
    assert!(spec.param("NOPE").is_none());
    assert_eq!(spec.provision.len(), 1);
    assert_eq!(spec.provision[0].shell.as_deref(), Some("bash"));
}

#[test]
fn to_json_pretty_round_trips() {
    let spec = ClawSpec::parse(SEED.as_bytes()).unwrap();
    let text = spec.to_json_pretty();
    assert!(text.contains("\n  \"schema_version\": 3"));
    assert_eq!(ClawSpec::parse(text.as_bytes()).unwrap(), spec);
}

#[test]
fn minimal_spec_without_optional_parts() {
    let v = json!({
        "schema_version": 3,
        "name": "m",
        "image": [{"name": "base", "ref": "https://example.test/b.qcow2", "sha256": "0".repeat(64)}],
        "bootstrap": {"id": "openclaw", "install_script": "i", "start_script": "s", "params": {"required": []}}
    });
    let spec = parse(&v).unwrap();
    assert!(spec.run().is_none());
    assert!(spec.provision.is_empty());
    assert_eq!(spec.params().count(), 0);
}

#[test]
fn top_level_rules() {
    expect_one(
        |v| {
            obj(v, "").remove("name");
        },
        "name",
        "required field is missing",
    );
    expect_one(
        |v| {
            obj(v, "").remove("image");
        },
        "image",
        "required field is missing",
    );
    expect_one(
        |v| {
            obj(v, "").remove("bootstrap");
        },
        "bootstrap",
        "required field is missing",
    );
    expect_one(
        |v| {
            obj(v, "").remove("schema_version");
        },
        "schema_version",
        "required field is missing",
    );
    expect_one(
        |v| *ptr(v, "/schema_version") = json!(2),
        "schema_version",
        "unsupported schema version 2",
    );
    expect_one(
        |v| *ptr(v, "/schema_version") = json!("3"),
        "schema_version",
        r#"must be the number 3, found the string "3""#,
    );
    expect_one(
        |v| {
            obj(v, "").insert("extra".into(), json!(1));
        },
        "extra",
        "unknown field",
    );
    expect_one(
        |v| *ptr(v, "/name") = json!(""),
        "name",
        "must not be empty",
    );
    expect_one(|v| *ptr(v, "/name") = json!(7), "name", "invalid type");
    // provision is optional
    let mut v = seed();
    obj(&mut v, "").remove("provision");
    assert!(parse(&v).is_ok());
}

#[test]
fn not_json_or_not_an_object() {
    let err = ClawSpec::parse(b"{\"schema_version\": 3,").unwrap_err();
    assert_eq!(err.problems[0].0, "");
    assert!(err.problems[0].1.starts_with("invalid JSON:"), "{err}");
    assert!(err.problems[0].1.contains("line 1"), "{err}");
    let err = ClawSpec::parse(b"[1]").unwrap_err();
    assert!(err.to_string().contains("must be a JSON object"));
    let err = ClawSpec::parse(b"").unwrap_err();
    assert!(err.to_string().starts_with("invalid JSON"));
}

#[test]
fn image_rules() {
    expect_one(
        |v| {
            obj(v, "/image/0").remove("ref");
        },
        "image[0].ref",
        "required field is missing",
    );
    expect_one(
        |v| {
            obj(v, "/image/1").remove("sha256");
        },
        "image[1].sha256",
        "required field is missing",
    );
    expect_one(
        |v| {
            obj(v, "/image/0").remove("name");
        },
        "image[0].name",
        "required field is missing",
    );
    expect_one(
        |v| *ptr(v, "/image/1/name") = json!("base"),
        "image[1].name",
        "duplicate image name \"base\" (already used by image[0])",
    );
    // two "run" images and therefore no base: both problems are reported
    let mut v = seed();
    *ptr(&mut v, "/image/0/name") = json!("run");
    let err = parse(&v).unwrap_err();
    assert_eq!(
        err.problems,
        vec![
            (
                "image[1].name".to_string(),
                "duplicate image name \"run\" (already used by image[0])".to_string()
            ),
            (
                "image".to_string(),
                "must contain an image named \"base\"".to_string()
            ),
        ]
    );
    // no base at all (and one run only)
    expect_one(
        |v| {
            ptr(v, "/image").as_array_mut().unwrap().remove(0);
        },
        "image",
        "must contain an image named \"base\"",
    );
    expect_one(
        |v| *ptr(v, "/image/1/name") = json!("layer"),
        "image[1].name",
        "unknown image name \"layer\"",
    );
    expect_one(
        |v| *ptr(v, "/image/0/sha256") = json!("A".repeat(64)),
        "image[0].sha256",
        "must be 64 lowercase hex characters",
    );
    expect_one(
        |v| *ptr(v, "/image/0/sha256") = json!("a".repeat(63)),
        "image[0].sha256",
        "64 lowercase hex",
    );
    expect_one(
        |v| *ptr(v, "/image/0/sha256") = json!(format!("{}g", "a".repeat(63))),
        "image[0].sha256",
        "64 lowercase hex",
    );
    expect_one(
        |v| *ptr(v, "/image/0/ref") = json!("  "),
        "image[0].ref",
        "must not be empty",
    );
    // One grammar with the importer (which stores top-level archive files only).
    expect_one(
        |v| *ptr(v, "/image/0/ref") = json!("clawbox:///a/b"),
        "image[0].ref",
        "top-level file of the bundle",
    );
    expect_one(
        |v| *ptr(v, "/image/0/ref") = json!("ftp://host/x.qcow2"),
        "image[0].ref",
        "unsupported scheme",
    );
    expect_one(
        |v| {
            obj(v, "/image/1").insert("size".into(), json!(1));
        },
        "image[1].size",
        "unknown field",
    );
    expect_one(|v| *ptr(v, "/image") = json!({}), "image", "invalid type");
}

#[test]
fn bootstrap_rules() {
    expect_one(
        |v| *ptr(v, "/bootstrap/id") = json!("hermes"),
        "bootstrap.id",
        "unsupported bootstrap id \"hermes\" (supported: openclaw)",
    );
    expect_one(
        |v| {
            obj(v, "/bootstrap").remove("id");
        },
        "bootstrap.id",
        "required field is missing",
    );
    expect_one(
        |v| {
            obj(v, "/bootstrap").remove("install_script");
        },
        "bootstrap.install_script",
        "required field is missing",
    );
    expect_one(
        |v| {
            obj(v, "/bootstrap").remove("start_script");
        },
        "bootstrap.start_script",
        "required field is missing",
    );
    expect_one(
        |v| *ptr(v, "/bootstrap/install_script") = json!(""),
        "bootstrap.install_script",
        "must not be empty",
    );
    expect_one(
        |v| *ptr(v, "/bootstrap/start_script") = json!(" \n"),
        "bootstrap.start_script",
        "must not be empty",
    );
    expect_one(
        |v| {
            obj(v, "/bootstrap").remove("params");
        },
        "bootstrap.params",
        "required field is missing",
    );
    expect_one(
        |v| {
            obj(v, "/bootstrap/params").remove("required");
        },
        "bootstrap.params.required",
        "required field is missing",
    );
    expect_one(
        |v| {
            obj(v, "/bootstrap").insert("preset".into(), json!("x"));
        },
        "bootstrap.preset",
        "unknown field",
    );
    // display_name and optional are optional
    let mut v = seed();
    obj(&mut v, "/bootstrap").remove("display_name");
    obj(&mut v, "/bootstrap/params").remove("optional");
    assert!(parse(&v).is_ok());
}

#[test]
fn param_rules() {
    for bad in ["1ABC", "A-B", "", "A B", "É"] {
        expect_one(
            |v| *ptr(v, "/bootstrap/params/required/0/key") = json!(bad),
            "bootstrap.params.required[0].key",
            "must match [A-Za-z_][A-Za-z0-9_]*",
        );
    }
    for good in ["_x", "a1", "OPENAI_API_KEY", "Z"] {
        let mut v = seed();
        *ptr(&mut v, "/bootstrap/params/required/0/key") = json!(good);
        assert!(parse(&v).is_ok(), "{good} should be accepted");
    }
    expect_one(
        |v| *ptr(v, "/bootstrap/params/optional/0/key") = json!("OPENAI_API_KEY"),
        "bootstrap.params.optional[0].key",
        "duplicate key \"OPENAI_API_KEY\" (already defined at bootstrap.params.required[0])",
    );
    expect_one(
        |v| {
            req0(v).remove("label");
        },
        "bootstrap.params.required[0].label",
        "required field is missing",
    );
    expect_one(
        |v| {
            req0(v).remove("secret");
        },
        "bootstrap.params.required[0].secret",
        "required field is missing",
    );
    expect_one(
        |v| {
            req0(v).remove("key");
        },
        "bootstrap.params.required[0].key",
        "required field is missing",
    );
    expect_one(
        |v| *ptr(v, "/bootstrap/params/required/0/secret") = json!("yes"),
        "bootstrap.params.required[0].secret",
        "invalid type",
    );
    expect_one(
        |v| *ptr(v, "/bootstrap/params/required/0/label") = json!(""),
        "bootstrap.params.required[0].label",
        "must not be empty",
    );
    expect_one(
        |v| {
            req0(v).insert("default".into(), json!("sk-123"));
        },
        "bootstrap.params.required[0].default",
        "a secret param must not have a default",
    );
    expect_one(
        |v| {
            obj(v, "/bootstrap/params/optional/0").insert("env".into(), json!("X"));
        },
        "bootstrap.params.optional[0].env",
        "unknown field",
    );
    // description is optional
    let mut v = seed();
    req0(&mut v).remove("description");
    assert!(parse(&v).is_ok());
}

/// Make required[0] a non-secret param with the given validator and default.
fn with_validator(v: &mut Value, validator: Value, default: Option<&str>) {
    let p = req0(v);
    p.insert("secret".into(), json!(false));
    p.insert("validator".into(), validator);
    if let Some(d) = default {
        p.insert("default".into(), json!(d));
    }
}

#[test]
fn validator_rules() {
    expect_one(
        |v| with_validator(v, json!({"kind": "regex", "pattern": "("}), None),
        "bootstrap.params.required[0].validator.pattern",
        "invalid regular expression: unclosed group",
    );
    expect_one(
        |v| with_validator(v, json!({"kind": "regex"}), None),
        "bootstrap.params.required[0].validator.pattern",
        "required field is missing",
    );
    expect_one(
        |v| with_validator(v, json!({"kind": "enum", "values": []}), None),
        "bootstrap.params.required[0].validator.values",
        "must not be empty",
    );
    expect_one(
        |v| with_validator(v, json!({"kind": "enum"}), None),
        "bootstrap.params.required[0].validator.values",
        "required field is missing",
    );
    expect_one(
        |v| with_validator(v, json!({"kind": "length"}), None),
        "bootstrap.params.required[0].validator.kind",
        "unknown variant `length`, expected one of `non_empty`, `regex`, `enum`",
    );
    expect_one(
        |v| with_validator(v, json!({"kind": "non_empty", "x": 1}), None),
        "bootstrap.params.required[0].validator.x",
        "unknown field",
    );
    expect_one(
        |v| with_validator(v, json!({"kind": "enum", "values": ["a", "b"]}), Some("c")),
        "bootstrap.params.required[0].default",
        "the default does not pass the validator: must be one of: a, b",
    );
    expect_one(
        |v| {
            with_validator(
                v,
                json!({"kind": "regex", "pattern": "[0-9]+"}),
                Some("12x"),
            )
        },
        "bootstrap.params.required[0].default",
        "must match the pattern [0-9]+",
    );
    expect_one(
        |v| with_validator(v, json!({"kind": "non_empty"}), Some(" ")),
        "bootstrap.params.required[0].default",
        "must not be empty",
    );
    // defaults that pass
    for (validator, default) in [
        (json!({"kind": "enum", "values": ["a", "b"]}), "b"),
        (json!({"kind": "regex", "pattern": "[0-9]+"}), "123"),
        (json!({"kind": "non_empty"}), "x"),
    ] {
        let mut v = seed();
        with_validator(&mut v, validator, Some(default));
        assert!(parse(&v).is_ok());
    }
}

#[test]
fn validator_check_semantics() {
    let re = Validator::Regex {
        pattern: "[a-z]+|[0-9]+".into(),
    };
    assert!(re.check("abc").is_ok());
    assert!(re.check("123").is_ok());
    // anchored to the whole value, including for alternations
    assert!(re.check("abc1").is_err());
    assert!(re.check("").is_err());
    let err = re.check("s3cr3t-VALUE").unwrap_err();
    assert!(
        !err.contains("s3cr3t"),
        "message must not echo the value: {err}"
    );

    let ne = Validator::NonEmpty;
    assert!(ne.check(" x ").is_ok());
    assert_eq!(ne.check(" \t").unwrap_err(), "must not be empty");

    let en = Validator::Enum {
        values: vec!["gpt-4o".into(), "o3".into()],
    };
    assert!(en.check("o3").is_ok());
    assert!(en.check("O3").is_err());
    assert_eq!(en.check("zz").unwrap_err(), "must be one of: gpt-4o, o3");

    let broken = Validator::Regex {
        pattern: "(".into(),
    };
    assert!(broken.check("x").is_err());
}

#[test]
fn provision_rules() {
    expect_one(
        |v| {
            obj(v, "/provision/0").remove("script");
        },
        "provision[0].script",
        "required field is missing",
    );
    expect_one(
        |v| *ptr(v, "/provision/0/script") = json!(""),
        "provision[0].script",
        "must not be empty",
    );
    expect_one(
        |v| {
            obj(v, "/provision/0").insert("when".into(), json!("x"));
        },
        "provision[0].when",
        "unknown field",
    );
    let mut v = seed();
    obj(&mut v, "/provision/0").remove("name");
    obj(&mut v, "/provision/0").remove("shell");
    assert!(parse(&v).is_ok());
}

#[test]
fn all_semantic_problems_are_reported() {
    let mut v = seed();
    *ptr(&mut v, "/name") = json!("");
    *ptr(&mut v, "/image/0/sha256") = json!("x");
    *ptr(&mut v, "/bootstrap/id") = json!("nope");
    *ptr(&mut v, "/bootstrap/params/required/0/key") = json!("1x");
    *ptr(&mut v, "/provision/0/script") = json!("");
    let err = parse(&v).unwrap_err();
    let paths: Vec<&str> = err.problems.iter().map(|(p, _)| p.as_str()).collect();
    assert_eq!(
        paths,
        vec![
            "name",
            "image[0].sha256",
            "bootstrap.id",
            "bootstrap.params.required[0].key",
            "provision[0].script"
        ]
    );
    let text = err.to_string();
    assert_eq!(text.lines().count(), 5);
    assert!(text.contains("bootstrap.params.required[0].key: must match [A-Za-z_][A-Za-z0-9_]*"));
    // it is a std error
    let _: &dyn std::error::Error = &err;
}

#[test]
fn validate_on_a_built_value() {
    let mut spec = ClawSpec::parse(SEED.as_bytes()).unwrap();
    assert!(spec.validate().is_ok());
    spec.schema_version = 4;
    spec.image.clear();
    let err = spec.validate().unwrap_err();
    assert_eq!(err.problems[0].0, "schema_version");
    assert_eq!(err.problems[1].0, "image");
    // base() never panics, even without a base image
    assert_eq!(spec.base().name, "");
}

#[test]
fn garbage_never_panics() {
    let seed = SEED.as_bytes();
    for cut in 0..seed.len() {
        let _ = ClawSpec::parse(&seed[..cut]);
    }
    for junk in [
        &b"\xff\xfe"[..],
        b"null",
        b"3",
        b"\"x\"",
        b"{}",
        b"{\"schema_version\":3}",
    ] {
        assert!(ClawSpec::parse(junk).is_err());
    }
}
