# One command per job. Every target runs inside .venv (created by `make setup`).
PY      ?= .venv/bin/python
PIP     ?= .venv/bin/pip
DATASET ?= synthetic
METHOD  ?= baseline
NOISE   ?= clean
METHODS ?= baseline,ldl_alsg,lanet,soft,ldlva
SEEDS   ?= 0,1
ROOT    ?=
CONFIG  ?=
ARGS    ?=
PYTEST_ARGS ?=

.PHONY: help setup setup-gpu setup-fan test test-slow test-all prepare verify train audit benchmark-noise pretrain mechanisms server serve clean

help:  ## list the targets
	@grep -E '^[a-zA-Z_-]+:.*## ' $(MAKEFILE_LIST) | awk -F':.*## ' '{printf "  make %-16s %s\n", $$1, $$2}'

setup:  ## create .venv and install the project with everything its tests need (CPU)
	python3 -m venv .venv
	$(PIP) install "torch==2.14.1" "torchvision==0.29.1"
	$(PIP) install -e ".[test]"
	$(PY) -c "import torch, torchvision, dlib, faiss, pynndescent, prefect, pipeline; print('setup ok: torch', torch.__version__, 'prefect', prefect.__version__)"

setup-gpu: setup  ## add faiss-gpu on a CUDA machine
	$(PIP) install -e ".[gpu]"

setup-fan: setup  ## add the face-alignment package (FAN landmarks) without replacing opencv-python-headless
	$(PIP) install --no-deps "face-alignment>=1.4"

test:  ## run the default test suite: everything not marked slow or gpu (CI runs it, then test-slow)
	$(PY) -m pytest -m "not slow and not gpu" $(PYTEST_ARGS)

test-slow:  ## run the slow tests (Prefect server + schedule, Dask cluster, Chromium, README quickstart, DDP); CI runs them
	$(PY) -m pytest -m "slow and not gpu" $(PYTEST_ARGS)

test-all:  ## run every test (GPU tests skip without CUDA)
	$(PY) -m pytest $(PYTEST_ARGS)

prepare:  ## prepare a dataset version (default: the embedded synthetic set): make prepare DATASET=rafdb ROOT=/data/rafdb [CONFIG=f.yaml] [ARGS="--set graphs.k=8"]
	$(PY) -m flows prepare --dataset $(DATASET) $(if $(ROOT),--root $(ROOT)) $(if $(CONFIG),--config $(CONFIG)) $(ARGS)

VERSION ?= latest
verify:  ## re-hash a prepared version against its lock (non-zero on drift): make verify DATASET=synthetic [VERSION=id] [ROOT=/data/rafdb]
	$(PY) -m flows verify --dataset $(DATASET) --version $(VERSION) $(if $(ROOT),--root $(ROOT)) $(ARGS)

PREFECT_PORT ?= 4200
PREFECT_URL = http://127.0.0.1:$(PREFECT_PORT)
server:  ## start a Prefect server on 127.0.0.1:$(PREFECT_PORT) (SQLite, analytics off; its UI calls this port's API); leave it running
	PREFECT_SERVER_ANALYTICS_ENABLED=false PREFECT_SERVER_UI_SHOW_PROMOTIONAL_CONTENT=false \
	  PREFECT_SERVER_API_HOST=127.0.0.1 PREFECT_SERVER_API_PORT=$(PREFECT_PORT) \
	  PREFECT_UI_URL=$(PREFECT_URL) PREFECT_SERVER_UI_API_URL=$(PREFECT_URL)/api \
	  exec $(PY) -m prefect server start --host 127.0.0.1 --port $(PREFECT_PORT)

CRON ?= 0 3 * * *
INTERVAL ?=
serve:  ## serve the prepare flow on a schedule against `make server`: make serve DATASET=rafdb ROOT=... CRON="0 3 * * *" (or INTERVAL=3600)
	PREFECT_API_URL=$(PREFECT_URL)/api PREFECT_UI_URL=$(PREFECT_URL) exec $(PY) -m flows serve --dataset $(DATASET) \
	  $(if $(ROOT),--root $(ROOT)) $(if $(CONFIG),--config $(CONFIG)) \
	  $(if $(INTERVAL),--interval $(INTERVAL),--cron "$(CRON)") $(ARGS)

train:  ## train on a prepared version: make train DATASET=synthetic METHOD=baseline NOISE=sym-0.30 [CONFIG=f.yaml] [ARGS="--epochs 2"]
	$(PY) -m training.train --dataset $(DATASET) --method $(METHOD) --noise $(NOISE) $(if $(CONFIG),--config $(CONFIG)) $(ARGS)

FOLDS ?= 5
audit:  ## rank suspect training labels (out-of-fold cleanlab + graph signals), report, cleaned variants: make audit DATASET=synthetic NOISE=sym-0.30 [FOLDS=5] [CONFIG=recipe.yaml] [ARGS="--set seed=1"]
	$(PY) -m training.audit --dataset $(DATASET) --noise $(NOISE) --folds $(FOLDS) $(if $(CONFIG),--config $(CONFIG)) $(ARGS)

benchmark-noise:  ## every method x noise variant x seed: make benchmark-noise DATASET=synthetic METHODS=baseline,soft NOISE=sym-0.30 SEEDS=0,1
	$(PY) bench/benchmark_noise.py --dataset $(DATASET) --methods $(METHODS) --noise $(NOISE) --seeds $(SEEDS) $(if $(CONFIG),--config $(CONFIG)) $(ARGS)

pretrain:  ## backbone on clean labels of a prepared version, saved by content hash: make pretrain DATASET=synthetic [CONFIG=f.yaml] [ARGS="--set epochs=5"]
	$(PY) -m training.pretrain --dataset $(DATASET) $(if $(CONFIG),--config $(CONFIG)) $(ARGS)

mechanisms:  ## pretrained backbone (disjoint synthetic source), pseudo-VA version and regime check of the mechanisms benchmark: make mechanisms [ARGS="--scale cpu"]
	$(PY) bench/mechanisms.py $(ARGS)

clean:  ## remove build outputs (keeps .venv, artifacts and runs)
	rm -rf build *.egg-info .pytest_cache
