#!/usr/bin/env bash
# Idempotent set-up: the Debian packages the project runs against, npm dependencies, the build.
# Each step runs only when something is missing or out of date.
set -euo pipefail
cd "$(dirname "$0")/.."

# The real parts tests and the demo use (DESIGN.md, "Machine facts").
PACKAGES=(containerd runc docker-registry skopeo umoci busybox-static erofs-utils criu fuse
  stargz-snapshotter zstd attr pkg-config python3 make g++ curl libseccomp-dev)

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

# CRIU for the sandbox pool: Debian 12's 3.17 fails `criu check` on this kernel, Debian 13's 4.1.1
# passes it. Its packages and the Debian 13 libraries they need (libc6 2.41 among them) are
# unpacked into a private prefix and run through that prefix's loader (src/sandbox/criu.ts);
# nothing of Debian 13 is installed system-wide. Skipped (tests then say why) when the mirror has
# no trixie.
CRIU_PREFIX=/opt/dedup-snapshotter/criu
CRIU_PACKAGES=(criu libcompel1 libc6 gcc-14-base libgcc-s1 libbsd0 libmd0 libgnutls30t64 libgmp10 libhogweed6t64 libnettle8t64
  libidn2-0 libunistring5 libp11-kit0 libffi8 libtasn1-6 libnet1 libnftables1 libnftnl11 libmnl0 libjansson4 libxtables12
  libnl-3-200 libprotobuf-c1 libuuid1)
if [[ ! -x $CRIU_PREFIX/usr/sbin/criu && $(id -u) -eq 0 ]]; then
  # The Debian archive this machine's apt uses, asked for trixie instead.
  mirror=$(grep -hoE '^(URIs: *|deb +(\[[^]]*\] +)?)https?://[^ ]+/debian/?( |$)' /etc/apt/sources.list /etc/apt/sources.list.d/* 2>/dev/null \
    | grep -oE 'https?://[^ ]+' | head -n1 || true)
  work=$(mktemp -d)
  trap 'rm -rf "$work"' EXIT
  echo "deb [trusted=yes] ${mirror:-http://deb.debian.org/debian} trixie main" >"$work/sources.list"
  mkdir -p "$work/state/lists/partial" "$work/cache/archives/partial" "$work/debs" && touch "$work/state/status"
  apt_opts=(-o "Dir::Etc::sourcelist=$work/sources.list" -o Dir::Etc::sourceparts=/dev/null -o "Dir::State=$work/state"
    -o "Dir::State::status=$work/state/status" -o "Dir::Cache=$work/cache" -o APT::Sandbox::User=root)
  echo "setup: installing Debian 13's CRIU into $CRIU_PREFIX" >&2
  if apt-get "${apt_opts[@]}" -qq update && (cd "$work/debs" && apt-get "${apt_opts[@]}" -qq download "${CRIU_PACKAGES[@]}"); then
    mkdir -p "$CRIU_PREFIX.tmp"
    for deb in "$work"/debs/*.deb; do dpkg -x "$deb" "$CRIU_PREFIX.tmp"; done
    rm -rf "$CRIU_PREFIX" && mv "$CRIU_PREFIX.tmp" "$CRIU_PREFIX"
  else
    echo "setup: no Debian 13 CRIU from ${mirror:-deb.debian.org}; the sandbox pool's checkpoint tests will skip" >&2
  fi
  rm -rf "$work"
  trap - EXIT
fi

# npm ci when node_modules is missing or older than the lockfile.
if [[ ! -f node_modules/.package-lock.json || package-lock.json -nt node_modules/.package-lock.json ]]; then
  echo "setup: npm ci" >&2
  npm ci --no-audit --no-fund --loglevel=error
fi

# The native addon (prctl for KSM, FUSE) and the sandbox shim: node-gyp against the machine's Node headers.
addon=native/build/Release/dedup_native.node
if [[ ! -f $addon || ! -x native/build/Release/dedup-sandbox-shim || -n $(find native -maxdepth 1 -type f -newer "$addon" -print -quit) ]]; then
  echo "setup: building native addon" >&2
  npx node-gyp rebuild --directory native --loglevel=error >/dev/null
fi

# Build when dist is missing or any source is newer than it.
stamp=dist/.build-stamp
if [[ ! -f $stamp ]] || [[ -n $(find src test bench scripts tsconfig.json package.json -newer "$stamp" -print -quit 2>/dev/null) ]]; then
  echo "setup: building" >&2
  npx tsc -p tsconfig.json
  touch "$stamp"
fi
