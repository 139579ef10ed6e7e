# Short, obvious targets. Each one installs what it needs into the project-local .venv.
PYTHON ?= $(shell command -v python3.11 || command -v python3)
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed-stamp
SHARED ?= ../shared/data/fashion-product-small
export TF_CPP_MIN_LOG_LEVEL ?= 2

.PHONY: venv demo test lint format protos results train-default train-baselines evaluate reproduce model-choice bench clean certs

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -e '.[dev]'
	touch $(STAMP)

venv: $(STAMP)

demo: venv
	$(BIN)/python -m services.demo $(DEMO_ARGS)

test: lint
	@if command -v docker-compose >/dev/null; then docker-compose config -q && echo "docker-compose.yml: valid"; \
	else echo "docker-compose not installed: skipping 'docker-compose config' (CI installs it)"; fi
	$(BIN)/pytest

lint: venv
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/python scripts/gen_protos.py --check
	$(BIN)/python scripts/vendor_tfserving.py --check

protos: venv
	$(BIN)/python scripts/gen_protos.py
	$(BIN)/python scripts/vendor_tfserving.py

format: venv
	$(BIN)/ruff format .
	$(BIN)/ruff check --fix .

# --- the models. Need the full catalogue in $(SHARED); see docs/results.md. ---
PAPER_FAMILIES := --families Footwear,Bags,Eyewear

# The default model, served as version 2: the whole catalogue, the category prior (label-supervised).
train-default: venv
	$(BIN)/atelier train --catalogue $(SHARED)/styles.csv --latent-dim 64 --class-weight 500 \
		--epochs 45 --run-dir runs/vae-catalogue --export-dir models --version 2

# Baselines: the paper's plain VAE on the whole catalogue, and the paper's three-family runs.
train-baselines: venv
	$(BIN)/atelier train --catalogue $(SHARED)/styles.csv --latent-dim 64 --no-category-prior \
		--epochs 20 --run-dir runs/plain-vae
	$(BIN)/atelier train --catalogue $(SHARED)/styles.csv $(PAPER_FAMILIES) --latent-dim 16 \
		--no-category-prior --epochs 25 --schedule constant --no-flip --run-dir runs/paper-plain-vae
	$(BIN)/atelier train --catalogue $(SHARED)/styles.csv $(PAPER_FAMILIES) --latent-dim 16 \
		--kind ae --epochs 25 --schedule constant --no-flip --run-dir runs/paper-ae

evaluate: venv
	$(BIN)/atelier evaluate --catalogue $(SHARED)/styles.csv --models models --version 2 \
		--baseline plain_vae=runs/plain-vae --docs docs
	$(BIN)/atelier evaluate --catalogue $(SHARED)/styles.csv $(PAPER_FAMILIES) --models models \
		--version 1 --baseline plain_vae=runs/paper-plain-vae --baseline ae=runs/paper-ae --docs docs

reproduce: venv
	$(BIN)/python -m bench.reproduce_map

model-choice: venv
	$(BIN)/python -m bench.model_choice --catalogue $(SHARED)/styles.csv --epochs 3

results: train-default train-baselines evaluate reproduce

bench: venv
	$(BIN)/python -m bench.encode_queue --catalogue $(SHARED)/styles.csv
	$(BIN)/python -m bench.query_services --catalogue $(SHARED)/styles.csv
	ATELIER_WRITE_BENCHMARKS=1 $(BIN)/pytest -q tests/integration/test_studio_browser.py

certs: venv
	$(BIN)/python scripts/make_certs.py deploy/certs --readable-keys

clean:
	rm -rf runs demo-output .pytest_cache .ruff_cache
