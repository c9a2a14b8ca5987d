"""Transform's row progress: the counting step passes every batch through and counts rows exactly."""
import logging

import apache_beam as beam
import pyarrow as pa
from apache_beam.testing.util import assert_that, equal_to

from components.transform import CountRows, split_of, written_rows


class _Lines(logging.Handler):
    def __init__(self):
        super().__init__()
        self.lines = []

    def emit(self, record):
        self.lines.append(record.getMessage())


def test_batches_pass_through_and_the_rows_are_counted():
    sizes = [3, 0, 7, 5]  # 15 rows; an empty batch counts nothing
    batches = [pa.RecordBatch.from_arrays([pa.array(list(range(n)))], ["x"]) for n in sizes]
    handler = _Lines()
    logging.getLogger("progress").addHandler(handler)
    try:
        with beam.Pipeline() as p:
            out = (p | beam.Create(batches, reshuffle=False)
                   | beam.ParDo(CountRows("Transform analyzing train", total=15, every_seconds=0))
                   | beam.Map(lambda b: b.num_rows))
            assert_that(out, equal_to(sizes))
    finally:
        logging.getLogger("progress").removeHandler(handler)
    counted = [line for line in handler.lines if line.startswith("Transform analyzing train: ")]
    assert counted, handler.lines
    assert counted[-1].startswith("Transform analyzing train: 15/15 (100%) rows, "), counted


def test_split_names_and_totals():
    assert split_of("/w/Transform/examples/7/Split-train/*") == "train"
    assert split_of("gs://b/x/Split-eval_2/data_tfrecord-*.gz") == "eval_2"

    class Artifact:
        def get_json_value_custom_property(self, key):
            assert key == "ingest_report"
            return {"train": {"written": 8000.0, "rejected": 3}, "eval": {"written": 2000}, "files": {}}

    assert written_rows(Artifact()) == {"train": 8000, "eval": 2000}


def test_the_threads_of_one_process_add_to_one_count():
    """Issue [first-week] 4: with several workers in one process (multi_threading), each DoFn instance
    logged its own share as the split's progress, so each figure came once per worker."""
    from apache_beam.options.pipeline_options import PipelineOptions

    sizes = [5] * 40  # 200 rows over many bundles
    batches = [pa.RecordBatch.from_arrays([pa.array(list(range(n)))], ["x"]) for n in sizes]
    handler = _Lines()
    logging.getLogger("progress").addHandler(handler)
    options = PipelineOptions(["--direct_running_mode=multi_threading", "--direct_num_workers=4"])
    try:
        with beam.Pipeline(options=options) as p:
            _ = (p | beam.Create(batches) | beam.Reshuffle()
                 | beam.ParDo(CountRows("Transform transforming eval", total=200, every_seconds=0)))
    finally:
        logging.getLogger("progress").removeHandler(handler)
    counted = [int(line.split(": ")[1].split("/")[0].replace(",", "")) for line in handler.lines
               if line.startswith("Transform transforming eval: ")]
    assert counted and counted == sorted(counted), counted  # one figure, only growing
    assert counted[-1] == 200 and counted.count(200) <= 2, counted  # the last update, and teardown's line
