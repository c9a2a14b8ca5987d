"""Runs a compiled KFP v2 pipeline job on this machine the way KFP's launcher runs it on a cluster.

Tasks run as soon as the tasks they depend on have finished, `parallel` at a time (KFP too runs
independent tasks side by side). For each task: resolve its input artifacts from the producers' executor outputs and its
parameters from the spec's constants, write the ExecutorInput (the "{{$}}" placeholder), run the
container's pre-cache-check driver when it has one (ExampleGen), then the container command with its
arguments, in a subprocess, and read the ExecutorOutput it writes. Importer tasks produce their
artifact from the spec. Only the image is not used: the commands run in this environment.
"""
from __future__ import annotations

import json
import os
import subprocess
import sys
from concurrent import futures


def _constant(parameter: dict):
    return parameter["runtimeValue"]["constant"]


def _command(container: dict, executor_input: dict, key: str = None) -> list[str]:
    spec = container["lifecycle"]["preCacheCheck"] if key == "driver" else container
    command = [sys.executable if c == "python" else c for c in spec["command"]]
    payload = json.dumps(executor_input)
    return command + [payload if a == "{{$}}" else a for a in spec["args"]]


def run_job(job_path: str, work_dir: str, log, env: dict | None = None, timeout: int = 900,
            parallel: int = 2) -> dict:
    """Returns {task: {output key: [RuntimeArtifact dicts]}} of every task."""
    with open(job_path) as f:
        job = json.load(f)
    tasks = job["pipelineSpec"]["root"]["dag"]["tasks"]
    outputs: dict[str, dict] = {}
    running: dict[futures.Future, str] = {}
    with futures.ThreadPoolExecutor(parallel) as pool:
        while len(outputs) < len(tasks):
            started = set(running.values()) | set(outputs)
            for name in sorted(tasks):
                if name not in started and set(tasks[name].get("dependentTasks", [])) <= set(outputs):
                    running[pool.submit(_run_task, job["pipelineSpec"], name, dict(outputs), work_dir, log, env,
                                        timeout)] = name
            if not running:
                raise ValueError("the DAG has a cycle")
            done, _ = futures.wait(running, return_when=futures.FIRST_COMPLETED)
            for future in done:
                outputs[running.pop(future)] = future.result()  # a failed task raises here
    return outputs


def _run_task(spec: dict, name: str, outputs: dict, work_dir: str, log, env, timeout: int) -> dict:
    task = spec["root"]["dag"]["tasks"][name]
    component = spec["components"][task["componentRef"]["name"]]
    executor = spec["deploymentSpec"]["executors"][component["executorLabel"]]
    params = {k: _constant(v) for k, v in task.get("inputs", {}).get("parameters", {}).items()}
    if "importer" in executor:
        importer = executor["importer"]
        (key, _), = component["outputDefinitions"]["artifacts"].items()
        uri = importer["artifactUri"]["constant"]
        log(f"[kfp] {name}: imported {uri}")
        return {key: [{"name": f"{name}-{key}", "uri": uri, "type": importer["typeSchema"],
                       "metadata": importer.get("metadata", {})}]}
    artifacts_in = {}
    for key, ref in task.get("inputs", {}).get("artifacts", {}).items():
        producer = ref["taskOutputArtifact"]
        artifacts_in[key] = {"artifacts": outputs[producer["producerTask"]][producer["outputArtifactKey"]]}
    task_root = os.path.join(work_dir, name)
    artifacts_out = {
        key: {"artifacts": [{"name": f"{name}-{key}", "uri": os.path.join(task_root, key),
                             "type": d["artifactType"], "metadata": {}}]}
        for key, d in component.get("outputDefinitions", {}).get("artifacts", {}).items()}
    executor_input = {"inputs": {"parameterValues": params, "artifacts": artifacts_in},
                      "outputs": {"artifacts": artifacts_out,
                                  "outputFile": os.path.join(task_root, "executor_output.json")}}
    os.makedirs(task_root, exist_ok=True)
    for declared in artifacts_out.values():  # KFP's launcher creates the local output folders
        for artifact in declared["artifacts"]:
            os.makedirs(artifact["uri"], exist_ok=True)
    container = executor["container"]
    steps = (["driver"] if "lifecycle" in container else []) + ["executor"]
    for step in steps:
        proc = subprocess.run(_command(container, executor_input, step), capture_output=True, text=True,
                              env=env, timeout=timeout)
        log(f"[kfp] {name} {step}: exit {proc.returncode}")
        if proc.returncode != 0:
            raise RuntimeError(f"task {name} ({step}) failed:\n{proc.stderr[-4000:]}")
    with open(executor_input["outputs"]["outputFile"]) as f:
        result = json.load(f)
    produced = {}
    for key, declared in artifacts_out.items():
        written = result.get("artifacts", {}).get(key, {}).get("artifacts", [])
        produced[key] = [{**d, **({"metadata": w.get("metadata", {})} if w else {})}
                         for d, w in zip(declared["artifacts"], written or [None], strict=False)]
    return produced
