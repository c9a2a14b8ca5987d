"""The Trainer's Keras callbacks: progress lines and the loss/AUC curve (ProgressAndCurve), and the
stop on a non-finite loss or weight (StopOnNonFinite), both counting steps across epochs."""
from __future__ import annotations

import numpy as np
import tensorflow as tf

from common.progress import RateLog


class _StepCounter(tf.keras.callbacks.Callback):
    """Counts the steps trained across Keras epochs from Keras' own batch index: with
    steps_per_execution N the batch callbacks run once per N steps."""

    def __init__(self):
        super().__init__()
        self.steps = 0
        self._epoch_start = 0

    def on_epoch_begin(self, epoch, logs=None):
        self._epoch_start = self.steps

    def _advance(self, batch: int) -> int:
        """The count before this call; self.steps becomes the count after it."""
        before, self.steps = self.steps, self._epoch_start + batch + 1
        return before


class ProgressAndCurve(_StepCounter):
    """Logs steps done, rate and time left; keeps about 100 points of (step, loss, AUC) for the report.

    Keras reports the running mean of loss and AUC since the start of the epoch."""

    def __init__(self, total_steps: int | None):
        super().__init__()
        self.total = total_steps
        self.every = max(1, (total_steps or 10_000) // 100)
        self.rate = RateLog("training", "steps", total=total_steps)
        self.curve: list[dict] = []
        self.figures = ""  # the last step's "loss ..., AUC ..." for the final line

    def on_train_batch_end(self, batch, logs=None):
        before = self._advance(batch)
        step, logs = self.steps, logs or {}
        loss, auc = float(logs.get("loss", float("nan"))), float(logs.get("auc", float("nan")))
        if step // self.every > before // self.every or step == self.total:
            self.curve.append({"step": step, "loss": loss, "auc": auc})
        self.figures = f"loss {loss:.3f}, AUC {auc:.3f}"
        self.rate.update(step, self.figures)

    def on_train_end(self, logs=None):  # early stopping may end training before the first interval
        self.rate.finish(self.steps, self.figures)


class NonFiniteTrainingError(RuntimeError):
    """Training produced a non-finite loss or weight; nothing is exported."""


def first_non_finite(variables) -> str | None:
    """The name of the first variable holding NaN or inf, or None."""
    for v in variables:
        if not bool(tf.reduce_all(tf.math.is_finite(v))):
            return v.name
    return None


class StopOnNonFinite(_StepCounter):
    """Stops training with NonFiniteTrainingError, naming the step and the first non-finite tensor, as
    soon as the loss is non-finite (checked after every call of the compiled step, i.e. every
    steps_per_execution steps; a NaN stays in the running mean) or a trainable weight is (every
    `weights_every` steps and at the end): a NaN model must never be exported."""

    def __init__(self, weights_every: int = 100):
        super().__init__()
        self.weights_every = weights_every

    def _fail(self, what: str) -> None:
        raise NonFiniteTrainingError(f"training stopped at step {self.steps}: {what}; the model is not exported "
                                     f"(look for extreme values in the inputs)")

    def on_train_batch_end(self, batch, logs=None):
        before = self._advance(batch)
        loss = float((logs or {}).get("loss", 0.0))
        if not np.isfinite(loss):
            bad = first_non_finite(self.model.trainable_variables)
            self._fail(f"the loss is {loss}" + (f"; first non-finite weight: {bad}" if bad else ""))
        if self.steps // self.weights_every > before // self.weights_every:
            self.check_weights()

    def check_weights(self) -> None:
        bad = first_non_finite(self.model.variables)
        if bad:
            self._fail(f"first non-finite weight: {bad}")
