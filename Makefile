# Two commands for a fresh machine:  make demo  (the whole pipeline locally)  and  make test.
# Both create .venv and install what they need first.
PYTHON ?= python3
VENV   ?= .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.installed-stamp

.PHONY: venv demo test lint compile check-compiled reliability bench clean

$(STAMP): setup.cfg pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -e ".[train,dev]"
	touch $(STAMP)

venv: $(STAMP)

demo: venv  ## Run the whole pipeline locally (kfp.local, CPU, tiny model, sample data, SQLite MLflow).
	$(PY) -m pipelines.run_local

test: venv  ## Lint, check compiled/ is current, run the test suite.
	$(VENV)/bin/ruff check .
	$(PY) -m pipelines.compile --check
	$(PY) -m pytest -q

lint: venv
	$(VENV)/bin/ruff check .

compile: venv  ## Regenerate compiled/*.yaml from configs/*.yaml.
	$(PY) -m pipelines.compile

reliability: venv  ## The fault-injection tests that take longer than a minute.
	$(PY) -m pytest -q -m reliability_long tests/reliability

bench: venv  ## CPU benchmarks (ratios against references measured in the same run).
	$(PY) -m pip install --quiet -e ".[bench]"
	for name in bench_validate_dataset bench_evaluate_mmlu bench_merge_lora bench_model_identity bench_generate; do \
		$(PY) -m benchmarks.$$name || exit 1; \
	done

clean:
	rm -rf $(VENV) storage .pytest_cache .ruff_cache .hypothesis
