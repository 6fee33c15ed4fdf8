#!/usr/bin/env bash
# Install Debian's headless-capable Chromium for the web console's browser tests
# (tests/e2e/test_ui_browser.py drives it with the Python `playwright` package at
# /usr/bin/chromium; Playwright never downloads a browser of its own here).
# Idempotent: does nothing (and skips apt-get entirely) when /usr/bin/chromium is present.
set -euo pipefail

if [ -x /usr/bin/chromium ]; then
  echo "install-browser: present ($(/usr/bin/chromium --version 2>/dev/null | head -n1))"
  exit 0
fi

. "$(dirname "$0")/as-root.sh"

export DEBIAN_FRONTEND=noninteractive
as_root "install chromium" apt-get update
as_root "install chromium" apt-get install -y --no-install-recommends chromium fonts-dejavu-core
test -x /usr/bin/chromium || { echo "install-browser: /usr/bin/chromium still missing" >&2; exit 1; }
echo "install-browser: done ($(/usr/bin/chromium --version 2>/dev/null | head -n1))"
