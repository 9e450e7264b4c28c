# milterman — the two set-up commands are `make run` and `make test`.
PYTHON ?= python3
VENV   := .venv
VPY    := $(VENV)/bin/python
STAMP  := $(VENV)/.installed
SPEC   ?= inet:10025@[127.0.0.1]

.PHONY: run demo test bench lint clean venv install

venv: $(STAMP)

$(STAMP): setup.cfg pyproject.toml
	@$(PYTHON) -c 'import ensurepip, venv' 2>/dev/null || { \
	  if [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null; then \
	    echo "installing python3-venv (Debian) ..."; \
	    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq python3-venv >/dev/null \
	      || { apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq python3-venv >/dev/null; }; \
	  else echo "error: $(PYTHON) cannot create virtual environments; install python3-venv" >&2; exit 1; fi; }
	$(PYTHON) -m venv $(VENV)
	$(VPY) -m pip install -q --disable-pip-version-check --upgrade pip 'setuptools>=61' wheel
	$(VPY) -m pip install -q --disable-pip-version-check '.[test,graphs]'
	@touch $@

# The project itself, not editable: a wheel built from this checkout, installed into .venv again
# on every run (its dependencies come once, with the stamp), so what runs is what a user installs.
install: $(STAMP)
	rm -rf build/lib build/bdist.* build/wheel
	$(VPY) -m pip wheel -q --disable-pip-version-check --no-deps --no-build-isolation -w build/wheel .
	$(VPY) -m pip install -q --disable-pip-version-check --force-reinstall --no-deps build/wheel/milterman-*.whl

# milter-manager in the foreground on the bundled default configuration
# (127.0.0.1:10025, milters detected from Debian's packages). Ctrl-C stops it.
run: install
	$(VENV)/bin/milter-manager --config-dir milterman/data --connection-spec '$(SPEC)'

# The manager with two example child milters, one mail through it, the combined result.
demo: install
	cd / && $(CURDIR)/$(VPY) -m milterman.tools.demo

# The suite runs against the installed package: pytest starts in tests/, where the checkout is not
# importable (tests/conftest.py insists on it under CI=true). A path in PYTEST_ARGS may be given
# from the top (tests/tools/test_x.py::test_y) or from tests/ (tools/test_x.py).
test_path = $(if $(wildcard $(firstword $(subst ::, ,$(1)))),$(patsubst tests/%,%,$(patsubst tests,.,$(1))),$(1))
test: install
	cd tests && $(CURDIR)/$(VPY) -m pytest $(foreach word,$(PYTEST_ARGS),$(call test_path,$(word)))

bench: install
	$(VPY) bench/run.py $(BENCH_ARGS)

lint: $(STAMP)
	@$(VPY) -m ruff --version >/dev/null 2>&1 || $(VPY) -m pip install -q --disable-pip-version-check ruff
	$(VPY) -m ruff check milterman tests bench bin

clean:
	rm -rf $(VENV) build dist *.egg-info .pytest_cache .hypothesis
	find . -name __pycache__ -type d -prune -exec rm -rf {} +
	$(MAKE) -C bench clean 2>/dev/null || true
