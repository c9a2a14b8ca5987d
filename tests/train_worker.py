"""One worker of a distributed training: TFX's own Trainer executor on a finished run's inputs.

    TF_CONFIG='{"cluster": {...}, "task": {...}}' python -m tests.train_worker WORKDIR OUT [STEPS [TRAINER_JSON]]

It reads the Trainer execution of the run in WORKDIR from its metadata store (inputs, and exec
properties: run_fn, custom_config, train/eval args) and runs tfx's GenericExecutor with outputs
under OUT: what Kubeflow's TFJob or Vertex AI run on each worker, with TF_CONFIG set by them.
STEPS 0 leaves the steps to the trainer config; TRAINER_JSON overrides keys of the trainer config.
"""
import json
import os
import sys

os.environ["TF_USE_LEGACY_KERAS"] = "1"


def trainer_execution(workdir: str):
    from ml_metadata.proto import metadata_store_pb2
    from tfx.types import artifact_utils

    from pipeline.summary import node_names, open_store

    store = open_store(os.path.join(workdir, "metadata.sqlite"))
    names = node_names(store)
    execution = [e for e in store.get_executions() if names.get(e.id) == "Trainer"
                 and e.last_known_state == metadata_store_pb2.Execution.COMPLETE][-1]
    inputs: dict[str, list] = {}
    types = {t.id: t for t in store.get_artifact_types()}
    for event in store.get_events_by_execution_ids([execution.id]):
        if event.type != metadata_store_pb2.Event.INPUT:
            continue
        (artifact,) = store.get_artifacts_by_id([event.artifact_id])
        key = event.path.steps[0].key
        inputs.setdefault(key, []).append(artifact_utils.deserialize_artifact(types[artifact.type_id], artifact))
    properties = {k: v.string_value for k, v in execution.custom_properties.items()}
    return inputs, properties


def main(workdir: str, out: str, steps: int | None = None, trainer: dict | None = None) -> None:
    from tfx.components.trainer.executor import GenericExecutor
    from tfx.types import standard_artifacts

    inputs, properties = trainer_execution(workdir)
    trainer = {**(trainer or {}), **({"train_steps": steps} if steps else {})}
    if trainer:  # the trainer config travels in custom_config, its steps included
        custom = json.loads(properties["custom_config"])
        custom["trainer"].update(trainer)
        properties["custom_config"] = json.dumps(custom)
    model, model_run = standard_artifacts.Model(), standard_artifacts.ModelRun()
    model.uri, model_run.uri = os.path.join(out, "model"), os.path.join(out, "model_run")
    GenericExecutor().Do(inputs, {"model": [model], "model_run": [model_run]}, properties)


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2], int(sys.argv[3]) if len(sys.argv) > 3 else None,
         json.loads(sys.argv[4]) if len(sys.argv) > 4 else None)
