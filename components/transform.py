"""Transform: TFX's Transform component and executor, unchanged except that it logs how many rows each
read has done.

Transform reads the training split once to analyze it (vocabularies) and every split again to write
the transformed examples. On a large log both passes take minutes, and stock TFX logs nothing in
between. Here each read gets a counting step after the source: `Transform analyzing train:
2,400,000/8,000,000 rows (30%), 41,000 rows/s, ~2m17s left`. The totals are the rows ExampleGen wrote.

TFX 1.16's Executor.Do builds a TransformProcessor by the module's name for it and creates each
split's reader in TransformProcessor._CreateTFXIO, so Do runs with that name bound to a subclass
that wraps the reader. Everything else (the analysis, caching, statistics, outputs) is TFX's own.
"""
from __future__ import annotations

import os
import re
import threading
import time
import uuid

import apache_beam as beam
from tfx.components.transform import component as tfx_transform_component
from tfx.components.transform import executor as tfx_transform
from tfx.dsl.components.base import executor_spec
from tfx.types import artifact_utils, standard_component_specs

from common.progress import RateLog, log
from components.tsv_example_gen import REPORT_PROPERTY


class _SharedCount:
    """The rows of one counting step in one process: Beam may run several instances of the DoFn in a
    process (the threads of multi_threading mode); they add to one figure, logged once."""

    def __init__(self, progress: RateLog):
        self.progress, self.rows, self.instances, self.span = progress, 0, 0, None
        self.lock = threading.Lock()


_COUNTS: dict[tuple[int, str], _SharedCount] = {}
_COUNTS_LOCK = threading.Lock()


class CountRows(beam.DoFn):
    """Passes record batches through; logs the rows seen so far, their rate and the time left.

    The total and the time left hold when one process reads the whole split (Beam's default
    in-process runner); a worker of a multi-process runner logs its own share without them. The
    instances in one process share one count (_SharedCount)."""

    def __init__(self, what: str, total: int | None, every_seconds: float = 10.0):
        self.what, self.total, self.every = what, total, every_seconds
        self._driver_pid = os.getpid()
        self._token = uuid.uuid4().hex  # this pipeline's step: a later pipeline in the process counts anew
        self._count = None

    def setup(self):
        in_driver = os.getpid() == self._driver_pid
        what = self.what if in_driver else f"{self.what} (worker {os.getpid()})"
        with _COUNTS_LOCK:
            key = (os.getpid(), self._token)
            if key not in _COUNTS:
                _COUNTS[key] = _SharedCount(RateLog(what, "rows", total=self.total if in_driver else None,
                                                    every_seconds=self.every))
            self._count = _COUNTS[key]
            self._count.instances += 1

    def process(self, batch):
        now = time.monotonic()
        count = self._count
        with count.lock:
            count.span = (count.span[0] if count.span else now, now)  # (first batch, last batch)
            count.rows += batch.num_rows
            count.progress.update(count.rows)
        yield batch

    def teardown(self):
        # The last count, by the last instance of the process; Beam calls teardown when the pipeline is
        # over (best effort), so the rate is taken over the batches' own span, not up to now.
        count = self._count
        if count is None:
            return
        with _COUNTS_LOCK, count.lock:
            count.instances -= 1
            if count.instances > 0:
                return
            _COUNTS.pop((os.getpid(), self._token), None)
            if count.rows and count.span:
                elapsed = count.span[1] - count.span[0]
                log(count.progress.line(count.rows, count.rows / elapsed if elapsed > 0 else 0.0))


class _ReadAndCount(beam.PTransform):
    def __init__(self, source: beam.PTransform, split: str, total: int | None, every_seconds: float):
        super().__init__()
        self.source, self.split, self.total, self.every = source, split, total, every_seconds

    def expand(self, pipeline):
        # TFX labels the analysis read 'TFXIOReadAndDecode[...AnalysisIndexN]', the others '[TransformIndexN]'.
        verb = "analyzing" if "Analysis" in self.label else "transforming"
        return (pipeline | "Read" >> self.source
                | "CountRows" >> beam.ParDo(CountRows(f"Transform {verb} {self.split}", self.total, self.every)))


class CountedTFXIO:
    """A TFXIO whose BeamSource counts rows; every other call goes to the wrapped one."""

    def __init__(self, inner, split: str, total: int | None, every_seconds: float):
        self._inner, self._split, self._total, self._every = inner, split, total, every_seconds

    def BeamSource(self, batch_size=None):  # noqa: N802 (TFXIO's method names)
        return _ReadAndCount(self._inner.BeamSource(batch_size), self._split, self._total, self._every)

    def Project(self, tensor_names):  # noqa: N802
        return CountedTFXIO(self._inner.Project(tensor_names), self._split, self._total, self._every)

    def __getattr__(self, name):
        return getattr(self._inner, name)


def split_of(file_pattern: str) -> str:
    found = re.search(r"Split-([^/\\]+)", file_pattern)
    return found.group(1) if found else os.path.basename(os.path.dirname(file_pattern))


def processor_counting(rows_by_split: dict[str, int], every_seconds: float):
    """A TransformProcessor class whose readers count rows against `rows_by_split`."""

    class CountingProcessor(tfx_transform.TransformProcessor):
        def _CreateTFXIO(self, dataset, schema):  # noqa: N802
            split = split_of(dataset.file_pattern)
            return CountedTFXIO(super()._CreateTFXIO(dataset, schema), split, rows_by_split.get(split), every_seconds)

    return CountingProcessor


def written_rows(examples) -> dict[str, int]:
    """{split: rows} from the ingest report ExampleGen leaves on its artifact ({} for other ExampleGens)."""
    try:
        report = examples.get_json_value_custom_property(REPORT_PROPERTY) or {}
    except (KeyError, AttributeError):
        return {}
    return {split: int(r["written"]) for split, r in dict(report).items() if "written" in r}


class Executor(tfx_transform.Executor):
    PROGRESS_EVERY_SECONDS = 10.0

    def Do(self, input_dict, output_dict, exec_properties):  # noqa: N802
        examples = input_dict.get(standard_component_specs.EXAMPLES_KEY, [])
        rows = written_rows(artifact_utils.get_single_instance(examples)) if len(examples) == 1 else {}
        processor = processor_counting(rows, self.PROGRESS_EVERY_SECONDS)
        original, tfx_transform.TransformProcessor = tfx_transform.TransformProcessor, processor
        try:
            return super().Do(input_dict, output_dict, exec_properties)
        finally:
            tfx_transform.TransformProcessor = original


class Transform(tfx_transform_component.Transform):
    """TFX's Transform (same spec, parameters and outputs) with the row-counting executor above."""
    EXECUTOR_SPEC = executor_spec.BeamExecutorSpec(Executor)
