"""What a component's output artifact tells about the run, declared by the component itself.

Each component module declares an OutputReport for the artifact type it writes (OUTPUT_REPORT);
pipeline/summary.py collects them into run_summary.json and pipeline/progress.py prints their
figures when the component is done, so neither switches on artifact properties of its own.
"""
from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

# read(artifact, custom) -> the value, or None when the artifact holds none; custom(artifact, key)
# reads one custom property of an MLMD artifact (None when it is not set).
Reader = Callable[[Any, Callable[[Any, str], Any]], Any]


@dataclass(frozen=True)
class OutputReport:
    artifact_type: str                     # the MLMD type name of the output: Examples, ModelRun, ...
    summary_key: str                       # where the value goes in run_summary.json
    read: Reader
    figures: Callable[[Any], str] | None = None  # the value -> the progress line's figures (None: it shows none)
    uri_key: str | None = None             # the artifact's URI, under this summary key, when it has a value
    component: str | None = None           # only this pipeline node's outputs (None: any node's)
