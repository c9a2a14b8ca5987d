"""Pretrained item vectors: read and validate the user's file, convert it to an efficient artifact.

Accepted inputs:
  - JSON lines, plain or .gz: {"post_id": "<id>", "values": [floats]} per line (the original design)
  - .npy matrix [n, dim] with an id file next to it (<name>.ids.txt, one id per line, row order)

The prepared form is a folder holding
  item_ids.txt   one id per line; line i (0-based) is row i + 1 of the table
  vectors.npy    float32 [n + 1, dim]; row 0 is all zeros, for unknown ids and padding
  meta.json      dim, count, sha256 of the source
Transform maps ids to rows with item_ids.txt (tracked as an asset of the transform graph); the
model holds vectors.npy once, as a frozen table. The folder is named by the source's sha256, so a
changed file gives a new folder and a new cache key downstream.
"""
from __future__ import annotations

import gzip
import hashlib
import json
import math
import os
from dataclasses import asdict, dataclass

import numpy as np
import tensorflow as tf

IDS_FILE = "item_ids.txt"
VECTORS_FILE = "vectors.npy"
META_FILE = "meta.json"


class ItemVectorError(ValueError):
    """The item-vector file is unusable; the message names the file, the line and the problem."""


@dataclass(frozen=True)
class PreparedVectors:
    dir: str
    dim: int
    count: int
    sha256: str
    source: str

    @property
    def ids_path(self) -> str:
        return os.path.join(self.dir, IDS_FILE)


def _sha256(paths: list[str]) -> str:
    h = hashlib.sha256()
    for p in paths:
        with tf.io.gfile.GFile(p, "rb") as f:
            while chunk := f.read(1 << 22):
                h.update(chunk)
    return h.hexdigest()


def _check_id(path: str, where: str, item_id: str, seen: set) -> None:
    if not item_id or any(c in item_id for c in "\t\n\r"):
        raise ItemVectorError(f"{path}:{where}: post_id {item_id!r} is empty or contains a tab or newline")
    if item_id in seen:
        raise ItemVectorError(f"{path}:{where}: duplicate post_id {item_id!r}")
    seen.add(item_id)


def _read_jsonl(path: str) -> tuple[list[str], np.ndarray]:
    ids: list[str] = []
    rows: list[np.ndarray] = []
    seen: set = set()
    dim = None
    raw = tf.io.gfile.GFile(path, "rb")
    f = gzip.GzipFile(fileobj=raw, mode="rb") if path.endswith(".gz") else raw
    try:
        for lineno, line in enumerate(f, start=1):
            if not line.strip():
                continue
            try:
                obj = json.loads(line)
            except (json.JSONDecodeError, UnicodeDecodeError) as e:
                raise ItemVectorError(f"{path}:{lineno}: not a JSON object ({e.__class__.__name__}: {e}); "
                                      f'expected {{"post_id": "...", "values": [...]}}') from None
            if not isinstance(obj, dict) or "post_id" not in obj or "values" not in obj:
                raise ItemVectorError(f'{path}:{lineno}: expected {{"post_id": "...", "values": [...]}}, '
                                      f"got keys {sorted(obj) if isinstance(obj, dict) else type(obj).__name__}")
            item_id, values = obj["post_id"], obj["values"]
            if isinstance(item_id, bool) or not isinstance(item_id, (str, int)):
                raise ItemVectorError(f"{path}:{lineno}: post_id must be a string, got {item_id!r}")
            item_id = str(item_id)
            _check_id(path, str(lineno), item_id, seen)
            if not isinstance(values, list) or not values or not all(
                    isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)
                    for v in values):
                raise ItemVectorError(f"{path}:{lineno}: values of post_id {item_id!r} must be a non-empty "
                                      f"list of finite numbers")
            if dim is None:
                dim = len(values)
            elif len(values) != dim:
                raise ItemVectorError(f"{path}:{lineno}: post_id {item_id!r} has {len(values)} values, "
                                      f"the file's first vector has {dim}")
            ids.append(item_id)
            rows.append(np.asarray(values, dtype=np.float32))  # not Python floats: 7x less memory
    except (OSError, EOFError) as e:
        raise ItemVectorError(f"{path}: cannot read the file ({e})") from None
    finally:
        f.close()
    if not ids:
        raise ItemVectorError(f"{path}: no item vectors in the file")
    return ids, np.stack(rows)


def _ids_file_for(npy_path: str) -> str:
    return npy_path[: -len(".npy")] + ".ids.txt"


def _read_npy(path: str) -> tuple[list[str], np.ndarray]:
    ids_path = _ids_file_for(path)
    if not tf.io.gfile.exists(ids_path):
        raise ItemVectorError(f"{path}: a .npy item-vector file needs its ids in {ids_path} (one per line)")
    try:
        with tf.io.gfile.GFile(path, "rb") as f:
            matrix = np.load(f, allow_pickle=False)  # never unpickle a data file
    except ValueError as e:
        raise ItemVectorError(f"{path}: not a plain numeric .npy array ({e})") from None
    if matrix.ndim != 2 or matrix.shape[0] == 0 or not np.issubdtype(matrix.dtype, np.number):
        raise ItemVectorError(f"{path}: expected a numeric matrix [items, dim], got shape {matrix.shape} "
                              f"dtype {matrix.dtype}")
    if not np.all(np.isfinite(matrix)):
        raise ItemVectorError(f"{path}: the matrix holds NaN or infinite values")
    with tf.io.gfile.GFile(ids_path, "r") as f:
        ids = [line.rstrip("\n") for line in f]
    if len(ids) != matrix.shape[0]:
        raise ItemVectorError(f"{ids_path}: {len(ids)} ids for {matrix.shape[0]} rows in {path}")
    seen: set = set()
    for i, item_id in enumerate(ids, start=1):
        _check_id(ids_path, str(i), item_id, seen)
    return ids, matrix.astype(np.float32)


def read_item_vectors(path: str) -> tuple[list[str], np.ndarray]:
    """Reads and validates an item-vector file; returns (ids, matrix [n, dim])."""
    if not tf.io.gfile.exists(path):
        raise ItemVectorError(f"{path}: item-vector file not found")
    if path.endswith(".npy"):
        return _read_npy(path)
    return _read_jsonl(path)


def source_files(path: str) -> list[str]:
    return [path, _ids_file_for(path)] if path.endswith(".npy") else [path]


def prepare_item_vectors(path: str, out_root: str, expected_dim: int | None = None) -> PreparedVectors:
    """Validates `path` and writes its prepared form under out_root/<sha256 prefix>/ (reused if there)."""
    if not tf.io.gfile.exists(path):
        raise ItemVectorError(f"{path}: item-vector file not found")
    digest = _sha256(source_files(path))
    out_dir = os.path.join(out_root, digest[:16])
    meta_path = os.path.join(out_dir, META_FILE)
    if tf.io.gfile.exists(meta_path):
        with tf.io.gfile.GFile(meta_path) as f:
            prepared = PreparedVectors(**json.load(f))
    else:
        ids, matrix = read_item_vectors(path)
        tf.io.gfile.makedirs(out_dir)
        with tf.io.gfile.GFile(os.path.join(out_dir, IDS_FILE), "w") as f:
            f.write("".join(i + "\n" for i in ids))
        table = np.concatenate([np.zeros((1, matrix.shape[1]), np.float32), matrix])
        with tf.io.gfile.GFile(os.path.join(out_dir, VECTORS_FILE), "wb") as f:
            np.save(f, table, allow_pickle=False)
        prepared = PreparedVectors(dir=out_dir, dim=int(matrix.shape[1]), count=len(ids), sha256=digest,
                                   source=path)
        with tf.io.gfile.GFile(meta_path, "w") as f:  # written last: marks the folder complete
            json.dump(asdict(prepared), f)
    if expected_dim is not None and expected_dim != prepared.dim:
        raise ItemVectorError(f"{path}: the feature spec says pretrained_dim {expected_dim}, "
                              f"the file's vectors have {prepared.dim}")
    return prepared


def load_table(prepared_dir: str) -> np.ndarray:
    """The frozen table [n + 1, dim] (row 0 = zeros) of a prepared folder."""
    with tf.io.gfile.GFile(os.path.join(prepared_dir, VECTORS_FILE), "rb") as f:
        return np.load(f, allow_pickle=False)
