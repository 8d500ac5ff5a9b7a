#!/usr/bin/env bash
# Runs the test suite (node's test runner), after setting up whatever is missing.
# Tests start real registries, containerd and FUSE mounts, so they run as root, one file at a time.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
if (($#)); then files=("$@"); else mapfile -t files < <(find dist/test -name '*.test.js' | sort); fi
exec node --test --test-concurrency=1 --test-timeout=900000 "${files[@]}"
