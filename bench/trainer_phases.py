"""Seconds of each phase of the Trainer's run_fn on a finished run's artifacts, without TFX around it.

    .venv/bin/python bench/trainer_phases.py --workdir RUN_DIR [--spec SPEC] [trainer.key=value ...]
    e.g. ... --workdir runs/seed train_steps=16            # the fixed costs alone
         ... --workdir runs/seed cache_max_mb=0 steps_per_execution=1

RUN_DIR is a finished pipeline run (run_pipeline.py local); its Transform output and prepared item
vectors are the inputs, as the Trainer component gets them. Prints the import time, run_fn's total,
the seconds inside each phase (counting rows, reading the splits, building the towers, fit with
its validations, evaluate, export), the steps and the eval figures.
"""
import argparse
import dataclasses
import glob
import json
import os
import tempfile
import time

os.environ["TF_USE_LEGACY_KERAS"] = "1"
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
started = time.perf_counter()

from tfx.components.trainer.fn_args_utils import DataAccessor, FnArgs  # noqa: E402

from model import towers as model  # noqa: E402
from model import trainer  # noqa: E402
from model.config import TrainerConfig  # noqa: E402
from schema.spec import load_spec  # noqa: E402

PHASES: dict[str, float] = {}


def _timed(owner, name: str) -> None:
    """Replace owner.name by a wrapper adding its seconds to PHASES[name]."""
    fn = getattr(owner, name)

    def wrapper(*args, **kwargs):
        t = time.perf_counter()
        try:
            return fn(*args, **kwargs)
        finally:
            PHASES[name] = PHASES.get(name, 0.0) + time.perf_counter() - t

    setattr(owner, name, wrapper)


def _latest(pattern: str) -> str:
    return max(glob.glob(pattern), key=lambda p: int(p.rstrip("/").split("/")[-1]))


def _setting(defaults: dict, item: str):
    key, _, value = item.partition("=")
    if key not in defaults:
        raise SystemExit(f"unknown trainer setting {key!r}")
    kind = type(defaults[key])
    return key, (value.lower() == "true") if kind is bool else kind(value)


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--workdir", required=True)
    p.add_argument("--spec", default=None, help="feature spec (default: schema/feature_spec.yaml); a reduce "
                                                "other than the run's reads the same Transform output")
    p.add_argument("settings", nargs="*", help="trainer settings, key=value")
    a = p.parse_args()
    cfg = dataclasses.asdict(TrainerConfig())
    cfg.update(_setting(cfg, s) for s in a.settings)
    examples = _latest(os.path.join(a.workdir, "pipeline", "Transform", "transformed_examples", "*"))
    out = tempfile.mkdtemp(prefix="trainer-phases-")
    fn_args = FnArgs(
        custom_config={"feature_spec": load_spec(a.spec).to_json(), "num_oov_buckets": 1, "trainer": cfg,
                       "item_vectors_dir": glob.glob(os.path.join(a.workdir, "item_vectors", "*"))[0]},
        transform_output=_latest(os.path.join(a.workdir, "pipeline", "Transform", "transform_graph", "*")),
        train_files=[os.path.join(examples, "Split-train", "*")],
        eval_files=[os.path.join(examples, "Split-eval", "*")],
        data_accessor=DataAccessor(tf_dataset_factory=None, record_batch_factory=None, data_view_decode_fn=None),
        model_run_dir=os.path.join(out, "model_run"), serving_model_dir=os.path.join(out, "model"))
    for name in ("count_records", "split_input", "build_towers", "export"):
        _timed(trainer, name)
    for name in ("fit", "evaluate"):
        _timed(model.TwoTowerTrainer, name)
    imported = time.perf_counter() - started
    t = time.perf_counter()
    trainer.run_fn(fn_args)
    total = time.perf_counter() - t
    with open(os.path.join(out, "model_run", trainer.METRICS_FILE)) as f:
        m = json.load(f)
    print(f"settings: {a.settings or '(defaults)'}")
    print(f"import {imported:.1f} s; run_fn {total:.1f} s: "
          + ", ".join(f"{k} {v:.1f} s" for k, v in PHASES.items()))
    print(f"{m['train_steps']:,} steps, best at {m['best_step']:,}; eval loss {m['eval_loss']:.4f}, "
          f"eval AUC {m['eval_auc']}; input {m['input']}")


if __name__ == "__main__":
    main()
