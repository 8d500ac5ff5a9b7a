#!/usr/bin/env bash
# Idempotent set-up: the Debian packages the project runs against, npm dependencies, the build.
# Each step runs only when something is missing or out of date.
set -euo pipefail
cd "$(dirname "$0")/.."

# The real parts tests and the demo use (DESIGN.md, "Machine facts").
PACKAGES=(containerd runc docker-registry skopeo umoci busybox-static erofs-utils criu fuse
  stargz-snapshotter zstd attr pkg-config python3 make g++ curl)

missing=()
for p in "${PACKAGES[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
if ((${#missing[@]})); then
  echo "setup: installing Debian packages: ${missing[*]}" >&2
  SUDO=""; [[ $(id -u) -ne 0 ]] && SUDO="sudo"
  $SUDO apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
fi

# npm ci when node_modules is missing or older than the lockfile.
if [[ ! -f node_modules/.package-lock.json || package-lock.json -nt node_modules/.package-lock.json ]]; then
  echo "setup: npm ci" >&2
  npm ci --no-audit --no-fund --loglevel=error
fi

# The native addon (prctl for KSM): node-gyp against the machine's Node headers.
addon=native/build/Release/dedup_native.node
if [[ ! -f $addon || -n $(find native -maxdepth 1 -type f -newer "$addon" -print -quit) ]]; then
  echo "setup: building native addon" >&2
  npx node-gyp rebuild --directory native --loglevel=error >/dev/null
fi

# Build when dist is missing or any source is newer than it.
stamp=dist/.build-stamp
if [[ ! -f $stamp ]] || [[ -n $(find src workers test bench scripts tsconfig.json package.json -newer "$stamp" -print -quit 2>/dev/null) ]]; then
  echo "setup: building" >&2
  npx tsc -p tsconfig.json
  touch "$stamp"
fi
