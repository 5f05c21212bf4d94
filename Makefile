# Two commands do everything on a fresh machine:
#   make test   create .venv if missing, install, run the tests (incl. the papermill smoke batch)
#   make book   create .venv if missing, install, run the default grid (cached: skips finished runs),
#               build the Jupyter Book strictly into book/_build/html
SHELL := /bin/bash
PYTHON ?= python3.11
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed
PROFILE ?= default
RESULTS ?= results/$(PROFILE)
export HF_HUB_OFFLINE ?= 1
export TRANSFORMERS_OFFLINE ?= 1
export PYTHONHASHSEED := 0

.PHONY: venv test test-fast smoke localization results book evidence evidence-all benchmarks verify clean-book

$(STAMP): requirements.txt requirements-nodeps.txt pyproject.toml
	@test -x $(PY) || command -v $(PYTHON) >/dev/null 2>&1 || { echo "error: Python 3.11 is needed to \
	create $(VENV), and '$(PYTHON)' was not found. Install Python 3.11, or pick another interpreter: \
	make $(MAKECMDGOALS) PYTHON=/path/to/python3.11" >&2; exit 2; }
	@test -x $(PY) || $(PYTHON) -c 'import sys; sys.exit(sys.version_info[:2] != (3, 11))' || { echo \
	"error: Python 3.11 is needed, '$(PYTHON)' is Python $$($(PYTHON) -c 'import platform; \
	print(platform.python_version())'). Pick a 3.11 interpreter: make $(MAKECMDGOALS) \
	PYTHON=/path/to/python3.11" >&2; exit 2; }
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet torch==2.13.0
	$(PY) -m pip install --quiet -r requirements.txt
	$(PY) -m pip install --quiet --no-deps -r requirements-nodeps.txt
	$(PY) -m pip install --quiet --no-deps --no-build-isolation -e .
	touch $(STAMP)

venv: $(STAMP)

# tests/test_browser.py needs Debian's chromium and chromium-driver: installed here when missing and root
BROWSER := chromium chromium-driver
test: $(STAMP)
	@command -v chromium >/dev/null && command -v chromedriver >/dev/null || { test "$$(id -u)" = 0 && \
	command -v apt-get >/dev/null && { apt-get install -y $(BROWSER) || { apt-get update -qq && \
	apt-get install -y $(BROWSER); }; }; } || echo "note: chromium/chromedriver missing and not installable \
	here (as root: apt-get install -y $(BROWSER)); tests/test_browser.py will fail" >&2
	$(PY) -m pytest -q -ra --durations=15

test-fast: $(STAMP)
	$(PY) -m pytest -q -m "not slow"

smoke: $(STAMP)
	$(PY) -m detox_utils batch --profile smoke --out results/smoke

# The localization notebook on every packaged model (the registry's list) whose result is missing:
# the committed results make this step a no-op.
localization: $(STAMP)
	$(PY) -m detox_utils localize

results/evaluators/validation.json: | $(STAMP)
	$(PY) -m detox_utils validate-evaluators

results: $(STAMP) localization results/evaluators/validation.json
	$(PY) -m detox_utils batch --profile $(PROFILE) --out $(RESULTS)

book: results
	$(PY) -m detox_utils book build --results $(RESULTS)

# The evidence grid behind the book's Evidence page (hours on 2 CPU cores; finished runs are skipped,
# so it resumes where it stopped). `make book` builds from whatever part of it is committed.
evidence: $(STAMP) localization
	$(PY) -m detox_utils batch --profile powered --out results/powered

# Everything behind the Evidence page, in order: the grid, its extensions and the perplexity-matched
# controls (`batch --profile P --dry-run` estimates each; finished runs are skipped, so it resumes). A
# run that fails (an extension whose AURA fit is not its run's stops in its check step) does not stop
# the others; the exit status says whether any failed.
# (the extensions first: the Qwen slur one turns that cell's "inconclusive (underpowered)" verdicts into
# answers; powered-ppl-controls-rtp last: all it has left is Qwen's TRNE control matched under
# <|endoftext|>, which the one matched without a first token supersedes)
EVIDENCE_PROFILES := powered powered-extend-rtp powered-extend-slur powered-extend-slur-qwen \
	powered-ppl-controls-slur powered-ppl-controls-rtp-qwen-none powered-ppl-controls-slur-qwen-none \
	powered-ppl-controls-rtp
# Then every new edit of the models whose grid first token is not their best start (the Evidence page's
# first-token table; `evidence.capability_starts`) is measured under the best one, so that the verdicts
# can read their capability under it (resumable: measured edits are skipped).
PPL_PREFIX_MODELS ?= qwen2.5-coder-0.5b
evidence-all: $(STAMP) localization
	@status=0; for p in $(EVIDENCE_PROFILES); do \
	  $(PY) -m detox_utils batch --profile $$p --out results/powered || status=1; done; \
	for m in $(PPL_PREFIX_MODELS); do \
	  $(PY) -m detox_utils ppl-prefix --model $$m --out results/powered || status=1; done; exit $$status

# Rerun the N cheapest published runs and compare them with the committed results (VERIFY_N=48: all)
VERIFY_N ?= 2
verify: $(STAMP)
	$(PY) -m detox_utils verify --out $(RESULTS) --n $(VERIFY_N)

benchmarks: $(STAMP)
	for b in benchmarks/bench_*.py; do echo "== $$b"; $(PY) $$b || exit 1; done

clean-book:
	rm -rf book/_build
