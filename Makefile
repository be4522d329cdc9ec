# One command from a fresh clone: `make test` creates .venv, installs the pinned test
# environment (requirements/constraints.txt) and the package with its dev extras, runs pytest.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed
PYTEST_ARGS ?= -n 2

.PHONY: install test test-backends docs lint bench demo demo-detection study transfer imagenet-transfer unsup vit fashion-mnist clean

$(STAMP): setup.py setup.cfg requirements/constraints.txt
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --disable-pip-version-check -q -c requirements/constraints.txt torch torchvision
	$(PY) -m pip install --disable-pip-version-check -q -c requirements/constraints.txt -e '.[dev,notebooks,timm,detection,efficientnet,self-supervised,onnx]'
	$(PY) -m pip install --disable-pip-version-check -q -c requirements/constraints.txt --no-deps foolbox
	touch $(STAMP)

install: $(STAMP)

test: $(STAMP)
	$(VENV)/bin/ruff check .
	$(PY) -m pytest $(PYTEST_ARGS)

# Both Lightning namespaces (mgd_lightning/_lightning.py): .venv-lightning has only `lightning` (lightning.pytorch,
# `import lightning as L`; no pytorch_lightning: lightning 2.6 requires pytorch-lightning, so it and the package are
# installed with --no-deps, then their other requirements), .venv-both has both, run with MGD_LIGHTNING_BACKEND=lightning.
# Each runs the backend smoke tests (tests/test_backends.py).
VENV_L := .venv-lightning
VENV_B := .venv-both
PIP_C := -m pip install --disable-pip-version-check -q -c requirements/constraints.txt
BACKEND_TESTS ?= tests/test_backends.py

$(VENV_L)/.installed: setup.py setup.cfg requirements/constraints.txt requirements/requires.py
	test -x $(VENV_L)/bin/python || $(PYTHON) -m venv $(VENV_L)
	$(VENV_L)/bin/python $(PIP_C) torch torchvision
	$(VENV_L)/bin/python $(PIP_C) --no-deps -e . lightning
	$(VENV_L)/bin/python requirements/requires.py mgd-lightning lightning --without pytorch-lightning >$(VENV_L)/requires.txt
	$(VENV_L)/bin/python $(PIP_C) -r $(VENV_L)/requires.txt pytest
	$(VENV_L)/bin/python -c "import importlib.util as u, sys; \
	  sys.exit('pytorch_lightning is importable in $(VENV_L)' if u.find_spec('pytorch_lightning') else 0)"
	touch $@

$(VENV_B)/.installed: setup.py setup.cfg requirements/constraints.txt
	test -x $(VENV_B)/bin/python || $(PYTHON) -m venv $(VENV_B)
	$(VENV_B)/bin/python $(PIP_C) torch torchvision
	$(VENV_B)/bin/python $(PIP_C) -e '.[lightning]' pytest
	touch $@

test-backends: $(VENV_L)/.installed $(VENV_B)/.installed
	MGD_EXPECT_BACKEND=lightning $(VENV_L)/bin/python -m pytest -p no:cacheprovider $(BACKEND_TESTS)
	MGD_LIGHTNING_BACKEND=lightning MGD_EXPECT_BACKEND=lightning $(VENV_B)/bin/python -m pytest -p no:cacheprovider $(BACKEND_TESTS)

# The documentation site (docs/, Sphinx + MyST + MyST-NB, Furo theme) into docs/_build/html: open
# docs/_build/html/index.html. Strict and offline: every warning fails (-W, all reported: --keep-going), unresolved
# cross-references too (-n, nitpicky; docs/conf.py says which third-party names are let through without intersphinx);
# always a full build (-E), as an incremental one would not re-report the warnings of unchanged pages. The pages'
# code blocks are run by tests/test_docs.py (make test).
DOCS_STAMP := $(VENV)/.docs-installed
SPHINX_ARGS ?=
$(DOCS_STAMP): $(STAMP) setup.cfg requirements/constraints.txt
	$(PY) -m pip install --disable-pip-version-check -q -c requirements/constraints.txt -e '.[docs]'
	touch $@

docs: $(DOCS_STAMP)
	rm -rf docs/_build docs/_generated
	MGD_LIGHTNING_OFFLINE=1 $(PY) -m sphinx -b html -W --keep-going -n -E -q -d docs/_build/doctrees $(SPHINX_ARGS) docs docs/_build/html
	@echo "docs: open docs/_build/html/index.html"

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

# Detection demo: RetinaNet teacher / baseline / MGD-AMP students on scikit-image shapes in the COCO layout (random init).
# One torch thread: on a busy 2-core machine (load ~4.5) two threads trained the teacher at 0.5 steps/s, one at 2.9.
DEMO_DETECTION_ARGS ?= --threads 1
demo-detection: $(STAMP)
	$(VENV)/bin/mgd-lightning demo --task detection $(DEMO_DETECTION_ARGS)

# The reproduction study (results/study-cpu: about 90-115 min on 2 CPU cores from a fresh clone; resumable). STUDY_ARGS="--setting gpu" on a GPU.
STUDY_ARGS ?=
study: $(STAMP) fashion-mnist
	$(VENV)/bin/mgd-lightning study $(STUDY_ARGS)

# The transfer study (results/transfer-cpu: pre-trained students fine-tuned on 30 images per class; resumable).
# TRANSFER_ARGS="--setting transfer-gpu" on a GPU.
TRANSFER_ARGS ?= --setting transfer-cpu
transfer: $(STAMP) fashion-mnist
	$(VENV)/bin/mgd-lightning study $(TRANSFER_ARGS)

# The ImageNet transfer study (results/imagenet-transfer-cpu: real ImageNet EfficientNet-Lite2 -> Lite0, 10 target
# images per class; resumable). IMAGENET_TRANSFER_ARGS="--setting imagenet-transfer-gpu" on a GPU.
IMAGENET_TRANSFER_ARGS ?= --setting imagenet-transfer-cpu
imagenet-transfer: $(STAMP) fashion-mnist
	$(VENV)/bin/mgd-lightning study $(IMAGENET_TRANSFER_ARGS)

# The unsupervised study (results/unsup-cpu: MGD without labels, the official unsup/ question: a MoCo-v2 teacher,
# students pre-trained by MoCo-v2, MoCo-v2 + MGD-AMP and MGD-AMP alone, linear probe and 10 / 100-label fine-tuning;
# resumable). UNSUP_ARGS="--setting unsup-gpu" on a GPU.
UNSUP_ARGS ?= --setting unsup-cpu
unsup: $(STAMP) fashion-mnist
	$(VENV)/bin/mgd-lightning study $(UNSUP_ARGS)

# The vision-transformer study (results/vit-cpu: MGD with no learned projector between a CNN and a ViT, both ways:
# CNN -> ViT against KD and FitNets' learned projector, ViT -> CNN with no margin and the estimated margin; a premise
# check first; about 60 min measured on 2 CPU cores, teachers included; resumable). VIT_ARGS="--setting vit-gpu" on a GPU.
VIT_ARGS ?= --setting vit-cpu
vit: $(STAMP) fashion-mnist
	$(VENV)/bin/mgd-lightning study $(VIT_ARGS)

bench: $(STAMP)
	$(PY) benchmarks/solver.py

clean:
	rm -rf $(VENV) $(VENV_L) $(VENV_B) build *.egg-info .pytest_cache .ruff_cache .hypothesis docs/_build docs/_generated
