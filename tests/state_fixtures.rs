//! The versioned fixtures in `state/` load, round-trip, and unknown versions are refused.

use std::path::Path;

use clawfarm::state::record::{Origin, Phase, Record, RecordError};

fn fixture(p: &str) -> std::path::PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("state").join(p)
}

#[test]
fn v1_records_load_and_round_trip() {
    for (f, phase, origin) in [
        ("v1/record-ready.json", Phase::Ready, Origin::Manifest),
        ("v1/record-unhealthy.json", Phase::Unhealthy, Origin::Run),
    ] {
        let r = Record::read(&fixture(f)).unwrap_or_else(|e| panic!("{f}: {e}"));
        assert_eq!(r.phase, phase, "{f}");
        assert_eq!(r.origin, origin, "{f}");
        let again = serde_json::to_vec(&r).unwrap();
        assert_eq!(Record::parse(Path::new(f), &again).unwrap(), r, "{f}");
    }
    let r = Record::read(&fixture("v1/record-ready.json")).unwrap();
    assert_eq!(r.runtime.process.as_ref().unwrap().start_time, 123456);
    assert_eq!(r.resources.ports[0].name.as_deref(), Some("gateway"));
    assert_eq!(r.build.params.len(), 2);
}

#[test]
fn future_version_is_refused_naming_the_file() {
    let e = Record::read(&fixture("future/record-v2.json")).unwrap_err();
    assert!(matches!(e, RecordError::Version { found: 2, .. }), "{e:?}");
    assert!(e.to_string().contains("record-v2.json"), "{e}");
}

#[test]
fn corrupt_record_is_an_error_not_a_panic() {
    let e =
        Record::parse(Path::new("x/record.json"), b"{\"version\": 1, \"clawid\": ").unwrap_err();
    assert!(matches!(e, RecordError::Corrupt { .. }));
}

#[test]
fn event_log_skips_torn_line() {
    let ev = clawfarm::state::events::read(&fixture("v1/events.jsonl")).unwrap();
    assert_eq!(ev.len(), 2);
    assert_eq!(ev[1].result, "failed");
}
