#!/usr/bin/env bash
# The main job: starts a local registry, pushes generated images, converts them to eStargz, mounts
# one lazily, ingests both into the chunk store, then pulls one lazily and runs it through
# containerd with dedup-snapshotter, and prints what it saw.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
exec node dist/scripts/demo.js "$@"
