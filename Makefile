# Two entry points for a fresh machine: `make demo` and `make test`.
# Both create .venv (Python 3.10, the stack installed from requirements.lock by a uv that lives in .venv)
# when it is missing, stale or half-made; nothing outside the project changes but the download caches.
SHELL := /bin/bash
WORKDIR ?= runs/demo
export TF_USE_LEGACY_KERAS := 1
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed

ML_DIR ?= ../shared/data/ml-latest-small

MILVUS_VENV := .milvus-venv
MILVUS_STAMP := $(MILVUS_VENV)/.installed
MILVUS_PORT ?= 19530
MILVUS_DIR ?= runs/milvus-server

.PHONY: setup browser demo continuous-demo serve recall-serve test test-slow lint lock sample movielens clean milvus-setup milvus-server

setup: $(STAMP)

# The script writes the stamp itself, last, once .venv imports the stack.
$(STAMP): requirements.lock setup.py scripts/setup_venv.sh retrieval/service/recall_service.proto
	bash scripts/setup_venv.sh

demo: $(STAMP)
	$(PY) run_pipeline.py local --sample --workdir $(WORKDIR)

# Serve the pushed models of a run (gRPC 8500, REST 8501: GRPC_PORT=, REST_PORT=) until Ctrl-C; new pushes
# load without a restart.
GRPC_PORT ?= 8500
REST_PORT ?= 8501
serve: $(STAMP)
	$(PY) -m serving.server --model_config_file $(WORKDIR)/serving/models.config --port $(GRPC_PORT) --rest_api_port $(REST_PORT)

# The recall service over a run (gRPC 8600, REST 8601; docs/retrieval.md), the towers asked of the model
# server of `make serve` (MODEL_TARGET=): start that first.
MODEL_TARGET ?= 127.0.0.1:$(GRPC_PORT)
RECALL_PORT ?= 8600
RECALL_REST_PORT ?= 8601
recall-serve: $(STAMP)
	$(PY) -m retrieval.service --workdir $(WORKDIR) --model_target $(MODEL_TARGET) --port $(RECALL_PORT) \
	  --rest_api_port $(RECALL_REST_PORT)

# A Milvus standalone server (embedded build, its own virtualenv) on loopback, until Ctrl-C:
# point milvus.uri at http://127.0.0.1:$(MILVUS_PORT).
milvus-setup: $(MILVUS_STAMP)

$(MILVUS_STAMP): requirements-milvus.lock scripts/setup_milvus_venv.sh $(STAMP)
	bash scripts/setup_milvus_venv.sh

milvus-server: $(MILVUS_STAMP)
	$(MILVUS_VENV)/bin/python scripts/milvus_server.py --port $(MILVUS_PORT) --dir $(MILVUS_DIR)

lint: $(STAMP)
	$(VENV)/bin/ruff check .

# Chromium for the report test: Debian's packages, installed once.
browser:
	bash scripts/install_browser.sh

# Two pytest-xdist workers, each taking whole modules (their module fixtures run once); TEST_WORKERS=0
# runs everything in this process.
# `make test` leaves out the tests marked slow (each runs the pipeline again, minutes apiece: the
# Kubeflow tasks executed, the portable Beam runner, two training workers, killed and resumed runs,
# corrupt inputs); `make test-slow` runs only those, and CI runs both.
TEST_WORKERS ?= 2
PYTEST := $(PY) -m pytest -n $(TEST_WORKERS) --dist loadscope --durations=15
test: lint browser $(MILVUS_STAMP)
	$(PYTEST) -m "not slow" $(PYTEST_ARGS)

test-slow: $(STAMP)
	$(PYTEST) -m slow $(PYTEST_ARGS)

# Regenerate the lock after editing requirements.in.
lock: $(STAMP)
	$(VENV)/bin/uv pip compile requirements.in -o requirements.lock --python-version 3.10 \
	  --python-platform x86_64-unknown-linux-gnu
	$(VENV)/bin/uv pip compile requirements-milvus.in -o requirements-milvus.lock --python-version 3.10 \
	  --python-platform x86_64-unknown-linux-gnu

# The daily cycle on the sample cut into three days (runs/spans/day-N): spans 1, 2 and 3 run one after
# the other in one workdir, each trained on the last two days (from the previous day's pushed model's
# weights: warm start) and compared with the version served. A span not pushed (exit 3) does not stop it.
SPANS_DIR ?= runs/spans
continuous-demo: $(STAMP)
	$(PY) -m datagen.spans --source data/sample --out $(SPANS_DIR) --days 3
	for span in 1 2 3; do \
	  $(PY) run_pipeline.py local --train '$(SPANS_DIR)/day-{SPAN}/train.tsv' --eval '$(SPANS_DIR)/day-{SPAN}/eval.tsv' \
	    --item-embeddings data/sample/item_vectors.jsonl --config configs/continuous.yaml --span $$span \
	    --workdir $(if $(filter runs/demo,$(WORKDIR)),runs/continuous,$(WORKDIR)) --no-serving-demo; \
	  rc=$$?; [ $$rc -eq 0 ] || [ $$rc -eq 3 ] || exit $$rc; \
	done

# Rewrite the committed sample under data/sample/ (deterministic).
sample: $(STAMP)
	$(PY) -m datagen.synthetic --out data/sample

# Real data: MovieLens ml-latest-small converted to click logs, then the pipeline on it.
movielens: $(STAMP)
	$(PY) -m datagen.movielens --source $(ML_DIR) --out data/movielens
	$(PY) run_pipeline.py local --train data/movielens/train.tsv --eval data/movielens/eval.tsv \
	  --item-embeddings $(ML_DIR)/item_embeddings.jsonl.gz --workdir $(if $(filter runs/demo,$(WORKDIR)),runs/movielens,$(WORKDIR))

clean:
	rm -rf runs .pytest_cache
