"""Serialized tf.Examples for the serving signatures, from raw feature values or from a log line.

Both go through the ingest parser (schema/rows.py), so a request is checked,
deduplicated and truncated exactly as training rows were.
"""
from __future__ import annotations

from collections.abc import Mapping

from schema.rows import Rejected, RowParser
from schema.spec import INT, STRING, STRING_LIST, WEIGHTED_LIST, FeatureSpec


class FeatureError(ValueError):
    """Raw features that cannot be turned into a tf.Example; the message says which and why."""


def _as_text(column, value) -> str:
    """A column's value as the log would hold it: lists comma-joined, weighted lists as id:weight."""
    if isinstance(value, str):
        return value
    if column.type in (INT, STRING):
        if isinstance(value, (list, tuple, dict)):
            raise FeatureError(f"{column.name} takes one value, got {value!r}")
        return str(value)
    if column.type == STRING_LIST:
        if not isinstance(value, (list, tuple)):
            raise FeatureError(f"{column.name} takes a list or a comma-separated string, got {value!r}")
        return ",".join(str(v) for v in value)
    if column.type == WEIGHTED_LIST:
        pairs = value.items() if isinstance(value, Mapping) else value
        try:
            return ",".join(f"{k}:{w}" for k, w in pairs)
        except (TypeError, ValueError):
            raise FeatureError(f"{column.name} takes {{id: weight}}, [[id, weight], ...] or 'id:w,...', "
                               f"got {value!r}") from None
    raise FeatureError(f"{column.name}: unsupported column type {column.type}")


class ExampleBuilder:
    def __init__(self, spec: FeatureSpec):
        self.spec = spec
        self._parser = RowParser(spec)
        self._inputs = [c for c in spec.columns if c != spec.label]

    def texts(self, features: Mapping) -> dict[str, str]:
        """The features as the log's column texts (lists comma-joined)."""
        if not isinstance(features, Mapping):
            raise FeatureError(f"features must be an object of column: value, got {type(features).__name__}")
        unknown = sorted(set(features) - set(self._inputs))
        if unknown:
            raise FeatureError(f"unknown feature(s) {unknown}; the feature spec's columns are {self._inputs}")
        return {k: _as_text(self.spec.raw_columns[k], v) for k, v in features.items()}

    def from_features(self, features: Mapping) -> bytes:
        text = self.texts(features)
        try:
            return self._parser.parse_fields(text).to_example_bytes()
        except Rejected as e:
            raise FeatureError(f"rejected ({e.reason}): {e.detail}") from None

    def from_log_line(self, line: str | bytes) -> bytes:
        """A tab-separated line in the spec's column order (the label column is ignored)."""
        try:
            return self._parser.parse(line if isinstance(line, bytes) else line.encode("utf-8")).to_example_bytes()
        except Rejected as e:
            raise FeatureError(f"rejected ({e.reason}): {e.detail}") from None
