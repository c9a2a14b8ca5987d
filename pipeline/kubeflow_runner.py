"""`run_pipeline.py kubeflow`: the same pipeline compiled into a KFP v2 job (TFX's KubeflowV2DagRunner),
its inputs copied under the pipeline root where every step reads them; optionally submitted.
"""
from __future__ import annotations

import dataclasses
import json
import os
import shlex

from pipeline.inputs import is_uri, load, pipeline_inputs, prepare_vectors


def copy_schema(schema_path: str, root: str) -> str:
    """The schema file copied under the pipeline root (named by its content), where every step reads it."""
    import hashlib

    from tfx.dsl.io import fileio

    with open(schema_path, "rb") as f:
        digest = hashlib.sha256(f.read()).hexdigest()[:16]
    target = f"{root}/schema/{digest}/{os.path.basename(schema_path)}"
    if not fileio.exists(target):
        fileio.makedirs(os.path.dirname(target))
        fileio.copy(schema_path, target, overwrite=True)
    return target


def run_kubeflow(args) -> str:
    """Compiles the same pipeline into a KFP v2 spec (TFX's KubeflowV2DagRunner); optionally submits it."""
    config, spec, patterns, spans = load(args)
    root = (args.pipeline_root or config.kubeflow.pipeline_root).rstrip("/")
    if not root:
        raise SystemExit("error: give --pipeline-root (or kubeflow.pipeline_root in the config), e.g. gs://bucket/dssm")
    remote = is_uri(root)
    if remote and not config.milvus.uri:
        raise SystemExit("error: set milvus.uri to a Milvus server: a Milvus Lite file does not outlive a container")
    if not remote:
        root = os.path.abspath(root)
    from pipeline.preflight import PathError, check_writable

    try:
        check_writable({"compiled pipeline": os.path.abspath(args.output),
                        **({} if remote else {"pipeline root": root})})
    except PathError as e:
        raise SystemExit(f"error: {e}") from None
    # The prepared item vectors go under the pipeline root, where every step can read them.
    import tempfile

    from kfp.pipeline_spec import pipeline_spec_pb2 as pipeline_pb2
    from tfx.orchestration.kubeflow.v2 import kubeflow_v2_dag_runner
    from tfx.utils import io_utils

    from pipeline.pipeline import create_pipeline

    try:
        with tempfile.TemporaryDirectory() as tmp:
            vectors = prepare_vectors(args, spec, tmp if remote else os.path.join(root, "item_vectors"))
            vectors_dir = vectors.dir
            if remote:
                vectors_dir = f"{root}/item_vectors/{os.path.basename(vectors.dir)}"
                io_utils.copy_dir(vectors.dir, vectors_dir)
        # The schema too: the checkout's path does not exist in the image.
        config = dataclasses.replace(config, schema=copy_schema(config.schema, root))
    except SystemExit:
        raise
    except Exception as e:  # noqa: BLE001 - an unreachable or unwritable root, whatever the filesystem says
        first = (str(e).strip().splitlines() or [""])[0]
        raise SystemExit(f"error: cannot write under the pipeline root {root}: {type(e).__name__}: {first}") from None
    resources = None
    if config.kubeflow.trainer_cpu or config.kubeflow.trainer_memory_gib:
        resources = pipeline_pb2.PipelineDeploymentConfig.PipelineContainerSpec.ResourceSpec(
            cpu_limit=config.kubeflow.trainer_cpu, memory_limit=config.kubeflow.trainer_memory_gib)
    pipeline = create_pipeline(
        pipeline_root=f"{root}/pipeline", serving_dir=f"{root}/serving",
        inputs=pipeline_inputs(patterns, vectors, vectors_dir, spec, spans), config=config,
        beam_pipeline_args=[*config.kubeflow.beam_args, *shlex.split(args.beam_args or "")],
        milvus_uri=config.milvus.at(root).uri, trainer_resources=resources,
        no_warm_start_because="Kubeflow runs do not warm start (KFP runs TFX's own resolver strategies only)")
    output = os.path.abspath(args.output)
    runner = kubeflow_v2_dag_runner.KubeflowV2DagRunner(
        config=kubeflow_v2_dag_runner.KubeflowV2DagRunnerConfig(
            default_image=args.image or config.kubeflow.image, use_pipeline_spec_2_1=True),
        output_dir=os.path.dirname(output), output_filename=os.path.basename(output))
    if os.path.exists(output):
        os.remove(output)  # the runner refuses to overwrite
    runner.run(pipeline)
    with open(output) as f:
        tasks = json.load(f)["pipelineSpec"]["root"]["dag"]["tasks"]
    print(f"compiled {len(tasks)} tasks to {output} (image {args.image or config.kubeflow.image}, root {root})")
    if args.submit:
        from pipeline.kfp_submit import submit

        run_id = submit(output, args.endpoint, args.experiment)
        print(f"submitted: run id {run_id}")
    return output
