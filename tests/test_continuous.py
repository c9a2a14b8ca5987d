"""The daily cycle end to end (LocalDagRunner on the sample cut into days): a span with a window of two
reads the two days' training logs and the day's eval logs; the same span again is a cache hit; a
deliberately worse candidate (one training step) on the next day is ranked beside the version served
and not pushed, and the served version stays byte-identical."""
import os

import pytest

from datagen.spans import make_spans
from tests.conftest import REPO, SAMPLE_DIR, run_local, tree_digest

pytestmark = [pytest.mark.e2e, pytest.mark.slow]


def _span_args(days, span, config=os.path.join(REPO, "configs", "continuous.yaml")):
    return ["--train", str(days / "day-{SPAN}" / "train.tsv"), "--eval", str(days / "day-{SPAN}" / "eval.tsv"),
            "--config", str(config), "--span", str(span), "--no-serving-demo"]


@pytest.fixture(scope="module")
def cycle(tmp_path_factory):
    days = tmp_path_factory.mktemp("days")
    rows = make_spans(SAMPLE_DIR, str(days), 3)
    workdir = tmp_path_factory.mktemp("continuous") / "run"
    first = run_local(workdir, *_span_args(days, 2))
    again = run_local(workdir, *_span_args(days, 2))
    served = tree_digest(os.path.join(workdir, "serving"))
    worse_config = tmp_path_factory.mktemp("worse") / "config.yaml"
    worse_config.write_text("continuous: {window: 2}\nevaluation: {min_eval_users: 150}\n"
                            "trainer: {train_steps: 1, early_stopping: false}\n")
    worse = run_local(workdir, *_span_args(days, 3, worse_config))
    return days, rows, workdir, first, again, served, worse


def test_a_span_trains_on_its_window_and_evaluates_on_its_day(cycle):
    days, rows, _, first, _, _, _ = cycle
    c = first["continuous"]
    assert c["span"] == 2 and c["spans_used"] == [1, 2] and c["window"] == 2
    assert c["files"]["training log"] == [str(days / f"day-{d}" / "train.tsv") for d in (1, 2)]
    assert c["files"]["eval log"] == [str(days / "day-2" / "eval.tsv")]
    assert first["splits"]["train"]["read"] == rows[1]["train"] + rows[2]["train"]
    assert first["splits"]["eval"]["read"] == rows[2]["eval"]
    assert c["served"] is None and first["pushed"]  # nothing was served before


def test_the_same_span_again_is_a_cache_hit(cycle):
    _, _, _, first, again, _, _ = cycle
    assert {c["state"] for c in again["components"]} == {"CACHED"}
    assert again["continuous"]["span"] == 2 and again["model_uri"] == first["model_uri"]


def test_a_worse_candidate_is_compared_with_the_served_version_and_not_pushed(cycle):
    _, rows, workdir, first, _, served, worse = cycle
    assert worse["splits"]["train"]["read"] == rows[2]["train"] + rows[3]["train"]  # the window moved
    comparison = worse["continuous"]["served"]
    assert comparison["version"] == int(first["pushed_models"][0]["version"])
    assert comparison["difference_ci"][1] < 0  # worse, with 95% confidence
    assert not worse["pushed"]
    assert any("is worse than the served version" in r for r in worse["continuous"]["reasons"])
    assert tree_digest(os.path.join(workdir, "serving")) == served
