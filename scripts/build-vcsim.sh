#!/usr/bin/env bash
# Build govmomi's vCenter simulator `vcsim` from Debian's packages and print its path.
# The tests of vSphere discovery and imports run against it.
#
# Debian's golang-github-vmware-govmomi-dev (0.24) ships the simulator library but not the
# vcsim program; the Debian *source* package has vcsim/. It is built in GOPATH mode with
# Debian's golang-go and the library packages under /usr/share/gocode (no module download).
# The binary is cached ($VMPLANE_VCSIM_CACHE, default ~/.cache/vmplane/vcsim/): idempotent,
# a no-op once built. Needs root (or sudo) the first time, for apt-get.
set -euo pipefail

CACHE="${VMPLANE_VCSIM_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/vmplane/vcsim}"
BIN="$CACHE/vcsim"
if [ -x "$BIN" ]; then
  echo "$BIN"
  exit 0
fi

. "$(dirname "$0")/as-root.sh"
export DEBIAN_FRONTEND=noninteractive

# A deb-src line for bookworm main, unless the machine has one already.
if ! grep -rqsE '^(deb-src|Types:.*deb-src)' /etc/apt/sources.list /etc/apt/sources.list.d/; then
  KEYRING=/usr/share/keyrings/debian-archive-keyring.gpg
  OPTS=""
  [ -f "$KEYRING" ] && OPTS="[signed-by=$KEYRING] "  # as Debian's own entries, or apt refuses both
  echo "deb-src ${OPTS}http://deb.debian.org/debian bookworm main" | as_root "install golang-go and the govmomi source" tee /etc/apt/sources.list.d/vmplane-deb-src.list >/dev/null
  as_root "install golang-go and the govmomi source" apt-get update -qq >&2
elif ! apt-cache showsrc golang-github-vmware-govmomi >/dev/null 2>&1 || [ -z "$(apt-cache showsrc golang-github-vmware-govmomi 2>/dev/null)" ]; then
  as_root "install golang-go and the govmomi source" apt-get update -qq >&2
fi
if ! command -v go >/dev/null 2>&1 || [ ! -d /usr/share/gocode/src/github.com/vmware/govmomi ]; then
  echo "build-vcsim: installing golang-go and golang-github-vmware-govmomi-dev" >&2
  as_root "install golang-go and the govmomi source" apt-get install -y -qq --no-install-recommends golang-go golang-github-vmware-govmomi-dev >&2
fi
GO="$(command -v go || echo /usr/lib/go/bin/go)"

WORK="$(mktemp -d "${TMPDIR:-/tmp}/vmplane-vcsim.XXXXXX")"
trap 'rm -rf "$WORK"' EXIT
cd "$WORK"
apt-get source --download-only golang-github-vmware-govmomi >&2
ORIG="$(ls golang-github-vmware-govmomi_*.orig.tar.* | head -n1)"
SRC="$WORK/gopath/src/github.com/vmware/govmomi"
mkdir -p "$SRC"
tar -xf "$ORIG" -C "$SRC" --strip-components=1
[ -d "$SRC/vcsim" ] || { echo "build-vcsim: no vcsim/ in $ORIG" >&2; exit 1; }

mkdir -p "$CACHE"
echo "build-vcsim: building vcsim (GOPATH mode, $("$GO" version))" >&2
GOPATH="$WORK/gopath:/usr/share/gocode" GO111MODULE=off GOCACHE="$CACHE/go-build" \
  "$GO" build -o "$BIN.part" github.com/vmware/govmomi/vcsim >&2
mv "$BIN.part" "$BIN"
rm -rf "$CACHE/go-build"
echo "$BIN"
