"""Daily spans: {SPAN} patterns resolved as TFX's ExampleGen driver resolves them (compared with TFX's
own code on the same files), training windows, the errors, and the train split of a window read by
TsvExampleGen's executor."""
import json

import pytest
from tfx.components.example_gen import utils as tfx_example_gen_utils
from tfx.proto import example_gen_pb2, range_config_pb2
from tfx.types import standard_artifacts
from tfx.utils import proto_utils

from components.tsv_example_gen import Executor
from schema.spans import SpanError, available_spans, choose_span, file_stamps, for_span

HEADER = "act\tclient_id\tpost_id\tclient_type\tfollow_topic_id\tall_topic_fav_7\ttopic_id\tread_post_id\n"


def _row(user: str, post: str) -> str:
    return f"1\t{user}\t{post}\t0\tt1\tt1:1\tt1\tp2\n"


def _days(root, spans: dict[int, int], width: int = 0, eval_spans=None):
    """day-<span>/train.tsv with `rows` rows each, and eval.tsv for eval_spans (default: all)."""
    for span, rows in spans.items():
        folder = root / f"day-{str(span).zfill(width)}"
        folder.mkdir(parents=True)
        (folder / "train.tsv").write_text(HEADER + "".join(_row(f"u{span}_{i}", "p1") for i in range(rows)))
        if eval_spans is None or span in eval_spans:
            (folder / "eval.tsv").write_text(HEADER + _row(f"e{span}", "p1"))


def _tfx_choice(root, patterns: dict[str, str], span=None):
    """TFX's driver on the same files: (span, the pattern of each split with the span written in)."""
    splits = [example_gen_pb2.Input.Split(name=n, pattern=p) for n, p in patterns.items()]
    range_config = None if span is None else range_config_pb2.RangeConfig(
        static_range=range_config_pb2.StaticRange(start_span_number=span, end_span_number=span))
    _, chosen, _ = tfx_example_gen_utils.calculate_splits_fingerprint_span_and_version(str(root), splits, range_config)
    return chosen, {s.name: s.pattern for s in splits}


@pytest.mark.parametrize("width", [0, 2])
def test_the_latest_and_a_chosen_span_are_the_ones_tfx_picks(tmp_path, width):
    _days(tmp_path, {1: 1, 2: 1, 10: 1}, width=width)
    spec = "{SPAN:2}" if width else "{SPAN}"
    relative = {"train": f"day-{spec}/train.tsv", "eval": f"day-{spec}/eval.tsv"}
    local = {"training log": str(tmp_path / relative["train"]), "eval log": str(tmp_path / relative["eval"])}
    for requested in (None, 2):
        ours = choose_span(local, requested, window=1)
        span, tfx_patterns = _tfx_choice(tmp_path, relative, requested)
        assert ours.span == span == (10 if requested is None else 2)
        assert ours.files["training log"] == [str(tmp_path / tfx_patterns["train"])]
        assert ours.files["eval log"] == [str(tmp_path / tfx_patterns["eval"])]


def test_an_unpadded_spec_does_not_take_zero_padded_files_for_a_static_span(tmp_path):
    """TFX writes span 1 as "1" into {SPAN}: day-01 is not span 1 for a static range, so it is not
    offered as one (--span 1 would read nothing)."""
    _days(tmp_path, {1: 1}, width=2)
    assert available_spans(str(tmp_path / "day-{SPAN}" / "train.tsv")) == {}
    assert for_span("day-{SPAN:3}/x", 7) == "day-007/x"
    with pytest.raises(SpanError, match="more digits"):
        for_span("day-{SPAN:1}/x", 12)


def test_a_window_is_the_last_spans_up_to_the_chosen_one_clipped_to_those_that_exist(tmp_path):
    _days(tmp_path, {1: 1, 2: 1, 4: 1, 5: 1})  # no span 3
    patterns = {"training log": str(tmp_path / "day-{SPAN}" / "train.tsv"),
                "eval log": str(tmp_path / "day-{SPAN}" / "eval.tsv")}
    choice = choose_span(patterns, None, window=3)
    assert choice.span == 5 and choice.spans_used == (4, 5)  # [3, 5], 3 missing
    assert choice.files["eval log"] == [str(tmp_path / "day-5" / "eval.tsv")]
    assert choice.files["training log"] == [str(tmp_path / f"day-{s}" / "train.tsv") for s in (4, 5)]
    choice = choose_span(patterns, 2, window=5)
    assert choice.spans_used == (1, 2) and choice.files["eval log"] == [str(tmp_path / "day-2" / "eval.tsv")]


@pytest.mark.parametrize("patterns,requested,window,message", [
    ({"training log": "day-{SPAN}/train.tsv", "eval log": "day-1/eval.tsv"}, None, 1,
     "every log pattern must have {SPAN} if one has (TFX's rule): not in eval log"),
    ({"training log": "day-1/train.tsv", "eval log": "day-1/eval.tsv"}, 3, 1,
     "--span 3: the log patterns have no {SPAN}"),
    ({"training log": "day-1/train.tsv", "eval log": "day-1/eval.tsv"}, None, 2,
     "continuous.window 2: the log patterns"),
    ({"training log": "day-{SPAN}/train.tsv", "eval log": "day-{SPAN}/eval.tsv"}, 9, 1,
     "--span 9: no files match {root}/day-9/train.tsv (training log; spans found: 1, 2)"),
    ({"training log": "day-{SPAN}/train.tsv", "eval log": "day-{SPAN}/eval.tsv"}, None, 1,
     "the latest span differs between the log patterns: training log 2, eval log 1 (give --span)"),
    ({"input log": "day-{SPAN}/train.tsv"}, None, 2, "continuous.window > 1 needs --train and --eval"),
    ({"training log": "week-{SPAN}/train.tsv", "eval log": "day-{SPAN}/eval.tsv"}, None, 1,
     "training log pattern {root}/week-{SPAN}/train.tsv matches no span"),
    ({"training log": "day-{SPAN:0}/train.tsv", "eval log": "day-{SPAN:0}/eval.tsv"}, None, 1,
     "{SPAN:0} in {root}/day-{SPAN:0}/train.tsv: the width must be a positive integer"),
    ({"training log": "day-{SPAN}/train.tsv", "eval log": "day-{SPAN}/eval.tsv"}, -1, 1,
     "--span -1: no files match {root}/day--1/train.tsv"),
])
def test_span_errors_name_the_pattern_and_the_spans_found(tmp_path, patterns, requested, window, message):
    _days(tmp_path, {1: 1, 2: 1}, eval_spans={1})
    absolute = {k: str(tmp_path / p) for k, p in patterns.items()}
    with pytest.raises(SpanError) as e:
        choose_span(absolute, requested, window)
    assert message.replace("{root}", str(tmp_path)) in str(e.value), str(e.value)


def test_the_executor_reads_the_window_for_train_and_the_chosen_span_for_eval(tmp_path, spec):
    _days(tmp_path / "logs", {1: 3, 2: 5, 3: 7})
    choice = choose_span({"training log": str(tmp_path / "logs" / "day-{SPAN}" / "train.tsv"),
                          "eval log": str(tmp_path / "logs" / "day-{SPAN}" / "eval.tsv")}, 3, window=2)
    examples = standard_artifacts.Examples()
    examples.uri = str(tmp_path / "TsvExampleGen" / "examples" / "1")
    # What the driver hands the executor for span 3: the patterns with the span written in.
    input_config = example_gen_pb2.Input(splits=[example_gen_pb2.Input.Split(name="train", pattern="day-3/train.tsv"),
                                                 example_gen_pb2.Input.Split(name="eval", pattern="day-3/eval.tsv")])
    Executor().Do({}, {"examples": [examples]}, {
        "input_base": str(tmp_path / "logs"), "input_config": proto_utils.proto_to_json(input_config),
        "output_config": proto_utils.proto_to_json(tfx_example_gen_utils.make_default_output_config(input_config)),
        "output_data_format": example_gen_pb2.FORMAT_TF_EXAMPLE,
        "output_file_format": example_gen_pb2.FORMAT_TFRECORDS_GZIP, "feature_spec": spec.to_json(),
        "max_rejected_fraction": 0.0, "train_files": json.dumps(file_stamps(choice.files["training log"]))})
    report = json.loads(json.dumps(examples.get_json_value_custom_property("ingest_report")))
    assert report["train"]["read"] == 5 + 7 and report["train"]["written"] == 12  # spans 2 and 3
    assert report["eval"]["read"] == 1
