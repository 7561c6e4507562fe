//! Sanity checks of `manifest::json_schema()` (not a schema validator).

use clawfarm::input::manifest::json_schema;
use serde_json::Value;

fn props<'a>(schema: &'a Value, path: &[&str]) -> &'a Value {
    let mut s = schema;
    for p in path {
        s = &s["properties"][*p];
    }
    s
}

#[test]
fn schema_is_json_with_closed_objects() {
    let schema = json_schema();
    // valid JSON text that round-trips
    let text = serde_json::to_string_pretty(&schema).unwrap();
    let back: Value = serde_json::from_str(&text).unwrap();
    assert_eq!(back, schema);
    assert_eq!(
        schema["$schema"],
        "https://json-schema.org/draft/2020-12/schema"
    );
    assert_eq!(schema["additionalProperties"], false);
    assert_eq!(props(&schema, &["spec"])["additionalProperties"], false);
    assert_eq!(props(&schema, &["metadata"])["additionalProperties"], false);
    assert_eq!(
        props(&schema, &["spec", "ports"])["items"]["additionalProperties"],
        false
    );
    assert_eq!(
        props(&schema, &["spec", "volumes"])["items"]["additionalProperties"],
        false
    );
    assert_eq!(props(&schema, &["apiVersion"])["const"], "clawfarm/v1");
    assert_eq!(props(&schema, &["kind"])["const"], "Claw");
    let spec_fields: Vec<&str> = props(&schema, &["spec"])["properties"]
        .as_object()
        .unwrap()
        .keys()
        .map(|k| k.as_str())
        .collect();
    let mut sorted = spec_fields.clone();
    sorted.sort();
    assert_eq!(
        sorted,
        vec![
            "clawbox", "cpus", "memory", "network", "params", "ports", "replicas", "state",
            "volumes"
        ]
    );
    assert_eq!(props(&schema, &["spec", "replicas"])["maximum"], 64);
    assert_eq!(
        props(&schema, &["spec", "ports"])["items"]["properties"]["host"]["minimum"],
        1024
    );
    assert_eq!(props(&schema, &["metadata", "name"])["maxLength"], 40);
}

/// Every key of `value` is described by `schema` (closed objects) and required keys are
/// present; follows `properties`, `items`, `additionalProperties` and the first matching
/// `oneOf` branch by JSON type. A deliberately small check.
fn accepts(schema: &Value, value: &Value, at: &str) -> Result<(), String> {
    if let Some(branches) = schema["oneOf"].as_array() {
        return branches
            .iter()
            .map(|b| accepts(b, value, at))
            .find(Result::is_ok)
            .unwrap_or_else(|| Err(format!("{at}: no oneOf branch accepts {value}")));
    }
    if let Some(c) = schema.get("const") {
        return if c == value {
            Ok(())
        } else {
            Err(format!("{at}: not {c}"))
        };
    }
    if let Some(e) = schema["enum"].as_array() {
        return if e.contains(value) {
            Ok(())
        } else {
            Err(format!("{at}: not in enum"))
        };
    }
    let types: Vec<&str> = match &schema["type"] {
        Value::String(s) => vec![s.as_str()],
        Value::Array(a) => a.iter().filter_map(|t| t.as_str()).collect(),
        _ => vec![],
    };
    let actual = match value {
        Value::Null => "null",
        Value::Bool(_) => "boolean",
        Value::Number(n) if n.is_i64() || n.is_u64() => "integer",
        Value::Number(_) => "number",
        Value::String(_) => "string",
        Value::Array(_) => "array",
        Value::Object(_) => "object",
    };
    let type_ok = types.is_empty()
        || types.contains(&actual)
        || (actual == "integer" && types.contains(&"number"));
    if !type_ok {
        return Err(format!("{at}: {actual} is not {types:?}"));
    }
    match value {
        Value::Object(map) => {
            for r in schema["required"].as_array().into_iter().flatten() {
                if !map.contains_key(r.as_str().unwrap()) {
                    return Err(format!("{at}: missing {r}"));
                }
            }
            for (k, v) in map {
                let sub = if let Some(s) = schema["properties"].get(k) {
                    s
                } else if schema["additionalProperties"].is_object() {
                    &schema["additionalProperties"]
                } else {
                    return Err(format!("{at}: {k} is not allowed"));
                };
                accepts(sub, v, &format!("{at}.{k}"))?;
            }
        }
        Value::Array(items) => {
            for (i, item) in items.iter().enumerate() {
                accepts(&schema["items"], item, &format!("{at}[{i}]"))?;
            }
        }
        Value::Number(n) => {
            if let (Some(min), Some(x)) = (schema["minimum"].as_f64(), n.as_f64())
                && x < min
            {
                return Err(format!("{at}: below minimum"));
            }
        }
        _ => {}
    }
    Ok(())
}

#[test]
fn valid_examples_are_accepted_by_the_schema() {
    let schema = json_schema();
    let mut checked = 0;
    let result = clawfarm::input::manifest::load(&["tests/fixtures/manifests/valid".into()]);
    assert!(result.diagnostics.is_empty());
    for file in &result.files {
        let text = std::fs::read_to_string(file).unwrap();
        let docs: Vec<Value> = serde_saphyr::from_multiple(&text).unwrap();
        for doc in docs {
            accepts(&schema, &doc, &file.display().to_string()).unwrap();
            checked += 1;
        }
    }
    assert_eq!(checked, 5);
}

#[test]
fn the_check_is_not_vacuous() {
    let schema = json_schema();
    let good: Value = serde_json::json!({
        "apiVersion": "clawfarm/v1", "kind": "Claw", "metadata": {"name": "a"},
        "spec": {"clawbox": "x", "params": {"A": {"env": "B"}, "C": 1}}
    });
    assert!(accepts(&schema, &good, "").is_ok());
    let mut unknown = good.clone();
    unknown["spec"]["cpu"] = 1.into();
    assert!(accepts(&schema, &unknown, "").is_err());
    let mut bad_ref = good.clone();
    bad_ref["spec"]["params"]["A"] = serde_json::json!({"env": "B", "file": "c"});
    assert!(accepts(&schema, &bad_ref, "").is_err());
    let mut no_spec = good;
    no_spec.as_object_mut().unwrap().remove("spec");
    assert!(accepts(&schema, &no_spec, "").is_err());
}
