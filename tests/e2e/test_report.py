"""What a user sees: progress lines, the run report in a real browser, and TensorBoard's files."""
import glob
import os
import re

import numpy as np
import pytest

from pipeline.progress import RunWatcher
from tests.conftest import SAMPLE_DIR


def _data_rows(name):
    with open(os.path.join(SAMPLE_DIR, name)) as f:
        return sum(1 for _ in f) - 1


@pytest.mark.e2e
def test_each_component_logs_start_and_end_with_figures(runs):
    _, first, second = runs
    err = first["_stderr"]
    seconds = {c["component"]: c["seconds"] for c in first["components"]}
    for component in ("TsvExampleGen", "Transform", "Trainer", "ItemIndexer"):
        assert re.search(rf"✓ {component} done in \d+", err), component
        # "started" is logged once a component has run RunWatcher.START_AFTER_SECONDS (3 s), seen by a
        # poll every second: a component of 3 to 5 s may end between two polls (a fast machine's
        # ExampleGen), one of more than 5 s must have been announced.
        if seconds[component] > RunWatcher.START_AFTER_SECONDS + 2:
            assert re.search(rf"▶ {component} started", err), (component, seconds[component])
    assert seconds["Trainer"] > 5 and seconds["Transform"] > 5  # the rule above is exercised
    assert f"train: {_data_rows('train.tsv'):,} rows, 0 rejected" in err
    training = first["training"]  # early stopping: the steps trained and the best one, from the summary
    stopped = ", stopped early" if training["stopped_early"] else ""
    assert re.search(rf"✓ Trainer done in \S+: {training['train_steps']:,} steps \(best at step "
                     rf"{training['best_step']:,}{stopped}\), train loss \d\.\d{{3}}, "
                     r"eval loss \d\.\d{3}, eval AUC", err)
    # Training progress: steps done of the total and a rate, every few seconds with the time left, and
    # always a last line (the sample's training may end before the first interval).
    assert re.search(rf"training: {training['train_steps']:,}/3,000 \(\d+%\) steps, [\d,]+ steps/s, "
                     r"loss \d\.\d{3}, AUC", err)
    assert "✓ ItemIndexer done in" in err and "1,477 items in" in err
    # Transform's reads count rows against what ExampleGen wrote: the analysis of train, then each split.
    train, eval_ = _data_rows("train.tsv"), _data_rows("eval.tsv")
    for verb, split, n in (("analyzing", "train", train), ("transforming", "train", train),
                           ("transforming", "eval", eval_)):
        assert re.search(rf"Transform {verb} {split}: {n:,}/{n:,} \(100%\) rows, [\d,]+ rows/s", err), (verb, split)
    # The rerun reuses everything and says so, without announcing a start first.
    assert second["_stderr"].count("reused from an earlier run") == len(second["components"])
    assert "▶" not in second["_stderr"], second["_stderr"][-3000:]


def _browser():
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    options.binary_location = "/usr/bin/chromium"
    for flag in ("--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                 "--disable-background-networking", "--disable-component-update", "--disable-sync",
                 "--allow-file-access-from-files", "--window-size=1200,900"):
        options.add_argument(flag)
    options.set_capability("goog:loggingPrefs", {"browser": "ALL"})
    return webdriver.Chrome(service=Service("/usr/bin/chromedriver"), options=options)


BROWSER_MISSING = [p for p in ("/usr/bin/chromium", "/usr/bin/chromedriver") if not os.access(p, os.X_OK)]


@pytest.mark.e2e
@pytest.mark.skipif(bool(BROWSER_MISSING), reason=f"no {' or '.join(BROWSER_MISSING)}: `make browser` installs "
                                                  f"Debian's chromium, which needs root or passwordless sudo")
def test_report_renders_in_chromium_with_every_image(runs):
    _, first, _ = runs
    page = os.path.join(first["_report_dir"], "index.html")
    assert os.path.exists(page)
    driver = _browser()
    try:
        driver.get("file://" + page)
        images = driver.execute_script(
            "return Array.from(document.images).map(i => [i.getAttribute('src'), i.complete, i.naturalWidth])")
        errors = [e for e in driver.get_log("browser") if e["level"] == "SEVERE"]
        text = driver.find_element("tag name", "body").text
    finally:
        driver.quit()
    assert errors == []
    # Every cell of the sample's training split is filled: no coverage chart of bars all at 1.0.
    assert sorted(src for src, _, _ in images) == ["items.png", "recall.png", "training.png"]
    assert "Every feature is in every training row." in text
    assert all(complete and width > 100 for _, complete, width in images), images
    for heading in ("Data", "Training", "Recall against the popularity baseline", "Item vectors",
                    "Example recalls", "TensorBoard"):
        assert heading in text
    assert "could not be built" not in text
    assert f"train {_data_rows('train.tsv'):,} {_data_rows('train.tsv'):,} 0 none" in text
    assert "1,477 item-tower vectors" in text
    shown = len(re.findall(r"^user \S+: (hit|miss|the clicked post)", text, re.M))
    assert shown in (3, 4) and text.count("\n10 p") == shown  # three (and the first hit), ten posts each


@pytest.mark.e2e
def test_the_report_shows_why_training_stopped_what_ran_and_whether_the_examples_hit(runs):
    """The page's text (no browser): the eval checks and the step kept, the inputs and the config,
    each example's history topics and whether its clicked post was found, no raw JSON."""
    import html as html_lib

    _, first, _ = runs
    page = open(os.path.join(first["_report_dir"], "index.html")).read()
    text = html_lib.unescape(re.sub(r"<[^>]+>", " ", page))
    text = re.sub(r"\s+", " ", text)
    training = first["training"]
    evals = training["eval_curve"]
    assert len(evals) >= 2 and evals[0]["step"] == training["eval_every_steps"]
    assert (f"The eval split's loss was checked {len(evals)} times, every {training['eval_every_steps']:,} steps "
            f"({training['passes']:g} passes over 8,000 training rows in all); the weights of step "
            f"{training['best_step']:,}, the lowest eval loss, were kept") in text
    best = min(evals, key=lambda e: e["loss"])
    assert best["step"] == training["best_step"]  # the step kept is the lowest eval loss, read off the curve
    assert f"training log {SAMPLE_DIR}/train.tsv" in text and f"eval log {SAMPLE_DIR}/eval.tsv" in text
    assert "config none: every default" in text
    assert "trainer.batch_size 128" in text  # the keys at their defaults, folded away
    outcomes = re.findall(r"user (\S+): (hit: the clicked post \S+ is at rank \d+|miss: the clicked post \S+ "
                          r"\(topic \S+\) is not in the top 10|the clicked post \S+ is in the history)", text)
    picked = re.search(r"The first (\d+) users of \S+ with a click and a reading history were recalled: .* The post "
                       r"clicked in that line is in the top 10 for (\d+) of the \d+\. Shown: ([^.]+)\.", text)
    assert picked, text[-4000:]
    hits = [o for o in outcomes if o[1].startswith("hit")]
    if int(picked[2]) and not any(o[1].startswith("hit") for o in outcomes[:3]):
        # None of the first three hit, but some candidate did: it is shown fourth, and said so.
        assert len(outcomes) == 4 and outcomes[3][1].startswith("hit") and "and the first hit" in picked[3]
    else:
        assert len(outcomes) == 3 and picked[3] == "the first 3", picked.group(0)
    assert bool(hits) == (int(picked[2]) > 0)  # a run with hits shows one
    assert text.count("history topics: ") == len(outcomes)
    # Recall per slice: client_type (users) and topic_id (clicked posts), each with its interval.
    assert "Recall@50 per slice" in text and "By client_type (the user's):" in text
    assert "By topic_id (the clicked post's):" in text
    assert re.search(r"recall@50 [\d.]+ \[[\d.]+, [\d.]+\] [\d.]+ \[[\d.]+, [\d.]+\]", text), text[:5000]
    slices = first["retrieval"]["slices"]["by"]["client_type"]["groups"]
    for g in slices:  # a user count is a whole number on the page
        assert f" {g['value']} {int(g['users'])} {g['model']:.4f} [" in text, (g, text[-6000:])
    assert "wall_seconds" not in text
    took = re.search(r"The components took ([\d,]+) s \(wall clock\); the command, ([\d,]+) s from its start", text)
    assert took and int(took[2].replace(",", "")) > int(took[1].replace(",", "")), text[:3000]


@pytest.mark.e2e
def test_tensorboard_scalars_and_projector(runs):
    import tensorflow as tf
    from google.protobuf import text_format
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
    from tensorboard.plugins import projector

    workdir, first, _ = runs
    root = os.path.join(workdir, "tensorboard")
    (train_dir,) = glob.glob(os.path.join(root, "training", "train"))
    events = EventAccumulator(train_dir, size_guidance={"tensors": 0}).Reload()
    tags = events.Tags()["tensors"]
    assert "batch_loss" in tags or "epoch_loss" in tags, tags

    items = os.path.join(root, "items")
    config = text_format.Parse(open(os.path.join(items, "projector_config.pbtxt")).read(),
                               projector.ProjectorConfig())
    (embedding,) = config.embeddings
    metadata = open(os.path.join(items, embedding.metadata_path)).read().splitlines()
    assert metadata[0] == "post_id\ttopic" and len(metadata) == 1 + 1477
    reader = tf.train.load_checkpoint(items)
    vectors = reader.get_tensor(embedding.tensor_name)
    assert vectors.shape == (1477, 128)
    np.testing.assert_allclose(np.linalg.norm(vectors, axis=1), 1.0, rtol=1e-5)  # the towers' unit vectors

    # Issue [first-week] 3: TensorBoard's own projector plugin finds the items from the documented
    # logdir (`tensorboard --logdir WORKDIR/tensorboard`), not only from WORKDIR/tensorboard/items.
    from tensorboard.backend.event_processing import data_provider, plugin_event_multiplexer
    from tensorboard.plugins import base_plugin
    from tensorboard.plugins.projector import projector_plugin

    multiplexer = plugin_event_multiplexer.EventMultiplexer()
    multiplexer.AddRunsFromDirectory(root)
    multiplexer.Reload()
    plugin = projector_plugin.ProjectorPlugin(base_plugin.TBContext(
        logdir=root, multiplexer=multiplexer, data_provider=data_provider.MultiplexerDataProvider(multiplexer, root)))
    plugin._update_configs()
    assert "items" in plugin._configs, sorted(plugin._configs)


def test_pca_matches_the_covariance_eigenvectors():
    from pipeline.report import pca_2d

    rng = np.random.default_rng(0)
    x = rng.standard_normal((500, 6)) * np.array([5.0, 3.0, 1.0, 0.5, 0.2, 0.1]) + 7.0
    xy = pca_2d(x)
    centred = x - x.mean(axis=0)
    values, vectors = np.linalg.eigh(np.cov(centred, rowvar=False))
    expected = centred @ vectors[:, ::-1][:, :2]
    for i in range(2):  # an eigenvector's sign is arbitrary
        np.testing.assert_allclose(np.abs(xy[:, i]), np.abs(expected[:, i]), rtol=1e-6, atol=1e-9)
    np.testing.assert_allclose(xy.var(axis=0, ddof=1), values[::-1][:2], rtol=1e-9)


def test_rate_log_line_counts_rate_and_time_left():
    from common.progress import RateLog

    log = RateLog("indexing", "items", total=10_000)
    assert log.line(2_500, 500.0) == "indexing: 2,500/10,000 (25%) items, 500 items/s, ~15s left"
    assert log.line(10_000, 500.0) == "indexing: 10,000/10,000 (100%) items, 500 items/s"
    assert RateLog("reading", "MB").line(12, 3.0, "40,000 rows") == "reading: 12 MB, 3 MB/s, 40,000 rows"
    assert RateLog("training", "steps", total=100_000).line(10_000, 100.0).endswith("~15m00s left")


def test_the_training_and_recall_sections_say_where_the_weights_came_from_and_the_served_comparison(tmp_path):
    from pipeline.report import _figure, _recall_section, _training_section

    curve = [{"step": 10, "loss": 1.0, "auc": 0.6}]
    training = {"curve": curve, "train_steps": 10, "train_loss": 1.0, "train_auc": 0.6, "eval_loss": 1.1,
                "eval_auc": 0.58, "warm_start": {"from": "/w/Trainer/model/9", "span": 1, "note": None,
                                                 "groups": {"topic_id": {"kept": 18, "new": 2, "dropped": 1}}}}
    plt, out = _figure(), str(tmp_path)
    body = _training_section({"training": training}, plt, out)
    assert "Warm started from the model of span 1 (/w/Trainer/model/9): topic_id: 18 ids kept, 2 new, 1 dropped" in body
    body = _training_section({"training": {**training, "warm_start": {"from": None, "note": "continuous.warm_start "
                                                                                           "is false"}}}, plt, out)
    assert "Trained from scratch: continuous.warm_start is false." in body
    retrieval = {"model": {"recall@50": 0.3}, "popularity": {"recall@50": 0.1}, "users": 200, "blessed": False,
                 "not_blessed_because": ["worse"], "bless_key": "recall@50", "lift": 0.2, "lift_ci": [0.1, 0.3],
                 "served": {"version": 7, "metrics": {"recall@50": 0.35}, "difference": -0.05,
                            "difference_ci": [-0.08, -0.02], "max_regression": 0.0}}
    body = _recall_section({"retrieval": retrieval}, plt, out)
    assert ("Against version 7, served now: recall@50 0.3500, the candidate -0.0500, 95% interval "
            "[-0.0800, -0.0200]") in body
