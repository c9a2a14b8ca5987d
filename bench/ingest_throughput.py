"""ExampleGen throughput: TsvExampleGen's executor in each DirectRunner mode vs a plain Python parse.

    .venv/bin/python bench/ingest_throughput.py [--rows 1000000] [--workdir /tmp/dssm_bench_ingest]

The plain baseline parses the same file with the same RowParser in one process and writes gzipped
TFRecords, as ExampleGen does. Prints rows/s for each and the ratio of the best mode to the baseline.
"""
import argparse
import json
import os
import shutil
import time

os.environ["TF_USE_LEGACY_KERAS"] = "1"
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import tensorflow as tf  # noqa: E402
from tfx.components.example_gen import utils  # noqa: E402
from tfx.dsl.components.base.base_beam_executor import BaseBeamExecutor  # noqa: E402
from tfx.proto import example_gen_pb2  # noqa: E402
from tfx.types import standard_artifacts  # noqa: E402
from tfx.utils import proto_utils  # noqa: E402

from components.tsv_example_gen import Executor, Rejected  # noqa: E402
from datagen.synthetic import generate  # noqa: E402
from schema.rows import RowParser  # noqa: E402
from schema.spec import load_spec  # noqa: E402

MODES = {
    "in_memory": [],
    "multi_threading": ["--direct_running_mode=multi_threading", "--direct_num_workers=2"],
    "multi_processing": ["--direct_running_mode=multi_processing", "--direct_num_workers=2"],
}


def plain_parse(path: str, out: str, spec) -> int:
    parser = RowParser(spec)
    n = 0
    with open(path, "rb") as f, tf.io.TFRecordWriter(out, options="GZIP") as w:
        next(f)
        for line in f:
            try:
                w.write(parser.parse(line).to_example_bytes())
                n += 1
            except Rejected:
                pass
    return n


def example_gen(log_dir: str, out: str, spec, beam_args: list[str]) -> dict:
    examples = standard_artifacts.Examples()
    examples.uri = out
    input_config = example_gen_pb2.Input(splits=[example_gen_pb2.Input.Split(name="train", pattern="train.tsv"),
                                                 example_gen_pb2.Input.Split(name="eval", pattern="eval.tsv")])
    props = {
        "input_base": log_dir,
        "input_config": proto_utils.proto_to_json(input_config),
        "output_config": proto_utils.proto_to_json(utils.make_default_output_config(input_config)),
        "output_data_format": example_gen_pb2.FORMAT_TF_EXAMPLE,
        "output_file_format": example_gen_pb2.FORMAT_TFRECORDS_GZIP,
        "feature_spec": spec.to_json(),
        "max_rejected_fraction": 0.01,  # the eval split is 10 rows: its cost is noise
    }
    Executor(BaseBeamExecutor.Context(beam_pipeline_args=beam_args, tmp_dir=out + "_tmp")).Do(
        {}, {"examples": [examples]}, props)
    return examples.get_json_value_custom_property("ingest_report")["train"]


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--rows", type=int, default=1_000_000)
    p.add_argument("--workdir", default="/tmp/dssm_bench_ingest")
    p.add_argument("--modes", default=",".join(MODES))
    a = p.parse_args()
    spec = load_spec()
    log_dir = os.path.join(a.workdir, f"logs_{a.rows}")
    if not os.path.exists(os.path.join(log_dir, "train.tsv")):
        generate(log_dir, train_rows=a.rows, eval_rows=10, users=20000, items=50000, topics=700, dim=8)
    results = {}
    out = os.path.join(a.workdir, "plain.tfrecord.gz")
    t = time.perf_counter()
    n = plain_parse(os.path.join(log_dir, "train.tsv"), out, spec)
    results["plain_python"] = {"rows": n, "seconds": round(time.perf_counter() - t, 1)}
    print(json.dumps({"plain_python": results["plain_python"]}), flush=True)
    for mode in a.modes.split(","):
        out = os.path.join(a.workdir, f"examples_{mode}")
        shutil.rmtree(out, ignore_errors=True)
        t = time.perf_counter()
        report = example_gen(log_dir, out, spec, MODES[mode])
        results[mode] = {"rows": report["written"], "seconds": round(time.perf_counter() - t, 1)}
        print(json.dumps({mode: results[mode]}), flush=True)
    base = results["plain_python"]["rows"] / results["plain_python"]["seconds"]
    print(f"\n{'path':<18}{'rows':>10}{'seconds':>10}{'rows/s':>10}{'x plain':>9}")
    for name, r in results.items():
        rate = r["rows"] / r["seconds"]
        print(f"{name:<18}{r['rows']:>10}{r['seconds']:>10}{rate:>10.0f}{rate / base:>9.2f}")


if __name__ == "__main__":
    main()
