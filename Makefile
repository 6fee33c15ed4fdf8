# make run  — set up everything, put `vmplane` on PATH, then serve vmplane on 127.0.0.1:8080 (data in
#             ./.vmplane); `make run PORT=9090 DATA_DIR=/srv/vmplane` serves elsewhere
# make test — set up everything (QEMU, Chromium, a throwaway PostgreSQL), then run the whole test suite
# make bench — print the benchmark figures recorded in docs/benchmarks.md (core, then the reads beside the floor)
# make chaos — the chaos soak (docs/reliability.md): 30 minutes of faults, then the history checker

VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed-stamp
PYTEST_ARGS ?=
TEST_WORKERS ?= 2
PORT ?= 8080
DATA_DIR ?= .vmplane
# where `make run` links the vmplane command: /usr/local/bin when it may write there (root), else
# ~/.local/bin (on PATH in Debian's default ~/.profile once it exists)
BINDIR ?= $(shell if [ -w /usr/local/bin ]; then echo /usr/local/bin; else echo "$$HOME/.local/bin"; fi)

.PHONY: run link test bench chaos system browser vcsim clean

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

run: $(STAMP) system link
	$(VENV)/bin/vmplane serve --host 127.0.0.1 --port $(PORT) --data-dir $(DATA_DIR)

# `vmplane` on PATH: a symbolic link in BINDIR to this checkout's .venv/bin/vmplane. A vmplane there
# that is not a link (installed some other way) is left alone; a link to another checkout is moved.
link: $(STAMP)
	@target="$(abspath $(VENV))/bin/vmplane"; link="$(BINDIR)/vmplane"; \
	if [ -e "$$link" ] && [ ! -L "$$link" ]; then \
	  echo "make run: $$link is not a link made by make run; leaving it (this checkout's CLI is $$target)" >&2; \
	else \
	  mkdir -p "$(BINDIR)" && ln -sfn "$$target" "$$link" && echo "make run: the vmplane command is $$link -> $$target"; \
	  case ":$$PATH:" in *":$(BINDIR):"*) ;; *) echo "make run: $(BINDIR) is not on your PATH: export PATH=\"$(BINDIR):\$$PATH\"" >&2;; esac; \
	fi

# Debian's chromium for the web console's browser tests (scripts/install-browser.sh); Playwright
# drives it at /usr/bin/chromium and never downloads a browser. Without it those tests skip.
browser:
	@scripts/install-browser.sh || echo "warning: chromium could not be installed; the browser tests will skip" >&2

# govmomi's vCenter simulator, built from Debian's source package (scripts/build-vcsim.sh) for
# the vSphere discovery and import tests; without it those tests skip.
vcsim:
	@scripts/build-vcsim.sh >/dev/null || echo "warning: vcsim could not be built; the vSphere tests will skip" >&2

# The suite runs in two passes on TEST_WORKERS processes (pytest-xdist): the tests that are not
# marked slow (in-process servers on the sim driver), then the slow ones (real guests, browsers,
# processes), each test file on one worker so that a module's shared guest is booted once. A pass
# with nothing to run (exit 5, e.g. PYTEST_ARGS naming one file) is no failure.
test: $(STAMP) system browser vcsim
	@export VMPLANE_TEST_PG_URL=$$(scripts/ensure-postgres.sh); failed=0; \
	for pass in "-m 'not slow'" "-m slow --dist loadfile"; do \
	  cmd="$(PY) -m pytest -n $(TEST_WORKERS) $$pass $(PYTEST_ARGS)"; echo "$$cmd"; \
	  eval "$$cmd"; rc=$$?; [ $$rc -eq 0 ] || [ $$rc -eq 5 ] || failed=$$rc; \
	done; exit $$failed

bench: $(STAMP)
	$(PY) bench/core.py
	$(PY) bench/floor.py

# The chaos soak (bench/chaos.py): three replicas on a throwaway PostgreSQL of its own, three sim
# agents, a mixed workload and a seeded nemesis for CHAOS_MINUTES, then the history checker;
# exits non-zero on any violation. `make test` runs a 1.5-minute variant (tests/e2e/test_chaos.py).
CHAOS_MINUTES ?= 30
CHAOS_SEED ?= 1
chaos: $(STAMP)
	$(PY) bench/chaos.py --minutes $(CHAOS_MINUTES) --seed $(CHAOS_SEED)

clean:
	rm -rf $(VENV) .pytest_cache
