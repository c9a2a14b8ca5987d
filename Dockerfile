# The image every Kubeflow step runs in: the project installed on Python 3.10 with the pinned stack.
#   docker build -t REGISTRY/dssm-recall-pipeline:TAG .   then   run_pipeline.py kubeflow --image REGISTRY/...
# The lock is resolved for x86_64 Linux and Python 3.10 (make lock), which is what this base provides.
FROM python:3.10-slim

ENV PYTHONDONTWRITEBYTECODE=1 \
    PIP_NO_CACHE_DIR=1 \
    TF_USE_LEGACY_KERAS=1 \
    TF_CPP_MIN_LOG_LEVEL=2

RUN pip install "uv==0.5.*"
WORKDIR /pipeline

# Dependencies first: this layer is rebuilt only when the lock changes.
COPY requirements.lock ./
RUN uv pip install --system --no-cache -r requirements.lock

COPY setup.py run_pipeline.py ./
COPY common/ common/
COPY pipeline/ pipeline/
COPY components/ components/
COPY schema/ schema/
COPY serving/ serving/
COPY retrieval/ retrieval/
COPY model/ model/
COPY datagen/ datagen/
# the recall service's gRPC stubs, generated from its .proto as scripts/setup_venv.sh does
RUN python -m retrieval.service.protos && uv pip install --system --no-cache --no-deps .

# TFX's KubeflowV2DagRunner compiles each step to run
#   python -m tfx.orchestration.kubeflow.v2.container.kubeflow_v2_run_executor ...
# which imports the components by path from the installed packages above.
