"""Command line: run the DSSM recall pipeline.

    python run_pipeline.py local [--train GLOB --eval GLOB | --input GLOB] [--item-embeddings PATH]
                                 [--workdir DIR] [--config FILE] [--beam-args "..."]

--train/--eval give explicit splits; --input gives one set of logs that is split by a stable hash of
the user id (config split_buckets), so no user is in both splits. Nothing defaults to the bundled
sample: --sample asks for it. --verbose shows third-party warnings, quiet by default.

Under DIR: the TFX pipeline root (pipeline/), metadata.sqlite, the prepared item vectors
(item_vectors/<sha256>/), pushed models in TF Serving layout (serving/<model_name>/<version>/) and
run_summary.json. Inputs are checked before any component starts.
"""
from __future__ import annotations

import os
import sys

from common.quiet import quiet, quiet_loggers, verbose_requested

VERBOSE = verbose_requested()
quiet(VERBOSE)  # before TensorFlow is imported anywhere; --verbose brings third-party noise back

import argparse  # noqa: E402
import dataclasses  # noqa: E402
import glob  # noqa: E402
import json  # noqa: E402
import shlex  # noqa: E402
import time  # noqa: E402

HERE = os.path.dirname(os.path.abspath(__file__))
SAMPLE_DIR = os.path.join(HERE, "data", "sample")


class InputError(ValueError):
    """A problem with the user's inputs, reported without a stack trace."""


def _expand(pattern: str, what: str) -> list[str]:
    from schema.logfiles import LogFileError, expand_local  # the glob ExampleGen uses for local files

    try:
        files = expand_local(pattern)
    except LogFileError as e:
        raise InputError(str(e)) from None
    if not files:
        if not any(c in pattern for c in "*?["):
            raise InputError(f"{what} file not found: {pattern}")
        raise InputError(f"{what} pattern matches no file: {pattern}")
    return files


def _relative_patterns(*patterns: str) -> tuple[str, list[str]]:
    """(input_base, patterns relative to it): ExampleGen patterns are relative to one base, which
    must not hold a {SPAN} (the driver looks for it in the patterns only)."""
    patterns = [os.path.abspath(p) for p in patterns]
    base = os.path.commonpath([os.path.dirname(p.split("{SPAN")[0]) for p in patterns])
    return base, [os.path.relpath(p, base) for p in patterns]


SAMPLE = {"train": os.path.join(SAMPLE_DIR, "train.tsv"), "eval": os.path.join(SAMPLE_DIR, "eval.tsv"),
          "item_embeddings": os.path.join(SAMPLE_DIR, "item_vectors.jsonl")}


def resolve_inputs(args) -> None:
    """Fills args.train / eval / item_embeddings. Nothing falls back to the bundled sample unless
    --sample asks for it: then the sample fills only what was not given, and says so."""
    if args.input and (args.train or args.eval):
        raise InputError("give either --input (split by user hash) or --train and --eval, not both")
    wanted = ([] if args.input else ["train", "eval"]) + ["item_embeddings"]
    missing = [name for name in wanted if not getattr(args, name)]
    if not missing:
        return
    if not args.sample:
        flags = ", ".join("--" + m.replace("_", "-") for m in missing)
        raise InputError(f"missing {flags}: give your logs (--train and --eval, or --input) and your item vectors "
                         f"(--item-embeddings), or add --sample to use the bundled sample for what is not given")
    for name in missing:
        setattr(args, name, SAMPLE[name])
        print(f"--sample: {name.replace('_', '-')} = {SAMPLE[name]}", file=sys.stderr)


def _log_patterns(args) -> dict[str, str]:
    if args.input:
        return {"input log": args.input}
    return {"training log": args.train, "eval log": args.eval}


def code_fingerprint() -> str:
    """sha256 over the project's Python sources that components import (see PipelineInputs)."""
    import hashlib

    from common import LAYERS

    h = hashlib.sha256()
    for package in LAYERS:  # every project package: components run code from all of them
        for path in sorted(glob.glob(os.path.join(HERE, package, "**", "*.py"), recursive=True)):
            h.update(os.path.relpath(path, HERE).encode())
            with open(path, "rb") as f:
                h.update(f.read())
    return h.hexdigest()[:16]


def check_inputs(patterns: dict[str, str], spec) -> None:
    """Fails early, naming the file, on missing files, empty globs and headers that do not match.
    Light: nothing here imports TensorFlow, so the error comes within a second or two."""
    from schema.logfiles import LogFileError, check_headers

    for what, pattern in patterns.items():
        files = _expand(pattern, what)
        try:
            check_headers(files, spec)
        except LogFileError as e:
            raise InputError(str(e)) from None


def check_schema(schema_path: str, spec) -> None:
    from schema.generate import read_schema

    if not os.path.isfile(schema_path):
        raise InputError(f"schema file not found: {schema_path}")
    names = {f.name for f in read_schema(schema_path).feature}
    expected = set(spec.raw_feature_names())
    if names != expected:
        raise InputError(f"{schema_path} does not match the feature spec: missing {sorted(expected - names)}, "
                         f"extra {sorted(names - expected)}; regenerate it with "
                         f"`python -m schema.generate --spec SPEC --out {schema_path}`")


def _is_uri(path: str) -> bool:
    return "://" in path


def _load(args):
    """Config, spec, log patterns and the span choice (None without {SPAN}), with every local input
    checked before anything runs (and before TensorFlow is imported)."""
    from pipeline.config import ConfigError, load_config
    from schema.spans import SpanError
    from schema.spec import SpecError, load_spec

    try:
        resolve_inputs(args)
        config = load_config(args.config, {"feature_spec": args.feature_spec} if args.feature_spec else None)
        spec = load_spec(config.feature_spec)
        patterns = _log_patterns(args)
        spans = _choose_span(patterns, args.span, config.continuous.window)
        if spans is None:
            check_inputs({k: v for k, v in patterns.items() if not _is_uri(v)}, spec)
        else:
            for files in spans.files.values():
                check_inputs({f: f for f in files}, spec)
        check_schema(config.schema, spec)
        vectors = args.item_embeddings
        if vectors and not _is_uri(vectors):
            if not os.path.isfile(vectors):
                raise InputError(f"{vectors}: item-vector file not found")
            from pipeline.preflight import first_vector_dim

            dim = first_vector_dim(vectors)
            if spec.pretrained_dim and dim is not None and dim != spec.pretrained_dim:
                raise InputError(f"{vectors}: the feature spec says pretrained_dim {spec.pretrained_dim}, the "
                                 f"file's first vector has {dim} values")
    except (InputError, ConfigError, SpecError, SpanError) as e:
        raise SystemExit(f"error: {e}") from None
    return config, spec, patterns, spans


def _choose_span(patterns: dict[str, str], requested: int | None, window: int):
    from schema.spans import SpanError, choose_span, has_span

    remote = [p for p in patterns.values() if _is_uri(p)]
    if remote and (requested is not None or window > 1) and any(has_span(p) for p in patterns.values()):
        # ExampleGen's driver resolves a remote {SPAN} (the latest span) itself; a chosen span or a
        # window needs the files listed here, which this command does only for local logs.
        raise SpanError("--span and continuous.window > 1 need local log files; remote {SPAN} patterns "
                        "read the latest span")
    return None if remote else choose_span(patterns, requested, window)


def _continuous_summary(spans) -> dict:
    if spans is None:
        return {}
    return {"continuous": {"span": spans.span, "spans_used": list(spans.spans_used),
                           "window": spans.window, "files": spans.files}}


def _prepare_vectors(args, spec, parent: str):
    from schema.item_vectors import ItemVectorError, prepare_item_vectors

    try:
        return prepare_item_vectors(args.item_embeddings, parent, expected_dim=spec.pretrained_dim)
    except ItemVectorError as e:
        raise SystemExit(f"error: {e}") from None


def _pipeline_inputs(patterns: dict, vectors, vectors_dir: str, spec, spans=None):
    from pipeline.pipeline import PipelineInputs
    from schema.spans import file_stamps

    if any(_is_uri(p) for p in patterns.values()):  # remote logs: the base is their common prefix
        input_base = os.path.dirname(os.path.commonprefix(list(patterns.values())))
        relative = [p[len(input_base) + 1:] for p in patterns.values()]
    else:
        input_base, relative = _relative_patterns(*patterns.values())
    named = dict(zip(patterns, relative, strict=True))
    return PipelineInputs(
        input_base=input_base, train_pattern=named.get("training log"), eval_pattern=named.get("eval log"),
        input_pattern=named.get("input log"),
        item_vectors_dir=vectors_dir, item_vectors_dim=vectors.dim, item_vectors_count=vectors.count,
        item_vectors_sha256=vectors.sha256, feature_spec_json=spec.to_json(), code_fingerprint=code_fingerprint(),
        span=None if spans is None else spans.span,
        train_files=tuple(map(tuple, file_stamps(spans.files["training log"])))
        if spans is not None and spans.window > 1 else ())


NOT_BLESSED_EXIT = 3  # the run ended without pushing a model (README "Exit codes")


def _local_outputs(workdir: str, config) -> dict[str, str]:
    """{what: path} of everything a local run writes."""
    outputs = {"work directory": workdir, "pipeline root": os.path.join(workdir, "pipeline"),
               "metadata store": os.path.join(workdir, "metadata.sqlite"),
               "item vector directory": os.path.join(workdir, "item_vectors"),
               "serving directory": os.path.join(workdir, "serving"), "report": os.path.join(workdir, "report"),
               "run summary": os.path.join(workdir, "run_summary.json")}
    if not config.milvus.uri or not _is_uri(config.milvus.uri):
        outputs["Milvus Lite file"] = config.milvus.uri or os.path.join(workdir, "milvus.db")
    return outputs


def _preflight(args, config, spec, patterns: dict[str, str], spans) -> None:
    """Every output writable (one error line naming it), then a warning when the eval split will
    clearly hold too few users to bless a model."""
    from pipeline.preflight import PathError, check_writable, too_few_eval_users_warning

    try:
        check_writable(_local_outputs(os.path.abspath(args.workdir), config))
    except PathError as e:
        raise SystemExit(f"error: {e}") from None
    if config.evaluation.allow_few_eval_users:
        return
    key = "eval log" if "eval log" in patterns else "input log"
    if spans is not None:
        files = spans.files[key]
    elif _is_uri(patterns[key]):
        return
    else:
        files = _expand(patterns[key], key)
    warning = too_few_eval_users_warning(files, spec, config.split_buckets if key == "input log" else None,
                                         config.evaluation.min_eval_users)
    if warning:
        print(f"warning: {warning}", file=sys.stderr)


def run_local(args) -> dict:
    config, spec, patterns, spans = _load(args)
    _preflight(args, config, spec, patterns, spans)
    workdir = os.path.abspath(args.workdir)
    os.makedirs(workdir, exist_ok=True)
    vectors = _prepare_vectors(args, spec, os.path.join(workdir, "item_vectors"))

    from tfx import v1 as tfx

    from pipeline.pipeline import create_pipeline
    from pipeline.progress import RunWatcher
    from pipeline.summary import summary_lines, write_run_summary

    quiet_loggers(VERBOSE)

    inputs = _pipeline_inputs(patterns, vectors, vectors.dir, spec, spans)
    eval_log = _first_eval_file(patterns, spans)
    metadata_path = os.path.join(workdir, "metadata.sqlite")
    pipeline = create_pipeline(
        pipeline_root=os.path.join(workdir, "pipeline"),
        serving_dir=os.path.join(workdir, "serving"),
        inputs=inputs, config=config,
        metadata_connection_config=tfx.orchestration.metadata.sqlite_metadata_connection_config(metadata_path),
        beam_pipeline_args=shlex.split(args.beam_args or ""),
        milvus_uri=config.milvus.uri or os.path.join(workdir, "milvus.db"))
    run_options = None
    if args.until:  # TFX's partial run: the component and everything upstream of it
        from tfx.orchestration.pipeline import RunOptions

        known = [c.id for c in pipeline.components]
        if args.until not in known:
            raise SystemExit(f"error: --until {args.until}: no such component; the pipeline has {', '.join(known)}")
        run_options = RunOptions(to_nodes=[args.until])
    started = time.time()
    watcher = RunWatcher(metadata_path)
    watcher.start()
    try:
        tfx.orchestration.LocalDagRunner().run(pipeline, run_options=run_options)
    except Exception as e:  # a component failed: say which and why, keep what is known
        watcher.stop()
        failure = f"{type(e).__name__}: {e}"
        summary = write_run_summary(metadata_path, config.pipeline_name, workdir,
                                    wall_seconds=time.time() - started, failure=failure,
                                    **_continuous_summary(spans))
        report = _write_report(workdir, summary, spec, config, eval_log, _run_inputs(args, patterns, spans))
        raise SystemExit(f"error: the pipeline stopped: {failure}\n"
                         f"(details above; summary in {os.path.join(workdir, 'run_summary.json')}, "
                         f"report in {report})") from None
    watcher.stop()
    summary = write_run_summary(metadata_path, config.pipeline_name, workdir,
                                wall_seconds=time.time() - started, **_continuous_summary(spans))
    _write_report(workdir, summary, spec, config, eval_log, _run_inputs(args, patterns, spans))
    if VERBOSE:
        shown = ("splits", "training", "retrieval", "infra_validation", "pushed_models", "not_pushed_because")
        print(json.dumps({k: summary[k] for k in shown if k in summary}, indent=2))
    print("\n" + "\n".join(summary_lines(summary, workdir)))
    if summary.get("pushed_models"):
        config_path = write_serving_config(os.path.join(workdir, "serving"), config.model_name)
        if args.serving_demo:
            serving_demo(config_path, config, eval_log, spec,
                         config.milvus.uri or os.path.join(workdir, "milvus.db"))
        print(f"\nnext:\n  make serve WORKDIR={args.workdir}    # gRPC 8500 and REST 8501, TF Serving's API\n"
              f"  .venv/bin/python -m retrieval.recall --workdir {args.workdir} --log-file "
              f"{eval_log} --limit 1 --k 10 --format table")
    elif "not_pushed_because" in summary and not args.allow_not_blessed:  # the Pusher ran and pushed nothing
        reasons = "; ".join(summary.get("not_pushed_because") or ["not blessed"])
        print(f"not pushed (exit code {NOT_BLESSED_EXIT}; --allow-not-blessed makes this exit 0): {reasons}",
              file=sys.stderr)
        raise SystemExit(NOT_BLESSED_EXIT)
    return summary


def _first_eval_file(patterns: dict, spans) -> str:
    """The first file of the eval logs (of the chosen span): the report's and the serving demo's example."""
    key = "eval log" if "eval log" in patterns else "input log"
    if spans is not None:
        return spans.files[key][0]
    pattern = patterns[key]
    return pattern if _is_uri(pattern) else (sorted(glob.glob(pattern)) or [pattern])[0]


def _run_inputs(args, patterns: dict[str, str], spans) -> dict[str, str]:
    """{what: path} of the run's inputs, for the report."""
    inputs = {what: ", ".join(spans.files[what]) if spans is not None else pattern
              for what, pattern in patterns.items()}
    inputs["item vectors"] = args.item_embeddings
    inputs["config"] = args.config or "none: every default"
    if args.feature_spec:
        inputs["feature spec"] = args.feature_spec
    return inputs


def _write_report(workdir: str, summary: dict, spec, config, eval_log: str, run_inputs: dict) -> str:
    from pipeline.report import write_report

    return write_report(workdir, summary, spec, config.milvus.uri or os.path.join(workdir, "milvus.db"),
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


def serving_demo(config_path: str, config, eval_log: str, spec, milvus_uri: str) -> None:
    """Serves the pushed models on a free loopback port and asks for one user and one item vector
    over gRPC, from the first line of the eval logs: what a client of TF Serving would do. Then the
    recall path: that user's vector (over gRPC) -> top 10 posts from Milvus."""
    from dataclasses import replace

    from retrieval.backends import open_index
    from retrieval.recall import Recaller, ServingUserEncoder
    from serving.client import ServingClient, TowerClient, read_log_lines
    from serving.model_config import read_config_file
    from serving.server import ModelServer

    model_name = config.model_name
    line = read_log_lines(eval_log, 1)[0]
    with ModelServer(read_config_file(config_path), port=0, poll_seconds=0) as server, \
            ServingClient(server.target, model_name, timeout=30) as client:
        towers = TowerClient(client, spec)
        user, item = (towers.embeddings_from_log_lines(t, [line])[0] for t in ("user", "item"))
        print(f"\nserved {model_name} version {client.wait_until_available()} over gRPC at {server.target}")
        row = dict(zip(spec.columns, line.split("\t"), strict=False))
        read = [p for c in spec.history_columns() for p in row.get(c, "").split(",") if p.strip()]
        print(f"the first line of {eval_log}: user {row.get(spec.user_id)}, post {row.get(spec.item_id)} "
              f"({spec.label} {row.get(spec.label)}), {len(read)} read posts")
        print(f"user_embedding ({user.size}-d): {[round(float(x), 4) for x in user[:8]]} ...")
        print(f"item_embedding ({item.size}-d): {[round(float(x), 4) for x in item[:8]]} ...")
        print(f"user . item = {float(user @ item):.4f}")
        searcher = open_index(replace(config.milvus, uri=milvus_uri))
        (top,) = Recaller(ServingUserEncoder(client), searcher, spec).recall_log_lines([line], k=10)
        print(f"recall (Milvus {searcher.generation()[0]}, read posts excluded): "
              + ", ".join(f"{h['id']} ({h['score']:.3f})" for h in top))


def _copy_schema(schema_path: str, root: str) -> str:
    """The schema file copied under the pipeline root (named by its content), where every step reads it."""
    import hashlib

    from tfx.dsl.io import fileio

    with open(schema_path, "rb") as f:
        digest = hashlib.sha256(f.read()).hexdigest()[:16]
    target = f"{root}/schema/{digest}/{os.path.basename(schema_path)}"
    if not fileio.exists(target):
        fileio.makedirs(os.path.dirname(target))
        fileio.copy(schema_path, target, overwrite=True)
    return target


def run_kubeflow(args) -> str:
    """Compiles the same pipeline into a KFP v2 spec (TFX's KubeflowV2DagRunner); optionally submits it."""
    config, spec, patterns, spans = _load(args)
    root = (args.pipeline_root or config.kubeflow.pipeline_root).rstrip("/")
    if not root:
        raise SystemExit("error: give --pipeline-root (or kubeflow.pipeline_root in the config), e.g. gs://bucket/dssm")
    remote = _is_uri(root)
    if remote and not config.milvus.uri:
        raise SystemExit("error: set milvus.uri to a Milvus server: a Milvus Lite file does not outlive a container")
    if not remote:
        root = os.path.abspath(root)
    from pipeline.preflight import PathError, check_writable

    try:
        check_writable({"compiled pipeline": os.path.abspath(args.output),
                        **({} if remote else {"pipeline root": root})})
    except PathError as e:
        raise SystemExit(f"error: {e}") from None
    # The prepared item vectors go under the pipeline root, where every step can read them.
    import tempfile

    from kfp.pipeline_spec import pipeline_spec_pb2 as pipeline_pb2
    from tfx.orchestration.kubeflow.v2 import kubeflow_v2_dag_runner
    from tfx.utils import io_utils

    from pipeline.pipeline import create_pipeline

    try:
        with tempfile.TemporaryDirectory() as tmp:
            vectors = _prepare_vectors(args, spec, tmp if remote else os.path.join(root, "item_vectors"))
            vectors_dir = vectors.dir
            if remote:
                vectors_dir = f"{root}/item_vectors/{os.path.basename(vectors.dir)}"
                io_utils.copy_dir(vectors.dir, vectors_dir)
        # The schema too: the checkout's path does not exist in the image.
        config = dataclasses.replace(config, schema=_copy_schema(config.schema, root))
    except SystemExit:
        raise
    except Exception as e:  # noqa: BLE001 - an unreachable or unwritable root, whatever the filesystem says
        first = (str(e).strip().splitlines() or [""])[0]
        raise SystemExit(f"error: cannot write under the pipeline root {root}: {type(e).__name__}: {first}") from None
    resources = None
    if config.kubeflow.trainer_cpu or config.kubeflow.trainer_memory_gib:
        resources = pipeline_pb2.PipelineDeploymentConfig.PipelineContainerSpec.ResourceSpec(
            cpu_limit=config.kubeflow.trainer_cpu, memory_limit=config.kubeflow.trainer_memory_gib)
    pipeline = create_pipeline(
        pipeline_root=f"{root}/pipeline", serving_dir=f"{root}/serving",
        inputs=_pipeline_inputs(patterns, vectors, vectors_dir, spec, spans), config=config,
        beam_pipeline_args=[*config.kubeflow.beam_args, *shlex.split(args.beam_args or "")],
        milvus_uri=config.milvus.uri or f"{root}/milvus.db", trainer_resources=resources,
        no_warm_start_because="Kubeflow runs do not warm start (KFP runs TFX's own resolver strategies only)")
    output = os.path.abspath(args.output)
    runner = kubeflow_v2_dag_runner.KubeflowV2DagRunner(
        config=kubeflow_v2_dag_runner.KubeflowV2DagRunnerConfig(
            default_image=args.image or config.kubeflow.image, use_pipeline_spec_2_1=True),
        output_dir=os.path.dirname(output), output_filename=os.path.basename(output))
    if os.path.exists(output):
        os.remove(output)  # the runner refuses to overwrite
    runner.run(pipeline)
    with open(output) as f:
        tasks = json.load(f)["pipelineSpec"]["root"]["dag"]["tasks"]
    print(f"compiled {len(tasks)} tasks to {output} (image {args.image or config.kubeflow.image}, root {root})")
    if args.submit:
        from pipeline.kfp_submit import submit

        run_id = submit(output, args.endpoint, args.experiment)
        print(f"submitted: run id {run_id}")
    return output


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="run_pipeline.py", description=__doc__.splitlines()[0])
    sub = p.add_subparsers(dest="command", required=True)
    local = sub.add_parser("local", help="run with TFX's LocalDagRunner and the local Beam runner")
    local.add_argument("--train", help="glob of training log files (.tsv or .tsv.gz)")
    local.add_argument("--eval", help="glob of eval log files")
    local.add_argument("--input", help="glob of log files to split by a hash of the user id instead")
    local.add_argument("--item-embeddings",
                       help="pretrained item vectors: JSON lines (.jsonl[.gz]) or .npy with <name>.ids.txt")
    local.add_argument("--span", type=int, default=None,
                       help="with {SPAN} in the log patterns: the span to run (default: the latest)")
    local.add_argument("--sample", action="store_true",
                       help=f"use the bundled sample ({SAMPLE_DIR}) for the logs and vectors not given")
    local.add_argument("--workdir", default=os.path.join("runs", "demo"))
    local.add_argument("--config", default=None, help="YAML config (see README, Configuration)")
    local.add_argument("--feature-spec", default=None, help="feature spec YAML (overrides the config's feature_spec)")
    local.add_argument("--beam-args", default="",
                       help='Beam pipeline options, e.g. "--direct_running_mode=multi_processing"')
    local.add_argument("--until", default="", metavar="COMPONENT",
                       help="run only this component and what it needs (e.g. Transform), then stop")
    local.add_argument("--verbose", action="store_true",
                       help="also third-party warnings (absl, TensorFlow, Beam) and the summary's JSON")
    local.add_argument("--allow-not-blessed", action="store_true",
                       help=f"exit 0 when the run pushes nothing (default: exit {NOT_BLESSED_EXIT}, the reasons last)")
    local.add_argument("--no-serving-demo", dest="serving_demo", action="store_false",
                       help="skip serving the pushed model and querying it over gRPC at the end")
    kfp = sub.add_parser("kubeflow", help="compile for Kubeflow Pipelines (KFP v2 spec); optionally submit")
    kfp.add_argument("--output", default="pipeline.json", help="the compiled KFP v2 pipeline job (JSON)")
    kfp.add_argument("--image", default="", help="container image of every step (default: kubeflow.image)")
    kfp.add_argument("--pipeline-root", default="", help="where the steps write (gs://..., or a shared path)")
    kfp.add_argument("--train", help="training logs (gs://... or a path every step can read)")
    kfp.add_argument("--eval")
    kfp.add_argument("--input")
    kfp.add_argument("--item-embeddings")
    kfp.add_argument("--span", type=int, default=None, help="with {SPAN} in local log patterns: the span to run")
    kfp.add_argument("--sample", action="store_true", help="the bundled sample for the logs and vectors not given")
    kfp.add_argument("--config", default=None)
    kfp.add_argument("--feature-spec", default=None, help="feature spec YAML (overrides the config's feature_spec)")
    kfp.add_argument("--beam-args", default="", help="added to kubeflow.beam_args")
    kfp.add_argument("--submit", action="store_true", help="submit to the KFP API at --endpoint")
    kfp.add_argument("--endpoint", default="", help="KFP API host, e.g. http://localhost:8080")
    kfp.add_argument("--experiment", default="dssm-recall")
    return p


def main(argv=None) -> None:
    args = build_parser().parse_args(argv)
    if args.command == "local":
        run_local(args)
    elif args.command == "kubeflow":
        if args.submit and not args.endpoint:
            raise SystemExit("error: --submit needs --endpoint")
        run_kubeflow(args)


if __name__ == "__main__":
    main(sys.argv[1:])
