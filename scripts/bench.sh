#!/usr/bin/env bash
# Benchmarks (bench/): each scenario compares against a baseline in the same run.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
exec node dist/bench/run.js "$@"
