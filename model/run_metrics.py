"""What the Trainer reports of a run: <model_run>/metrics.json (loss, AUC, steps, the eval curve) and
its OUTPUT_REPORT for the run watcher and the summary. No TensorFlow: the summary reads it in
processes that never load it.
"""
from __future__ import annotations

import json
import os

from common.outputs import OutputReport

METRICS_FILE = "metrics.json"


def read_metrics(model_run_uri: str) -> dict:
    """The Trainer's metrics.json ({} when it wrote none)."""
    path = os.path.join(model_run_uri, METRICS_FILE)
    if not os.path.exists(path):
        return {}
    with open(path) as f:
        return json.load(f)


def _training_figures(m: dict) -> str:
    if not m:
        return ""
    auc = "undefined" if m.get("eval_auc") is None else f"{m['eval_auc']:.3f}"
    best = (f" (best at step {m['best_step']:,}{', stopped early' if m.get('stopped_early') else ''})"
            if "best_step" in m else "")
    return (f"{m['train_steps']:,} steps{best}, train loss {m['train_loss']:.3f}, "
            f"eval loss {m['eval_loss']:.3f}, eval AUC {auc}")


OUTPUT_REPORT = OutputReport("ModelRun", "training", read=lambda a, custom: read_metrics(a.uri),
                             figures=_training_figures, uri_key="model_run_uri")
