"""`run_pipeline.py local`: the pipeline on TFX's LocalDagRunner (local Beam runner, sqlite metadata,
a Milvus Lite file unless milvus.uri names a server), then the run summary, the report, the TF
Serving model config and a short serving demo over gRPC.
"""
from __future__ import annotations

import json
import os
import shlex
import sys
import time

from pipeline.inputs import (
    continuous_summary,
    expand,
    first_eval_file,
    is_uri,
    load,
    pipeline_inputs,
    prepare_vectors,
    run_inputs,
)

NOT_BLESSED_EXIT = 3  # the run ended without pushing a model (README "Exit codes")


def local_outputs(workdir: str, config) -> dict[str, str]:
    """{what: path} of everything a local run writes."""
    outputs = {"work directory": workdir, "pipeline root": os.path.join(workdir, "pipeline"),
               "metadata store": os.path.join(workdir, "metadata.sqlite"),
               "item vector directory": os.path.join(workdir, "item_vectors"),
               "serving directory": os.path.join(workdir, "serving"), "report": os.path.join(workdir, "report"),
               "run summary": os.path.join(workdir, "run_summary.json")}
    from retrieval.backends import local_files

    return {**outputs, **local_files(config.milvus.at(workdir))}


def preflight(args, config, spec, patterns: dict[str, str], spans) -> None:
    """Every output writable (one error line naming it), then a warning when the eval split will
    clearly hold too few users to bless a model."""
    from pipeline.preflight import PathError, check_writable, too_few_eval_users_warning

    try:
        check_writable(local_outputs(os.path.abspath(args.workdir), config))
    except PathError as e:
        raise SystemExit(f"error: {e}") from None
    if config.evaluation.allow_few_eval_users:
        return
    key = "eval log" if "eval log" in patterns else "input log"
    if spans is not None:
        files = spans.files[key]
    elif is_uri(patterns[key]):
        return
    else:
        files = expand(patterns[key], key)
    warning = too_few_eval_users_warning(files, spec, config.split_buckets if key == "input log" else None,
                                         config.evaluation.min_eval_users)
    if warning:
        print(f"warning: {warning}", file=sys.stderr)


def run_local(args, verbose: bool = False) -> dict:
    from common.progress import Activity

    with Activity("checking the inputs"):
        config, spec, patterns, spans = load(args)
        preflight(args, config, spec, patterns, spans)
        workdir = os.path.abspath(args.workdir)
        os.makedirs(workdir, exist_ok=True)
        vectors = prepare_vectors(args, spec, os.path.join(workdir, "item_vectors"))

    with Activity("importing TFX and TensorFlow (about 20 s)"):
        from tfx import v1 as tfx

    from common.quiet import quiet_loggers
    from pipeline.pipeline import create_pipeline
    from pipeline.progress import RunWatcher
    from pipeline.summary import summary_lines, write_run_summary

    quiet_loggers(verbose)

    inputs = pipeline_inputs(patterns, vectors, vectors.dir, spec, spans)
    eval_log = first_eval_file(patterns, spans)
    metadata_path = os.path.join(workdir, "metadata.sqlite")
    pipeline = create_pipeline(
        pipeline_root=os.path.join(workdir, "pipeline"),
        serving_dir=os.path.join(workdir, "serving"),
        inputs=inputs, config=config,
        metadata_connection_config=tfx.orchestration.metadata.sqlite_metadata_connection_config(metadata_path),
        beam_pipeline_args=shlex.split(args.beam_args or ""),
        milvus_uri=config.milvus.at(workdir).uri)
    run_options = None
    if args.until:  # TFX's partial run: the component and everything upstream of it
        from tfx.orchestration.pipeline import RunOptions

        known = [c.id for c in pipeline.components]
        if args.until not in known:
            raise SystemExit(f"error: --until {args.until}: no such component; the pipeline has {', '.join(known)}")
        run_options = RunOptions(to_nodes=[args.until])
    # A partial run writes its summary and report under WORKDIR/partial/, so the face of the last
    # whole run (run_summary.json, report/) still describes the model that is served.
    face = os.path.join(workdir, "partial") if args.until else workdir
    partial = {"partial_run": {"until": args.until, "whole_run_summary": os.path.join(workdir, "run_summary.json")}} \
        if args.until else {}
    os.makedirs(face, exist_ok=True)
    started = time.time()
    watcher = RunWatcher(metadata_path)
    watcher.start()
    try:
        tfx.orchestration.LocalDagRunner().run(pipeline, run_options=run_options)
    except Exception as e:  # a component failed: say which and why, keep what is known
        watcher.stop()
        failure = f"{type(e).__name__}: {e}"
        summary = write_run_summary(metadata_path, config.pipeline_name, workdir, face,
                                    **timing(started), failure=failure, **partial, **continuous_summary(spans))
        report = write_report_page(workdir, face, summary, spec, config, eval_log, run_inputs(args, patterns, spans))
        raise SystemExit(f"error: the pipeline stopped: {failure}\n"
                         f"(details above; summary in {os.path.join(face, 'run_summary.json')}, "
                         f"report in {report})") from None
    watcher.stop()
    with Activity("writing the run summary and the report"):
        summary = write_run_summary(metadata_path, config.pipeline_name, workdir, face,
                                    **timing(started), **partial, **continuous_summary(spans))
        write_report_page(workdir, face, summary, spec, config, eval_log, run_inputs(args, patterns, spans))
    if verbose:
        shown = ("splits", "training", "retrieval", "infra_validation", "pushed_models", "not_pushed_because")
        print(json.dumps({k: summary[k] for k in shown if k in summary}, indent=2))
    print("\n" + "\n".join(summary_lines(summary, face)))
    if args.until:
        print(f"\na partial run (--until {args.until}): its summary and report are under {face}; "
              f"{os.path.join(workdir, 'run_summary.json')} and {os.path.join(workdir, 'report')} still describe "
              "the last whole run")
        return summary
    if summary.get("pushed_models"):
        config_path = write_serving_config(os.path.join(workdir, "serving"), config.model_name)
        if args.serving_demo:
            serving_demo(config_path, config, eval_log, spec,
                         config.milvus.at(workdir))
        print(f"\nnext:\n  make serve WORKDIR={args.workdir}    # gRPC 8500 and REST 8501, TF Serving's API\n"
              f"  .venv/bin/python -m retrieval.recall --workdir {args.workdir} --log-file "
              f"{eval_log} --limit 1 --k 10 --format table")
    elif "not_pushed_because" in summary and not args.allow_not_blessed:  # the Pusher ran and pushed nothing
        reasons = "; ".join(summary.get("not_pushed_because") or ["not blessed"])
        print(f"not pushed (exit code {NOT_BLESSED_EXIT}; --allow-not-blessed makes this exit 0): {reasons}",
              file=sys.stderr)
        raise SystemExit(NOT_BLESSED_EXIT)
    return summary


def timing(started: float) -> dict:
    """wall_seconds: the components' run; process_seconds: from the command's start (importing TFX and
    checking inputs included), both until the summary is written."""
    from common.progress import process_seconds

    return {"wall_seconds": time.time() - started, "process_seconds": process_seconds()}


def write_report_page(workdir: str, face: str, summary: dict, spec, config, eval_log: str, run_inputs: dict) -> str:
    from pipeline.report import write_report

    return write_report(face, summary, spec, config.milvus.at(workdir).uri,
                        eval_log if os.path.isfile(eval_log) else None, run_inputs, config)


def write_serving_config(serving_dir: str, model_name: str) -> str:
    """serving/models.config: the TF Serving model config for the pushed model and its two towers."""
    from serving.model_config import config_text

    names = [model_name, f"{model_name}_user", f"{model_name}_item"]
    path = os.path.join(serving_dir, "models.config")
    with open(path, "w") as f:
        # Two versions each: a new version is pushed before its item index generation goes live, and
        # recall asks for the version that filled the live generation (retrieval/recall.py).
        f.write(config_text({n: os.path.join(serving_dir, n) for n in names}, num_versions=2))
    return path


def read_posts_text(row: dict, spec) -> str:
    """'20 read posts', or '20 read posts (21 listed: a post listed twice counts once)': recall counts
    each read post once, so the demo says the same figure."""
    listed = [p.strip() for c in spec.history_columns() for p in row.get(c, "").split(",") if p.strip()]
    distinct = len(set(listed))
    return f"{distinct} read posts" + (f" ({len(listed)} listed: a post listed twice counts once)"
                                       if distinct != len(listed) else "")


def serving_demo(config_path: str, config, eval_log: str, spec, index_config) -> None:
    """Serves the pushed models on a free loopback port and asks for one user and one item vector
    over gRPC, from the first line of the eval logs: what a client of TF Serving would do. Then the
    recall path: that user's vector (over gRPC) -> top 10 posts from Milvus."""
    from common.progress import Activity
    from retrieval.backends import open_index
    from retrieval.item_store import ItemStore
    from retrieval.recall import Recaller, ServingTowers
    from serving.client import ServingClient, TowerClient, read_log_lines
    from serving.model_config import read_config_file
    from serving.server import ModelServer

    model_name = config.model_name
    line = read_log_lines(eval_log, 1, spec)[0]
    item_index = open_index(index_config)
    store = ItemStore(index_config, spec.item_id, client=item_index.client)
    activity = Activity("serving the pushed model for a demo query over gRPC")
    with activity, ModelServer(read_config_file(config_path), port=0, poll_seconds=0) as server, \
            ServingClient(server.target, model_name, timeout=30) as client:
        towers = TowerClient(client, spec, store)
        user, item = (towers.embeddings_from_log_lines(t, [line])[0] for t in ("user", "item"))
        print(f"\nserved {model_name} version {client.wait_until_available()} over gRPC at {server.target}")
        row = dict(zip(spec.columns, line.split("\t"), strict=False))
        print(f"the first line of {eval_log}: user {row.get(spec.user_id)}, post {row.get(spec.item_id)} "
              f"({spec.label} {row.get(spec.label)}), {read_posts_text(row, spec)}")
        print(f"user_embedding ({user.size}-d): {[round(float(x), 4) for x in user[:8]]} ...")
        print(f"item_embedding ({item.size}-d): {[round(float(x), 4) for x in item[:8]]} ...")
        print(f"user . item = {float(user @ item):.4f} (cosine: both towers end in an L2 normalization; "
              "-1 to 1, higher is closer)")
        (top,) = Recaller(ServingTowers(client), item_index, spec, store).recall_log_lines([line], k=10)
        print(f"recall (Milvus {item_index.generation()[0]}, read posts excluded): "
              + ", ".join(f"{h['id']} ({h['score']:.3f})" for h in top))
