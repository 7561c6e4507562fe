#!/bin/bash
# Build examples/openclaw.clawbox: the clawspec template with the base image of this host
# (scripts/build-guest-image.sh, or $1) and its sha256.
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
img=${1:-$("$here/../../scripts/build-guest-image.sh" | tail -n1)}
sha=$(sha256sum "$img" | cut -d' ' -f1)
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
python3 - "$here/clawspec.template.json" "$img" "$sha" > "$work/clawspec.json" <<'PY'
import json, sys
spec = json.load(open(sys.argv[1]))
spec["image"][0]["ref"] = "file://" + sys.argv[2]
spec["image"][0]["sha256"] = sys.argv[3]
print(json.dumps(spec, indent=2))
PY
out="$here/../openclaw.clawbox"
tar -czf "$out" -C "$work" clawspec.json
echo "$out"
