"""A run's inputs, resolved and checked before anything runs (and before TensorFlow is imported):
the log patterns (or the bundled sample, only when --sample asks for it), the config and feature
spec, the {SPAN} choice, the schema, the item-vector file, and the code fingerprint that keys the
cache. Both runners (local_runner.py, kubeflow_runner.py) start here.
"""
from __future__ import annotations

import glob
import os
import sys

from schema.files import is_uri

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SAMPLE_DIR = os.path.join(REPO, "data", "sample")


class InputError(ValueError):
    """A problem with the user's inputs, reported without a stack trace."""


def expand(pattern: str, what: str) -> list[str]:
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


def relative_patterns(*patterns: str) -> tuple[str, list[str]]:
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


def log_patterns(args) -> dict[str, str]:
    if args.input:
        return {"input log": args.input}
    return {"training log": args.train, "eval log": args.eval}


def code_fingerprint() -> str:
    """sha256 over the project's Python sources that components import (see PipelineInputs)."""
    import hashlib

    from common import LAYERS

    h = hashlib.sha256()
    for package in LAYERS:  # every project package: components run code from all of them
        for path in sorted(glob.glob(os.path.join(REPO, package, "**", "*.py"), recursive=True)):
            h.update(os.path.relpath(path, REPO).encode())
            with open(path, "rb") as f:
                h.update(f.read())
    return h.hexdigest()[:16]


def check_inputs(patterns: dict[str, str], spec) -> None:
    """Fails early, naming the file, on missing files, empty globs and headers that do not match.
    Light: nothing here imports TensorFlow, so the error comes within a second or two."""
    from schema.logfiles import LogFileError, check_headers

    for what, pattern in patterns.items():
        files = expand(pattern, what)
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
                         f"`.venv/bin/python -m schema.generate --spec SPEC --out {schema_path}`")


def load(args):
    """Config, spec, log patterns and the span choice (None without {SPAN}), with every local input
    checked before anything runs (and before TensorFlow is imported)."""
    from pipeline.config import ConfigError, load_config
    from schema.spans import SpanError
    from schema.spec import SpecError, load_spec

    try:
        resolve_inputs(args)
        config = load_config(args.config, {"feature_spec": args.feature_spec} if args.feature_spec else None)
        spec = load_spec(config.feature_spec)
        patterns = log_patterns(args)
        spans = choose_span_of(patterns, args.span, config.continuous.window)
        if spans is None:
            check_inputs({k: v for k, v in patterns.items() if not is_uri(v)}, spec)
        else:
            for files in spans.files.values():
                check_inputs({f: f for f in files}, spec)
        check_schema(config.schema, spec)
        vectors = args.item_embeddings
        if vectors and not is_uri(vectors):
            if not os.path.isfile(vectors):
                raise InputError(f"{vectors}: item-vector file not found")
            ids = vectors[: -len(".npy")] + ".ids.txt"
            if vectors.endswith(".npy") and not os.path.isfile(ids):
                raise InputError(f"{vectors}: a .npy item-vector file needs its ids beside it in {ids} (one id "
                                 "per line, in row order)")
            from pipeline.preflight import first_vector_dim

            dim = first_vector_dim(vectors)
            if spec.pretrained_dim and dim is not None and dim != spec.pretrained_dim:
                raise InputError(f"{vectors}: the feature spec says pretrained_dim {spec.pretrained_dim}, the "
                                 f"file's first vector has {dim} values")
    except (InputError, ConfigError, SpecError, SpanError) as e:
        raise SystemExit(f"error: {e}") from None
    return config, spec, patterns, spans


def choose_span_of(patterns: dict[str, str], requested: int | None, window: int):
    from schema.spans import SpanError, choose_span, has_span

    remote = [p for p in patterns.values() if is_uri(p)]
    if remote and (requested is not None or window > 1) and any(has_span(p) for p in patterns.values()):
        # ExampleGen's driver resolves a remote {SPAN} (the latest span) itself; a chosen span or a
        # window needs the files listed here, which this command does only for local logs.
        raise SpanError("--span and continuous.window > 1 need local log files; remote {SPAN} patterns "
                        "read the latest span")
    return None if remote else choose_span(patterns, requested, window)


def continuous_summary(spans) -> dict:
    if spans is None:
        return {}
    return {"continuous": {"span": spans.span, "spans_used": list(spans.spans_used),
                           "window": spans.window, "files": spans.files}}


def prepare_vectors(args, spec, parent: str):
    from schema.item_vectors import ItemVectorError, prepare_item_vectors

    try:
        return prepare_item_vectors(args.item_embeddings, parent, expected_dim=spec.pretrained_dim)
    except ItemVectorError as e:
        raise SystemExit(f"error: {e}") from None


def pipeline_inputs(patterns: dict, vectors, vectors_dir: str, spec, spans=None):
    from pipeline.pipeline import PipelineInputs
    from schema.spans import file_stamps

    if any(is_uri(p) for p in patterns.values()):  # remote logs: the base is their common prefix
        input_base = os.path.dirname(os.path.commonprefix(list(patterns.values())))
        relative = [p[len(input_base) + 1:] for p in patterns.values()]
    else:
        input_base, relative = relative_patterns(*patterns.values())
    named = dict(zip(patterns, relative, strict=True))
    return PipelineInputs(
        input_base=input_base, train_pattern=named.get("training log"), eval_pattern=named.get("eval log"),
        input_pattern=named.get("input log"),
        item_vectors_dir=vectors_dir, item_vectors_dim=vectors.dim, item_vectors_count=vectors.count,
        item_vectors_sha256=vectors.sha256, feature_spec_json=spec.to_json(), code_fingerprint=code_fingerprint(),
        span=None if spans is None else spans.span,
        train_files=tuple(map(tuple, file_stamps(spans.files["training log"])))
        if spans is not None and spans.window > 1 else ())


def first_eval_file(patterns: dict, spans) -> str:
    """The first file of the eval logs (of the chosen span): the report's and the serving demo's example."""
    key = "eval log" if "eval log" in patterns else "input log"
    if spans is not None:
        return spans.files[key][0]
    pattern = patterns[key]
    return pattern if is_uri(pattern) else (sorted(glob.glob(pattern)) or [pattern])[0]


def run_inputs(args, patterns: dict[str, str], spans) -> dict[str, str]:
    """{what: path} of the run's inputs, for the report."""
    inputs = {what: ", ".join(spans.files[what]) if spans is not None else pattern
              for what, pattern in patterns.items()}
    inputs["item vectors"] = args.item_embeddings
    inputs["config"] = args.config or "none: every default"
    if args.feature_spec:
        inputs["feature spec"] = args.feature_spec
    return inputs
