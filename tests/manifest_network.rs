//! `spec.network` (RFC 002, `rfc/012-sandbox.md`): the valid forms and every bad input with
//! its `FILE:LINE:COL`.

use std::path::Path;

use clawfarm::input::manifest::parse_str;
use clawfarm::input::network::{AllowHost, Egress};

const FILE: &str = "/m/dir/claws.yaml";

fn doc(spec_lines: &str) -> String {
    format!(
        "apiVersion: clawfarm/v1\nkind: Claw\nmetadata:\n  name: demo\nspec:\n  clawbox: ./demo.clawbox\n{spec_lines}"
    )
}

fn errors(text: &str) -> Vec<String> {
    match parse_str(Path::new(FILE), text) {
        Ok(c) => panic!("expected errors, got {} claws", c.len()),
        Err(d) => d.iter().map(|d| d.to_string()).collect(),
    }
}

fn one(text: &str, expected: &str) {
    assert_eq!(
        errors(text),
        vec![format!("{FILE}:{expected}")],
        "for:\n{text}"
    );
}

#[test]
fn valid_forms() {
    let c = parse_str(Path::new(FILE), &doc("")).unwrap();
    assert_eq!(c[0].network.egress, Egress::None, "default is none");
    let c = parse_str(Path::new(FILE), &doc("  network: open\n")).unwrap();
    assert_eq!(c[0].network.egress, Egress::Open);
    let c = parse_str(
        Path::new(FILE),
        &doc("  network:\n    egress: allow\n    allow: [PyPI.org, \"*.pythonhosted.org:443\", \"127.0.0.1:8080\"]\n"),
    )
    .unwrap();
    let n = &c[0].network;
    assert_eq!(n.egress, Egress::Allow);
    let shown: Vec<String> = n.allow.iter().map(|e| e.to_string()).collect();
    assert_eq!(
        shown,
        ["pypi.org", "*.pythonhosted.org:443", "127.0.0.1:8080"]
    );
    assert_eq!(n.allow[2].host, AllowHost::HostLoopback);
    // JSON too.
    let j = r#"{"apiVersion":"clawfarm/v1","kind":"Claw","metadata":{"name":"j"},"spec":{"clawbox":"./x.clawbox","network":{"egress":"open","allow":["127.0.0.1:9"]}}}"#;
    let c = parse_str(Path::new("/m/j.json"), j).unwrap();
    assert_eq!(c[0].network.egress, Egress::Open);
}

#[test]
fn bad_input() {
    one(
        &doc("  network: bogus\n"),
        "7:12: spec.network: unknown policy \"bogus\": use none, allow or open",
    );
    one(
        &doc("  network: {egress: everything}\n"),
        "7:21: spec.network.egress: unknown policy \"everything\": use none, allow or open",
    );
    one(
        &doc("  network: allow\n"),
        "7:12: spec.network: policy allow needs a list: {egress: allow, allow: [host, host:port]}",
    );
    one(
        &doc("  network: {egress: allow, allow: [10.0.0.0/8]}\n"),
        "7:36: spec.network.allow[0]: \"10.0.0.0/8\" is not a host name or host:port (address ranges are not allowed)",
    );
    one(
        &doc("  network: {egress: allow, allow: [192.168.1.10]}\n"),
        "7:36: spec.network.allow[0]: \"192.168.1.10\" names a private address, which the guest may never reach",
    );
    one(
        &doc("  network: {egress: allow, allow: [\"169.254.169.254:80\"]}\n"),
        "7:36: spec.network.allow[0]: \"169.254.169.254:80\" names a link-local address, which the guest may never reach",
    );
    one(
        &doc("  network: {egress: open, allow: [\"pypi.org:99999\"]}\n"),
        "7:35: spec.network.allow[0]: \"pypi.org:99999\": port \"99999\" is not a number from 1 to 65535",
    );
    one(
        &doc("  network: {egress: allow, allow: [\"exa_mple.com\"]}\n"),
        "7:36: spec.network.allow[0]: \"exa_mple.com\": \"exa_mple.com\" is not a valid host name (label \"exa_mple\": letters, digits and '-', 1 to 63 characters)",
    );
    one(
        &doc("  network: {egress: allow, allow: [\"127.0.0.1\"]}\n"),
        "7:36: spec.network.allow[0]: \"127.0.0.1\" names the host's loopback without a port; name the one port the guest may reach, e.g. 127.0.0.1:8080",
    );
    one(
        &doc("  network: {egress: allow, allow: [pypi.org, PYPI.ORG]}\n"),
        "7:46: spec.network.allow[1]: \"pypi.org\" is already listed at spec.network.allow[0]",
    );
    one(
        &doc("  network: {egress: allow, allow: []}\n"),
        "7:35: spec.network.allow: policy allow needs at least one entry (host, host:port or *.suffix)",
    );
    one(
        &doc("  network: {egress: none, allow: [pypi.org]}\n"),
        "7:27: spec.network.allow: an allow list needs egress allow or open (egress is none)",
    );
    one(
        &doc("  network: {allow: [pypi.org]}\n"),
        "7:12: spec.network.egress: required field is missing",
    );
    let e = errors(&doc("  network: {egress: open, alow: [x.org]}\n"));
    assert_eq!(e.len(), 1, "{e:?}");
    assert!(
        e[0].starts_with(&format!("{FILE}:7:")) && e[0].contains("alow"),
        "{e:?}"
    );
    one(
        &doc("  network: {egress: allow, allow: [{host: pypi.org}]}\n"),
        "7:36: spec.network.allow[0]: expected a string, found a mapping",
    );
}
