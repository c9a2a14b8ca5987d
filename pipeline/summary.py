"""run_summary.json: what the latest run did, read back from the metadata store (MLMD).

Contents: per component its state (COMPLETE or CACHED) and seconds; rows read, written and
rejected per split (with reasons); out-of-vocabulary ids per split and vocabulary group; training
steps, eval loss and AUC; the pushed model paths.
"""
from __future__ import annotations

import json
import os

import ml_metadata as mlmd
from ml_metadata.proto import metadata_store_pb2
from tfx.types import artifact_utils

from common.outputs import OutputReport
from components import infra_validator, item_indexer, retrieval_evaluator, tower_pusher, tsv_example_gen
from components.tsv_example_gen import KEPT_DIR
from model import run_metrics
from model.preprocessing import OOV_COUNT_PREFIX
from model.warm_start import rows_text

STATE_NAMES = {v: k for k, v in metadata_store_pb2.Execution.State.items()}


def open_store(metadata_path: str) -> mlmd.MetadataStore:
    cfg = metadata_store_pb2.ConnectionConfig()
    cfg.sqlite.filename_uri = metadata_path
    cfg.sqlite.connection_mode = metadata_store_pb2.SqliteMetadataSourceConfig.READONLY
    return mlmd.MetadataStore(cfg)


def _ints(value):
    """Struct properties store every number as a float; counts read back as ints."""
    if isinstance(value, dict):
        return {k: _ints(v) for k, v in value.items()}
    if isinstance(value, float) and value.is_integer():
        return int(value)
    return value


def custom_property(artifact, key):
    if key not in artifact.custom_properties:
        return None
    v = artifact.custom_properties[key]
    which = v.WhichOneof("value")
    if which == "struct_value":
        from google.protobuf import json_format
        return _ints(json_format.MessageToDict(v.struct_value))
    return getattr(v, which)


def latest_run_executions(store: mlmd.MetadataStore, pipeline_name: str) -> tuple[list[dict], str]:
    """(one entry per component of the latest pipeline run, in start order; the run id)."""
    runs = store.get_contexts_by_type("pipeline_run")
    pipeline_ctx = store.get_context_by_type_and_name("pipeline", pipeline_name)
    if pipeline_ctx is None or not runs:
        raise RuntimeError(f"no run of pipeline {pipeline_name} in the metadata store")
    pipeline_execs = {e.id for e in store.get_executions_by_context(pipeline_ctx.id)}
    runs = [r for r in runs if {e.id for e in store.get_executions_by_context(r.id)} & pipeline_execs]
    run = max(runs, key=lambda c: (c.create_time_since_epoch, c.id))
    node_of = node_names(store)
    out = []
    for e in sorted(store.get_executions_by_context(run.id), key=lambda e: e.id):
        out.append({"id": e.id, "component": node_of.get(e.id, e.type), "state": STATE_NAMES[e.last_known_state],
                    "seconds": round((e.last_update_time_since_epoch - e.create_time_since_epoch) / 1000, 1)})
    return out, run.name


def node_names(store: mlmd.MetadataStore) -> dict[int, str]:
    """{execution id: the pipeline node (component id) it ran}."""
    return {e.id: ctx.name.split(".", 1)[-1] for ctx in store.get_contexts_by_type("node")
            for e in store.get_executions_by_context(ctx.id)}


def oov_counts(stats_uri: str, split_names: list[str]) -> dict:
    """{split: {group: OOV ids}} from StatisticsGen over the transformed splits (mean x examples)."""
    from tensorflow_metadata.proto.v0 import statistics_pb2

    out = {}
    for split in split_names:
        path = os.path.join(stats_uri, f"Split-{split}", "FeatureStats.pb")
        if not os.path.exists(path):
            continue
        with open(path, "rb") as f:
            stats = statistics_pb2.DatasetFeatureStatisticsList.FromString(f.read())
        counts = {}
        for dataset in stats.datasets:
            for feature in dataset.features:
                name = feature.path.step[-1] if feature.path.step else feature.name
                if name.startswith(OOV_COUNT_PREFIX):
                    num = feature.num_stats
                    counts[name[len(OOV_COUNT_PREFIX):]] = int(round(num.mean * num.common_stats.num_non_missing))
        out[split] = counts
    return out


def output_artifacts(store, execution_id: int) -> list:
    ids = [ev.artifact_id for ev in store.get_events_by_execution_ids([execution_id])
           if ev.type == metadata_store_pb2.Event.OUTPUT]
    return store.get_artifacts_by_id(ids)


def _kept_ingest_report(pipeline_root: str, execution_id: int) -> tuple[dict, str] | None:
    """A failed TsvExampleGen's counts, kept beside the output TFX deleted (MLMD keeps no output
    artifact for a failed execution): (report, folder) or None."""
    folder = os.path.join(pipeline_root, "TsvExampleGen", KEPT_DIR, str(execution_id))
    path = os.path.join(folder, "report.json")
    if not os.path.exists(path):
        return None
    with open(path) as f:
        return json.load(f), folder


def _split_names(artifact) -> list[str]:
    return artifact_utils.decode_split_names(artifact.properties["split_names"].string_value)


# What the stock TFX components' outputs give the summary; the project's components declare their own.
STOCK_OUTPUT_REPORTS = (
    OutputReport("ExampleStatistics", "statistics_uri", read=lambda a, custom: a.uri, component="StatisticsGen"),
    OutputReport("ExampleStatistics", "oov_ids", read=lambda a, custom: oov_counts(a.uri, _split_names(a)),
                 component="TransformedStatisticsGen"),
    OutputReport("TransformGraph", "transform_graph_uri", read=lambda a, custom: a.uri),
    OutputReport("Model", "model_uri", read=lambda a, custom: a.uri),
)
OUTPUT_REPORTS = (tsv_example_gen.OUTPUT_REPORT, run_metrics.OUTPUT_REPORT, retrieval_evaluator.OUTPUT_REPORT,
                  infra_validator.OUTPUT_REPORT, tower_pusher.OUTPUT_REPORT, item_indexer.OUTPUT_REPORT,
                  *STOCK_OUTPUT_REPORTS)


def reported(kind: str, component: str | None, artifact, with_figures: bool = False):
    """(the OutputReport for this output, its value) for each report the artifact gives a value to;
    with_figures: only the reports that show figures (the progress line reads no more than it shows)."""
    for report in OUTPUT_REPORTS:
        if with_figures and report.figures is None:
            continue
        if report.artifact_type == kind and report.component in (None, component):
            value = report.read(artifact, custom_property)
            if value is not None:
                yield report, value


def build_run_summary(metadata_path: str, pipeline_name: str, pipeline_root: str | None = None) -> dict:
    store = open_store(metadata_path)
    executions, run_id = latest_run_executions(store, pipeline_name)
    types = {t.id: t.name for t in store.get_artifact_types()}
    summary = {"pipeline_name": pipeline_name, "run_id": run_id, "components": executions,
               "splits": {}, "training": {}, "pushed_models": [], "pushed": False}
    for e in executions:
        for a in output_artifacts(store, e["id"]):
            for report, value in reported(types[a.type_id], e["component"], a):
                summary[report.summary_key] = value
                if report.uri_key:
                    summary[report.uri_key] = a.uri
    pushed = summary.pop(tower_pusher.OUTPUT_REPORT.summary_key, None)
    if pushed is not None:
        summary["pushed"] = pushed["pushed"]
        if pushed["pushed"]:
            summary["pushed_models"].append({k: pushed[k] for k in ("path", "version", "towers")})
        else:
            summary["not_pushed_because"] = _not_pushed_because(summary)
    if summary.get("retrieval"):  # the candidate against the version served when it was evaluated
        r = summary["retrieval"]
        summary["continuous"] = {"served": r.get("served"), "decision": "blessed" if r.get("blessed") else
                                 "not blessed", "reasons": list(r.get("not_blessed_because") or [])}
    warm = summary["training"].get("warm_start")
    if warm:  # the model the Trainer started from (model/warm_start.py), or why none
        summary.setdefault("continuous", {}).update(
            warm_started_from=warm.get("from"), warm_start_note=warm.get("note"), warm_start_rows=warm.get("groups"))
    for e in executions:
        kept = (pipeline_root and e["component"] == "TsvExampleGen" and e["state"] == "FAILED"
                and _kept_ingest_report(pipeline_root, e["id"]))
        if kept and not summary["splits"]:
            summary["splits"], summary["rejected_rows_dir"] = kept
    return summary


def _not_pushed_because(summary: dict) -> list[str]:
    reasons = list(summary.get("retrieval", {}).get("not_blessed_because") or [])
    infra = summary.get("infra_validation") or {}
    if infra and not infra.get("blessed"):
        reasons.append(f"infra validation failed: {infra.get('error', 'unknown')}")
    return reasons or ["not blessed"]


def write_run_summary(metadata_path: str, pipeline_name: str, workdir: str, out_dir: str | None = None,
                      **extra) -> dict:
    """The summary of the latest run, with `extra` keys added (a mapping merged into the same key),
    written to OUT_DIR/run_summary.json (default: the workdir's)."""
    summary = build_run_summary(metadata_path, pipeline_name, os.path.join(workdir, "pipeline"))
    for key, value in extra.items():
        summary[key] = {**summary[key], **value} if isinstance(summary.get(key), dict) and isinstance(value, dict) \
            else value
    path = os.path.join(out_dir or workdir, "run_summary.json")
    with open(path + ".tmp", "w") as f:
        json.dump(summary, f, indent=2, sort_keys=True)
    os.replace(path + ".tmp", path)
    return summary


def _rows(splits: dict) -> str:
    parts = []
    for name, r in splits.items():
        text = f"{name} {r.get('written', 0):,} written"
        if "rejected" in r:
            text += f", {r['rejected']:,} rejected"
            top = list((r.get("rejected_by_reason") or {}).items())[:3]
            if top:
                text += " (" + ", ".join(f"{k} {v:,}" for k, v in top) + ")"
        parts.append(text)
    return "; ".join(parts)


def summary_lines(summary: dict, workdir: str) -> list[str]:
    """What a person reads after a run, in about 20 lines; run_summary.json keeps everything."""
    lines = []
    c = summary.get("continuous") or {}
    if c.get("span") is not None:
        lines.append(f"span:       {c['span']} (training on span{'s' if len(c['spans_used']) > 1 else ''} "
                     f"{', '.join(map(str, c['spans_used']))} of a window of {c['window']})")
    if c.get("warm_started_from"):
        lines.append(f"warm start: from {c['warm_started_from']} ({rows_text(c.get('warm_start_rows'))})")
    elif c.get("span") is not None and c.get("warm_start_note"):
        lines.append(f"warm start: none ({c['warm_start_note']})")
    if summary.get("splits"):
        lines.append(f"rows:       {_rows(summary['splits'])}")
    t = summary.get("training") or {}
    if t:
        auc = "undefined" if t.get("eval_auc") is None else f"{t['eval_auc']:.3f}"
        best = (f", best at step {t['best_step']:,}" + (" (stopped early)" if t.get("stopped_early") else "")
                if "best_step" in t else "")
        lines.append(f"training:   {t['train_steps']:,} steps{best} ({t.get('loss_kind', '?')} loss); train loss "
                     f"{t['train_loss']:.3f}, AUC {t['train_auc']:.3f}; eval loss {t['eval_loss']:.3f}, AUC {auc}")
        for note in [*(t.get("warnings") or []), *([t["eval_auc_note"]] if t.get("eval_auc_note") else [])]:
            lines.append(f"            - {note}")
    r = summary.get("retrieval") or {}
    if r:
        key = r["bless_key"]
        ci = r.get("lift_ci")
        lines.append(f"retrieval:  {key} {r['model'][key]:.3f} vs popularity {r['popularity'][key]:.3f}"
                     + (f", lift 95% CI [{ci[0]:+.3f}, {ci[1]:+.3f}]" if ci else "")
                     + f" ({r.get('users', 0):,} eval users, {r.get('catalog_items', 0):,} catalog items): "
                     + ("blessed" if r.get("blessed") else "not blessed"))
        served = r.get("served")
        if served:
            ci = served["difference_ci"]
            lines.append(f"served:     version {served['version']} {key} {served['metrics'][key]:.3f}; the candidate "
                         f"{served['difference']:+.3f}, 95% CI [{ci[0]:+.3f}, {ci[1]:+.3f}] "
                         f"(refused if worse by more than {served['max_regression']} with 95% confidence)")
        for reason in r.get("not_blessed_because") or []:
            lines.append(f"            - {reason}")
    infra = summary.get("infra_validation") or {}
    if infra:
        lines.append("infra:      " + ("blessed: both towers answered over gRPC" if infra.get("blessed")
                                       else f"not blessed: {infra.get('error', 'unknown')}"))
    index = summary.get("item_index") or {}
    if index.get("collection"):
        added = index["count"] - index["seeded"] if "seeded" in index else 0
        lines.append(f"item index: {index['count']:,} items in Milvus collection {index['collection']}"
                     + (f" (filled by model version {index['model_version']})" if index.get("model_version") else "")
                     + (f"; {added:,} of them added with add_items since an earlier run" if added > 0 else ""))
    elif index.get("not_indexed_because"):
        lines.append(f"item index: not indexed: {index['not_indexed_because']}")
    for pushed in summary.get("pushed_models") or []:
        lines.append(f"pushed:     version {pushed['version']} -> {pushed['path']}")
    if "not_pushed_because" in summary:  # the Pusher ran and pushed nothing (not a partial run)
        lines.append("pushed:     nothing: " + "; ".join(summary["not_pushed_because"]))
    if summary.get("failure"):
        lines.append(f"failed:     {summary['failure']}")
    lines += [f"summary:    {os.path.join(workdir, 'run_summary.json')} (everything, as JSON)",
              f"report:     {os.path.join(workdir, 'report', 'index.html')}"]
    return lines
