# One command from a fresh clone: `make test` creates .venv, installs the pinned test
# environment (requirements/constraints.txt) and the package with its dev extras, runs pytest.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed
PYTEST_ARGS ?= -n 2

.PHONY: install test lint bench demo study fashion-mnist clean

$(STAMP): setup.py setup.cfg requirements/constraints.txt
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --disable-pip-version-check -q -c requirements/constraints.txt torch torchvision
	$(PY) -m pip install --disable-pip-version-check -q -c requirements/constraints.txt -e '.[dev,notebooks,timm]'
	touch $(STAMP)

install: $(STAMP)

test: $(STAMP)
	$(VENV)/bin/ruff check .
	$(PY) -m pytest $(PYTEST_ARGS)

lint: $(STAMP)
	$(VENV)/bin/ruff check .

# Fashion-MNIST from Debian's dataset-fashion-mnist when we may install packages; the demo falls back to
# scikit-learn's digits (with a note) when the files cannot be found.
fashion-mnist:
	@test -d /usr/share/datasets/fashion-mnist || { [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null && \
	  (apt-get install -y -q dataset-fashion-mnist >/dev/null 2>&1 || \
	   (apt-get update -q >/dev/null 2>&1 && apt-get install -y -q dataset-fashion-mnist >/dev/null 2>&1)); } || \
	  echo "note: Fashion-MNIST not installed; the demo will use scikit-learn digits"

demo: $(STAMP) fashion-mnist
	$(VENV)/bin/mgd-lightning demo

# The reproduction study (results/study-cpu: 100 min on 2 CPU cores from a fresh clone; resumable). STUDY_ARGS="--setting gpu" on a GPU.
STUDY_ARGS ?=
study: $(STAMP) fashion-mnist
	$(VENV)/bin/mgd-lightning study $(STUDY_ARGS)

bench: $(STAMP)
	$(PY) benchmarks/solver.py

clean:
	rm -rf $(VENV) build *.egg-info .pytest_cache .ruff_cache .hypothesis
