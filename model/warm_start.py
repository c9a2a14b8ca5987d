"""Warm start: the Trainer starts from the weights of the model served now when it was trained on an
earlier span, with every embedding row moved to where its id sits in today's vocabulary.

The Trainer saves, beside each model's SavedModels, <model>/warm_start/: meta.json (the span trained
on, the variable names, the vocabulary files), weights.npz (every tower variable but the frozen
pretrained table) and a copy of each share_embed group's vocabulary. A later run resolves that model
(LatestPushedModelBeforeSpan, TFX's Resolver feeding the Trainer's base_model) and loads it:

- an id in both vocabularies keeps its learned row, wherever its index moved;
- a new id keeps the fresh row of today's initialisation; an id no longer in the vocabulary is dropped;
- padding (row 0) and the out-of-vocabulary buckets are copied when their number is unchanged;
- Dense and batch-norm variables are copied as they are; a variable whose shape or presence differs
  (the towers changed) refuses the warm start with the reason, and the model trains from scratch.

The optimizer's state is not carried: each run starts its own schedule from these weights.
"""
from __future__ import annotations

import io
import json
import os
import zipfile
from dataclasses import dataclass

import numpy as np
import tensorflow as tf
from tfx.dsl.io import fileio

from model.towers import FrozenTable
from schema.spec import vocab_name

WARM_START_DIR = "warm_start"
META = "meta.json"
WEIGHTS = "weights.npz"


class WarmStartRefused(ValueError):
    """The base model's variables do not fit today's towers; the message says which."""


def embedding_variable(group: str) -> str:
    return f"embed_{group}/embeddings:0"


def _warm_variables(model: tf.keras.Model) -> list[tf.Variable]:
    # The frozen pretrained table is rebuilt from today's item vectors (and is the largest variable).
    frozen = {id(v) for layer in model.submodules if isinstance(layer, FrozenTable) for v in layer.variables}
    return [v for v in model.variables if id(v) not in frozen]


def save(model_uri: str, model: tf.keras.Model, vocab_files: dict[str, str], num_oov_buckets: int,
         span: int | None) -> None:
    """<model_uri>/warm_start/: the weights, the vocabularies and the span they were trained on."""
    folder = os.path.join(model_uri, WARM_START_DIR)
    fileio.makedirs(folder)
    variables = _warm_variables(model)
    names = [v.name for v in variables]
    if len(set(names)) != len(names):
        raise ValueError(f"warm start needs unique variable names, got {names}")
    buffer = io.BytesIO()
    np.savez(buffer, *[v.numpy() for v in variables])
    with fileio.open(os.path.join(folder, WEIGHTS), "wb") as f:
        f.write(buffer.getvalue())
    vocabularies = {}
    for group, path in vocab_files.items():
        vocabularies[group] = f"{vocab_name(group)}.txt"
        fileio.copy(path, os.path.join(folder, vocabularies[group]), overwrite=True)
    meta = {"span": span, "variables": names, "vocabularies": vocabularies, "num_oov_buckets": num_oov_buckets}
    with fileio.open(os.path.join(folder, META), "w") as f:
        f.write(json.dumps(meta, indent=2))


def read_meta(model_uri: str) -> dict | None:
    """The model's warm_start/meta.json; None when it has none; WarmStartRefused when it is unreadable."""
    path = os.path.join(model_uri, WARM_START_DIR, META)
    if not fileio.exists(path):
        return None
    try:
        with fileio.open(path, "r") as f:
            meta = json.loads(f.read())
        meta["span"] = None if meta["span"] is None else int(meta["span"])
        meta["variables"], meta["vocabularies"] = list(meta["variables"]), dict(meta["vocabularies"])
        meta["num_oov_buckets"] = int(meta["num_oov_buckets"])
    except (OSError, ValueError, KeyError, TypeError) as e:
        raise WarmStartRefused(f"{path} is unreadable ({type(e).__name__}: {e})") from None
    return meta


def read_vocabulary(path: str) -> list[bytes]:
    with fileio.open(path, "rb") as f:
        return f.read().splitlines()


@dataclass
class RowMapping:
    source: np.ndarray  # [rows of today's table]: the base table's row for each, -1 = keep today's init
    kept: int           # vocabulary ids that kept their learned row
    new: int            # ids new today (fresh rows)
    dropped: int        # ids of the base vocabulary not in today's (their rows are gone)


def row_mapping(old_vocab: list[bytes], new_vocab: list[bytes], old_oov: int, new_oov: int) -> RowMapping:
    """Rows of today's table -> rows of the base table. Index layout of both: 0 = padding, 1..V = the
    vocabulary in file order, V+1.. = out-of-vocabulary buckets."""
    old_row = {token: i + 1 for i, token in enumerate(old_vocab)}
    source = np.full(1 + len(new_vocab) + new_oov, -1, np.int64)
    source[0] = 0
    for i, token in enumerate(new_vocab):
        source[i + 1] = old_row.get(token, -1)
    if old_oov == new_oov:  # the same hash buckets: an unseen id falls where it fell before
        source[1 + len(new_vocab):] = np.arange(1 + len(old_vocab), 1 + len(old_vocab) + old_oov)
    kept = int((source[1:1 + len(new_vocab)] >= 0).sum())
    return RowMapping(source, kept, len(new_vocab) - kept, len(set(old_vocab) - set(new_vocab)))


def remap_rows(old_table: np.ndarray, fresh_table: np.ndarray, mapping: RowMapping) -> np.ndarray:
    out = np.array(fresh_table, copy=True)
    moved = mapping.source >= 0
    out[moved] = old_table[mapping.source[moved]]
    return out


def rows_text(groups: dict) -> str:
    """load()'s per-group counts as one line (the Trainer's log, the summary lines, the report)."""
    return "; ".join(f"{g}: {r['kept']:,} ids kept, {r['new']:,} new, {r['dropped']:,} dropped"
                     for g, r in (groups or {}).items())


def load(base_model_path: str, model: tf.keras.Model, vocab_files: dict[str, str], num_oov_buckets: int) -> dict:
    """Assigns the base model's weights to `model` (rows remapped per vocabulary group) and returns what
    moved: {"from": the base model's URI, "span": its span, "groups": {group: kept/new/dropped}}.
    base_model_path: the Trainer's fn_args.base_model (<model uri>/Format-Serving).
    Raises WarmStartRefused when the variables do not fit; nothing is assigned then."""
    uri = os.path.dirname(base_model_path.rstrip("/"))
    meta = read_meta(uri)
    if meta is None:
        raise WarmStartRefused(f"{uri} has no {WARM_START_DIR}/{META} (trained before warm start existed)")
    weights = os.path.join(uri, WARM_START_DIR, WEIGHTS)
    try:  # np.load never unpickles (allow_pickle=False): a hostile file is an error, not code
        with fileio.open(weights, "rb") as f:
            stored = np.load(io.BytesIO(f.read()))
            old = {name: stored[f"arr_{i}"] for i, name in enumerate(meta["variables"])}
    except (OSError, ValueError, KeyError, zipfile.BadZipFile) as e:
        raise WarmStartRefused(f"{weights} is unreadable ({type(e).__name__}: {e})") from None
    variables = {v.name: v for v in _warm_variables(model)}
    if set(old) != set(variables):
        missing, extra = sorted(set(variables) - set(old)), sorted(set(old) - set(variables))
        raise WarmStartRefused(f"the towers changed: variables new today {missing}, gone today {extra}")
    tables = {embedding_variable(group): group for group in vocab_files}
    values, groups = {}, {}
    for name, variable in variables.items():
        if name in tables:
            group = tables[name]
            if group not in meta["vocabularies"]:
                raise WarmStartRefused(f"the base model has no vocabulary for group {group}")
            old_vocab = read_vocabulary(os.path.join(uri, WARM_START_DIR, meta["vocabularies"][group]))
            old_oov = meta["num_oov_buckets"]
            if old[name].shape[0] != 1 + len(old_vocab) + old_oov:
                raise WarmStartRefused(f"{name}: {old[name].shape[0]} rows for a vocabulary of {len(old_vocab)} "
                                       f"and {old_oov} OOV buckets")
            mapping = row_mapping(old_vocab, read_vocabulary(vocab_files[group]), old_oov, num_oov_buckets)
            if old[name].shape[1:] != tuple(variable.shape[1:]) or len(mapping.source) != variable.shape[0]:
                raise WarmStartRefused(f"{name}: base shape {old[name].shape}, today {tuple(variable.shape)}")
            values[name] = remap_rows(old[name], variable.numpy(), mapping)
            groups[group] = {"kept": mapping.kept, "new": mapping.new, "dropped": mapping.dropped}
        elif old[name].shape != tuple(variable.shape):
            raise WarmStartRefused(f"{name}: base shape {old[name].shape}, today {tuple(variable.shape)}")
        else:
            values[name] = old[name]
    for name, value in values.items():
        variables[name].assign(value)
    return {"from": uri, "span": meta["span"], "groups": groups}
