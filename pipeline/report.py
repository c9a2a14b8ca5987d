"""The run report: DIR/report/index.html with its images beside it, written after every run.

Sections: the data (rows, rejected rows by reason, feature coverage from StatisticsGen), training
curves, Recall@K against the popularity baseline, a 2-D projection of the item vectors coloured
by topic, and example recalls (a user's history -> top-10 posts from Milvus). A section whose
inputs the run did not produce (a failed or unblessed run) says why instead.

Also DIR/tensorboard/: `training` (a link to the Trainer's logs) and `items` (the embedding
projector over the item vectors, with post id and topic as metadata).
"""
from __future__ import annotations

import csv
import html
import json
import os

import numpy as np

MAX_POINTS = 20_000  # items drawn in the projection and given to the projector


def _figure():
    import matplotlib

    matplotlib.use("Agg")  # no display: files only
    import matplotlib.pyplot as plt

    return plt


def _save(plt, fig, out_dir: str, name: str) -> str:
    fig.tight_layout()
    fig.savefig(os.path.join(out_dir, name), dpi=100)
    plt.close(fig)
    return f'<img src="{name}" alt="{html.escape(name)}">'


def _table(header: list[str], rows: list[list]) -> str:
    head = "".join(f"<th>{html.escape(str(h))}</th>" for h in header)
    body = "".join("<tr>" + "".join(f"<td>{html.escape(_fmt(c))}</td>" for c in r) + "</tr>" for r in rows)
    return f"<table><tr>{head}</tr>{body}</table>"


def _fmt(value) -> str:
    if isinstance(value, float):
        return f"{value:.4f}"
    if isinstance(value, int):
        return f"{value:,}"
    return str(value)


def feature_coverage(statistics_uri: str, split: str) -> list[list]:
    """[feature, rows with the feature, share, mean values per row] from StatisticsGen's output."""
    from tensorflow_metadata.proto.v0 import statistics_pb2

    path = os.path.join(statistics_uri, f"Split-{split}", "FeatureStats.pb")
    with open(path, "rb") as f:
        stats = statistics_pb2.DatasetFeatureStatisticsList.FromString(f.read())
    rows = []
    for dataset in stats.datasets:
        for feature in dataset.features:
            common = feature.num_stats.common_stats if feature.HasField("num_stats") else \
                feature.string_stats.common_stats
            name = ".".join(feature.path.step) or feature.name
            present = common.num_non_missing
            values = common.avg_num_values if common.num_non_missing else 0.0
            rows.append([name, int(present), present / max(1, dataset.num_examples), float(values)])
    return sorted(rows)


def _data_section(summary: dict, plt, out_dir: str) -> str:
    splits = summary.get("splits") or {}
    if not splits:
        return "<p>No rows were ingested in this run.</p>"
    rows = [[s, r["read"], r["written"], r["rejected"],
             ", ".join(f"{k}: {v}" for k, v in r.get("rejected_by_reason", {}).items()) or "none"]
            for s, r in splits.items() if "read" in r]
    parts = [_table(["split", "rows read", "written", "rejected", "rejected by reason"], rows)]
    soft = [[s, k, v] for s, r in splits.items() for k, v in (r.get("soft_problems") or {}).items()]
    if soft:
        parts.append("<p>Kept, but counted (soft problems):</p>" + _table(["split", "problem", "rows"], soft))
    if summary.get("statistics_uri"):
        coverage = feature_coverage(summary["statistics_uri"], "train")
        parts.append("<p>Feature coverage in the training split (StatisticsGen):</p>"
                     + _table(["feature", "rows with it", "share", "mean values per row"], coverage))
        missing = [c for c in coverage if c[2] < 1.0]
        if not missing:  # a chart of bars all at 1.0 says nothing the sentence does not
            parts.append("<p>Every feature is in every training row.</p>")
        else:
            fig, ax = plt.subplots(figsize=(7, 0.35 * len(missing) + 1))
            ax.barh([c[0] for c in missing], [c[2] for c in missing], color="#4c72b0")
            ax.set_xlim(0, 1)
            ax.set_xlabel("share of training rows with the feature (features in every row left out)")
            parts.append(_save(plt, fig, out_dir, "coverage.png"))
    return "".join(parts)


def _training_section(summary: dict, plt, out_dir: str) -> str:
    training = summary.get("training") or {}
    curve = training.get("curve") or []
    if not curve:
        return "<p>The model was not trained in this run.</p>"
    evals = training.get("eval_curve") or []
    best = training.get("best_step", training["train_steps"])
    steps = [p["step"] for p in curve]
    fig, (left, right) = plt.subplots(1, 2, figsize=(10, 3.5))
    left.plot(steps, [p["loss"] for p in curve], color="#c44e52", linewidth=1,
              label="training (mean since the last evaluation)")
    right.plot(steps, [p["auc"] for p in curve], color="#55a868", linewidth=1,
               label="training (mean since the last evaluation)")
    if evals:  # what early stopping chose from
        left.plot([e["step"] for e in evals], [e["loss"] for e in evals], "o-", color="#8172b2", markersize=3,
                  label="eval split")
        right.plot([e["step"] for e in evals], [e["auc"] for e in evals], "o-", color="#8172b2", markersize=3,
                   label="eval split")
    elif training.get("eval_auc") is not None:
        right.axhline(training["eval_auc"], color="#8172b2", linestyle="--", label="eval split, final weights")
    for ax in (left, right):
        ax.axvline(best, color="#333333", linestyle=":", linewidth=1, label=f"weights kept: step {best:,}")
    left.set(xlabel="step", ylabel="loss", title="loss")
    right.set(xlabel="step", ylabel="AUC", title="AUC")
    left.legend(loc="upper right", fontsize=7)
    right.legend(loc="lower right", fontsize=7)
    eval_auc = training["eval_auc"] if training.get("eval_auc") is not None else "undefined"
    table = _table(["train steps", "best step", "stopped early", "train loss", "train AUC", "eval loss", "eval AUC"],
                   [[training["train_steps"], best,
                     "yes" if training.get("stopped_early") else "no", training["train_loss"], training["train_auc"],
                     training["eval_loss"], eval_auc]])
    if evals:
        every = training.get("eval_every_steps")
        passes = training.get("passes")
        table += (f"<p>The eval split's loss was checked {len(evals)} times"
                  + (f", every {every:,} steps" if every else "")
                  + (f" ({passes:g} passes over {training['train_rows']:,} training rows in all)" if passes else "")
                  + f"; the weights of step {best:,}, the lowest eval loss, were kept"
                  + (" and training stopped when it stopped improving." if training.get("stopped_early") else ".")
                  + "</p>")
    notes = [*(training.get("warnings") or []), *([training["eval_auc_note"]] if training.get("eval_auc_note") else [])]
    table += "".join(f"<p class='warn'>{html.escape(n)}</p>" for n in notes)
    warm = training.get("warm_start") or {}
    if warm.get("from"):
        from model.warm_start import rows_text

        table += f"<p>Warm started from the model of span {warm.get('span')} ({html.escape(warm['from'])}): " \
                 f"{html.escape(rows_text(warm.get('groups')))}.</p>"
    elif warm.get("note"):
        table += f"<p>Trained from scratch: {html.escape(warm['note'])}.</p>"
    return table + _save(plt, fig, out_dir, "training.png")


def _recall_section(summary: dict, plt, out_dir: str) -> str:
    retrieval = summary.get("retrieval") or {}
    if not retrieval:
        return "<p>The model was not evaluated in this run.</p>"
    ks = sorted(int(k.split("@")[1]) for k in retrieval["model"] if k.startswith("recall@"))
    model = [retrieval["model"][f"recall@{k}"] for k in ks]
    popular = [retrieval["popularity"][f"recall@{k}"] for k in ks]
    fig, ax = plt.subplots(figsize=(6, 3.5))
    x = np.arange(len(ks))
    for shift, side, values, label, color in ((-0.2, "model", model, "two-tower model", "#4c72b0"),
                                              (0.2, "popularity", popular, "popularity baseline", "#dd8452")):
        ci = [(retrieval.get(f"{side}_ci") or {}).get(f"recall@{k}") for k in ks]
        errors = (np.array([[v - c[0] for v, c in zip(values, ci, strict=True)],
                            [c[1] - v for v, c in zip(values, ci, strict=True)]]) if all(ci) else None)
        ax.bar(x + shift, values, 0.4, yerr=errors, capsize=4, label=label, color=color)
    ax.set_xticks(x, [f"Recall@{k}" for k in ks])
    ax.set_ylabel(f"over {retrieval['users']:,} eval users")
    ax.set_title("bars: 95% bootstrap intervals over the users" if retrieval.get("model_ci") else "", fontsize=9)
    ax.legend()
    verdict = "blessed" if retrieval["blessed"] else "not blessed: " + "; ".join(retrieval["not_blessed_because"])

    def with_ci(side: str, k: int) -> str:
        ci = (retrieval.get(f"{side}_ci") or {}).get(f"recall@{k}")
        value = retrieval[side][f"recall@{k}"]
        return f"{value:.4f} [{ci[0]:.4f}, {ci[1]:.4f}]" if ci else f"{value:.4f}"

    rows = [[f"recall@{k}", with_ci("model", k), with_ci("popularity", k)] for k in ks]
    ci = retrieval.get("lift_ci")
    interval = (f" Lift over popularity {retrieval['lift']:+.4f}, 95% bootstrap interval over "
                f"{retrieval['users']:,} eval users [{ci[0]:+.4f}, {ci[1]:+.4f}]." if ci else "")
    served = retrieval.get("served")
    if served:
        sci = served["difference_ci"]
        interval += (f" Against version {served['version']}, served now: {retrieval['bless_key']} "
                     f"{served['metrics'][retrieval['bless_key']]:.4f}, the candidate {served['difference']:+.4f}, "
                     f"95% interval [{sci[0]:+.4f}, {sci[1]:+.4f}] (refused when worse by more than "
                     f"{served['max_regression']} with 95% confidence).")
    return (_table(["metric", "model [95% interval]", "popularity [95% interval]"], rows)
            + f"<p>Blessing on {html.escape(retrieval['bless_key'])}: {html.escape(verdict)}."
            + f"{html.escape(interval)}</p>"
            + _save(plt, fig, out_dir, "recall.png")
            + _slices_section(retrieval.get("slices")))


def _slices_section(slices: dict | None) -> str:
    """Recall@k per slice (the evaluator's recall_slices): each user slice and each item slice."""
    if not slices:
        return "<p>No per-slice figures in this run's evaluation.</p>"
    k = slices["k"]
    parts = [f"<h3>Recall@{k} per slice</h3><p>A user slice holds the eval users whose query row has that "
             f"value; an item slice, the users with a clicked post of that value, each scored on those posts "
             f"alone. 95% bootstrap intervals over the slice's users; at most the 20 biggest slices.</p>"]

    def figure(g: dict, side: str) -> str:
        ci = g.get(f"{side}_ci")
        return f"{g[side]:.4f} [{ci[0]:.4f}, {ci[1]:.4f}]" if ci else f"{g[side]:.4f} ({g.get('ci_note', '')})"

    for column, by in slices["by"].items():
        # int(): MLMD keeps the summary's numbers as doubles (34.0 users)
        rows = [[g["value"], int(g["users"]), figure(g, "model"), figure(g, "popularity")] for g in by["groups"]]
        parts.append(f"<p>By {html.escape(column)} ({'the user' if by['side'] == 'user' else 'the clicked post'}"
                     f"'s):</p>" + _table([column, "users", "model [95% interval]", "popularity [95% interval]"],
                                         rows))
    return "".join(parts)


def item_sample(summary: dict, spec, limit: int = MAX_POINTS):
    """(ids, topics, vectors) of at most `limit` indexed items, streamed from ItemIndexer's shards."""
    from components.item_indexer import EMBEDDINGS_DIR, item_scalar_columns, read_embeddings

    index = summary.get("item_index") or {}
    if not index.get("count") or not summary.get("item_index_uri"):
        return None
    topic = (item_scalar_columns(spec) or [None])[0]
    ids, topics, vectors = [], [], []
    pattern = os.path.join(summary["item_index_uri"], EMBEDDINGS_DIR, "part*")
    for batch in read_embeddings(pattern, spec, index["dim"]):
        take = limit - len(ids)
        ids += batch.ids[:take]
        topics += (batch.scalars[topic][:take] if topic else [""] * min(take, len(batch.ids)))
        vectors.append(batch.vectors[:take])
        if len(ids) >= limit:
            break
    return ids, topics, np.concatenate(vectors)


def pca_2d(vectors: np.ndarray) -> np.ndarray:
    centred = vectors - vectors.mean(axis=0)
    _, _, vt = np.linalg.svd(centred, full_matrices=False)
    return centred @ vt[:2].T


def _projection_section(items, plt, out_dir: str, summary: dict) -> str:
    if items is None:
        index = summary.get("item_index") or {}
        why = index.get("not_indexed_because") or ("the ItemIndexer did not run" if not index else "none written")
        return f"<p>No item vectors were indexed in this run: {html.escape(why)}.</p>"
    ids, topics, vectors = items
    xy = pca_2d(vectors)
    counts: dict[str, int] = {}
    for t in topics:
        counts[t] = counts.get(t, 0) + 1
    top = sorted(counts, key=lambda t: (-counts[t], t))[:10]
    fig, ax = plt.subplots(figsize=(7, 6))
    other = np.array([t not in top for t in topics])
    ax.scatter(xy[other, 0], xy[other, 1], s=4, color="#cccccc", label="other topics")
    cmap = plt.get_cmap("tab10")
    for i, t in enumerate(top):
        mask = np.array([x == t for x in topics])
        ax.scatter(xy[mask, 0], xy[mask, 1], s=6, color=cmap(i), label=f"topic {t or '(none)'}")
    ax.set(xlabel="first principal component", ylabel="second principal component")
    ax.legend(fontsize=7, markerscale=2, loc="best")
    return (f"<p>{len(ids):,} item-tower vectors, projected on their first two principal components; "
            f"the ten most frequent topics in colour.</p>" + _save(plt, fig, out_dir, "items.png"))


def example_log_lines(log_path: str, spec, users: int = 3) -> list[str]:
    """The first clicked line of each of the first `users` users with a reading history."""
    from schema.logfiles import read_log

    out, seen = [], set()
    for _, line in read_log(log_path, spec):  # plain or .gz, the columns as its header says
        row = dict(zip(spec.columns, line.split("\t"), strict=False))
        user = row.get(spec.user_id, "")
        if row.get(spec.label) == "1" and user not in seen and any(row.get(c) for c in spec.history_columns()):
            seen.add(user)
            out.append(line)
            if len(out) == users:
                break
    return out


EXAMPLE_CANDIDATES = 30  # users recalled for the examples; the first three are shown, plus the first hit


def _examples_section(summary: dict, spec, milvus_uri: str, log_path: str | None, items) -> str:
    pushed = summary.get("pushed_models") or []
    if not pushed or not (summary.get("item_index") or {}).get("count") or not log_path:
        return "<p>No model was pushed and indexed in this run.</p>"
    from retrieval.backends import open_index
    from retrieval.index import IndexConfig
    from retrieval.item_store import ItemStore
    from retrieval.recall import Recaller, SavedModelTowers

    lines = example_log_lines(log_path, spec, users=EXAMPLE_CANDIDATES)
    config = IndexConfig(uri=milvus_uri, alias=summary["item_index"]["alias"])
    item_index = open_index(config)
    store = ItemStore(config, spec.item_id, client=item_index.client)  # the read posts' content vectors
    recaller = Recaller(SavedModelTowers(os.path.dirname(pushed[0]["path"])), item_index, spec, store)
    k = 10
    results = recaller.recall_log_lines(lines, k=k)
    topics = dict(zip(items[0], items[1], strict=True)) if items else {}
    rows_of = [dict(zip(spec.columns, line.split("\t"), strict=False)) for line in lines]
    ranks = [next((i + 1 for i, h in enumerate(hits) if h["id"] == row.get(spec.item_id, "")), None)
             for row, hits in zip(rows_of, results, strict=True)]
    # Honest and still informative: the first three users as the log has them, and when none of them
    # is a hit, the first user who is (the page says so, with the hit count of all the candidates).
    shown = list(range(min(3, len(lines))))
    first_hit = next((i for i, r in enumerate(ranks) if r), None)
    if first_hit is not None and first_hit not in shown:
        shown.append(first_hit)
    hit_count = sum(1 for r in ranks if r)
    how = (f"the first {len(shown)}" if first_hit is None or first_hit < 3
           else f"the first three, and the first hit (user number {first_hit + 1})")
    parts = [f"<p>The first {len(lines)} users of {html.escape(log_path)} with a click and a reading history were "
             f"recalled: the top {k} posts from Milvus for the user as the log line describes them (their read "
             f"posts left out). The post clicked in that line is in the top {k} for {hit_count} of the "
             f"{len(lines)}. Shown: {html.escape(how)}.</p>"]
    for i in shown:
        row, hits, rank = rows_of[i], results[i], ranks[i]
        history = [p.strip() for c in spec.history_columns() for p in row.get(c, "").split(",") if p.strip()]
        clicked = row.get(spec.item_id, "")
        if rank:
            outcome = f"hit: the clicked post {clicked} is at rank {rank}"
        elif clicked in history:
            outcome = f"the clicked post {clicked} is in the history, so it is left out of the ranking"
        else:
            outcome = f"miss: the clicked post {clicked} (topic {topics.get(clicked, '?')}) is not in the top {k}"
        history_topics: dict[str, int] = {}
        for post in history:
            topic = topics.get(post, "?")
            history_topics[topic] = history_topics.get(topic, 0) + 1
        topic_text = ", ".join(f"{t} ×{n}" for t, n in sorted(history_topics.items(), key=lambda x: (-x[1], x[0])))
        rows = [[n + 1, h["id"], topics.get(h["id"], ""), round(h["score"], 4),
                 "clicked in this log line" if h["id"] == clicked else ""] for n, h in enumerate(hits)]
        parts.append(f"<h3>user {html.escape(row.get(spec.user_id, '?'))}: {html.escape(outcome)}</h3>"
                     f"<p>history ({len(history)} posts): {html.escape(', '.join(history[:30]))}"
                     f"{' ...' if len(history) > 30 else ''}<br>history topics: {html.escape(topic_text or 'none')}"
                     f"<br>clicked: {html.escape(clicked)} (topic {html.escape(topics.get(clicked, '?'))})</p>"
                     + _table(["rank", "post", "topic", "score (cosine, -1 to 1)", "note"], rows))
    return "".join(parts)


def _run_section(summary: dict, run_inputs: dict | None, config) -> str:
    pushed = ", ".join(p["path"] for p in summary.get("pushed_models", []))
    partial = summary.get("partial_run")
    status = (f"<p>A partial run (--until {html.escape(partial['until'])}): only that component and what it "
              f"needs ran; the last whole run is described by {html.escape(partial['whole_run_summary'])}.</p>"
              if partial else "")
    if summary.get("failure"):
        status += f"<p class='failed'>The run stopped: {html.escape(summary['failure'])}</p>"
    elif pushed:
        status += f"<p>Pushed: {html.escape(pushed)}.</p>"
    elif summary.get("not_pushed_because"):
        status += f"<p>Nothing pushed: {html.escape('; '.join(summary['not_pushed_because']))}.</p>"
    else:
        status += "<p>Nothing pushed: the Pusher did not run in this run.</p>"
    if summary.get("wall_seconds") is not None:
        status += f"<p>The components took {summary['wall_seconds']:,.0f} s (wall clock)"
        if summary.get("process_seconds") is not None:
            status += (f"; the command, {summary['process_seconds']:,.0f} s from its start to this summary "
                       "(importing TFX and checking the inputs included)")
        status += ".</p>"
    parts = [status]
    if run_inputs:
        parts.append("<p>Inputs:</p>" + _table(["input", "path"], [[k, v] for k, v in run_inputs.items()]))
    if config is not None:
        changed, unchanged = config_rows(config)
        parts.append("<p>Configuration (values that differ from the defaults; the rest below):</p>"
                     + (_table(["key", "value", "default"], changed) if changed else "<p>none: every default</p>")
                     + "<details><summary>every other key, at its default</summary>"
                     + _table(["key", "value"], unchanged) + "</details>")
    parts.append(_table(["component", "state", "seconds"], [[c["component"], c["state"], f"{c['seconds']:.1f}"]
                                                           for c in summary.get("components", [])]))
    return "".join(parts)


def config_rows(config) -> tuple[list[list], list[list]]:
    """([key, value, default] of the keys that differ from the defaults, [key, value] of the rest),
    keys dotted (trainer.batch_size)."""
    import dataclasses

    def flat(value, prefix=""):
        if dataclasses.is_dataclass(value):
            for f in dataclasses.fields(value):
                yield from flat(getattr(value, f.name), f"{prefix}{f.name}.")
        else:
            yield prefix.rstrip("."), value

    defaults = dict(flat(type(config)()))
    changed, unchanged = [], []
    for key, value in flat(config):
        text = json.dumps(value) if isinstance(value, (list, dict)) or value == "" else str(value)
        if value != defaults.get(key):
            changed.append([key, text, json.dumps(defaults.get(key)) if isinstance(defaults.get(key), (list, dict))
                            else str(defaults.get(key))])
        else:
            unchanged.append([key, text])
    return changed, unchanged


def write_projector(items, log_dir: str) -> None:
    """TensorBoard's embedding projector over the items: a checkpoint, metadata.tsv, projector config."""
    import tensorflow as tf
    from tensorboard.plugins import projector

    ids, topics, vectors = items
    os.makedirs(log_dir, exist_ok=True)
    with open(os.path.join(log_dir, "metadata.tsv"), "w", newline="") as f:
        w = csv.writer(f, delimiter="\t", lineterminator="\n")
        w.writerow(["post_id", "topic"])
        w.writerows(zip(ids, topics, strict=True))
    checkpoint = tf.train.Checkpoint(item_vectors=tf.Variable(vectors))
    checkpoint.save(os.path.join(log_dir, "items.ckpt"))
    config = projector.ProjectorConfig()
    embedding = config.embeddings.add()
    embedding.tensor_name = "item_vectors/.ATTRIBUTES/VARIABLE_VALUE"
    embedding.metadata_path = "metadata.tsv"
    projector.visualize_embeddings(log_dir, config)
    # TensorBoard's projector looks only in runs, and a run is a folder with an event file: without one,
    # `tensorboard --logdir WORKDIR/tensorboard` (the documented logdir) shows no projector.
    writer = tf.summary.create_file_writer(log_dir)
    with writer.as_default():
        tf.summary.text("items", f"{len(ids):,} item-tower vectors: open the Projector tab", step=0)
    writer.close()


def _tensorboard(summary: dict, items, workdir: str) -> str:
    root = os.path.join(workdir, "tensorboard")
    os.makedirs(root, exist_ok=True)
    if summary.get("model_run_uri"):
        link = os.path.join(root, "training")
        if os.path.islink(link):
            os.remove(link)
        os.symlink(summary["model_run_uri"], link)
    if items is not None:
        write_projector(items, os.path.join(root, "items"))
    return root


STYLE = """body{font-family:sans-serif;max-width:1100px;margin:2em auto;color:#222}
table{border-collapse:collapse;margin:0.5em 0 1em}td,th{border:1px solid #ccc;padding:3px 8px;font-size:13px}
th{background:#f3f3f3}img{max-width:100%;display:block;margin:0.5em 0 1.5em}h2{border-bottom:1px solid #ddd}
.failed{color:#b00;font-weight:bold}"""


def write_report(workdir: str, summary: dict, spec, milvus_uri: str, log_path: str | None,
                 run_inputs: dict | None = None, config=None) -> str:
    """Writes DIR/report/index.html (and DIR/tensorboard/); returns the page's path. run_inputs:
    {what: path} of the run's inputs; config: its PipelineConfig (shown against the defaults)."""
    out_dir = os.path.join(workdir, "report")
    os.makedirs(out_dir, exist_ok=True)
    for name in os.listdir(out_dir):  # images of an earlier run must not linger
        if name.endswith(".png"):
            os.remove(os.path.join(out_dir, name))
    plt = _figure()
    sections = []

    def section(title: str, build) -> None:
        try:
            body = build()
        except Exception as e:  # one missing input must not cost the rest of the report
            body = f"<p class='failed'>This section could not be built: {html.escape(type(e).__name__)}: " \
                   f"{html.escape(str(e))}</p>"
        sections.append(f"<h2>{html.escape(title)}</h2>{body}")

    sections.append("<h2>Run</h2>" + _run_section(summary, run_inputs, config))
    items = {}

    def projection() -> str:
        items["sample"] = item_sample(summary, spec)
        return _projection_section(items["sample"], plt, out_dir, summary)

    section("Data", lambda: _data_section(summary, plt, out_dir))
    section("Training", lambda: _training_section(summary, plt, out_dir))
    section("Recall against the popularity baseline", lambda: _recall_section(summary, plt, out_dir))
    section("Item vectors", projection)
    section("Example recalls", lambda: _examples_section(summary, spec, milvus_uri, log_path, items.get("sample")))
    section("TensorBoard", lambda: "<p>Training scalars and the item projector: <code>.venv/bin/tensorboard --logdir "
            f"{html.escape(_tensorboard(summary, items.get('sample'), workdir))}</code></p>")
    page = (f"<!DOCTYPE html><html lang='en'><head><meta charset='utf-8'><title>DSSM recall run "
            f"{html.escape(str(summary.get('run_id', '')))}</title><style>{STYLE}</style></head><body>"
            f"<h1>DSSM recall: run {html.escape(str(summary.get('run_id', '')))}</h1>{''.join(sections)}"
            f"</body></html>")
    path = os.path.join(out_dir, "index.html")
    with open(path + ".tmp", "w") as f:
        f.write(page)
    os.replace(path + ".tmp", path)
    return path

