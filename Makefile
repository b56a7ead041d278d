# make run   - set up .venv (CPU torch first) and run the default experiment
# make test  - set up .venv and run the fast test tier (make test-slow: the slow tier)
PYTHON ?= python3
VENV   ?= .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.tinyexp-installed

.PHONY: setup run test test-slow test-browser lint clean

setup: $(STAMP)

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	# torch first and pinned: an unpinned torch pulls a multi-GB CUDA build from PyPI.
	$(PY) -m pip install --quiet "torch==2.13.*"
	$(PY) -m pip install --quiet -e ".[dev]"
	touch $(STAMP)

run: $(STAMP)
	$(PY) -m tinyexp $(ARGS)

test: $(STAMP)
	$(PY) -m pytest -q $(ARGS)

test-slow: $(STAMP)
	$(PY) -m pytest -q -m slow $(ARGS)

# The MLflow UI in headless Chromium (Debian's chromium + chromedriver, installed if missing).
test-browser: $(STAMP)
	@if [ ! -x /usr/bin/chromium ] || [ ! -x /usr/bin/chromedriver ]; then \
		SUDO=$$( [ "$$(id -u)" -eq 0 ] || echo sudo ); \
		$$SUDO apt-get update && $$SUDO apt-get install -y chromium chromium-driver; \
	fi
	$(PY) -m pytest -q -m slow tests/test_mlflow_ui.py $(ARGS)

lint: $(STAMP)
	$(VENV)/bin/ruff check tinyexp hydra_plugins tests

clean:
	rm -rf outputs multirun/*/ .tinyexp_cache mlflow.db mlartifacts mlruns
