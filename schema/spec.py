"""Typed loader for the feature spec (schema/feature_spec.yaml) and everything derived from it.

The spec names the TSV columns and the model features. From it follow:
- the raw columns and their types (what the TSV parser checks and ExampleGen emits),
- the tf.io parse spec of those tf.Examples (Transform, serving signatures),
- the vocabulary groups (one vocabulary and one embedding table per share_embed group),
- the transformed feature names the model reads.
"""
from __future__ import annotations

import json
import os
from dataclasses import asdict, dataclass, field

from common.yaml_files import read_yaml_mapping

SPEC_DIR = os.path.dirname(os.path.abspath(__file__))
DEFAULT_SPEC_PATH = os.path.join(SPEC_DIR, "feature_spec.yaml")
DEFAULT_SCHEMA_PATH = os.path.join(SPEC_DIR, "schema.pbtxt")

KINDS = ("sparse", "varlen", "pretrained")
TOWERS = ("user", "item")
REDUCES = ("mean", "sum", "position", "attention")
VARLEN_REDUCES = ("mean", "position")  # over the rows of a trainable table

# Raw column types, as the parser reads them and ExampleGen writes them.
INT = "int"                      # one integer
STRING = "string"                # one string
STRING_LIST = "string_list"      # comma-separated strings
WEIGHTED_LIST = "weighted_list"  # comma-separated id:weight pairs -> ids + float weights
FLOAT = "float"                  # one finite number >= 0 (the sample weight)


class SpecError(ValueError):
    """The feature spec is inconsistent; the message names the feature and the problem."""


def transformed_name(key: str) -> str:
    """Name of a feature after Transform (shared by preprocessing, model and tests)."""
    return f"{key}_xf"


def vocab_name(group: str) -> str:
    """File name of the tf.Transform vocabulary of a share_embed group."""
    return f"vocab_{group}"


@dataclass(frozen=True)
class Feature:
    name: str
    kind: str
    tower: str
    embed_dim: int | None = None
    dtype: str = "string"
    share_embed: str | None = None
    maxlen: int | None = None
    weight_name: str | None = None
    source: str | None = None
    reduce: str | None = None
    int_range: list[int] | None = None  # sparse int64 only: [min, max]; outside is a data anomaly
    vocab_top_k: int | None = None      # owner of a vocabulary only: keep the k most frequent values
    vocab_min_count: int | None = None  # owner of a vocabulary only: drop values seen fewer times
    # reduce: attention only (model/towers.py SequenceEncoder): self-attention blocks over the
    # list, `heads` heads each, at the width embed_dim (the pretrained vectors projected to it).
    heads: int | None = None
    blocks: int | None = None
    dropout: float | None = None

    @property
    def column(self) -> str:
        """The TSV column this feature reads."""
        return self.source if self.kind == "pretrained" else self.name

    @property
    def group(self) -> str:
        """The vocabulary / embedding group (sparse and varlen features only)."""
        return self.share_embed or self.name

    @property
    def is_list(self) -> bool:
        return self.kind == "varlen" or (self.kind == "pretrained" and self.reduce is not None)


def _check_attention(f: Feature, where: str) -> None:
    for key in ("embed_dim", "heads", "blocks"):
        value = getattr(f, key)
        if isinstance(value, bool) or not isinstance(value, int) or value <= 0:
            raise SpecError(f"{where}: reduce: attention needs {key}, a positive integer, got {value!r}")
    if f.embed_dim % f.heads:
        raise SpecError(f"{where}: embed_dim {f.embed_dim} must be a multiple of heads {f.heads}")
    if f.dropout is not None and (isinstance(f.dropout, bool) or not isinstance(f.dropout, (int, float))
                                  or not 0 <= f.dropout < 1):
        raise SpecError(f"{where}: dropout must be a number in [0, 1), got {f.dropout!r}")


@dataclass(frozen=True)
class RawColumn:
    name: str
    type: str
    maxlen: int | None = None
    weight_name: str | None = None


@dataclass(frozen=True)
class FeatureSpec:
    columns: tuple[str, ...]
    label: str
    user_id: str
    item_id: str
    features: tuple[Feature, ...]
    pretrained_dim: int | None = None
    weight: str | None = None  # column of per-row sample weights (optional)
    raw_columns: dict[str, RawColumn] = field(default_factory=dict, compare=False, repr=False)

    # ---- construction -------------------------------------------------------------------------
    @classmethod
    def from_dict(cls, d: dict) -> FeatureSpec:
        known = {"columns", "label", "user_id", "item_id", "features", "pretrained_dim", "weight"}
        unknown = set(d) - known
        if unknown:
            raise SpecError(f"unknown top-level keys in feature spec: {sorted(unknown)}")
        for key in ("columns", "label", "user_id", "item_id", "features"):
            if key not in d:
                raise SpecError(f"feature spec is missing '{key}'")
        feats = []
        for name, body in (d["features"] or {}).items():
            body = dict(body or {})
            unknown = set(body) - (set(Feature.__dataclass_fields__) - {"name"})
            if unknown:
                raise SpecError(f"feature '{name}': unknown keys {sorted(unknown)}")
            if "kind" not in body or "tower" not in body:
                raise SpecError(f"feature '{name}': 'kind' and 'tower' are required")
            feats.append(Feature(name=name, **body))
        spec = cls(columns=tuple(d["columns"]), label=d["label"], user_id=d["user_id"],
                   item_id=d["item_id"], features=tuple(feats), pretrained_dim=d.get("pretrained_dim"),
                   weight=d.get("weight"))
        spec._validate()
        object.__setattr__(spec, "raw_columns", spec._derive_raw_columns())
        return spec

    @classmethod
    def load(cls, path: str = DEFAULT_SPEC_PATH) -> FeatureSpec:
        d = read_yaml_mapping(path, "the feature spec", SpecError)
        try:
            return cls.from_dict(d)
        except SpecError as e:
            raise SpecError(f"{path}: {e}") from None

    def to_dict(self) -> dict:
        feats = {}
        for f in self.features:
            body = {k: v for k, v in asdict(f).items() if k != "name" and v is not None}
            if body.get("dtype") == "string":
                body.pop("dtype")
            feats[f.name] = body
        out = {"columns": list(self.columns), "label": self.label, "user_id": self.user_id,
               "item_id": self.item_id, "pretrained_dim": self.pretrained_dim, "features": feats}
        if self.weight is not None:  # absent, not null: a spec without weights keeps its JSON (and cache keys)
            out["weight"] = self.weight
        return out

    def to_json(self) -> str:
        return json.dumps(self.to_dict())  # feature order matters (tower input order)

    @classmethod
    def from_json(cls, s: str) -> FeatureSpec:
        return cls.from_dict(json.loads(s))

    @property
    def item_index(self) -> str:
        """The transformed item index (vocab_item_id; in-batch losses, logQ). Not `<item_id>_xf`:
        that is the name of a feature that embeds the item id column, which has its own vocabulary."""
        return f"{self.item_id}_item_index"

    # ---- validation ---------------------------------------------------------------------------
    def _validate(self) -> None:
        if len(set(self.columns)) != len(self.columns):
            raise SpecError(f"duplicate column names in {list(self.columns)}")
        for role in ("label", "user_id", "item_id", "weight"):
            if role == "weight" and self.weight is None:
                continue
            if getattr(self, role) not in self.columns:
                raise SpecError(f"{role} column '{getattr(self, role)}' is not in columns")
        if self.weight in (self.label, self.user_id, self.item_id):
            raise SpecError(f"weight column '{self.weight}' is also the label or an id")
        if self.item_index in self.columns:
            raise SpecError(f"column '{self.item_index}' has the name of the transformed item index")
        by_name = {f.name: f for f in self.features}
        towers = set()
        for f in self.features:
            where = f"feature '{f.name}'"
            if f.kind not in KINDS:
                raise SpecError(f"{where}: kind must be one of {KINDS}, got '{f.kind}'")
            if f.tower not in TOWERS:
                raise SpecError(f"{where}: tower must be one of {TOWERS} (a feature assigned to no "
                                f"tower is not used), got '{f.tower}'")
            towers.add(f.tower)
            if f.column not in self.columns:
                raise SpecError(f"{where}: reads column '{f.column}', which is not in columns")
            if f.maxlen is not None and (not isinstance(f.maxlen, int) or f.maxlen <= 0):
                raise SpecError(f"{where}: maxlen must be a positive integer, got {f.maxlen!r}")
            if f.kind == "sparse":
                if f.maxlen is not None:
                    raise SpecError(f"{where}: maxlen applies to varlen and pretrained features only")
                if f.weight_name:
                    raise SpecError(f"{where}: weight_name is only allowed on a varlen feature "
                                    f"(a single-valued feature has no weights)")
                if f.dtype not in ("string", "int64"):
                    raise SpecError(f"{where}: dtype must be string or int64, got '{f.dtype}'")
                if f.int_range is not None and not (
                        f.dtype == "int64" and isinstance(f.int_range, list) and len(f.int_range) == 2
                        and all(isinstance(v, int) for v in f.int_range) and f.int_range[0] <= f.int_range[1]):
                    raise SpecError(f"{where}: int_range must be [min, max] on an int64 feature, "
                                    f"got {f.int_range!r}")
            if f.kind == "varlen":
                if f.maxlen is None:
                    raise SpecError(f"{where}: a varlen feature needs maxlen")
                if f.dtype != "string":
                    raise SpecError(f"{where}: varlen ids are strings")
            if f.kind in ("sparse", "varlen"):
                if f.share_embed is not None:
                    target = by_name.get(f.share_embed)
                    if target is None:
                        raise SpecError(f"{where}: share_embed target '{f.share_embed}' is not a feature")
                    if target.kind not in ("sparse", "varlen") or target.share_embed is not None:
                        raise SpecError(f"{where}: share_embed target '{f.share_embed}' must be a sparse "
                                        f"or varlen feature that owns its embedding")
                    if f.embed_dim is not None and f.embed_dim != target.embed_dim:
                        raise SpecError(f"{where}: embed_dim {f.embed_dim} differs from the shared "
                                        f"table '{f.share_embed}' ({target.embed_dim})")
                elif not isinstance(f.embed_dim, int) or f.embed_dim <= 0:
                    raise SpecError(f"{where}: embed_dim must be a positive integer")
                if f.source:
                    raise SpecError(f"{where}: source applies to pretrained features only")
                if f.reduce is not None and f.kind == "sparse":
                    raise SpecError(f"{where}: reduce applies to list features only")
                if f.reduce is not None and f.reduce not in VARLEN_REDUCES:
                    raise SpecError(f"{where}: reduce of a varlen feature is one of {VARLEN_REDUCES}, "
                                    f"got '{f.reduce}'")
                if f.reduce is not None and f.weight_name:
                    raise SpecError(f"{where}: a weighted varlen feature is a weighted sum; reduce does not apply")
            for opt in ("vocab_top_k", "vocab_min_count"):
                value = getattr(f, opt)
                if value is not None and (f.kind == "pretrained" or f.share_embed is not None):
                    raise SpecError(f"{where}: {opt} belongs on the feature that owns the vocabulary")
                if value is not None and (not isinstance(value, int) or value <= 0):
                    raise SpecError(f"{where}: {opt} must be a positive integer, got {value!r}")
            if f.kind != "sparse" and f.int_range is not None:
                raise SpecError(f"{where}: int_range applies to sparse int64 features only")
            if f.kind == "pretrained":
                if not f.source:
                    raise SpecError(f"{where}: a pretrained feature needs source (the id column)")
                if f.reduce is not None and f.reduce not in REDUCES:
                    raise SpecError(f"{where}: reduce must be one of {REDUCES}, got '{f.reduce}'")
                if f.reduce is not None and f.maxlen is None:
                    raise SpecError(f"{where}: a reduced (list) pretrained feature needs maxlen")
                if f.reduce is None and f.maxlen is not None:
                    raise SpecError(f"{where}: maxlen needs reduce (mean or sum)")
                if f.weight_name or f.share_embed:
                    raise SpecError(f"{where}: weight_name/share_embed do not apply to pretrained features")
                if f.reduce == "attention":
                    _check_attention(f, where)
                elif f.embed_dim is not None:
                    raise SpecError(f"{where}: embed_dim of a pretrained feature is the width of reduce: attention")
            if f.reduce != "attention" and any(v is not None for v in (f.heads, f.blocks, f.dropout)):
                raise SpecError(f"{where}: heads/blocks/dropout apply to reduce: attention only")
        if towers != set(TOWERS):
            raise SpecError(f"both towers need at least one feature; got features for {sorted(towers)}")
        if self.pretrained_dim is not None and (not isinstance(self.pretrained_dim, int)
                                                or self.pretrained_dim <= 0):
            raise SpecError(f"pretrained_dim must be a positive integer or null, got {self.pretrained_dim!r}")

    def _derive_raw_columns(self) -> dict[str, RawColumn]:
        cols: dict[str, RawColumn] = {
            self.label: RawColumn(self.label, INT),
            self.user_id: RawColumn(self.user_id, STRING),
            self.item_id: RawColumn(self.item_id, STRING),
        }
        if self.weight:
            cols[self.weight] = RawColumn(self.weight, FLOAT)
        for f in self.features:
            if f.kind == "sparse":
                col = RawColumn(f.column, INT if f.dtype == "int64" else STRING)
            elif f.kind == "varlen":
                col = RawColumn(f.column, WEIGHTED_LIST if f.weight_name else STRING_LIST,
                                f.maxlen, f.weight_name)
            else:
                col = RawColumn(f.column, STRING_LIST if f.reduce else STRING, f.maxlen)
            prev = cols.get(col.name)
            if prev is not None and prev != col:
                raise SpecError(f"column '{col.name}' is read as {prev.type} and as {col.type} "
                                f"(by feature '{f.name}')")
            cols[col.name] = col
        unused = [c for c in self.columns if c not in cols]
        if unused:
            raise SpecError(f"columns {unused} are used by no feature and are not the label or an id")
        return {c: cols[c] for c in self.columns}

    # ---- derived views ------------------------------------------------------------------------
    def history_columns(self) -> list[str]:
        """Columns listing the user's past items (sources of pooled pretrained features, e.g. read_post_id)."""
        return [f.column for f in self.features if f.kind == "pretrained" and f.reduce]

    def tower_features(self, tower: str) -> list[Feature]:
        return [f for f in self.features if f.tower == tower]

    def vocab_groups(self) -> dict[str, list[Feature]]:
        """share_embed group -> its features (the owner first)."""
        groups: dict[str, list[Feature]] = {}
        for f in self.features:
            if f.kind in ("sparse", "varlen") and f.share_embed is None:
                groups[f.name] = [f]
        for f in self.features:
            if f.kind in ("sparse", "varlen") and f.share_embed is not None:
                groups[f.share_embed].append(f)
        return groups

    def group_embed_dim(self, group: str) -> int:
        return next(f.embed_dim for f in self.features if f.name == group)

    def raw_feature_names(self, include_label: bool = True) -> list[str]:
        """tf.Example feature names ExampleGen writes (weights get their own feature)."""
        names = []
        for col in self.raw_columns.values():
            if col.name in (self.label, self.weight) and not include_label:
                continue
            names.append(col.name)
            if col.weight_name:
                names.append(col.weight_name)
        return names

    def raw_feature_spec(self, include_label: bool = True, serving: bool = False) -> dict:
        """tf.io parse spec of ExampleGen's tf.Examples.

        With serving=True, single-valued features get defaults so that a user-only or an
        item-only example parses (the other tower's features are then simply absent).
        """
        import tensorflow as tf

        spec = {}
        for col in self.raw_columns.values():
            if col.name in (self.label, self.weight) and not include_label:  # training targets
                continue
            if col.type == INT:
                spec[col.name] = tf.io.FixedLenFeature([], tf.int64, default_value=-1 if serving else None)
            elif col.type == STRING:
                spec[col.name] = tf.io.FixedLenFeature([], tf.string, default_value="" if serving else None)
            elif col.type == FLOAT:
                spec[col.name] = tf.io.FixedLenFeature([], tf.float32)
            else:
                spec[col.name] = tf.io.VarLenFeature(tf.string)
                if col.weight_name:
                    spec[col.weight_name] = tf.io.VarLenFeature(tf.float32)
        return spec


def load_spec(path: str | None = None) -> FeatureSpec:
    return FeatureSpec.load(path or DEFAULT_SPEC_PATH)
