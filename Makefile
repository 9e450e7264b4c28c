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

# The performance figures: every row of the performance table, each against the libmilter C milter
# measured in the same run (doc/performance.md); e.g. BENCH_ARGS='--only latency --rounds 5 --json'.
bench: install
	$(VPY) bench/run.py $(BENCH_ARGS)

lint: $(STAMP)
	@$(VPY) -m ruff --version >/dev/null 2>&1 || $(VPY) -m pip install -q --disable-pip-version-check ruff
	$(VPY) -m ruff check milterman tests bench bin

# The Debian package (debian/, debian/README.Debian): milterman_VERSION_all.deb in this
# directory, built with dpkg-buildpackage from a copy of the sources in build/deb/ (where
# the .dsc, .changes and build log stay). docopt-ng, which Debian 12 lacks, is fetched
# with pip into the copy (DEB_PIP: the pip to use; default: the one of .venv).
DEB_PIP ?=
.PHONY: deb
deb:
	@command -v dpkg-buildpackage >/dev/null && command -v dh >/dev/null && command -v pandoc >/dev/null || { \
	  echo "error: make deb needs dpkg-dev, debhelper, dh-python and pandoc (see .ci/system-packages)" >&2; exit 1; }
	rm -rf build/deb && mkdir -p build/deb/fetch
	@set -e; version="$$(dpkg-parsechangelog -S Version)"; source="build/deb/milterman-$$version"; \
	mkdir -p "$$source"; \
	if git rev-parse --is-inside-work-tree >/dev/null 2>&1; then \
	  git ls-files -z --cached --others --exclude-standard | tar --null --ignore-failed-read -T - -cf - | tar -xf - -C "$$source"; \
	else \
	  tar --exclude=./.venv --exclude=./build --exclude=./dist --exclude=./.git --exclude='*.deb' \
	      --exclude=__pycache__ --exclude=.pytest_cache --exclude=.hypothesis -cf - . | tar -xf - -C "$$source"; \
	fi; \
	pip='$(DEB_PIP)'; if [ -z "$$pip" ]; then $(MAKE) --no-print-directory venv; pip='$(VPY) -m pip'; fi; \
	$$pip download -q --disable-pip-version-check --no-deps --no-binary :all: --require-hashes \
	  -r debian/docopt-ng.txt -d build/deb/fetch; \
	mkdir -p "$$source/debian/vendor"; \
	tar -xzf build/deb/fetch/docopt_ng-*.tar.gz -C build/deb/fetch; \
	cp -r build/deb/fetch/docopt_ng-*/docopt "$$source/debian/vendor/docopt"; \
	cp build/deb/fetch/docopt_ng-*/LICENSE-MIT "$$source/debian/vendor/docopt/"; \
	(cd "$$source" && dpkg-buildpackage -us -uc >../build.log 2>&1) || { tail -n 40 build/deb/build.log >&2; exit 1; }; \
	cp build/deb/milterman_*.deb .; \
	ls -l milterman_"$$version"_*.deb

clean:
	rm -rf $(VENV) build dist *.egg-info .pytest_cache .hypothesis
	rm -f milterman_*.deb
	find . -name __pycache__ -type d -prune -exec rm -rf {} +
	$(MAKE) -C bench clean 2>/dev/null || true
