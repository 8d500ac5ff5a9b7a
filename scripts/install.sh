#!/usr/bin/env bash
# Installs (or with --uninstall removes) dedup-snapshotter on this machine: the built tree under
# PREFIX/lib/dedup-snapshotter, the three commands in PREFIX/bin, a config file with every default
# (kept if one exists), the systemd units, and the proxy_plugins block in containerd's config.toml
# (between marker lines, so it is added once and removed cleanly). Safe to run again.
#
#   scripts/install.sh [--prefix /usr/local] [--destdir DIR] [--uninstall [--purge]]
#
# --destdir stages everything under DIR (packaging, tests) and touches no running service.
# --purge (with --uninstall) also removes /etc/dedup-snapshotter and the state root.
set -euo pipefail
cd "$(dirname "$0")/.."

prefix=/usr/local destdir="" uninstall=0 purge=0
while (($#)); do
  case $1 in
    --prefix) prefix=$2; shift 2 ;;
    --destdir) destdir=$(realpath -m "$2"); shift 2 ;;
    --uninstall) uninstall=1; shift ;;
    --purge) purge=1; shift ;;
    -h|--help) sed -n '2,12p' "$0"; exit 0 ;;
    *) echo "install.sh: unknown argument $1" >&2; exit 2 ;;
  esac
done

app=$prefix/lib/dedup-snapshotter
bin=$prefix/bin
etc=/etc/dedup-snapshotter
units=/etc/systemd/system
containerd_config=/etc/containerd/config.toml
state=/var/lib/containerd/io.containerd.snapshotter.v1.dedup
begin="# BEGIN dedup-snapshotter (scripts/install.sh)"
end="# END dedup-snapshotter"
live=$([[ -z $destdir && -d /run/systemd/system ]] && echo 1 || echo 0)

# Removes our block from containerd's config.toml, leaving everything else as it was.
strip_block() {
  local f=$destdir$containerd_config
  [[ -f $f ]] && grep -qF "$begin" "$f" || return 0
  awk -v b="$begin" -v e="$end" '$0 == b {skip=1} !skip {print} $0 == e {skip=0}' "$f" > "$f.tmp" && mv "$f.tmp" "$f"
}

commands=(dedup-snapshotter dedup-fused dedupd dedupctl)
units_shipped=(dedup-snapshotter.service dedup-fused.service dedupd.service dedupd@.service)

if ((uninstall)); then
  ((live)) && systemctl disable --now dedup-snapshotter.service dedupd.service dedup-fused.service 2>/dev/null || true
  rm -rf "$destdir$app"
  for cmd in "${commands[@]}"; do rm -f "$destdir$bin/$cmd"; done
  for unit in "${units_shipped[@]}"; do rm -f "$destdir$units/$unit"; done
  strip_block
  if ((purge)); then rm -rf "$destdir$etc" "$destdir$state"; fi
  ((live)) && systemctl daemon-reload || true
  echo "uninstalled dedup-snapshotter from ${destdir:-/}$( ((purge)) && echo ', config and state removed' || echo ', config and state kept')"
  exit 0
fi

bash scripts/setup.sh
node=$(command -v node)

# The built tree: replaced whole, so files of an older version do not linger.
tmp=$destdir$app.new
rm -rf "$tmp"
mkdir -p "$tmp/native/build/Release"
cp -a dist node_modules proto package.json package-lock.json README.md docs "$tmp/"
cp -a native/build/Release/dedup_native.node "$tmp/native/build/Release/"
(cd "$tmp" && npm prune --omit=dev --no-audit --no-fund --loglevel=error >/dev/null) # offline: drops the build tools
rm -rf "$destdir$app"
mv "$tmp" "$destdir$app"

mkdir -p "$destdir$bin"
for cmd in "${commands[@]}"; do
  printf '#!/bin/sh\nexec %s %s "$@"\n' "$node" "$app/dist/src/cmd/$cmd.js" > "$destdir$bin/$cmd"
  chmod 0755 "$destdir$bin/$cmd"
done

mkdir -p "$destdir$etc"
if [[ ! -f $destdir$etc/config.json ]]; then
  "$node" dist/src/cmd/dedupctl.js config show --json --defaults \
    | "$node" -e 'const c = JSON.parse(require("fs").readFileSync(0, "utf8")); delete c.prefetch.trace_dir; process.stdout.write(JSON.stringify(c, null, 2) + "\n")' \
    > "$destdir$etc/config.json"
  chmod 0600 "$destdir$etc/config.json" # it may come to hold api.token
fi

mkdir -p "$destdir$units"
for unit in "${units_shipped[@]}"; do
  sed -e "s#/usr/local/bin/#$bin/#g" -e "s#/usr/local/share/doc/dedup-snapshotter/README.md#$app/README.md#" "packaging/systemd/$unit" > "$destdir$units/$unit"
done

mkdir -p "$destdir$(dirname "$containerd_config")"
cfg=$destdir$containerd_config
strip_block
if [[ -f $cfg ]] && grep -qE '^\s*\[proxy_plugins\.dedup\]' "$cfg"; then
  echo "install.sh: $containerd_config already has [proxy_plugins.dedup] of its own: left as it is" >&2
else
  [[ -s $cfg ]] || echo 'version = 2' > "$cfg"
  {
    echo "$begin"
    echo '[proxy_plugins.dedup]'
    echo '  type = "snapshot"'
    echo '  address = "/run/containerd/dedup-snapshotter.sock"'
    echo "$end"
  } >> "$cfg"
fi

if ((live)); then
  systemctl daemon-reload
  echo "installed. Start it with: systemctl enable --now dedup-fused dedup-snapshotter && systemctl restart containerd"
  echo "An upgrade of a running node: systemctl reload dedup-fused (mounts stay) && systemctl restart dedup-snapshotter"
else
  echo "installed under ${destdir:-/}"
fi
