#!/usr/bin/env bash
# Runs the test suite (node's test runner), after setting up whatever is missing.
# Tests start real registries, containerd and FUSE mounts, so they run as root, one file at a time.
# With file arguments: just those, in DEDUP_TEST_MOUNT_MODE if set (test/fixtures/mount-mode.ts).
# Without: the lazy-pull files below in mount mode erofs first, then every file as set (default:
# the config's mount mode, fuse), so the full run's summary is the last thing printed.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
run() { node --test --test-concurrency=1 --test-timeout=900000 "$@"; }
if (($#)); then
  run "$@"
  exit
fi

# The files that mount lazy layers through our snapshotter or `dedupctl mount` without pinning a
# mount mode: run once more with lazy layers on EROFS filled on demand (docs/kernel.md), until
# that mode is the default. restart, layer-server and lazy-erofs-mount are not here: they run both
# modes, or erofs, themselves. It adds about 7.5 minutes (the runner: 441 s for the 13 files on the
# 2-core development machine, 2026-12-01).
LAZY_FILES=(snapshotter lazy-mount prefetch gzip-lazy workload lazy-erofs full-pull-fallback mirror shared-store
  commit operator sandbox-pool sandbox-daemon)
lazy=()
for f in "${LAZY_FILES[@]}"; do lazy+=("dist/test/$f.test.js"); done
erofs=0
DEDUP_TEST_MOUNT_MODE=erofs run "${lazy[@]}" || erofs=$?

mapfile -t files < <(find dist/test -name '*.test.js' | sort)
run "${files[@]}"
# A failed erofs pass fails the run too, once the full suite (whose summary closes the log) has run.
if ((erofs)); then echo "test.sh: the mount mode erofs pass of the lazy-pull files failed (exit $erofs)" >&2; exit "$erofs"; fi
