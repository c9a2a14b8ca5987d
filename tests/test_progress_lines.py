"""The one-line figures the run watcher prints when a component is done."""
from tfx.types import standard_artifacts

from components.tsv_example_gen import REPORT_PROPERTY
from pipeline.progress import figures


def _examples(report):
    a = standard_artifacts.Examples()
    a.set_json_value_custom_property(REPORT_PROPERTY, report)
    return a.mlmd_artifact  # what the watcher reads from MLMD


def _parts(report) -> set[str]:
    return set(figures("Examples", _examples(report), "TsvExampleGen").split("; "))  # MLMD keeps no key order


def test_explicit_splits_show_rows_and_rejections():
    report = {"train": {"read": 10, "written": 8, "rejected": 2}, "eval": {"read": 3, "written": 3, "rejected": 0}}
    assert _parts(report) == {"train: 8 rows, 2 rejected", "eval: 3 rows, 0 rejected"}


def test_a_hash_split_shows_its_input_and_the_splits_it_made():
    # --input: the input split "all" has rows read and rejected; train and eval have rows written only.
    report = {"all": {"read": 1000, "written": 990, "rejected": 10}, "train": {"written": 891},
              "eval": {"written": 99}}
    assert _parts(report) == {"all: 990 rows, 10 rejected", "train: 891 rows", "eval: 99 rows"}
