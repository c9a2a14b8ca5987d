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

from common.quiet import quiet, verbose_requested

VERBOSE = verbose_requested()
quiet(VERBOSE)  # before TensorFlow is imported anywhere; --verbose brings third-party noise back

import argparse  # noqa: E402

# Light imports only (no TFX, no TensorFlow): a wrong argument answers at once.
from pipeline.inputs import SAMPLE_DIR  # noqa: E402
from pipeline.local_runner import NOT_BLESSED_EXIT, run_local  # noqa: E402


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
    local.add_argument("--config", default=None, help="YAML config (docs/configuration.md)")
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
    parser = build_parser()
    args, extra = parser.parse_known_args(argv)
    if extra:
        shown = " ".join(extra[:3]) + (" ..." if len(extra) > 3 else "")
        if all(os.path.exists(x) for x in extra):  # a glob the shell expanded: its second file onwards
            raise SystemExit(f"error: unrecognized arguments: {shown}: these are files, so an unquoted glob was "
                             "probably expanded by the shell; quote the pattern, e.g. --train 'logs/day*.tsv'")
        parser.error(f"unrecognized arguments: {shown}")
    if args.command == "local":
        run_local(args, verbose=VERBOSE)
    elif args.command == "kubeflow":
        if args.submit and not args.endpoint:
            raise SystemExit("error: --submit needs --endpoint")
        from pipeline.kubeflow_runner import run_kubeflow

        run_kubeflow(args)


if __name__ == "__main__":
    main(sys.argv[1:])
