"""What a request may cost the server, counted before any tensor is built, and the values it may hold.

Entries: every value and every list of a request, empty lists included (REST: each node of the JSON
value; gRPC: the product of the dimensions with 0 counted as 1; a serialized tf.Example: one per
example, per feature and per value), against --max_request_elements. A list of 5.6M empty lists is
5.6M entries, not 0.

Model memory: a model may declare, in assets.extra/serving_contract.json (written by the Trainer),
how many floats one row costs once its lists are padded (rows x maxlen x dim, summed over the
features), per signature; rows x that x 4 bytes is checked against --max_request_model_bytes.

Values: JSON has no NaN or Infinity, and a number is finite once stored as float32; an integer input
takes integers only (not 1.5, not true). A model's contract can name inputs whose values must be
>= a minimum (the weights: >= 0, as the log parser requires), checked in raw tensors with the input
named; values inside serialized tf.Examples are the model's to check (the Trainer's do, in the graph).
"""
from __future__ import annotations

import json
import os
from dataclasses import dataclass, field

import numpy as np

from schema.numbers import FLOAT32_MAX
from serving.status import invalid_argument

CONTRACT_FILE = os.path.join("assets.extra", "serving_contract.json")
MAX_CONTRACT_BYTES = 1 << 20


@dataclass(frozen=True)
class RequestLimits:
    max_entries: int = 262_144                # 0 = no limit
    max_model_bytes: int = 256 * 1024 * 1024  # 0 = no limit
    max_response_bytes: int = 16 * 1024 * 1024


@dataclass(frozen=True)
class SignatureCost:
    floats_per_row: int = 0        # padded floats one row costs the model (0: not declared)
    examples_input: str | None = None  # the input holding serialized tf.Examples, if any


@dataclass(frozen=True)
class Contract:
    """What a model declares about its requests; an empty Contract for a model that declares nothing."""
    signatures: dict[str, SignatureCost] = field(default_factory=dict)
    minimum: dict[str, float] = field(default_factory=dict)  # raw input -> smallest value allowed

    @classmethod
    def read(cls, model_dir: str) -> Contract:
        path = os.path.join(model_dir, CONTRACT_FILE)
        if not os.path.isfile(path):
            return cls()
        if os.path.getsize(path) > MAX_CONTRACT_BYTES:
            raise ValueError(f"{path}: larger than {MAX_CONTRACT_BYTES} bytes")
        with open(path) as f:
            d = json.load(f)
        sigs = {name: SignatureCost(int(s.get("floats_per_row", 0)), s.get("examples_input"))
                for name, s in d.get("signatures", {}).items()}
        return cls(sigs, {k: float(v) for k, v in d.get("minimum", {}).items()})

    def cost(self, signature: str) -> SignatureCost:
        return self.signatures.get(signature, SignatureCost())


def json_entries(value, stop: int) -> int:
    """Nodes of a JSON value (every list, empty or not, and every leaf), counted without recursion;
    counting stops past `stop`."""
    count, stack = 0, [value]
    while stack and count <= stop:
        v = stack.pop()
        count += 1
        if isinstance(v, list):
            stack.extend(v)
    return count


def shape_entries(dims: list[int]) -> int:
    """Entries of a tensor of these dimensions, a 0 counted as 1: [7000000, 0] is 7M rows."""
    n = 1
    for d in dims:
        n *= max(int(d), 1)
    return n


def check_entries(total: int, limits: RequestLimits) -> None:
    if limits.max_entries and total > limits.max_entries:
        raise invalid_argument(f"the request holds at least {total} entries (values and lists, empty ones "
                               f"included), more than the limit of {limits.max_entries} (--max_request_elements)")


def check_model_memory(cost: SignatureCost, rows: int, limits: RequestLimits) -> None:
    need = rows * cost.floats_per_row * 4
    if limits.max_model_bytes and need > limits.max_model_bytes:
        raise invalid_argument(f"{rows} rows need {need} bytes of padded model input ({cost.floats_per_row} floats "
                               f"a row), more than the limit of {limits.max_model_bytes} bytes "
                               f"(--max_request_model_bytes)")


def check_examples(serialized, limits: RequestLimits, already: int) -> None:
    """Serialized tf.Examples: their entries (one per example, per feature and per value) join the
    request's count. Every entry takes at least one byte, so examples whose bytes fit in what is left
    of the limit are not parsed; only larger ones are, to count exactly. Their values are the model's
    to check (the Trainer's signatures refuse non-finite or negative weights in the graph)."""
    if not limits.max_entries:
        return
    total = already + len(serialized)
    if total + sum(len(data) for data in serialized) <= limits.max_entries:
        return
    from tensorflow.core.example import example_pb2

    for i, data in enumerate(serialized):
        try:
            example = example_pb2.Example.FromString(data)
        except Exception:  # noqa: BLE001 - protobuf's DecodeError, whichever implementation
            raise invalid_argument(f"example {i}: not a serialized tf.Example") from None
        for feature in example.features.feature.values():
            kind = feature.WhichOneof("kind")
            total += max(len(getattr(feature, kind).value) if kind else 0, 1)
        check_entries(total, limits)


def check_floats(values: np.ndarray, name: str, minimum: float | None, where: str = "",
                 largest: float = FLOAT32_MAX) -> None:
    """Finite values within the stored type's range (float32 unless said), at least `minimum` when given."""
    if values.size == 0:
        return
    bad = ~np.isfinite(values) | (np.abs(values) > largest)
    if bad.any():
        raise invalid_argument(f"{where}{name}: {float(values[bad][0])!r} is not a finite "
                               f"{'float32' if largest == FLOAT32_MAX else 'float'} number")
    if minimum is not None and (values < minimum).any():
        raise invalid_argument(f"{where}{name}: {float(values[values < minimum][0])!r} is below its minimum "
                               f"{minimum:g}")
