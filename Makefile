# `make run` and `make test` work on a fresh machine: they create .venv and install the project
# (CPU torch pinned by constraints.txt) the first time, and again when pyproject.toml changes.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed

.PHONY: run test lint typecheck unit unit-fast bench-quick clean system-deps browser

# Test processes (pytest-xdist): the suite waits on subprocesses, sockets and the wall clock as
# much as it computes, so two workers on two cores take it from ~12 to ~8 minutes (measured).
# Tests are independent: every socket, store and run directory is a test's own.
TEST_WORKERS ?= 2

$(STAMP): pyproject.toml constraints.txt
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet -c constraints.txt -e '.[dev]'
	touch $(STAMP)

# System libraries beyond the Python packages, installed with apt-get (sudo when not root) only
# where missing.
SUDO := $(shell [ "$$(id -u)" = 0 ] || echo sudo)
LDCONFIG := $(shell command -v ldconfig || echo /sbin/ldconfig)
APT_INSTALL := $(SUDO) env DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends

system-deps:
	@# Episode videos (sim_bridge/video.py): MuJoCo renders offscreen through EGL, on Mesa's
	@# software rasterizer where there is no GPU.
	@$(LDCONFIG) -p | grep -q libEGL_mesa || { \
		echo "installing Mesa EGL for offscreen rendering"; \
		$(SUDO) apt-get update && $(APT_INSTALL) libegl1 libegl-mesa0 libgl1-mesa-dri; }

# The dashboard's browser tests (tests/controller/test_dashboard.py): Debian's Chromium and its
# driver, which Selenium drives headless.
browser:
	@command -v chromium >/dev/null && command -v chromedriver >/dev/null || { \
		echo "installing Chromium and ChromeDriver for the dashboard's browser tests"; \
		$(SUDO) apt-get update && $(APT_INSTALL) chromium chromium-driver; }

run: $(STAMP) system-deps
	$(VENV)/bin/tickmpc run $(ARGS)

test: lint typecheck unit

lint: $(STAMP)
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .
	$(VENV)/bin/lint-imports

typecheck: $(STAMP)
	$(VENV)/bin/mypy

unit: $(STAMP) system-deps browser
	$(PY) -m pytest -q -n $(TEST_WORKERS)

# The suite without the tests marked slow (whole `tickmpc run` loops, model training).
unit-fast: $(STAMP) system-deps browser
	$(PY) -m pytest -q -n $(TEST_WORKERS) -m "not slow"

bench-quick: $(STAMP)
	for b in benchmarks/*.py; do $(PY) $$b --quick || exit 1; done

clean:
	rm -rf $(VENV) .pytest_cache .mypy_cache .ruff_cache
