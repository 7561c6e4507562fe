#!/usr/bin/env bash
# Build examples/demo.clawbox (tar.gz: clawspec.json + claw/ payload) and
# examples/openclaw.clawbox (a plain JSON clawspec) for a base image served at BASE_URL.
#   examples/demo/build-bundle.sh IMAGE BASE_URL
# The sha256 in the clawspecs is computed from IMAGE, so clawfarm verifies the download.
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
image=${1:?usage: build-bundle.sh IMAGE BASE_URL}
base_url=${2:?usage: build-bundle.sh IMAGE BASE_URL}
sha=$(sha256sum "$image" | cut -d' ' -f1)
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT

python3 - "$here" "$base_url" "$sha" "$work/clawspec.json" "$here/../openclaw.clawbox" <<'PY'
import json, sys, os
here, url, sha, out, openclaw_out = sys.argv[1:]
read = lambda n: open(os.path.join(here, n)).read()
spec = {
    "schema_version": 3,
    "name": "clawfarm-demo",
    "image": [{"name": "base", "ref": url, "sha256": sha}],
    "bootstrap": {
        "id": "openclaw",
        "display_name": "Demo (stand-in gateway)",
        "install_script": read("install.sh"),
        "start_script": read("start.sh"),
        "params": {
            "required": [
                {"key": "OPENAI_API_KEY", "label": "OpenAI API key",
                 "description": "Used by the agent; the demo only checks it is set",
                 "secret": True, "validator": {"kind": "non_empty"}},
            ],
            "optional": [
                {"key": "MODEL", "label": "Model", "description": "Model name shown by the gateway",
                 "secret": False, "default": "gpt-4o",
                 "validator": {"kind": "regex", "pattern": "[a-z0-9.-]+"}},
            ],
        },
    },
    "provision": [
        {"name": "workspace", "shell": "bash", "script": read("provision-workspace.sh")},
    ],
}
json.dump(spec, open(out, "w"), indent=2)
# The real OpenClaw example: same base image, installs Node 22 and the openclaw package
# (needs network in the guest).
oc = json.load(open(os.path.join(here, "..", "openclaw", "clawspec.template.json")))
oc["image"][0]["ref"], oc["image"][0]["sha256"] = url, sha
json.dump(oc, open(openclaw_out, "w"), indent=2)
PY
cp -r "$here/claw" "$work/claw"
# Built with the real tar and gzip.
tar -C "$work" -cf - clawspec.json claw | gzip -n > "$here/../demo.clawbox.tmp"
mv "$here/../demo.clawbox.tmp" "$here/../demo.clawbox"
echo "$here/../demo.clawbox"
