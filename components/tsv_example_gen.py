"""TsvExampleGen: TFX's FileBasedExampleGen for tab-separated logs laid out by the feature spec.

TFX's CsvExampleGen reads only commas; this component keeps FileBasedExampleGen's driver (input
fingerprints, spans, caching) and its output split config (hash buckets over a feature), and adds
parameters: the feature spec (JSON), the largest share of rejected rows a split may have before the
run stops, and optionally the ids that have a pretrained vector (to count the ones that do not).

Its Beam executor turns TSV lines into tf.Examples, rejected rows quarantined and counted. For each
input split it writes, next to the Split-* folders of the Examples artifact:
  ingest_report/<split>-rejected.jsonl   one JSON object per rejected row: file, line, reason, detail, raw
  ingest_report/<split>-counts.json      read / written / rejected:<reason> / soft:<kind> counts
and, when one input split is divided by a hash of the user id (the input split is then "all"), for
each output split ingest_report/<split>-written.json. With explicit train/eval files the input and
output splits are the same, and the parser's counts are the written counts. The counts go on the
artifact (custom property `ingest_report`) and the run stops when a split has too many rejected rows
or no rows at all.
"""
from __future__ import annotations

import collections
import json
import os
from typing import Any

import apache_beam as beam
from apache_beam.transforms import window
from apache_beam.utils.windowed_value import WindowedValue
from tfx import types
from tfx.components.example_gen import utils
from tfx.components.example_gen.base_example_gen_executor import BaseExampleGenExecutor
from tfx.components.example_gen.component import FileBasedExampleGen
from tfx.dsl.components.base import base_beam_component, executor_spec
from tfx.dsl.io import fileio
from tfx.proto import example_gen_pb2, range_config_pb2
from tfx.types import artifact_utils, standard_artifacts, standard_component_specs
from tfx.types.component_spec import ExecutionParameter
from tfx.utils import proto_utils

from common.outputs import OutputReport
from schema import logfiles
from schema.files import is_uri
from schema.rows import Rejected, RowParser
from schema.spec import FeatureSpec

FEATURE_SPEC_KEY = "feature_spec"
MAX_REJECTED_FRACTION_KEY = "max_rejected_fraction"
ITEM_IDS_PATH_KEY = "item_ids_path"  # optional: ids with a pretrained vector, to count unknown ones
TRAIN_FILES_KEY = "train_files"  # optional: the training window's files (JSON [path, size, mtime_ns])
TRAIN_SPLIT = "train"
HASH_INPUT_SPLIT = "all"  # name of the one input split that a hash of the user id divides
REPORT_PROPERTY = "ingest_report"
REPORT_DIR = "ingest_report"
KEPT_DIR = "rejected_rows"  # <pipeline root>/<node>/rejected_rows/<execution id>/: survives a failed run
_REPORT_DIR_KEY = "_report_dir"
_REJECTED_TAG = "rejected"
_COUNTS_TAG = "counts"


def _ingest_figures(report: dict) -> str:
    # An input split has read/written/rejected; the splits a hash divides it into have written only.
    return "; ".join(f"{s}: {r['written']:,} rows" + (f", {r['rejected']:,} rejected" if "rejected" in r else "")
                     for s, r in report.items() if "written" in r)


OUTPUT_REPORT = OutputReport("Examples", "splits", read=lambda a, custom: custom(a, REPORT_PROPERTY),
                             figures=_ingest_figures, uri_key="examples_uri")


class IngestError(RuntimeError):
    """The input cannot be ingested (bad header, no files, too many rejected rows)."""


def check_headers(files: list[str], spec: FeatureSpec) -> None:
    try:
        logfiles.check_headers(files, spec, lambda p: fileio.open(p, "rb"))
    except logfiles.LogFileError as e:
        raise IngestError(str(e)) from None


def expand_pattern(pattern: str) -> list[str]:
    """The files a pattern matches: local ones with the pre-check's glob (schema/logfiles.py, what
    tf.io.gfile.glob matches), remote ones with TFX's filesystem; a match that is a directory or
    cannot be opened (a broken link, a symlink loop, no permission) is an IngestError naming it."""
    try:
        if not is_uri(pattern):
            return logfiles.expand_local(pattern)
        files = sorted(fileio.glob(pattern))
        logfiles.check_matches(pattern, files, fileio.isdir, lambda p: fileio.open(p, "rb"))
        return files
    except logfiles.LogFileError as e:
        raise IngestError(str(e)) from None


def read_lines(path: str):
    """schema/logfiles.py's read_lines through TFX's filesystem (local files, gs://, ...)."""
    try:
        yield from logfiles.read_lines(path, lambda p: fileio.open(p, "rb"), lambda p: fileio.stat(p).length)
    except logfiles.LogFileError as e:
        raise IngestError(str(e)) from None


def load_item_ids(path: str) -> frozenset[str]:
    with fileio.open(path, "r") as f:
        return frozenset(line.rstrip("\n") for line in f)


class _ParseRowDoFn(beam.DoFn):
    def __init__(self, spec_json: str, item_ids_path: str):
        self._spec_json = spec_json
        self._item_ids_path = item_ids_path

    def setup(self):
        known = load_item_ids(self._item_ids_path) if self._item_ids_path else None
        self._parser = RowParser(FeatureSpec.from_json(self._spec_json), known)

    def start_bundle(self):
        self._counts = collections.Counter()

    def process(self, element):
        path, lineno, line = element
        self._counts["read"] += 1
        try:
            row = self._parser.parse(line)
        except Rejected as r:
            self._counts[f"rejected:{r.reason}"] += 1
            yield beam.pvalue.TaggedOutput(_REJECTED_TAG, json.dumps({
                "file": path, "line": lineno, "reason": r.reason, "detail": r.detail,
                "raw": line.decode("utf-8", errors="backslashreplace").rstrip("\r\n")}))
            return
        for problem in row.repairs:
            self._counts[f"soft:{problem}"] += 1
        self._counts["written"] += 1
        yield row.to_example()

    def finish_bundle(self):
        yield beam.pvalue.TaggedOutput(_COUNTS_TAG, WindowedValue(
            dict(self._counts), window.GlobalWindow().max_timestamp(), [window.GlobalWindow()]))


def _merge_counts(dicts) -> dict:
    total = collections.Counter()
    for d in dicts:
        total.update(d)
    return dict(total)


def _split_name_for(exec_properties: dict[str, Any], split_pattern: str) -> str:
    input_config = example_gen_pb2.Input()
    proto_utils.json_to_proto(exec_properties[standard_component_specs.INPUT_CONFIG_KEY], input_config)
    for split in input_config.splits:
        if split.pattern == split_pattern:
            return split.name
    raise IngestError(f"split pattern {split_pattern} is not in the input config")


@beam.ptransform_fn
def _TsvToExample(pipeline: beam.Pipeline, exec_properties: dict[str, Any], split_pattern: str):
    spec_json = exec_properties[FEATURE_SPEC_KEY]
    spec = FeatureSpec.from_json(spec_json)
    pattern = os.path.join(exec_properties[standard_component_specs.INPUT_BASE_KEY], split_pattern)
    split = _split_name_for(exec_properties, split_pattern)
    window = json.loads(exec_properties.get(TRAIN_FILES_KEY) or "null")
    # The train split of a window of spans: the listed files (the driver resolved the newest span only).
    files = [path for path, _, _ in window] if window and split == TRAIN_SPLIT else expand_pattern(pattern)
    if not files:
        raise IngestError(f"no input files match {pattern}")
    check_headers(files, spec)
    report_dir = exec_properties[_REPORT_DIR_KEY]

    parse = _ParseRowDoFn(spec_json, exec_properties.get(ITEM_IDS_PATH_KEY) or "")
    parsed = (pipeline
              | f"Files[{split}]" >> beam.Create(files)
              | f"ReadLines[{split}]" >> beam.FlatMap(read_lines)
              | f"Parse[{split}]" >> beam.ParDo(parse).with_outputs(_REJECTED_TAG, _COUNTS_TAG, main="examples"))
    _ = (parsed[_REJECTED_TAG]
         | f"WriteRejected[{split}]" >> beam.io.WriteToText(
             os.path.join(report_dir, f"{split}-rejected"), file_name_suffix=".jsonl",
             num_shards=1, shard_name_template=""))
    _ = (parsed[_COUNTS_TAG]
         | f"SumCounts[{split}]" >> beam.CombineGlobally(_merge_counts)
         | f"CountsJson[{split}]" >> beam.Map(lambda d: json.dumps(d, sort_keys=True))
         | f"WriteCounts[{split}]" >> beam.io.WriteToText(
             os.path.join(report_dir, f"{split}-counts"), file_name_suffix=".json",
             num_shards=1, shard_name_template=""))
    return parsed["examples"]


def summarize_counts(counts: dict) -> dict:
    """Input split counts -> {read, written, rejected, rejected_by_reason, soft_problems}."""
    rejected = {k.split(":", 1)[1]: v for k, v in counts.items() if k.startswith("rejected:")}
    soft = {k.split(":", 1)[1]: v for k, v in counts.items() if k.startswith("soft:")}
    return {"read": counts.get("read", 0), "written": counts.get("written", 0),
            "rejected": sum(rejected.values()),
            "rejected_by_reason": dict(sorted(rejected.items(), key=lambda kv: (-kv[1], kv[0]))),
            "soft_problems": dict(sorted(soft.items(), key=lambda kv: (-kv[1], kv[0])))}


def _hash_split(exec_properties) -> bool:
    output_config = example_gen_pb2.Output()
    proto_utils.json_to_proto(exec_properties[standard_component_specs.OUTPUT_CONFIG_KEY], output_config)
    return bool(output_config.split_config.splits)


def _read_json(path: str) -> dict:
    with fileio.open(path) as f:
        text = f.read().strip()
    return json.loads(text) if text else {}


class Executor(BaseExampleGenExecutor):
    def GetInputSourceToExamplePTransform(self) -> beam.PTransform:
        return _TsvToExample

    def GenerateExamplesByBeam(self, pipeline, exec_properties):
        splits = super().GenerateExamplesByBeam(pipeline, exec_properties)
        if not _hash_split(exec_properties):
            return splits  # output split = input split: the parser's counts are the written counts
        report_dir = exec_properties[_REPORT_DIR_KEY]
        for name, examples in splits.items():
            _ = (examples
                 | f"CountWritten[{name}]" >> beam.combiners.Count.Globally()
                 | f"WrittenJson[{name}]" >> beam.Map(lambda n: json.dumps({"written": n}))
                 | f"WriteWritten[{name}]" >> beam.io.WriteToText(
                     os.path.join(report_dir, f"{name}-written"), file_name_suffix=".json",
                     num_shards=1, shard_name_template=""))
        return splits

    def Do(self, input_dict, output_dict, exec_properties) -> None:
        examples = artifact_utils.get_single_instance(output_dict[standard_component_specs.EXAMPLES_KEY])
        report_dir = os.path.join(examples.uri, REPORT_DIR)
        exec_properties = dict(exec_properties, **{_REPORT_DIR_KEY: report_dir})
        super().Do(input_dict, output_dict, exec_properties)
        try:
            self._report(examples, exec_properties, report_dir)
        except IngestError as e:
            # TFX deletes a failed execution's outputs: the evidence is copied where it stays.
            kept = kept_dir(examples.uri)
            keep_evidence(report_dir, kept, getattr(e, "report", None))
            raise IngestError(str(e).replace(report_dir, kept)) from None

    def _report(self, examples, exec_properties, report_dir: str) -> None:
        input_config = example_gen_pb2.Input()
        proto_utils.json_to_proto(exec_properties[standard_component_specs.INPUT_CONFIG_KEY], input_config)
        report = {}
        for split in (s.name for s in input_config.splits):
            report[split] = summarize_counts(_read_json(os.path.join(report_dir, f"{split}-counts.json")))
        outputs = artifact_utils.decode_split_names(examples.split_names)
        if _hash_split(exec_properties):
            output_written = {split: _read_json(os.path.join(report_dir, f"{split}-written.json")).get("written", 0)
                              for split in outputs}
            for split, n in output_written.items():
                if split in report:
                    raise IngestError(f"output split {split} has the name of an input split; name the input "
                                      f"split that is divided by hash differently (e.g. '{HASH_INPUT_SPLIT}')")
                report[split] = {"written": n}
            parsed = sum(r["written"] for r in report.values() if "read" in r)
            if parsed != sum(output_written.values()):
                raise IngestError(f"examples parsed {parsed} != examples written to the splits {output_written}")
        else:
            output_written = {split: report[split]["written"] for split in outputs}
        examples.set_json_value_custom_property(REPORT_PROPERTY, report)
        try:
            self._enforce(report, output_written, float(exec_properties[MAX_REJECTED_FRACTION_KEY]),
                          report_dir)
        except IngestError as e:
            e.report = report
            raise

    @staticmethod
    def _enforce(report: dict, output_written: dict, max_fraction: float, report_dir: str) -> None:
        inputs = {k: r for k, r in report.items() if "read" in r}
        for split, n in output_written.items():
            if n == 0:
                names = [split] if split in inputs else list(inputs)  # a hash split: every input split
                reasons = collections.Counter()
                for name in names:
                    reasons.update(inputs[name]["rejected_by_reason"])
                read, rejected = (sum(inputs[name][k] for name in names) for k in ("read", "rejected"))
                where = ", ".join(f"{report_dir}/{name}-rejected.jsonl" for name in names)
                raise IngestError(f"split {split} is empty: no usable rows ({read} data rows read, {rejected} "
                                  f"rejected; most frequent reasons: {_top(reasons)}{_hint(reasons)}; "
                                  f"the rows are in {where})")
        for split, r in inputs.items():
            if r["read"] != r["written"] + r["rejected"]:
                raise IngestError(f"split {split}: rows read {r['read']} != written {r['written']} "
                                  f"+ rejected {r['rejected']}")
            share = r["rejected"] / r["read"]
            if share > max_fraction:
                reasons = r["rejected_by_reason"]
                raise IngestError(
                    f"split {split}: {r['rejected']} of {r['read']} rows rejected ({share:.2%} > "
                    f"max_rejected_fraction {max_fraction:.2%}); most frequent reasons: {_top(reasons)}"
                    f"{_hint(reasons)}; the rows are in {report_dir}/{split}-rejected.jsonl")


def _top(reasons: dict) -> str:
    ranked = sorted(reasons.items(), key=lambda kv: (-kv[1], kv[0]))[:5]
    return ", ".join(f"{k}={v}" for k, v in ranked) or "none"


def _hint(reasons: dict) -> str:
    if reasons and max(reasons, key=reasons.get) == "field_count":
        return " (the file must be tab-separated, one row per line, columns as in the header)"
    return ""


def kept_dir(examples_uri: str) -> str:
    """Where a failed ExampleGen's rejected rows and counts are kept: beside its output folder, under
    the pipeline root (<root>/TsvExampleGen/rejected_rows/<execution id>)."""
    node_dir = os.path.dirname(os.path.dirname(examples_uri.rstrip("/")))
    return os.path.join(node_dir, KEPT_DIR, os.path.basename(examples_uri.rstrip("/")))


def keep_evidence(report_dir: str, kept: str, report: dict | None) -> None:
    fileio.makedirs(kept)
    if fileio.exists(report_dir):
        for name in fileio.listdir(report_dir):
            fileio.copy(os.path.join(report_dir, name), os.path.join(kept, name), overwrite=True)
    if report is not None:
        with fileio.open(os.path.join(kept, "report.json"), "w") as f:
            f.write(json.dumps(report, indent=2, sort_keys=True))


class TsvExampleGenSpec(standard_component_specs.FileBasedExampleGenSpec):
    PARAMETERS = {
        **standard_component_specs.FileBasedExampleGenSpec.PARAMETERS,
        FEATURE_SPEC_KEY: ExecutionParameter(type=str),
        MAX_REJECTED_FRACTION_KEY: ExecutionParameter(type=float),
        ITEM_IDS_PATH_KEY: ExecutionParameter(type=str, optional=True),
        TRAIN_FILES_KEY: ExecutionParameter(type=str, optional=True),
        "code_fingerprint": ExecutionParameter(type=str, optional=True),  # cache key only
    }


class TsvExampleGen(FileBasedExampleGen):
    SPEC_CLASS = TsvExampleGenSpec
    EXECUTOR_SPEC = executor_spec.BeamExecutorSpec(Executor)

    def __init__(self, input_base: str, feature_spec_json: str, input_config: example_gen_pb2.Input,
                 max_rejected_fraction: float, output_config: example_gen_pb2.Output | None = None,
                 item_ids_path: str | None = None,
                 code_fingerprint: str | None = None, range_config: range_config_pb2.RangeConfig | None = None,
                 train_files: list | None = None):
        """range_config: the span to read (TFX's static range); train_files: [path, size, mtime_ns] of
        the training window's files, read for the train split instead of its pattern (the stamps
        key the cache: a file of an older span that changes re-runs the ingest)."""
        output_config = output_config or utils.make_default_output_config(input_config)
        spec = TsvExampleGenSpec(
            input_base=input_base,
            input_config=input_config,
            output_config=output_config,
            output_data_format=example_gen_pb2.FORMAT_TF_EXAMPLE,
            output_file_format=example_gen_pb2.FORMAT_TFRECORDS_GZIP,
            feature_spec=feature_spec_json,
            max_rejected_fraction=float(max_rejected_fraction),
            item_ids_path=item_ids_path,
            code_fingerprint=code_fingerprint,
            range_config=range_config,
            train_files=json.dumps(train_files) if train_files else None,
            examples=types.Channel(type=standard_artifacts.Examples),
        )
        base_beam_component.BaseBeamComponent.__init__(self, spec=spec)
