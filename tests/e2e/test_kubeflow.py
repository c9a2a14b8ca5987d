"""The Kubeflow path: compile with TFX's KubeflowV2DagRunner, run every compiled task's own command
through TFX's KFP v2 entry point (tests/kfp_launcher.py), and submit to a KFP API on loopback."""
import json
import os
import subprocess
import sys
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest
import tensorflow as tf

from tests.conftest import REPO, SAMPLE_DIR
from tests.kfp_launcher import run_job

pytestmark = pytest.mark.e2e


def _compile(tmp_path, *extra):
    """Compiles with the sample's logs and vectors copied out of the checkout, as a user's would be."""
    import shutil

    output = tmp_path / "pipeline.json"
    data = tmp_path / "data"
    if not data.exists():
        shutil.copytree(SAMPLE_DIR, data)
    env = dict(os.environ, TF_USE_LEGACY_KERAS="1")
    proc = subprocess.run([sys.executable, "run_pipeline.py", "kubeflow", "--output", str(output),
                           "--pipeline-root", str(tmp_path / "root"), "--train", str(data / "train.tsv"),
                           "--eval", str(data / "eval.tsv"), "--item-embeddings", str(data / "item_vectors.jsonl"),
                           *extra], cwd=REPO, env=env, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return output, proc.stdout


@pytest.fixture(scope="module")
def compiled(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("kfp")
    (tmp / "config.yaml").write_text("trainer: {train_steps: 300}\nkubeflow: {trainer_cpu: 2, trainer_memory_gib: 4}\n")
    return (tmp, *_compile(tmp, "--config", str(tmp / "config.yaml")))


def test_compiled_spec_has_every_component(compiled):
    _, output, stdout = compiled
    job = json.loads(output.read_text())
    tasks = job["pipelineSpec"]["root"]["dag"]["tasks"]
    assert set(tasks) == {"TsvExampleGen", "StatisticsGen", "ImportSchemaGen", "ExampleValidator", "AnomalyGate",
                          "item_vectors_importer", "Transform", "TransformedStatisticsGen", "Trainer",
                          "RetrievalEvaluator", "ServingInfraValidator", "TowerPusher", "ItemIndexer"}
    assert job["pipelineSpec"]["schemaVersion"] == "2.1.0"
    trainer = job["pipelineSpec"]["deploymentSpec"]["executors"]["Trainer_executor"]["container"]
    assert trainer["image"] == "dssm-recall-pipeline:latest"
    assert trainer["resources"] == {"cpuLimit": 2.0, "memoryLimit": 4.0}
    assert f"compiled {len(tasks)} tasks" in stdout


def test_compiled_spec_holds_no_path_of_the_checkout(compiled):
    tmp, output, _ = compiled
    text = output.read_text()
    assert REPO not in text  # the image has the project at /pipeline, not where it was compiled
    job = json.loads(text)
    schema_gen = job["pipelineSpec"]["root"]["dag"]["tasks"]["ImportSchemaGen"]
    schema_file = schema_gen["inputs"]["parameters"]["schema_file"]["runtimeValue"]["constant"]
    assert schema_file.startswith(str(tmp / "root") + "/schema/")


@pytest.mark.slow
def test_every_compiled_task_runs_and_pushes_both_towers(compiled):
    tmp, output, _ = compiled
    env = dict(os.environ, TF_USE_LEGACY_KERAS="1", TF_CPP_MIN_LOG_LEVEL="2")
    outputs = run_job(str(output), str(tmp / "tasks"), log=print, env=env)
    pushed = outputs["TowerPusher"]["pushed_model"][0]["metadata"]
    assert pushed["pushed"] == 1, pushed
    destination = pushed["pushed_destination"]
    assert destination.startswith(str(tmp / "root" / "serving" / "dssm"))
    model = tf.saved_model.load(destination)
    assert {"serving_default", "user_embedding", "item_embedding"} <= set(model.signatures)
    towers = json.loads(pushed["tower_destinations"]) if isinstance(pushed["tower_destinations"], str) \
        else pushed["tower_destinations"]
    for tower in ("user", "item"):
        assert f"{tower}_embedding" in tf.saved_model.load(towers[tower]).signatures
    assert outputs["ServingInfraValidator"]["blessing"][0]["metadata"]["blessed"] == 1
    assert outputs["ItemIndexer"]["index"][0]["metadata"]["count"] == 1477


class _FakeKfpApi(BaseHTTPRequestHandler):
    """Answers as the KFP v2beta1 API does for the calls a submission makes; records the requests."""
    requests = []

    def log_message(self, *args):
        pass

    def _reply(self, body: dict):
        data = json.dumps(body).encode()
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def do_GET(self):
        self.requests.append(("GET", self.path, None))
        if self.path.startswith("/apis/v2beta1/healthz"):
            return self._reply({"multi_user": False})
        if self.path.startswith("/apis/v2beta1/experiments"):
            return self._reply({})  # no experiment of that name yet
        return self._reply({})

    def do_POST(self):
        body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
        self.requests.append(("POST", self.path, body))
        if self.path == "/apis/v2beta1/experiments":
            return self._reply({"experiment_id": "exp-1", "display_name": body["display_name"]})
        if self.path == "/apis/v2beta1/runs":
            return self._reply({"run_id": "run-42", "display_name": body["display_name"],
                                "experiment_id": body["experiment_id"]})
        return self._reply({})


def test_submit_uploads_the_compiled_spec(tmp_path):
    server = ThreadingHTTPServer(("127.0.0.1", 0), _FakeKfpApi)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        output, stdout = _compile(tmp_path, "--submit", "--endpoint", f"http://127.0.0.1:{server.server_port}",
                                  "--experiment", "nightly")
    finally:
        server.shutdown()
    assert "submitted: run id run-42" in stdout
    posts = {path: body for method, path, body in _FakeKfpApi.requests if method == "POST"}
    assert posts["/apis/v2beta1/experiments"]["display_name"] == "nightly"
    run = posts["/apis/v2beta1/runs"]
    assert run["experiment_id"] == "exp-1"
    assert run["pipeline_spec"] == json.loads(output.read_text())["pipelineSpec"]
