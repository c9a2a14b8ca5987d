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
    max_inflight_bytes: int = 512 * 1024 * 1024  # what the requests being answered may hold together; 0 = no limit


class InFlight:
    """One memory budget shared by the requests being answered (gRPC and REST): a request takes its
    cost (its bytes times the copies answering it makes) before it is decoded and gives it back when
    answered. One that would pass the budget waits up to wait_seconds for others to finish, then is
    RESOURCE_EXHAUSTED; one larger than the whole budget is refused at once."""

    def __init__(self, budget: int, wait_seconds: float = 5.0):
        import threading

        self.budget, self.wait_seconds = budget, wait_seconds
        self.used = self.peak = 0
        self._cond = threading.Condition()

    def hold(self, cost: int):
        import contextlib
        import time

        import grpc

        from serving.status import ServingError

        @contextlib.contextmanager
        def held():
            if cost > self.budget:
                raise ServingError(grpc.StatusCode.RESOURCE_EXHAUSTED,
                                   f"the request would hold {cost:,} bytes while answered, more than the "
                                   f"{self.budget:,} all requests may hold at once (--max_inflight_request_bytes)")
            deadline = time.monotonic() + self.wait_seconds
            with self._cond:
                while self.used + cost > self.budget:
                    left = deadline - time.monotonic()
                    if left <= 0:
                        raise ServingError(grpc.StatusCode.RESOURCE_EXHAUSTED,
                                           f"requests being answered hold {self.used:,} of the {self.budget:,} bytes "
                                           f"they may hold at once (--max_inflight_request_bytes): try again")
                    self._cond.wait(left)
                self.used += cost
                self.peak = max(self.peak, self.used)
            try:
                yield
            finally:
                with self._cond:
                    self.used -= cost
                    self._cond.notify_all()

        return held()


GRPC_COPIES = 3  # a gRPC request answered: its message, the arrays decoded from it, TensorFlow's tensors
REST_COPIES = 4  # a REST body: the bytes, the decoded JSON (larger than its text), the arrays, the tensors


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
            d = json.load(f)  # NaN and Infinity decode here, and are refused below
        sigs = {}
        for name, sig in d.get("signatures", {}).items():
            floats = sig.get("floats_per_row", 0)
            if isinstance(floats, bool) or not isinstance(floats, int) or floats < 0:
                raise ValueError(f"{path}: signatures.{name}.floats_per_row must be an integer >= 0, got {floats!r}")
            sigs[name] = SignatureCost(floats, sig.get("examples_input"))
        minimum = {}
        for name, value in d.get("minimum", {}).items():
            if isinstance(value, bool) or not isinstance(value, (int, float)) or not np.isfinite(value):
                raise ValueError(f"{path}: minimum.{name} must be a finite number, got {value!r} (a NaN minimum "
                                 "would turn the check off)")
            minimum[name] = float(value)
        return cls(sigs, minimum)

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
    of the limit are not read; larger ones are counted from their wire format (example_entries),
    never parsed into messages: 14 MB of empty strings would be 7M objects. Their values are the
    model's to check (the Trainer's signatures refuse non-finite or negative weights in the graph)."""
    if not limits.max_entries:
        return
    total = already
    if total + len(serialized) + sum(len(data) for data in serialized) <= limits.max_entries:
        return
    for i, data in enumerate(serialized):
        try:
            total += example_entries(data, limits.max_entries - total)
        except ValueError as e:
            raise invalid_argument(f"example {i}: not a serialized tf.Example ({e})") from None
        check_entries(total, limits)


# ---- tf.Example's wire format (tensorflow/core/example/{example,feature}.proto) ----
# Example{1: Features}; Features{1: map entry {1: key, 2: Feature}}; Feature{1: BytesList, 2: FloatList,
# 3: Int64List}; each list {1: value} (bytes: one field per value; floats and ints packed or not).
_VARINT, _FIXED64, _BYTES, _FIXED32 = 0, 1, 2, 5


def _varint(buf, pos: int, end: int) -> tuple[int, int]:
    value = shift = 0
    while True:
        if pos >= end:
            raise ValueError("a varint runs past its message")
        b = buf[pos]
        pos += 1
        value |= (b & 0x7F) << shift
        if b < 0x80:
            return value, pos
        shift += 7
        if shift > 63:
            raise ValueError("a varint longer than 10 bytes")


def _fields(buf, pos: int, end: int):
    """(field number, wire type, start, end) of each field of the message in buf[pos:end]; for a
    length-delimited field start:end is its payload."""
    while pos < end:
        key, pos = _varint(buf, pos, end)
        number, wire = key >> 3, key & 7
        start = pos
        if wire == _VARINT:
            _, pos = _varint(buf, pos, end)
        elif wire == _FIXED64:
            pos += 8
        elif wire == _FIXED32:
            pos += 4
        elif wire == _BYTES:
            size, start = _varint(buf, pos, end)
            pos = start + size
        else:
            raise ValueError(f"wire type {wire} (groups are not used by tf.Example)")
        if number == 0 or pos > end:
            raise ValueError("a field runs past its message")
        yield number, wire, start, pos


def _list_values(buf, kind: int, start: int, end: int, budget: int) -> int:
    """Values of a BytesList (kind 1), FloatList (2) or Int64List (3); counting stops past `budget`."""
    count = 0
    for number, wire, s, e in _fields(buf, start, end):
        if number != 1:
            continue
        if kind == 2 and wire == _BYTES:
            if (e - s) % 4:
                raise ValueError("packed floats of a length that is not a multiple of 4")
            count += (e - s) // 4
        elif kind == 3 and wire == _BYTES:  # packed varints: one ends at each byte below 0x80
            count += int(np.count_nonzero(np.frombuffer(buf, np.uint8, e - s, s) < 0x80))
        else:
            count += 1
        if count > budget:
            break
    return count


def example_entries(data: bytes, stop: int) -> int:
    """Entries of one serialized tf.Example (1 + per feature max(its values, 1)), read from the wire
    format without building any message; counting stops once past `stop`. ValueError when the bytes
    are not a well-formed message."""
    buf = memoryview(data)
    total = 1
    for number, wire, s, e in _fields(buf, 0, len(buf)):
        if number != 1 or wire != _BYTES:
            continue
        for entry_number, entry_wire, es, ee in _fields(buf, s, e):  # the feature map's entries
            if entry_number != 1 or entry_wire != _BYTES:
                continue
            values = 0
            for field_number, field_wire, fs, fe in _fields(buf, es, ee):  # key (1), Feature (2)
                if field_number == 2 and field_wire == _BYTES:
                    for kind, kind_wire, ks, ke in _fields(buf, fs, fe):
                        if kind in (1, 2, 3) and kind_wire == _BYTES:
                            values += _list_values(buf, kind, ks, ke, stop - total)
            total += max(values, 1)
            if total > stop:
                return total
    return total


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
