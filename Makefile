# make run  — set up everything, then serve vmplane on 127.0.0.1:8080 (data in ./.vmplane)
# make test — set up everything (QEMU, Chromium, a throwaway PostgreSQL), then run the whole test suite
# make bench — print the benchmark figures recorded in docs/benchmarks.md

VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed-stamp
PYTEST_ARGS ?=

.PHONY: run test bench system browser vcsim clean

$(STAMP): pyproject.toml
	@test -x $(PY) || python3 -m venv $(VENV) || scripts/install-python-venv.sh $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -e '.[test]'
	@touch $(STAMP)

# QEMU, the tools that build the tiny guest, and restic for backups (scripts/install-qemu.sh);
# when there is no way to install them, vmplane runs on the sim driver. The tools of
# `vmplane image build debian-12` (mmdebstrap, syslinux, mtools: scripts/install-image-tools.sh)
# are installed too; nothing builds that image unasked.
system:
	@scripts/install-qemu.sh || echo "warning: QEMU could not be installed; vmplane will use the sim driver" >&2
	@scripts/install-image-tools.sh || echo "warning: mmdebstrap could not be installed; \`vmplane image build debian-12\` will not work" >&2

run: $(STAMP) system
	$(VENV)/bin/vmplane serve --host 127.0.0.1 --port 8080 --data-dir .vmplane

# Debian's chromium for the web console's browser tests (scripts/install-browser.sh); Playwright
# drives it at /usr/bin/chromium and never downloads a browser. Without it those tests skip.
browser:
	@scripts/install-browser.sh || echo "warning: chromium could not be installed; the browser tests will skip" >&2

# govmomi's vCenter simulator, built from Debian's source package (scripts/build-vcsim.sh) for
# the vSphere discovery and import tests; without it those tests skip.
vcsim:
	@scripts/build-vcsim.sh >/dev/null || echo "warning: vcsim could not be built; the vSphere tests will skip" >&2

test: $(STAMP) system browser vcsim
	VMPLANE_TEST_PG_URL=$$(scripts/ensure-postgres.sh) $(PY) -m pytest $(PYTEST_ARGS)

bench: $(STAMP)
	$(PY) bench/core.py

clean:
	rm -rf $(VENV) .pytest_cache
