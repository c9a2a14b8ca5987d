"""Quiet by default: third-party noise off in every tool, `--verbose` brings it back.

TensorFlow prints cuFFT/cuDNN/cuBLAS registration errors and oneDNN notes from C++ on import, and
TensorFlow, Beam, protobuf and google-api-core raise FutureWarnings and DeprecationWarnings that say
nothing about the user's run. The C++ level is read once, when TensorFlow loads, so `quiet()` must run
before that (first thing in a command line entry point); the environment variables carry the same
choice into child processes (Beam workers, the Milvus Lite server, the model server of a test).
"""
from __future__ import annotations

import os
import sys
import warnings

NOISY_WARNINGS = (FutureWarning, DeprecationWarning, UserWarning)
NOISY_LOGGERS = ("absl", "tensorflow", "apache_beam", "tfx", "ml_metadata")


def verbose_requested(argv: list[str] | None = None) -> bool:
    """Whether the command line asks for third-party output (checked before argparse runs)."""
    return "--verbose" in (sys.argv[1:] if argv is None else argv)


def quiet(verbose: bool = False) -> None:
    """TensorFlow's C++ log (errors included: the registration errors are harmless) and third-party
    Python warnings off, unless `verbose`."""
    if verbose:
        return
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
    os.environ.setdefault("PYTHONWARNINGS", ",".join(f"ignore::{c.__name__}" for c in NOISY_WARNINGS))
    for category in NOISY_WARNINGS:
        warnings.filterwarnings("ignore", category=category)


def quiet_loggers(verbose: bool = False) -> None:
    """absl, TensorFlow, Beam, TFX and MLMD loggers at ERROR, unless `verbose` (our own loggers keep
    their level)."""
    if verbose:
        return
    import logging

    for name in NOISY_LOGGERS:
        logger = logging.getLogger(name)
        logger.setLevel(logging.ERROR)
        # A filter too: TFX sets absl's verbosity back to INFO when it runs a component.
        logger.addFilter(lambda record: record.levelno >= logging.ERROR)
