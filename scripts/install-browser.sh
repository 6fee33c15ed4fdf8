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

SUDO=()
if [ "$(id -u)" -ne 0 ]; then
  if command -v sudo >/dev/null 2>&1; then
    SUDO=(sudo)
  else
    echo "install-browser: need root (or sudo) to install chromium" >&2
    exit 1
  fi
fi

export DEBIAN_FRONTEND=noninteractive
"${SUDO[@]}" apt-get update
"${SUDO[@]}" apt-get install -y --no-install-recommends chromium fonts-dejavu-core
test -x /usr/bin/chromium || { echo "install-browser: /usr/bin/chromium still missing" >&2; exit 1; }
echo "install-browser: done ($(/usr/bin/chromium --version 2>/dev/null | head -n1))"
