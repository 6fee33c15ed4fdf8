#!/usr/bin/env bash
# Debian ships `venv` in a separate package: install it, then create the virtualenv $1.
set -euo pipefail
if [ "$(id -u)" -ne 0 ]; then
  echo "python3 -m venv failed; install python3-venv (as root: apt-get install python3-venv)" >&2
  exit 1
fi
export DEBIAN_FRONTEND=noninteractive
apt-get update -qq
apt-get install -y -qq --no-install-recommends python3-venv python3-pip
python3 -m venv "$1"
