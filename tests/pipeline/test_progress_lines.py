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


def test_a_custom_artifact_type_shows_its_figures():
    """The watcher reads the type name MLMD stores (components.ItemIndex), the one ItemIndexer declares."""
    from components.artifacts import ItemIndex

    index = ItemIndex()
    index.set_json_value_custom_property("milvus", {"count": 1477, "collection": "dssm_items_g1",
                                                    "items_per_second": 13045})
    assert figures(ItemIndex.TYPE_NAME, index.mlmd_artifact, "ItemIndexer") == \
        "1,477 items in dssm_items_g1 (13,045 items/s)"
    not_indexed = ItemIndex()
    not_indexed.set_string_custom_property("not_indexed_because", "model_blessing says not blessed")
    assert figures(ItemIndex.TYPE_NAME, not_indexed.mlmd_artifact, "ItemIndexer") == \
        "not indexed: model_blessing says not blessed"


def test_each_output_report_names_a_type_its_component_writes():
    from tfx.components import Trainer

    from components import infra_validator, item_indexer, retrieval_evaluator, tower_pusher, tsv_example_gen
    from model import run_metrics

    declared = [(tsv_example_gen.TsvExampleGen, tsv_example_gen.OUTPUT_REPORT),
                (Trainer, run_metrics.OUTPUT_REPORT),
                (retrieval_evaluator.RetrievalEvaluator, retrieval_evaluator.OUTPUT_REPORT),
                (infra_validator.ServingInfraValidator, infra_validator.OUTPUT_REPORT),
                (tower_pusher.TowerPusher, tower_pusher.OUTPUT_REPORT),
                (item_indexer.ItemIndexer, item_indexer.OUTPUT_REPORT)]
    for component, report in declared:
        written = {channel.type.TYPE_NAME for channel in component.SPEC_CLASS.OUTPUTS.values()}
        assert report.artifact_type in written, (component.__name__, report.artifact_type, written)


def test_an_activity_says_what_it_does_at_once_and_again_whenever_nothing_else_was_said():
    """Common/progress.Activity: its line at once, then one whenever every_seconds pass with no
    progress line at all (a line of another step resets the wait)."""
    import subprocess
    import sys

    from tests.conftest import REPO

    code = ("import time\n"
            "from common.progress import Activity, log\n"
            "with Activity('quiet step', every_seconds=0.4):\n"
            "    time.sleep(1.5)\n"
            "with Activity('busy step', every_seconds=0.4):\n"
            "    for _ in range(6):\n"
            "        log('a line of the work itself')\n"
            "        time.sleep(0.2)\n")
    r = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, timeout=60)
    assert r.returncode == 0, r.stderr
    lines = [line.split(" ", 1)[1] for line in r.stderr.splitlines()]
    quiet = lines[:lines.index("busy step ...")]
    assert quiet[0] == "quiet step ..." and 2 <= len(quiet) - 1 <= 4, lines  # ~1.5 s / 0.4 s of silence
    assert all(line.startswith("… quiet step (") for line in quiet[1:]), lines
    busy = lines[lines.index("busy step ..."):]
    assert busy[1:] == ["a line of the work itself"] * 6, lines  # never quiet for 0.4 s: no heartbeat
