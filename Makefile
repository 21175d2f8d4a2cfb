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
DEMO_K     ?= 10
DEMO_USER  ?= u0000001
DEMO_QUERY ?= sea adventure stories
RUN_DATE   ?= $(shell date -u +%F)
PYTEST_ARGS ?=
# make test's pytest processes: one runs every Spark and Ray test in turn, the others the rest beside it (0: one
# process, no workers)
TEST_WORKERS ?= 2

export CROSSREC_PSEUDONYM_KEY_FILE ?= $(abspath $(DEMO_KEY))

.PHONY: help install demo test test-fast clean-demo bench-deps

help:
	@echo "make demo   - generate data, run ingest -> clean -> features -> train -> evaluate -> score, print a summary"
	@echo "make test   - run the test suite (real Spark, Delta, Great Expectations)"
	@echo "make test-fast - the tests not marked slow"
	@echo "make bench-deps - native BLAS (OpenBLAS, Debian) for Spark ALS in \`crossrec bench scoring\` (needs root)"

$(STAMP): pyproject.toml setup.py
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip setuptools wheel uv
	# uv resolves the same pins as pip and fetches wheels in parallel: ~2 min instead of ~5 for torch's CUDA
	# wheels; no cache, or torch would take ~3 GB more disk. --compile-bytecode as pip does: with
	# PYTHONDONTWRITEBYTECODE set, every Ray worker and job process would otherwise compile torch and Ray again
	$(BIN)/uv pip install -q --python $(BIN)/python --no-cache --compile-bytecode -e ".[dev]"
	touch $(STAMP)

$(VENV): $(STAMP)
install: $(STAMP)

# Spark ML's ALS (the scoring benchmark's peer) loads the system's libblas.so.3 through netlib; without one it falls
# back to a JVM BLAS and the comparison is unfair to it. The bench reports which kernel ran (als_blas).
bench-deps:
	apt-get install -y --no-install-recommends libopenblas0-pthread

# A demo-only pseudonymisation key, made once and kept out of git; real runs set CROSSREC_PSEUDONYM_KEY(_FILE).
$(DEMO_KEY):
	$(BIN)/python -c "import secrets; print(secrets.token_hex(32))" > $(DEMO_KEY)

demo: $(STAMP) $(DEMO_KEY)
	$(BIN)/crossrec generate $(DEMO_RAW) --users $(DEMO_USERS) --dirty-rate 0.01 --entity-signal shared --overwrite > /dev/null
	$(BIN)/crossrec ingest --raw-dir $(DEMO_RAW) --lake-root $(LAKE) --run-date $(RUN_DATE)
	$(BIN)/crossrec clean --raw-dir $(DEMO_RAW) --lake-root $(LAKE) --run-date $(RUN_DATE)
	$(BIN)/crossrec features --raw-dir $(DEMO_RAW) --lake-root $(LAKE) --run-date $(RUN_DATE)
	$(BIN)/crossrec train --lake-root $(LAKE) --run-date $(RUN_DATE) --workers 2 --epochs $(DEMO_EPOCHS)
	$(BIN)/crossrec evaluate --lake-root $(LAKE) --run-date $(RUN_DATE) --baselines pop,itemknn,als
	$(BIN)/crossrec score --lake-root $(LAKE) --run-date $(RUN_DATE) --k $(DEMO_K)
	@echo
	@echo "== crossrec demo: tables under $(LAKE)/ (validation reports and Data Docs in $(LAKE)/_reports/<run_id>/)"
	@$(BIN)/crossrec tables --lake-root $(LAKE) --accounting
	@echo
	@echo "== NDCG@10 on the test split (gold.metrics; full table printed by evaluate above)"
	@$(BIN)/python -c "from crossrec.io.readers import read_table as r; m = r('$(LAKE)', 'gold.metrics'); m = m[(m.run_id == m.sort_values('evaluated_at').run_id.iloc[-1]) & (m.metric == 'ndcg') & (m.k == 10)]; print(m.pivot_table(index=['domain', 'segment'], columns='model', values='value').round(4).to_string())"
	@echo
	@echo "== the model registry (MLflow, $(LAKE)/_mlflow): crossrec models --lake-root $(LAKE)"
	@$(BIN)/crossrec models --lake-root $(LAKE)
	@echo
	@echo "== a user's recommendations: crossrec recs $(DEMO_USER) --lake-root $(LAKE)"
	@$(BIN)/crossrec recs $(DEMO_USER) --lake-root $(LAKE)
	@echo
	@echo "== what the reasons name: a history item, an attribute entity shared with it, or popularity"
	@$(BIN)/python -c "from crossrec.score.reasons import reason_kinds_report as r; print(r('$(LAKE)'))"
	@echo
	@echo "== a described interest: crossrec query \"$(DEMO_QUERY)\" --lake-root $(LAKE) -n 5"
	@$(BIN)/crossrec query "$(DEMO_QUERY)" --lake-root $(LAKE) -n 5
	@echo
	@echo "== analysis notebook: notebooks/crossrec_results.ipynb (reads $(LAKE); run it with jupyter from notebooks/)"

test: $(STAMP)
	$(BIN)/python -m pytest -ra --strict-markers --durations=40 -n $(TEST_WORKERS) --dist loadgroup $(PYTEST_ARGS) tests

test-fast: $(STAMP)
	$(BIN)/python -m pytest -ra --strict-markers -m "not slow" -n $(TEST_WORKERS) --dist loadgroup $(PYTEST_ARGS) tests

clean-demo:
	rm -rf $(LAKE) demo-data
