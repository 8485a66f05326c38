# Two commands for a fresh machine:  make demo  (the whole pipeline locally)  and  make test.
# Both create .venv and install what they need first.
PYTHON ?= python3
VENV   ?= .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.installed-stamp
# pytest-xdist workers for make test: one per physical core (TEST_WORKERS=0 runs the suite in one process)
TEST_WORKERS ?= auto

.PHONY: venv browser demo test lint compile check-compiled reliability bench image image-smoke clean

# The image: the tag follows setup.cfg's version; docker or podman, whichever is here (ENGINE=... to choose).
VERSION    := $(shell sed -n 's/^version *= *//p' setup.cfg)
IMAGE      ?= ghcr.io/llm-finetune-pipelines/llm-finetune:$(VERSION)
BASE_IMAGE ?= ubuntu:24.04
ENGINE     ?= $(shell command -v podman 2>/dev/null || command -v docker 2>/dev/null || echo docker)
# The CA bundle pip trusts here (a TLS-inspecting proxy's), handed to the build as a secret, never baked in
# (`,` is a literal comma for the $(if ...) below).
PIP_CA     ?= $(PIP_CERT)
,          := ,

$(STAMP): setup.cfg pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -e ".[train,dev]"
	touch $(STAMP)

venv: $(STAMP)

demo: venv  ## Run the whole pipeline locally (kfp.local, CPU, tiny model, sample data, SQLite MLflow).
	$(PY) -m pipelines.run_local

# The browser tests drive Debian's chromium (headless); installed here with apt where it is missing and we can.
browser:
	@command -v chromium >/dev/null || { [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null \
		&& apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends chromium; } \
		|| echo "chromium is missing and cannot be installed here (needs root and apt): the browser tests will fail"

test: venv browser  ## Lint, check compiled/ is current, run the test suite (one worker per core).
	$(VENV)/bin/ruff check .
	$(PY) -m pipelines.compile --check
	$(PY) -m pytest -q -n $(TEST_WORKERS)

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

image:  ## Build the image on ubuntu:24.04 (BASE_IMAGE=... for another base, e.g. image/stand_in_base.sh's).
	$(ENGINE) build --build-arg BASE_IMAGE=$(BASE_IMAGE) $(if $(PIP_CA),--secret id=pip_ca$(,)src=$(PIP_CA)) \
		-t $(IMAGE) .

image-smoke:  ## Start what a user starts, in the image, as uid 1000 (not part of make test).
	ENGINE=$(ENGINE) image/smoke.sh $(IMAGE)

clean:
	rm -rf $(VENV) storage .pytest_cache .ruff_cache .hypothesis
