//! The JSON Schema of the manifest format (`clawfarm schema`), for editors.

#[allow(unused_imports)]
use super::*;

// ---------------------------------------------------------------------------------------
// JSON Schema.

/// The JSON Schema (draft 2020-12) of one manifest document, for editors (e.g. the YAML
/// language server's `# yaml-language-server: $schema=...`). Every object has
/// `additionalProperties: false`. Rules that a schema cannot express (unique names across
/// files, duplicate host ports, whole-MiB memory) are only checked by [`load`].
pub fn json_schema() -> serde_json::Value {
    use serde_json::json;
    let dns = "^[a-z0-9]([-a-z0-9]*[a-z0-9])?$";
    let env_key = "^[A-Za-z_][A-Za-z0-9_]*$";
    let sha = "^[0-9a-f]{64}$";
    json!({
        "$schema": "https://json-schema.org/draft/2020-12/schema",
        "$id": "urn:clawfarm:manifest:v1",
        "title": "clawfarm manifest (apiVersion clawfarm/v1, kind Claw)",
        "description": "One desired instance, or several with replicas. A file may hold several YAML documents separated by ---.",
        "type": "object",
        "additionalProperties": false,
        "required": ["apiVersion", "kind", "metadata", "spec"],
        "properties": {
            "apiVersion": {"const": API_VERSION, "description": "Always clawfarm/v1."},
            "kind": {"const": KIND, "description": "Always Claw."},
            "metadata": {
                "type": "object",
                "additionalProperties": false,
                "required": ["name"],
                "properties": {
                    "name": {
                        "type": "string",
                        "pattern": dns,
                        "minLength": 1,
                        "maxLength": MAX_NAME_LEN,
                        "description": "DNS label, unique across the applied set. With replicas > 1 the instances are NAME-0 .. NAME-(N-1)."
                    }
                }
            },
            "spec": {
                "type": "object",
                "additionalProperties": false,
                "required": ["clawbox"],
                "properties": {
                    "clawbox": {
                        "description": "The bundle: a path relative to this manifest's folder, or a URL pinned by digest.",
                        "oneOf": [
                            {"type": "string", "minLength": 1, "not": {"pattern": "://"}},
                            {
                                "type": "object",
                                "additionalProperties": false,
                                "required": ["url", "sha256"],
                                "properties": {
                                    "url": {"type": "string", "pattern": "^([hH][tT][tT][pP][sS]?|[fF][iI][lL][eE])://\\S+$"},
                                    "sha256": {"type": "string", "pattern": sha}
                                }
                            }
                        ]
                    },
                    "state": {"enum": ["running", "stopped", "suspended"], "default": "running"},
                    "replicas": {"type": "integer", "minimum": *REPLICAS_RANGE.start(), "maximum": *REPLICAS_RANGE.end(), "default": 1},
                    "cpus": {"type": "integer", "minimum": *CPUS_RANGE.start(), "maximum": *CPUS_RANGE.end(), "default": DEFAULT_CPUS},
                    "memory": {
                        "description": "MiB as a plain number, or a size such as 512MiB, 2GiB, 1.5GiB (binary units). 128 MiB to 256 GiB.",
                        "default": DEFAULT_MEMORY_MIB,
                        "oneOf": [
                            {"type": "integer", "minimum": *MEMORY_MIB_RANGE.start(), "maximum": *MEMORY_MIB_RANGE.end()},
                            {"type": "string", "pattern": "^\\s*([0-9]+(\\.[0-9]+)?|\\.[0-9]+)\\s*(M|Mi|MiB|G|Gi|GiB)?\\s*$"}
                        ]
                    },
                    "ports": {
                        "type": ["array", "null"],
                        "description": "Host port forwards, bound to 127.0.0.1. A host port may appear once per manifest.",
                        "items": {
                            "type": "object",
                            "additionalProperties": false,
                            "required": ["host", "guest"],
                            "properties": {
                                "host": {"type": "integer", "minimum": MIN_HOST_PORT, "maximum": 65535},
                                "guest": {"type": "integer", "minimum": 1, "maximum": 65535},
                                "name": {"type": "string", "pattern": dns, "maxLength": MAX_LABEL_LEN, "description": "e.g. gateway"}
                            }
                        }
                    },
                    "params": {
                        "type": ["object", "null"],
                        "description": "Values for the clawspec's params: a literal (not for secret params), {env: NAME} or {file: PATH} (relative to this manifest's folder).",
                        "propertyNames": {"pattern": env_key},
                        "additionalProperties": {
                            "oneOf": [
                                {"type": ["string", "number", "boolean"]},
                                {
                                    "type": "object",
                                    "additionalProperties": false,
                                    "required": ["env"],
                                    "properties": {"env": {"type": "string", "pattern": env_key}}
                                },
                                {
                                    "type": "object",
                                    "additionalProperties": false,
                                    "required": ["file"],
                                    "properties": {"file": {"type": "string", "minLength": 1}}
                                }
                            ]
                        }
                    },
                    "volumes": {
                        "type": ["array", "null"],
                        "items": {
                            "type": "object",
                            "additionalProperties": false,
                            "required": ["name", "guestPath"],
                            "properties": {
                                "name": {"type": "string", "pattern": dns, "maxLength": MAX_LABEL_LEN},
                                "guestPath": {"type": "string", "pattern": "^/[^\\s]*[^/\\s][^\\s]*$", "description": "Absolute guest path, not /, without .."}
                            }
                        }
                    },
                    "network": {
                        "description": "What the guest may connect to (rfc/012-sandbox.md). none (default): nothing; allow: the listed destinations, through clawfarm's egress proxy; open: any public address, never the host, private ranges, link-local or other instances.",
                        "default": "none",
                        "oneOf": [
                            {"enum": ["none", "open"]},
                            {
                                "type": "object",
                                "additionalProperties": false,
                                "required": ["egress"],
                                "properties": {
                                    "egress": {"enum": ["none", "allow", "open"]},
                                    "allow": {
                                        "type": "array",
                                        "description": "host, host:port, *.suffix[:port], a public IP[:port], or 127.0.0.1:PORT (that one host loopback port). No port = 80 and 443.",
                                        "items": {"type": "string", "minLength": 1}
                                    }
                                }
                            }
                        ]
                    }
                }
            }
        }
    })
}
