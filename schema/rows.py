"""Parse one TSV log line into tf.Example features, or reject it with a reason.

The column layout and types come from the feature spec (schema/spec.py). A row is either
written (possibly after counted repairs) or rejected with exactly one reason; never dropped.

Rejection reasons (stable codes, counted per split):
  line_too_long, not_utf8, field_count, nul_byte:<col>, bad_label, bad_int:<col>, empty_id:<col>,
  bad_pair:<col>, bad_weight:<col>
  (line_too_long: over MAX_LINE_BYTES; the reader hands over only its first MAX_LINE_BYTES + 1 bytes, so
  a line that never ends, such as a gzip bomb's, costs bounded memory. nul_byte: a NUL in a column's
  text, which no id or number holds.)
Soft problems (the row is kept, repaired where needed; each kind is counted once per row):
  truncated:<col>   list longer than maxlen: the first maxlen entries are kept, because logs list
                    the most recent or most relevant entries first (as the original design's
                    `[:maxlen]` did)
  duplicates:<col>  repeated ids in a list: the first occurrence is kept
  empty_entry:<col> an empty entry between commas ("a,,b") is dropped
  empty_list:<col>  the list is empty (kept: the feature is all padding)
  leakage:<col>     the row's own item id in a history list: removed, or the user tower would see
                    the target
  unknown_item:<col> an item id with no pretrained vector (it maps to the all-zero row), when the
                    parser is given the known ids
"""
from __future__ import annotations

from dataclasses import dataclass, field

from schema.numbers import NumberError, parse_float32, parse_int64
from schema.spec import FLOAT, INT, STRING, STRING_LIST, WEIGHTED_LIST, FeatureSpec

MAX_LINE_BYTES = 1 << 20  # a log line: 50 ids of 1 KiB in each list column fit several times over


@dataclass
class ParsedRow:
    # feature name -> list of int / bytes / float values (scalars are one-element lists)
    ints: dict[str, list[int]] = field(default_factory=dict)
    strings: dict[str, list[bytes]] = field(default_factory=dict)
    floats: dict[str, list[float]] = field(default_factory=dict)
    repairs: list[str] = field(default_factory=list)

    def to_example(self):
        """A tf.train.Example (ExampleGen's writer serializes it; its hash split reads features)."""
        from common import tf_protos

        tf_protos.load()  # the message without TensorFlow's runtime (the serving CLIs never load it)
        from tensorflow.core.example import example_pb2

        ex = example_pb2.Example()
        fmap = ex.features.feature
        for k, v in self.ints.items():
            fmap[k].int64_list.value.extend(v)
        for k, v in self.strings.items():
            fmap[k].bytes_list.value.extend(v)
        for k, v in self.floats.items():
            fmap[k].float_list.value.extend(v)
        return ex

    def to_example_bytes(self) -> bytes:
        return self.to_example().SerializeToString()


class Rejected(Exception):
    """A row that cannot be used; `reason` is the stable code that gets counted."""

    def __init__(self, reason: str, detail: str):
        super().__init__(f"{reason}: {detail}")
        self.reason = reason
        self.detail = detail


def _parse_int(col: str, text: str) -> int:
    try:
        return parse_int64(text.strip())
    except NumberError as e:
        raise Rejected(f"bad_int:{col}", str(e)) from None


def _split_list(col: str, text: str, repairs: list[str]) -> list[str]:
    if not text.strip():
        repairs.append(f"empty_list:{col}")
        return []
    parts = text.split(",")
    kept = [p for p in (x.strip() for x in parts) if p]
    if len(kept) != len(parts):
        repairs.append(f"empty_entry:{col}")
    return kept


def _dedupe(col: str, ids: list[str], weights: list[float] | None, repairs: list[str]):
    if len(set(ids)) == len(ids):  # the common case, without a Python loop over the ids
        return ids, weights
    seen = set()
    out_ids, out_w = [], []
    for i, x in enumerate(ids):
        if x in seen:
            continue
        seen.add(x)
        out_ids.append(x)
        if weights is not None:
            out_w.append(weights[i])
    if len(out_ids) != len(ids):
        repairs.append(f"duplicates:{col}")
    return out_ids, (out_w if weights is not None else None)


class RowParser:
    """Parses lines of one log layout. Picklable: it holds only the spec's plain data."""

    def __init__(self, spec: FeatureSpec, known_items: frozenset[str] | None = None):
        self.spec = spec
        self.known_items = known_items
        self.columns = [spec.raw_columns[c] for c in spec.columns]
        # History lists in the item id space (sources of pretrained list features): the row's own
        # item must not appear in them.
        self.history_columns = set(spec.history_columns())

    def parse(self, line: bytes) -> ParsedRow:
        """Returns the parsed row or raises Rejected."""
        if len(line.rstrip(b"\r\n")) > MAX_LINE_BYTES:
            raise Rejected("line_too_long", f"longer than {MAX_LINE_BYTES:,} bytes (read up to there, the rest "
                                            "skipped)")
        try:
            text = line.decode("utf-8")
        except UnicodeDecodeError as e:
            raise Rejected("not_utf8", f"byte {e.start} is not valid UTF-8") from None
        text = text.rstrip("\r\n")
        fields = text.split("\t")
        if len(fields) != len(self.columns):
            raise Rejected("field_count", f"{len(fields)} fields, expected {len(self.columns)}")
        return self.parse_fields(dict(zip(self.spec.columns, fields, strict=True)))

    def parse_fields(self, values: dict[str, str]) -> ParsedRow:
        """Parses the given columns' text, with the same checks and repairs as a log line; columns
        that are absent are left out (a serving request holds one tower's features only)."""
        row = ParsedRow()
        nul = next((c for c, v in values.items() if "\x00" in v), None)
        if nul is not None:
            raise Rejected(f"nul_byte:{nul}", "a NUL byte in the column's text")
        item_id = values.get(self.spec.item_id, "").strip()
        for col in self.columns:
            if col.name not in values:
                continue
            raw = values[col.name]
            if col.name == self.spec.label:
                label = raw.strip()
                if label not in ("0", "1"):
                    raise Rejected("bad_label", f"'{raw}' is not 0 or 1")
                row.ints[col.name] = [int(label)]
            elif col.type == INT:
                row.ints[col.name] = [_parse_int(col.name, raw)]
            elif col.type == FLOAT:
                row.floats[col.name] = [_parse_weight(col.name, raw.strip())]
            elif col.type == STRING:
                value = raw.strip()
                if not value and col.name in (self.spec.item_id, self.spec.user_id):
                    raise Rejected(f"empty_id:{col.name}", "empty id")
                if col.name == self.spec.item_id and self._has_unknown(col.name, [value]):
                    row.repairs.append(f"unknown_item:{col.name}")
                row.strings[col.name] = [value.encode("utf-8")]
            elif col.type == STRING_LIST:
                ids = _split_list(col.name, raw, row.repairs)
                if col.name in self.history_columns and item_id in ids:
                    ids = [x for x in ids if x != item_id]
                    row.repairs.append(f"leakage:{col.name}")
                ids, _ = _dedupe(col.name, ids, None, row.repairs)
                if len(ids) > col.maxlen:
                    ids = ids[: col.maxlen]
                    row.repairs.append(f"truncated:{col.name}")
                if self._has_unknown(col.name, ids):
                    row.repairs.append(f"unknown_item:{col.name}")
                row.strings[col.name] = [x.encode("utf-8") for x in ids]
            elif col.type == WEIGHTED_LIST:
                ids, weights = self._parse_pairs(col.name, raw, row.repairs)
                ids, weights = _dedupe(col.name, ids, weights, row.repairs)
                if len(ids) > col.maxlen:
                    ids, weights = ids[: col.maxlen], weights[: col.maxlen]
                    row.repairs.append(f"truncated:{col.name}")
                row.strings[col.name] = [x.encode("utf-8") for x in ids]
                row.floats[col.weight_name] = weights
        return row

    def _has_unknown(self, column: str, ids: list[str]) -> bool:
        if self.known_items is None or (column != self.spec.item_id and column not in self.history_columns):
            return False
        return any(x not in self.known_items for x in ids)

    @staticmethod
    def _parse_pairs(col: str, raw: str, repairs: list[str]) -> tuple[list[str], list[float]]:
        ids, weights = [], []
        for pair in _split_list(col, raw, repairs):
            key, sep, value = pair.rpartition(":")
            if not sep:
                raise Rejected(f"bad_pair:{col}", f"'{pair}' has no ':'")
            key = key.strip()
            if not key:
                raise Rejected(f"bad_pair:{col}", f"'{pair}' has an empty id")
            ids.append(key)
            weights.append(_parse_weight(col, value))
        return ids, weights


def _parse_weight(col: str, value: str) -> float:
    """A weight as the tf.Example stores it: a finite float32 >= 0 (schema/numbers.py's grammar)."""
    try:
        w = parse_float32(value.strip())
    except NumberError as e:
        raise Rejected(f"bad_weight:{col}", str(e)) from None
    if w < 0:
        raise Rejected(f"bad_weight:{col}", f"weight {value} is negative")
    return w
