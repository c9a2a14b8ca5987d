"""ServingInfraValidator: TFX InfraValidator's role without Docker or Kubernetes.

It lays the candidate out as TF Serving would see it once pushed (the full model and the user-only
and item-only towers, each as <name>/1/), starts the project's TF Serving-protocol server on it in
a separate process on a free loopback port, waits with GetModelStatus until every model is
AVAILABLE, then sends Predict requests built from real eval examples to each tower signature and
checks the answers: one finite vector per example, of the same size for both towers, and the
single-tower models agreeing with the full one. It writes INFRA_BLESSED (blessed=1) or
INFRA_NOT_BLESSED (blessed=0, with the reason) as TFX's InfraValidator does; Pusher requires it.
"""

import json
import os
import subprocess
import tempfile
import time

from tfx.dsl.component.experimental.annotations import InputArtifact, OutputArtifact, Parameter
from tfx.dsl.component.experimental.decorators import component
from tfx.types import artifact_utils
from tfx.types.standard_artifacts import Examples, InfraBlessing, Model
from tfx.utils import path_utils

from common import signature_names
from common.outputs import OutputReport
from components.artifacts import ItemVectors

REPORT_FILE = "infra_validation.json"
REPORT_PROPERTY = "infra_validation"
OUTPUT_REPORT = OutputReport(
    "InfraBlessing", "infra_validation", read=lambda a, custom: custom(a, REPORT_PROPERTY),
    figures=lambda r: "blessed: the towers answered over gRPC" if r.get("blessed")
    else f"not blessed: {r.get('error', 'unknown')}")


def serving_layout(model_dir: str, root: str, model_name: str) -> dict[str, str]:
    """{served name: base path}: links <root>/<name>/1 -> each exported SavedModel (no copy)."""
    bases = {}
    for suffix, src in (("", model_dir), ("_user", f"{model_dir}-user"), ("_item", f"{model_dir}-item")):
        base = os.path.join(root, model_name + suffix)
        os.makedirs(base)
        os.symlink(os.path.abspath(src), os.path.join(base, "1"))
        bases[model_name + suffix] = base
    return bases


def read_examples(examples_artifact, split: str, n: int) -> list[bytes]:
    import tensorflow as tf

    pattern = os.path.join(artifact_utils.get_split_uri([examples_artifact], split), "*")
    files = tf.io.gfile.glob(pattern)
    dataset = tf.data.TFRecordDataset(files, compression_type="GZIP").take(n)
    return [r.numpy() for r in dataset]


def distinct_inputs(examples: list[bytes], features: list[str]) -> int:
    """How many different inputs a tower sees among the examples (only its features count)."""
    import tensorflow as tf

    seen = set()
    for serialized in examples:
        fmap = tf.train.Example.FromString(serialized).features.feature
        seen.add(tuple(fmap[name].SerializeToString() if name in fmap else b"" for name in features))
    return len(seen)


def check_towers(target: str, model_name: str, examples: list[bytes], timeout: float,
                 tower_features: dict[str, list[str]] | None = None) -> dict:
    """Queries every served model; raises AssertionError with the reason on a wrong answer.
    With `tower_features` (tower -> the features it reads), a tower that gives one vector for
    different inputs is refused: a collapsed model (e.g. trained on an inf) answers the same for all."""
    import numpy as np

    from serving.client import ServingClient

    results = {}
    with ServingClient(target, model_name, timeout=timeout) as full:
        full.wait_until_available(timeout)
        for tower, signature in (("user", signature_names.USER), ("item", signature_names.ITEM)):
            started = time.perf_counter()
            vectors = full.embeddings(signature, examples)
            latency = time.perf_counter() - started
            assert vectors.shape[0] == len(examples), f"{signature}: {vectors.shape[0]} vectors for {len(examples)}"
            assert np.isfinite(vectors).all(), f"{signature}: non-finite values"
            inputs = distinct_inputs(examples, tower_features[tower]) if tower_features else 1
            if inputs > 1:
                spread = float(np.abs(vectors - vectors[0]).max())
                assert spread > 1e-6, f"{signature}: the same vector for {inputs} different inputs (a collapsed model)"
            with ServingClient(target, f"{model_name}_{tower}", timeout=timeout) as single:
                single.wait_until_available(timeout)
                alone = single.embeddings("serving_default", examples)
            assert np.allclose(alone, vectors, atol=1e-5), f"{model_name}_{tower} disagrees with {model_name}"
            results[tower] = {"dim": int(vectors.shape[1]), "examples": len(examples),
                              "latency_ms": round(latency * 1000, 2)}
    assert results["user"]["dim"] == results["item"]["dim"], "the towers' vectors differ in size"
    return results


def incomplete_versions(bases: dict[str, str]) -> str:
    """'' when every version under the base paths is a complete SavedModel (the server loads no other);
    else which is not and what it lacks."""
    from serving.servables import missing_part

    problems = []
    for name, base in bases.items():
        for entry in sorted(os.listdir(base)):
            missing = missing_part(os.path.join(base, entry))
            if missing:
                problems.append(f"{name} version {entry} is not a complete SavedModel (no {missing})")
    return "; ".join(problems)


def validate(model_dir: str, examples: list[bytes], model_name: str, out_dir: str, timeout_seconds: float,
             tower_features: dict[str, list[str]] | None = None) -> dict:
    """Serves model_dir (and its -user / -item towers) in a server process and queries it; the report
    says whether it is blessed and, if not, why. The server's log goes to <out_dir>/server.log."""
    from serving.model_config import config_text
    from serving.server import spawn

    report = {"model": model_dir}
    os.makedirs(out_dir, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="infra-") as tmp:
        bases = serving_layout(model_dir, os.path.join(tmp, "models"), model_name)
        incomplete = incomplete_versions(bases)
        if incomplete:
            return {**report, "blessed": False, "error": f"RuntimeError: {incomplete}"}
        config_path = os.path.join(tmp, "models.config")
        with open(config_path, "w") as f:
            f.write(config_text(bases))
        started = time.monotonic()
        proc = None
        try:
            # the versions are links to the exported models: their folder is a root of the server too
            roots = ",".join([tmp, os.path.dirname(os.path.abspath(model_dir))])
            proc, port = spawn(["--model_config_file", config_path, "--file_system_poll_wait_seconds", "0",
                                "--model_base_path_roots", roots], os.path.join(out_dir, "server.log"), timeout_seconds)
            report["load_seconds"] = round(time.monotonic() - started, 2)
            report["towers"] = check_towers(f"127.0.0.1:{port}", model_name, examples, timeout_seconds,
                                            tower_features)
            report["blessed"] = True
        except Exception as e:  # any failure to load or answer: not blessed, and why
            import grpc

            report["error"] = (f"{e.code().name}: {e.details()}" if isinstance(e, grpc.RpcError)
                               else f"{type(e).__name__}: {e}")
            report["blessed"] = False
        finally:
            if proc is not None:
                proc.terminate()
                try:
                    proc.wait(timeout=30)
                except subprocess.TimeoutExpired:
                    proc.kill()
    return report


@component
def ServingInfraValidator(
    model: InputArtifact[Model],
    examples: InputArtifact[Examples],
    item_vectors: InputArtifact[ItemVectors],
    blessing: OutputArtifact[InfraBlessing],
    model_name: Parameter[str],
    split: Parameter[str] = "eval",
    num_examples: Parameter[int] = 16,
    timeout_seconds: Parameter[int] = 180,
    feature_spec: Parameter[str] = "",
) -> None:
    model_dir = path_utils.serving_model_path(model.uri, path_utils.is_old_model_artifact(model))
    tower_features = None
    requests = read_examples(examples, split, num_examples)
    if feature_spec:
        from model.export import tower_raw_features
        from schema.item_vectors import VectorTable
        from schema.spec import FeatureSpec
        from serving.examples import ExampleBuilder

        spec = FeatureSpec.from_json(feature_spec)
        tower_features = {t: tower_raw_features(spec, t) for t in ("user", "item")}
        # The requests carry the posts' content vectors, as every client's do (the run's vector file).
        builder = ExampleBuilder(spec, VectorTable.load(item_vectors.uri))
        requests = [builder.with_content(x) for x in requests]
    report = validate(model_dir, requests, model_name, blessing.uri, timeout_seconds, tower_features)
    blessed = report["blessed"]
    with open(os.path.join(blessing.uri, "INFRA_BLESSED" if blessed else "INFRA_NOT_BLESSED"), "w"):
        pass
    with open(os.path.join(blessing.uri, REPORT_FILE), "w") as f:
        json.dump(report, f, indent=2)
    blessing.set_int_custom_property("blessed", int(blessed))
    blessing.set_json_value_custom_property(REPORT_PROPERTY, report)
