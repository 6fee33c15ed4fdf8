#!/usr/bin/env bash
# Vendor the assets of the API documentation pages (/docs: Swagger UI, /redoc: ReDoc) from their
# npm releases into src/vmplane/ui/vendor/{swagger-ui,redoc}/, so that vmplane serves them itself
# and the pages work offline (FastAPI's defaults load them from a CDN at run time).
#
# Pinned: each tarball's version and SHA-512 below; a different tarball fails the run. The files
# are copied unchanged except that the sourceMappingURL line is dropped (no map is shipped) and ReDoc's logo URL is replaced (below);
# each package's licence files go beside its files. To update: change a version, run this with
# UPDATE_HASHES=1 once to print the new hashes, put them below, run it again, then run
# tests/api/test_api_docs.py and tests/e2e/test_api_docs_browser.py.
#
# Needs npm (Debian's `npm` package); reaches the npm registry only through `npm pack`.
set -euo pipefail

SWAGGER_UI_VERSION=5.36.0
SWAGGER_UI_SHA512=2edebf29bd205e62dd89a6cb86fb28e157493fd57ba89581d33874833797515dfe08c393ccc9afa494525cdec40237f08b1c26a22f5ecc36cb1e27b10bb940f4
# ReDoc 2.x: the line FastAPI's get_redoc_html is written for (a classic script and a <redoc>
# element); 3.x is an ES module that also sends usage data unless told not to.
REDOC_VERSION=2.5.4
REDOC_SHA512=33a8d6846d6aa019c7e93166cc99ecb72099f3b1e6398fd4cc39bbf261e262284476557f61c4bda203a8d4d94496724c78bb32c4715edb215ce2c3631d3ac005

root=$(cd "$(dirname "$0")/.." && pwd)
vendor="$root/src/vmplane/ui/vendor"
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT

fetch() {  # fetch NAME VERSION SHA512: unpacks the tarball into $work/NAME/package
    local name=$1 version=$2 want=$3 tarball got
    tarball=$(cd "$work" && npm pack --silent "$name@$version")
    got=$(sha512sum "$work/$tarball" | cut -d' ' -f1)
    if [[ ${UPDATE_HASHES:-} == 1 ]]; then
        echo "$name $version sha512: $got"
    elif [[ $got != "$want" ]]; then
        echo "$name@$version: the tarball's SHA-512 is $got, not the pinned $want" >&2
        exit 1
    fi
    mkdir -p "$work/$name"
    tar -xzf "$work/$tarball" -C "$work/$name"
}

copy() {  # copy SRC DEST: the file without its sourceMappingURL line (`//# ...` in JS, `/*# ... */` in CSS)
    grep -Ev '^(//# sourceMappingURL=|/\*# sourceMappingURL=.*\*/$)' "$1" >"$2" || true
}

replace_once() {  # replace_once FILE OLD NEW: OLD must occur exactly once in FILE
    python3 - "$@" <<'PY'
import sys
path, old, new = sys.argv[1:]
text = open(path, encoding="utf-8").read()
if text.count(old) != 1:
    sys.exit(f"{path}: expected {old!r} exactly once, found it {text.count(old)} times")
open(path, "w", encoding="utf-8").write(text.replace(old, new))
PY
}

fetch swagger-ui-dist "$SWAGGER_UI_VERSION" "$SWAGGER_UI_SHA512"
fetch redoc "$REDOC_VERSION" "$REDOC_SHA512"
[[ ${UPDATE_HASHES:-} == 1 ]] && exit 0

sw="$work/swagger-ui-dist/package"
rm -rf "$vendor/swagger-ui" && mkdir -p "$vendor/swagger-ui"
copy "$sw/swagger-ui-bundle.js" "$vendor/swagger-ui/swagger-ui-bundle.js"
copy "$sw/swagger-ui.css" "$vendor/swagger-ui/swagger-ui.css"
cp "$sw/favicon-32x32.png" "$sw/LICENSE" "$sw/NOTICE" "$sw/swagger-ui-bundle.js.LICENSE.txt" "$vendor/swagger-ui/"

rd="$work/redoc/package"
rm -rf "$vendor/redoc" && mkdir -p "$vendor/redoc"
copy "$rd/bundles/redoc.standalone.js" "$vendor/redoc/redoc.standalone.js"
# ReDoc's side menu always draws Redocly's logo from cdn.redoc.ly, whatever its options: an empty
# data: URL instead (the image's own error handler then hides it), so the page asks no other host
replace_once "$vendor/redoc/redoc.standalone.js" 'src:"https://cdn.redoc.ly/redoc/logo-mini.svg"' 'src:"data:,"'
cp "$rd/LICENSE" "$rd/bundles/redoc.standalone.js.LICENSE.txt" "$vendor/redoc/"

cat >"$vendor/swagger-ui/README.md" <<EOF
Vendored by scripts/vendor-api-docs.sh (do not edit by hand): npm \`swagger-ui-dist\` $SWAGGER_UI_VERSION,
tarball SHA-512 $SWAGGER_UI_SHA512.

- \`swagger-ui-bundle.js\`, \`swagger-ui.css\`: unchanged but for the dropped \`sourceMappingURL\` line
- \`favicon-32x32.png\`: the package's icon (the /docs and /redoc pages' favicon)
- \`LICENSE\` (Apache-2.0), \`NOTICE\`, \`swagger-ui-bundle.js.LICENSE.txt\` (the bundled libraries' licences)

Served at /ui/vendor/swagger-ui/ (the console's static files), named by the /docs and /redoc pages of src/vmplane/api/docs.py.
EOF
cat >"$vendor/redoc/README.md" <<EOF
Vendored by scripts/vendor-api-docs.sh (do not edit by hand): npm \`redoc\` $REDOC_VERSION (its standalone
bundle), tarball SHA-512 $REDOC_SHA512.

- \`redoc.standalone.js\`: \`bundles/redoc.standalone.js\`, unchanged but for the dropped \`sourceMappingURL\` line
  and the menu's Redocly logo, which it loads from cdn.redoc.ly: its URL is \`data:,\` here (so it is not drawn)
- \`LICENSE\` (MIT), \`redoc.standalone.js.LICENSE.txt\` (the bundled libraries' licences)

Served at /ui/vendor/redoc/ (the console's static files), named by the /redoc page of src/vmplane/api/docs.py.
EOF
echo "vendored swagger-ui-dist $SWAGGER_UI_VERSION and redoc $REDOC_VERSION into $vendor"
