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
import os
from array import array
from dataclasses import asdict, dataclass

import numpy as np

from schema import files
from schema.files import open_file
from schema.npy_files import read_npy_header
from schema.numbers import FLOAT32_MAX, MAX_NUMBER_CHARS, NumberError, check_number

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
        with open_file(p, "rb") as f:
            while chunk := f.read(1 << 22):
                h.update(chunk)
    return h.hexdigest()


class _Ids:
    """The ids of a vector file as they are read: checked, written in order to `out`, and kept only
    as 8-byte hashes with their line (16 bytes an item, not a Python string per item). Repeated
    ids are found when the file is done."""

    def __init__(self, source: str, out):
        self.source, self.out = source, out
        self.hashes, self.lines = array("q"), array("q")

    def add(self, item_id: str, line: int) -> None:
        item_id = item_id.strip()  # as the log parser strips ids: "p1 " must match "p1"
        if not item_id or any(c in item_id for c in "\t\n\r"):
            raise ItemVectorError(f"{self.source}:{line}: post_id {item_id!r} is empty or contains a tab or newline")
        self.out.write(item_id + "\n")
        digest = hashlib.blake2b(item_id.encode("utf-8"), digest_size=8).digest()
        self.hashes.append(int.from_bytes(digest, "little", signed=True))
        self.lines.append(line)

    def __len__(self) -> int:
        return len(self.hashes)

    def check_repeats(self, written_path: str) -> None:
        """Raises on the first id (in file order) seen before, naming its line."""
        hashes = np.frombuffer(self.hashes, np.int64)
        order = np.argsort(hashes, kind="stable")
        same = hashes[order][1:] == hashes[order][:-1]
        if not same.any():
            return
        pairs = sorted(zip(order[1:][same].tolist(), order[:-1][same].tolist(), strict=True))  # (later, earlier)
        wanted = {i for pair in pairs for i in pair}
        ids = {}
        with open_file(written_path, "r") as f:
            for row, line in enumerate(f):
                if row in wanted:
                    ids[row] = line.rstrip("\n")
        for later, earlier in pairs:
            if ids[later] == ids[earlier]:  # not merely a hash collision
                raise ItemVectorError(f"{self.source}:{self.lines[later]}: duplicate post_id {ids[later]!r}")


class _Rows:
    """float32 rows appended into blocks: no Python object per row. Blocks double from one row up to
    MAX_BLOCK_BYTES, so what is allocated stays within twice what was read (a file with one
    150,000-dimension vector allocates one row, not 65,536)."""

    MAX_BLOCK_BYTES = 64 << 20

    def __init__(self):
        self.blocks, self.used = [], 0

    def add(self, values: list) -> None:
        if not self.blocks or self.used == len(self.blocks[-1]):
            cap = max(1, self.MAX_BLOCK_BYTES // (4 * len(values)))
            rows = min(cap, max(1, sum(len(b) for b in self.blocks)))
            self.blocks.append(np.empty((rows, len(values)), np.float32))
            self.used = 0
        self.blocks[-1][self.used] = values
        self.used += 1

    def matrix(self) -> np.ndarray:
        return np.concatenate(self.blocks[:-1] + [self.blocks[-1][:self.used]])


MAX_LINE_BYTES = 16 << 20  # a 65,536-dimension vector at 25 characters a value fits


def _lines(f, chunk: int = 1 << 20):
    """The file's lines, read in chunks; a line longer than MAX_LINE_BYTES is yielded cut at
    MAX_LINE_BYTES + 1 bytes (for the caller to refuse), never held whole."""
    pending = b""
    while data := f.read(chunk):
        pending += data
        *lines, pending = pending.split(b"\n")
        yield from (line + b"\n" for line in lines)
        if len(pending) > MAX_LINE_BYTES:
            yield pending[: MAX_LINE_BYTES + 1]
            return
    if pending:
        yield pending


def _wrong_dim(path: str, expected_dim: int, got: int, where: str) -> ItemVectorError:
    return ItemVectorError(f"{path}{where}: the feature spec says pretrained_dim {expected_dim}, the file's "
                           f"vectors have {got}")


def _read_jsonl(path: str, ids: _Ids, expected_dim: int | None = None) -> np.ndarray:
    rows = _Rows()
    dim = None
    raw = open_file(path, "rb")
    f = gzip.GzipFile(fileobj=raw, mode="rb") if path.endswith(".gz") else raw
    try:
        for lineno, line in enumerate(_lines(f), start=1):
            if len(line) > MAX_LINE_BYTES:
                raise ItemVectorError(f"{path}:{lineno}: a line longer than {MAX_LINE_BYTES >> 20} MiB")
            if not line.strip():
                continue
            obj = _json_line(path, lineno, line)
            if not isinstance(obj, dict) or "post_id" not in obj or "values" not in obj:
                raise ItemVectorError(f'{path}:{lineno}: expected {{"post_id": "...", "values": [...]}}, '
                                      f"got keys {sorted(obj) if isinstance(obj, dict) else type(obj).__name__}")
            item_id, values = obj["post_id"], obj["values"]
            if isinstance(item_id, bool) or not isinstance(item_id, (str, int)):
                raise ItemVectorError(f"{path}:{lineno}: post_id must be a string, got {item_id!r}")
            item_id = str(item_id)
            if not isinstance(values, list) or not values:
                raise ItemVectorError(f"{path}:{lineno}: values of post_id {item_id!r} must be a non-empty "
                                      f"list of numbers")
            try:
                for v in values:
                    check_number(v)
            except NumberError as e:
                raise ItemVectorError(f"{path}:{lineno}: values of post_id {item_id!r} must be finite float32 "
                                      f"numbers: {e}") from None
            if dim is None:
                dim = len(values)
                if expected_dim is not None and dim != expected_dim:  # at the first line, not after the file
                    raise _wrong_dim(path, expected_dim, dim, f":{lineno}")
            elif len(values) != dim:
                raise ItemVectorError(f"{path}:{lineno}: post_id {item_id!r} has {len(values)} values, "
                                      f"the file's first vector has {dim}")
            ids.add(item_id, lineno)
            rows.add(values)
    except (OSError, EOFError) as e:
        raise ItemVectorError(f"{path}: cannot read the file ({e})") from None
    finally:
        f.close()
    if not len(ids):
        raise ItemVectorError(f"{path}: no item vectors in the file")
    return rows.matrix()


def _json_int(text: str) -> int:
    # A 4,400-digit int would raise ValueError inside json, a 400-digit one OverflowError later:
    # long numbers are refused here, before int() (check_number then checks the float32 range).
    if len(text) > MAX_NUMBER_CHARS:
        raise NumberError(f"a number of {len(text)} characters")
    return int(text)


def _json_float(text: str) -> float:
    if len(text) > MAX_NUMBER_CHARS:
        raise NumberError(f"a number of {len(text)} characters")
    return float(text)


def _json_constant(name: str):
    raise NumberError(f"{name} is not a finite number")


def _json_line(path: str, lineno: int, line: bytes):
    try:
        return json.loads(line, parse_int=_json_int, parse_float=_json_float, parse_constant=_json_constant)
    except NumberError as e:
        raise ItemVectorError(f"{path}:{lineno}: {e} (each value must be a finite float32)") from None
    except RecursionError:
        raise ItemVectorError(f"{path}:{lineno}: JSON nested too deeply; "
                              f'expected {{"post_id": "...", "values": [...]}}') from None
    except (ValueError, UnicodeDecodeError) as e:
        raise ItemVectorError(f"{path}:{lineno}: not a JSON object ({e.__class__.__name__}: {e}); "
                              f'expected {{"post_id": "...", "values": [...]}}') from None


def _ids_file_for(npy_path: str) -> str:
    return npy_path[: -len(".npy")] + ".ids.txt"


def _load_npy_matrix(path: str) -> np.ndarray:
    """The [items, dim] matrix of a .npy file as float32. Its header is read first and checked against
    the file's size, so a 192-byte file that claims (10^6, 10^5) allocates nothing; never unpickles."""
    size = files.size(path)
    with open_file(path, "rb") as f:
        try:
            shape, fortran, dtype = read_npy_header(f)
        except (ValueError, SyntaxError, TypeError, OverflowError, EOFError) as e:
            raise ItemVectorError(f"{path}: not a .npy array ({e})") from None
        if dtype.hasobject or dtype.fields is not None or dtype.kind not in "iuf":
            raise ItemVectorError(f"{path}: expected a matrix of real numbers (int or float), got dtype {dtype}")
        if len(shape) != 2 or 0 in shape:
            raise ItemVectorError(f"{path}: expected a non-empty matrix [items, dim], got shape {shape}")
        data_bytes = shape[0] * shape[1] * dtype.itemsize
        if data_bytes != size - f.tell():
            raise ItemVectorError(f"{path}: the header says shape {shape} of {dtype} ({data_bytes:,} bytes), "
                                  f"the file holds {size - f.tell():,} bytes of data")
        matrix = np.frombuffer(f.read(data_bytes), dtype=dtype).reshape(shape, order="F" if fortran else "C")
    if dtype.kind == "f":  # ints of any width are finite in float32
        if not np.all(np.isfinite(matrix)):
            raise ItemVectorError(f"{path}: the matrix holds NaN or infinite values")
        if np.abs(matrix).max() > FLOAT32_MAX:
            raise ItemVectorError(f"{path}: the matrix holds values outside the float32 range")
    return matrix.astype(np.float32)


def _read_npy(path: str, ids: _Ids, expected_dim: int | None = None) -> np.ndarray:
    ids_path = _ids_file_for(path)
    if not files.exists(ids_path):
        raise ItemVectorError(f"{path}: a .npy item-vector file needs its ids in {ids_path} (one per line)")
    matrix = _load_npy_matrix(path)
    if expected_dim is not None and matrix.shape[1] != expected_dim:
        raise _wrong_dim(path, expected_dim, matrix.shape[1], "")
    with open_file(ids_path, "r") as f:
        for i, line in enumerate(f, start=1):
            ids.add(line.rstrip("\n"), i)
    if len(ids) != matrix.shape[0]:
        raise ItemVectorError(f"{ids_path}: {len(ids)} ids for {matrix.shape[0]} rows in {path}")
    return matrix


def read_item_vectors(path: str, ids_path: str, expected_dim: int | None = None) -> np.ndarray:
    """Reads and validates an item-vector file: writes its ids, in row order, to ids_path and
    returns the matrix [n, dim] (of expected_dim columns when given)."""
    if not files.exists(path):
        raise ItemVectorError(f"{path}: item-vector file not found")
    with open_file(ids_path, "w") as out:
        ids = _Ids(_ids_file_for(path) if path.endswith(".npy") else path, out)  # the file errors name
        read = _read_npy if path.endswith(".npy") else _read_jsonl
        matrix = read(path, ids, expected_dim)
    ids.check_repeats(ids_path)
    zero = np.flatnonzero(~matrix.any(axis=1))
    if len(zero):  # the towers read an all-zero vector as "no vector" (padding, an unknown post)
        where = ids.lines[int(zero[0])]
        raise ItemVectorError(f"{ids.source}:{where}: an all-zero vector ({len(zero):,} in the file): zeros mean "
                              f"'no vector' to the model; leave the post out instead")
    return matrix


def source_files(path: str) -> list[str]:
    return [path, _ids_file_for(path)] if path.endswith(".npy") else [path]


def prepare_item_vectors(path: str, out_root: str, expected_dim: int | None = None) -> PreparedVectors:
    """Validates `path` and writes its prepared form under out_root/<sha256 prefix>/ (reused if there)."""
    if not files.exists(path):
        raise ItemVectorError(f"{path}: item-vector file not found")
    digest = _sha256(source_files(path))
    out_dir = os.path.join(out_root, digest[:16])
    meta_path = os.path.join(out_dir, META_FILE)
    if files.exists(meta_path):
        with open_file(meta_path) as f:
            prepared = PreparedVectors(**json.load(f))
    else:
        files.makedirs(out_dir)
        try:
            matrix = read_item_vectors(path, os.path.join(out_dir, IDS_FILE), expected_dim)
            table = np.concatenate([np.zeros((1, matrix.shape[1]), np.float32), matrix])
            with open_file(os.path.join(out_dir, VECTORS_FILE), "wb") as f:
                np.save(f, table, allow_pickle=False)
        except BaseException:  # a rejected or interrupted file leaves no half-written folder behind
            files.rmtree(out_dir)
            raise
        prepared = PreparedVectors(dir=out_dir, dim=int(matrix.shape[1]), count=int(matrix.shape[0]), sha256=digest,
                                   source=path)
        with open_file(meta_path, "w") as f:  # written last: marks the folder complete
            json.dump(asdict(prepared), f)
    if expected_dim is not None and expected_dim != prepared.dim:
        raise _wrong_dim(path, expected_dim, prepared.dim, "")
    return prepared


def load_ids(prepared_dir: str) -> list[str]:
    """The prepared folder's ids in row order (id i is row i + 1 of the table)."""
    with open_file(os.path.join(prepared_dir, IDS_FILE), "r") as f:
        return [line.rstrip("\n") for line in f]


class VectorTable:
    """The content vectors of a prepared folder by post id: what the training run knows of each post
    (the evaluator and the item store's seed read it)."""

    def __init__(self, ids: list[str], vectors: np.ndarray):
        """ids[i]'s vector is vectors[i]."""
        vectors = np.asarray(vectors, np.float32)
        self.matrix = np.concatenate([np.zeros((1, vectors.shape[1]), np.float32), vectors])
        self.dim = int(vectors.shape[1])
        self.ids = list(ids)
        self._rows = {item: row for row, item in enumerate(self.ids, start=1)}

    @classmethod
    def load(cls, prepared_dir: str) -> VectorTable:
        return cls(load_ids(prepared_dir), load_table(prepared_dir)[1:])

    def vectors(self, ids: list[str]) -> np.ndarray:
        """[len(ids), dim]: each id's vector, all zero for an id without one."""
        return self.matrix[[self._rows.get(i, 0) for i in ids]]


def load_table(prepared_dir: str) -> np.ndarray:
    """The frozen table [n + 1, dim] (row 0 = zeros) of a prepared folder."""
    with open_file(os.path.join(prepared_dir, VECTORS_FILE), "rb") as f:
        return np.load(f, allow_pickle=False)
