"""The daily cycle end to end (LocalDagRunner on the sample cut into days): a span with a window of two
reads the two days' training logs and the day's eval logs; the same span again is a cache hit, also
after a later span pushed; the next day warm starts from the first day's pushed model; a deliberately
worse candidate (one training step, no warm start) is ranked beside the version served and not pushed,
and the served version stays byte-identical."""
import os

import pytest

from datagen.spans import make_spans
from tests.conftest import REPO, SAMPLE_DIR, run_local, tree_digest

pytestmark = [pytest.mark.e2e, pytest.mark.slow]


def _span_args(days, span, config=os.path.join(REPO, "configs", "continuous.yaml")):
    return ["--train", str(days / "day-{SPAN}" / "train.tsv"), "--eval", str(days / "day-{SPAN}" / "eval.tsv"),
            "--config", str(config), "--span", str(span), "--no-serving-demo"]


def _states_but_the_resolver(summary):
    """The states of the components; a Resolver node is never cached (it resolves on every run), what
    counts is the model it gave the Trainer, whose cache key it is part of."""
    return {c["state"] for c in summary["components"] if c["component"] != "warm_start_resolver"}


@pytest.fixture(scope="module")
def cycle(tmp_path_factory):
    days = tmp_path_factory.mktemp("days")
    rows = make_spans(SAMPLE_DIR, str(days), 3)
    workdir = tmp_path_factory.mktemp("continuous") / "run"
    first = run_local(workdir, *_span_args(days, 2))
    again = run_local(workdir, *_span_args(days, 2))
    warm = run_local(workdir, *_span_args(days, 3))  # the next day starts from the first day's model
    served = tree_digest(os.path.join(workdir, "serving"))
    worse_config = tmp_path_factory.mktemp("worse") / "config.yaml"
    worse_config.write_text("continuous: {window: 2, warm_start: false}\nevaluation: {min_eval_users: 150}\n"
                            "trainer: {train_steps: 1, early_stopping: false}\n")
    worse = run_local(workdir, *_span_args(days, 3, worse_config), "--allow-not-blessed")  # exit 0 though not pushed
    later = run_local(workdir, *_span_args(days, 2))  # span 2 again, after span 3 pushed a newer model
    return days, rows, workdir, first, again, served, worse, warm, later


def test_a_span_trains_on_its_window_and_evaluates_on_its_day(cycle):
    days, rows, _, first, *_ = cycle
    c = first["continuous"]
    assert c["span"] == 2 and c["spans_used"] == [1, 2] and c["window"] == 2
    assert c["files"]["training log"] == [str(days / f"day-{d}" / "train.tsv") for d in (1, 2)]
    assert c["files"]["eval log"] == [str(days / "day-2" / "eval.tsv")]
    assert first["splits"]["train"]["read"] == rows[1]["train"] + rows[2]["train"]
    assert first["splits"]["eval"]["read"] == rows[2]["eval"]
    assert c["served"] is None and first["pushed"]  # nothing was served before
    assert c["warm_started_from"] is None and "no model trained on a span before 2 was pushed" in c["warm_start_note"]


def test_the_same_span_again_is_a_cache_hit(cycle):
    _, _, _, first, again, *_ = cycle
    assert _states_but_the_resolver(again) == {"CACHED"}
    assert again["continuous"]["span"] == 2 and again["model_uri"] == first["model_uri"]


def test_a_worse_candidate_is_compared_with_the_served_version_and_not_pushed(cycle):
    _, rows, workdir, _, _, served, worse, warm, _ = cycle
    assert worse["splits"]["train"]["read"] == rows[2]["train"] + rows[3]["train"]  # the window moved
    comparison = worse["continuous"]["served"]
    newest = max(int(v) for v in os.listdir(os.path.join(workdir, "serving", "dssm")) if v.isdigit())
    assert comparison["version"] == newest  # the version served when the candidate was evaluated
    assert worse["continuous"]["warm_started_from"] is None
    assert worse["continuous"]["warm_start_note"] == "continuous.warm_start is false"
    assert comparison["difference_ci"][1] < 0  # worse, with 95% confidence
    assert not worse["pushed"]
    assert any("is worse than the served version" in r for r in worse["continuous"]["reasons"])
    assert tree_digest(os.path.join(workdir, "serving")) == served


def test_the_next_span_starts_from_the_pushed_model_of_an_earlier_span(cycle):
    _, _, _, first, _, _, _, warm, _ = cycle
    c = warm["continuous"]
    assert c["warm_started_from"] == first["model_uri"] and c["warm_start_note"] is None
    rows = c["warm_start_rows"]
    assert set(rows) == {"topic_id", "client_type", "post_id"}
    # day 3's window (days 2-3) shares most topics and posts with day 2's window (days 1-2)
    assert rows["topic_id"]["kept"] > 0 and rows["client_type"]["kept"] > 0 and rows["post_id"]["kept"] > 0
    assert any(e["component"] == "warm_start_resolver" for e in warm["components"])


def test_a_span_run_again_after_a_newer_push_is_still_a_cache_hit(cycle):
    """The resolver takes models of earlier spans only: span 3's push does not change span 2's base."""
    _, _, _, first, _, _, _, _, later = cycle
    assert _states_but_the_resolver(later) == {"CACHED"}
    assert later["model_uri"] == first["model_uri"]
