# crossrec: the two commands are `make demo` and `make test`; both create .venv and install on first use.
PYTHON ?= $(shell command -v python3.11 || command -v python3)
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed

LAKE       ?= lakehouse
DEMO_RAW   ?= demo-data/raw
DEMO_USERS ?= 2000
DEMO_EPOCHS ?= 8
DEMO_KEY   ?= .crossrec-demo.key
RUN_DATE   ?= $(shell date -u +%F)
PYTEST_ARGS ?=

export CROSSREC_PSEUDONYM_KEY_FILE ?= $(abspath $(DEMO_KEY))

.PHONY: help install demo test test-fast lint clean-demo

help:
	@echo "make demo   - generate data, run ingest -> clean -> features -> train -> evaluate, print the tables"
	@echo "make test   - run the test suite (real Spark, Delta, Great Expectations)"
	@echo "make test-fast - the tests not marked slow"

$(STAMP): setup.py
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip setuptools wheel
	$(BIN)/pip install -q -e ".[dev]"
	touch $(STAMP)

$(VENV): $(STAMP)
install: $(STAMP)

# A demo-only pseudonymisation key, made once and kept out of git; real runs set CROSSREC_PSEUDONYM_KEY(_FILE).
$(DEMO_KEY):
	$(BIN)/python -c "import secrets; print(secrets.token_hex(32))" > $(DEMO_KEY)

demo: $(STAMP) $(DEMO_KEY)
	$(BIN)/crossrec generate $(DEMO_RAW) --users $(DEMO_USERS) --dirty-rate 0.01 --overwrite > /dev/null
	$(BIN)/crossrec ingest --raw-dir $(DEMO_RAW) --lake-root $(LAKE) --run-date $(RUN_DATE)
	$(BIN)/crossrec clean --raw-dir $(DEMO_RAW) --lake-root $(LAKE) --run-date $(RUN_DATE)
	$(BIN)/crossrec features --raw-dir $(DEMO_RAW) --lake-root $(LAKE) --run-date $(RUN_DATE)
	$(BIN)/crossrec train --lake-root $(LAKE) --run-date $(RUN_DATE) --workers 2 --epochs $(DEMO_EPOCHS)
	$(BIN)/crossrec evaluate --lake-root $(LAKE) --run-date $(RUN_DATE) --baselines pop,itemknn,als
	@echo
	@echo "== crossrec demo: tables under $(LAKE)/ (validation reports in $(LAKE)/_reports/)"
	@$(BIN)/crossrec tables --lake-root $(LAKE) --accounting

test: $(STAMP)
	$(BIN)/python -m pytest -ra --strict-markers $(PYTEST_ARGS) tests

test-fast: $(STAMP)
	$(BIN)/python -m pytest -ra --strict-markers -m "not slow" $(PYTEST_ARGS) tests

clean-demo:
	rm -rf $(LAKE) demo-data
