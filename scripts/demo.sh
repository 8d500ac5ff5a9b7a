#!/usr/bin/env bash
# The main job: starts a local registry, pushes a generated image, converts it to eStargz,
# ingests it (and a second image sharing its base) into the chunk store, prints what it saw.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
exec node dist/scripts/demo.js "$@"
