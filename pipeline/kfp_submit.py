"""Submit a compiled pipeline (run_pipeline.py kubeflow) to a Kubeflow Pipelines API with the kfp client.

TFX's KubeflowV2DagRunner writes a PipelineJob (displayName, runtimeConfig, pipelineSpec); the kfp
client uploads a PipelineSpec document. The spec is taken out of the job unchanged, and the job's
runtime parameters and pipeline root go with the run.
"""
from __future__ import annotations

import json
import os
import tempfile

import yaml


def pipeline_spec_of(job_path: str) -> tuple[dict, dict]:
    with open(job_path) as f:
        job = json.load(f)
    if "pipelineSpec" not in job:
        raise ValueError(f"{job_path} is not a compiled pipeline job (no pipelineSpec)")
    return job["pipelineSpec"], job.get("runtimeConfig", {})


def submit(job_path: str, endpoint: str, experiment: str, run_name: str | None = None) -> str:
    """Returns the run id the KFP API answered with."""
    import kfp

    spec, runtime = pipeline_spec_of(job_path)
    arguments = {k: next(iter(v.values())) for k, v in runtime.get("parameterValues", {}).items()} or \
        {k: next(iter(v.values())) for k, v in runtime.get("parameters", {}).items()}
    with tempfile.TemporaryDirectory() as tmp:
        package = os.path.join(tmp, "pipeline.yaml")
        with open(package, "w") as f:
            yaml.safe_dump(spec, f, sort_keys=False)
        client = kfp.Client(host=endpoint)
        result = client.create_run_from_pipeline_package(
            package, arguments=arguments or None, experiment_name=experiment,
            run_name=run_name or spec.get("pipelineInfo", {}).get("name"),
            pipeline_root=runtime.get("gcsOutputDirectory") or None)
    return result.run_id
