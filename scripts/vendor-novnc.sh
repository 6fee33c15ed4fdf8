#!/usr/bin/env bash
# Vendor noVNC, the web console's VNC client (the VM page's Display section), from its npm release
# into src/vmplane/ui/vendor/novnc/, so that vmplane serves it itself and the page works offline.
#
# Pinned: the tarball's version and SHA-512 below; a different tarball fails the run. The npm
# package's ES modules (core/, and the pako it imports from vendor/) are copied unchanged, with the
# licences beside them. 1.7.0 is the first release whose npm package ships ES modules (1.6.0 and
# older ship CommonJS under lib/, which a browser cannot load without a bundler). To update: change
# the version, run this with UPDATE_HASHES=1 once to print the new hash, put it below, run it
# again, then run tests/api/test_ui.py and tests/e2e/test_display_browser.py.
#
# Needs npm (Debian's `npm` package); reaches the npm registry only through `npm pack`.
set -euo pipefail

NOVNC_VERSION=1.7.0
NOVNC_SHA512=b9c1093b1e13d9abc844295ea1d93b6286d98f93b619ad8078b7d0ebd03fca31bd1c76dadbe3c38304a437716db6b986fbbd191b1db5b0494d168b8ad77473c8

root=$(cd "$(dirname "$0")/.." && pwd)
dest="$root/src/vmplane/ui/vendor/novnc"
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT

tarball=$(cd "$work" && npm pack --silent "@novnc/novnc@$NOVNC_VERSION")
got=$(sha512sum "$work/$tarball" | cut -d' ' -f1)
if [[ ${UPDATE_HASHES:-} == 1 ]]; then
    echo "@novnc/novnc $NOVNC_VERSION sha512: $got"
    exit 0
elif [[ $got != "$NOVNC_SHA512" ]]; then
    echo "@novnc/novnc@$NOVNC_VERSION: the tarball's SHA-512 is $got, not the pinned $NOVNC_SHA512" >&2
    exit 1
fi
tar -xzf "$work/$tarball" -C "$work"
pkg="$work/package"

rm -rf "$dest" && mkdir -p "$dest"
cp -r "$pkg/core" "$dest/core"
mkdir -p "$dest/vendor/pako"
cp -r "$pkg/vendor/pako/lib" "$dest/vendor/pako/lib"
cp "$pkg/vendor/pako/LICENSE" "$dest/vendor/pako/LICENSE"
cp "$pkg/LICENSE.txt" "$pkg/AUTHORS" "$dest/"
cp "$pkg"/docs/LICENSE.* "$dest/"
# nothing else may come along: every file is a module the console may import, or a licence
if find "$dest" -type f ! -name '*.js' ! -name 'LICENSE*' ! -name AUTHORS | grep -q .; then
    echo "unexpected files in the package:" >&2
    find "$dest" -type f ! -name '*.js' ! -name 'LICENSE*' ! -name AUTHORS >&2
    exit 1
fi

cat >"$dest/README.md" <<EOF
Vendored by scripts/vendor-novnc.sh (do not edit by hand): npm \`@novnc/novnc\` $NOVNC_VERSION,
tarball SHA-512 $NOVNC_SHA512.

- \`core/\`: noVNC's ES modules, unchanged (\`core/rfb.js\` is the entry point the console imports)
- \`vendor/pako/lib/\`: the pako modules \`core/\` imports (zlib), unchanged; \`vendor/pako/LICENSE\` (MIT)
- \`LICENSE.txt\` (noVNC: MPL-2.0 for the core), \`LICENSE.*\` (the licences it names), \`AUTHORS\`

Served at /ui/vendor/novnc/ (the console's static files), imported by src/vmplane/ui/js/display.js.
EOF
echo "vendored @novnc/novnc $NOVNC_VERSION into $dest"
