"""StatisticsGen's executor alone on a finished run's Examples, once per TFDV StatsOptions variant.

    .venv/bin/python bench/statistics_options.py --workdir RUN_DIR [--variants default,sketch,batch,pipeline]

RUN_DIR is a finished `run_pipeline.py local` workdir; its newest TsvExampleGen output (train and eval
splits) is read. Prints the seconds of each variant; `pipeline` is what pipeline/pipeline.py uses.
"""
import argparse
import glob
import json
import os
import shutil
import sys
import tempfile
import time

os.environ["TF_USE_LEGACY_KERAS"] = "1"
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import tensorflow_data_validation as tfdv  # noqa: E402
from tfx.components.statistics_gen import executor  # noqa: E402
from tfx.dsl.components.base.base_beam_executor import BaseBeamExecutor  # noqa: E402
from tfx.types import artifact_utils, standard_artifacts  # noqa: E402

from pipeline.pipeline import statistics_options  # noqa: E402

VARIANTS = {
    "default": tfdv.StatsOptions,
    "sketch": lambda: tfdv.StatsOptions(use_sketch_based_topk_uniques=True),
    "batch": lambda: tfdv.StatsOptions(desired_batch_size=4096),
    "pipeline": statistics_options,
}


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--workdir", required=True, help="a finished run's workdir")
    p.add_argument("--variants", default=",".join(VARIANTS))
    args = p.parse_args()
    runs = glob.glob(os.path.join(args.workdir, "pipeline", "TsvExampleGen", "examples", "*"))
    if not runs:
        sys.exit(f"error: no TsvExampleGen output under {args.workdir}/pipeline")
    examples_uri = max(runs, key=lambda d: int(os.path.basename(d)))
    scratch = tempfile.mkdtemp(prefix="stats-bench-")
    try:
        for name in args.variants.split(","):
            examples = standard_artifacts.Examples()
            examples.uri = examples_uri
            examples.split_names = artifact_utils.encode_split_names(["train", "eval"])
            stats = standard_artifacts.ExampleStatistics()
            stats.uri = os.path.join(scratch, name)
            props = {"stats_options_json": VARIANTS[name]().to_json(), "exclude_splits": "[]"}
            started = time.perf_counter()
            executor.Executor(BaseBeamExecutor.Context(beam_pipeline_args=[], tmp_dir=stats.uri + "_tmp")).Do(
                {"examples": [examples]}, {"statistics": [stats]}, props)
            print(json.dumps({"variant": name, "seconds": round(time.perf_counter() - started, 1)}), flush=True)
    finally:
        shutil.rmtree(scratch, ignore_errors=True)


if __name__ == "__main__":
    main()
