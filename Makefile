# make run   - set up .venv (CPU torch first) and run the default experiment
# make test  - set up .venv and run the fast test tier (make test-slow: the slow tier;
#              make test-distributed: workers against PostgreSQL and an MLflow server)
# make test-sweeper - the Optuna sweeper's own tests (plugins/hydra_optuna5_sweeper) in a venv
#              without torch or tinyexp (.venv-sweeper)
# make mutation - mutmut over the core modules against the fast in-process tests (long: see README)
PYTHON ?= python3
VENV   ?= .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.tinyexp-installed
TORCH_VERSION ?= 2.13.*
TORCH_INDEX ?= https://download.pytorch.org/whl/cpu
SWEEPER := plugins/hydra_optuna5_sweeper
SWEEPER_VENV ?= .venv-sweeper
SWEEPER_PY := $(abspath $(SWEEPER_VENV))/bin/python
SWEEPER_STAMP := $(SWEEPER_VENV)/.sweeper-installed

.PHONY: setup run test test-slow test-distributed test-sweeper test-browser lint clean

setup: $(STAMP)

$(STAMP): pyproject.toml $(SWEEPER)/pyproject.toml
	$(PYTHON) -m venv $(VENV)
	# torch first and pinned, the CPU build from PyTorch's index when it answers (PyPI's Linux
	# torch brings gigabytes of CUDA libraries); else the default index (a mirror that has the
	# CPU build, say). TORCH_INDEX= (empty) skips PyTorch's index.
	@if [ -n "$(TORCH_INDEX)" ] && $(PYTHON) -c "import sys, urllib.request; \
		urllib.request.urlopen(sys.argv[1] + '/torch/', timeout=10)" "$(TORCH_INDEX)" 2>/dev/null; \
	then echo "torch from $(TORCH_INDEX)"; \
		$(PY) -m pip install --quiet "torch==$(TORCH_VERSION)" --index-url "$(TORCH_INDEX)"; \
	else echo "torch from the default index ($(TORCH_INDEX) not reachable or not set)"; \
		$(PY) -m pip install --quiet "torch==$(TORCH_VERSION)"; fi
	# the Optuna sweeper tinyexp depends on lives in this repository: installed before
	# tinyexp, so pip never looks for hydra-optuna5-sweeper on PyPI
	$(PY) -m pip install --quiet -e $(SWEEPER)
	# deploy: litert-torch, tflite-micro (deploy=tflm); distributed: psycopg, the joblib and
	# submitit launchers (PostgreSQL storage, parallel jobs)
	$(PY) -m pip install --quiet -e ".[dev,deploy,distributed]"
	touch $(STAMP)

run: $(STAMP)
	$(PY) -m tinyexp $(ARGS)

test: $(STAMP)
	$(PY) -m pytest -q $(ARGS)

test-slow: $(STAMP)
	$(PY) -m pytest -q -m slow $(ARGS)

# Search workers sharing a PostgreSQL study and an MLflow server (tests/servers.py starts both
# and deletes them after); needs PostgreSQL's initdb/pg_ctl (Debian: postgresql).
test-distributed: $(STAMP)
	$(PY) -m pytest -q -m distributed -s $(ARGS)

# The sweeper is a distribution of its own: its tests (unit and contract) run where only it and
# its test extra are installed, so an import of torch or tinyexp in it cannot go unnoticed.
$(SWEEPER_STAMP): $(SWEEPER)/pyproject.toml
	$(PYTHON) -m venv $(SWEEPER_VENV)
	$(SWEEPER_PY) -m pip install --quiet -e "$(SWEEPER)[test]"
	touch $(SWEEPER_STAMP)

test-sweeper: $(SWEEPER_STAMP) $(STAMP)
	@if $(SWEEPER_PY) -c "import torch" 2>/dev/null; then \
		echo "torch is importable in $(SWEEPER_VENV): the sweeper's tests must run without it"; \
		exit 1; fi
	cd $(SWEEPER) && $(SWEEPER_PY) -m pytest -q $(ARGS)
	# Optuna's GP sampler needs torch: its contract cases run the apps with tinyexp's Python
	cd $(SWEEPER) && CONTRACT_PYTHON=$(abspath $(PY)) $(SWEEPER_PY) -m pytest -q \
		tests/contract/test_contract_samplers.py -k gp

# The MLflow UI in headless Chromium (Debian's chromium + chromedriver, installed if missing).
test-browser: $(STAMP)
	@if [ ! -x /usr/bin/chromium ] || [ ! -x /usr/bin/chromedriver ]; then \
		SUDO=$$( [ "$$(id -u)" -eq 0 ] || echo sudo ); \
		$$SUDO apt-get update && $$SUDO apt-get install -y chromium chromium-driver; \
	fi
	$(PY) -m pytest -q -m slow tests/test_mlflow_ui.py $(ARGS)

lint: $(STAMP)
	$(VENV)/bin/ruff check tinyexp hydra_plugins tests plugins

# Mutation testing: mutmut copies the package into mutants/ (the working tree is never
# mutated), runs one worker so the second core stays free, and keeps results there, so a rerun
# only redoes the functions that changed. MUTATE narrows it to mutant names (globs), e.g.
#   make mutation MUTATE="tinyexp.measure.metrics.*"
.PHONY: mutation
mutation: $(STAMP)
	@$(PY) -c "import mutmut" 2>/dev/null || $(PY) -m pip install --quiet -e ".[mutation]"
	set -f; $(VENV)/bin/mutmut run --max-children 1 $(MUTATE)
	@echo "surviving mutants (mutmut show NAME for the diff):"
	@$(VENV)/bin/mutmut results | grep -E ': (survived|timeout|suspicious|segfault)$$' || true
	$(PY) -m tinyexp.bench.mutation_summary

clean:
	rm -rf outputs multirun/*/ .tinyexp_cache mlflow.db mlartifacts mlruns
